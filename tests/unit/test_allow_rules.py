"""Allow rules: their forms, the privileged-port rule, which address kinds they fit, and
the reserved-port connect option."""

from __future__ import annotations

import errno
import subprocess
import sys
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

import hvsock
from hvsock._core.addresses import parse_address
from hvsock._server.peers import Peer, PrivilegedCid, allow_rules, fits, refusal
from hvsock._transports import vsock

VSOCK = parse_address("vsock://any:5100")
TCP = parse_address("tcp://127.0.0.1:5100")
UNIX = parse_address("unix:///tmp/a.sock")
HYBRID = parse_address("hybrid:///tmp/v.sock:5100")
HYPERV = parse_address("hvsock://wildcard/5100")


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (2, 2),
        ("2", 2),
        ("cid:2", 2),
        ("host", 2),
        ("local", 1),
        ("2:privileged", PrivilegedCid(2)),
        ("host:privileged", PrivilegedCid(2)),
        ("cid:1:privileged", PrivilegedCid(1)),
        (PrivilegedCid(3), PrivilegedCid(3)),
        ("uid:0", "uid:0"),
        ("uid:007", "uid:7"),
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("0:0::1", "::1"),
        ("00000000-0000-0000-0000-000000000001", uuid.UUID(int=1)),
    ],
)
def test_rule_forms(rule: object, expected: object) -> None:
    assert allow_rules([rule]) == frozenset({expected})


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        ("any", "does not exist"),
        ("cid:x", "CID number"),
        ("any:privileged", "CID number"),
        ("myhost", "never by name"),
        ("uid:me", "uid:<number>"),
        (True, "not a CID"),
        ("", "not a CID"),
        (-1, "out of range"),
        (0xFFFFFFFF, "out of range"),
        ("4294967295:privileged", "out of range"),
        (2.0, "not a CID"),
        # Digits str.isdigit() takes and int() refuses (found by the property test below).
        ("²", "not a CID"),
        ("uid:²", "uid:<number>"),
        ("²:privileged", "CID number"),
    ],
)
def test_bad_rules_say_what_to_write(rule: object, words: str) -> None:
    with pytest.raises(hvsock.ArgumentError, match=words):
        allow_rules([rule])


@given(st.one_of(st.text(max_size=40), st.integers(), st.floats(), st.none(), st.booleans()))
def test_any_rule_is_accepted_or_refused_with_argument_error(rule: object) -> None:
    try:
        rules = allow_rules([rule])
    except hvsock.ArgumentError:
        return
    assert rules is not None
    assert len(rules) == 1


def test_a_privileged_rule_needs_a_reserved_source_port() -> None:
    rule = PrivilegedCid(2)
    assert Peer("x", cid=2, port=1023).matches(rule)
    assert Peer("x", cid=2, port=512).matches(rule)
    assert not Peer("x", cid=2, port=1024).matches(rule)
    assert not Peer("x", cid=2, port=None).matches(rule)
    assert not Peer("x", cid=3, port=1000).matches(rule)
    # A plain CID rule takes any port.
    assert Peer("x", cid=2, port=60000).matches(2)


def test_peer_of_keeps_the_vsock_source_port() -> None:
    import socket

    from hvsock._server.peers import peer_of

    with socket.socket() as sock:  # only its family is looked at for vsock peers
        peer = peer_of(sock, (2, 1023), VSOCK)
    assert (peer.cid, peer.port) == (2, 1023)
    assert peer.matches(PrivilegedCid(2))


@pytest.mark.parametrize(
    ("rule", "address", "ok"),
    [
        (2, VSOCK, True),
        (PrivilegedCid(2), VSOCK, True),
        ("uid:0", VSOCK, False),
        ("127.0.0.1", VSOCK, False),
        (uuid.UUID(int=1), VSOCK, False),
        (2, HYBRID, False),
        ("uid:0", HYBRID, True),
        (2, UNIX, False),
        ("uid:0", UNIX, True),
        ("127.0.0.1", TCP, True),
        (2, TCP, False),
        ("uid:0", TCP, False),
        (uuid.UUID(int=1), HYPERV, True),
        (2, HYPERV, False),
    ],
)
def test_rules_fit_their_address_kind(rule: object, address: object, ok: bool) -> None:
    assert fits(rule, address) is ok  # type: ignore[arg-type]


def test_service_host_refuses_rules_that_let_nobody_in() -> None:
    async def handler(conn: hvsock.Connection) -> None:
        pass

    host = hvsock.ServiceHost()
    with pytest.raises(hvsock.ArgumentError, match="never match a peer on hybrid"):
        host.add(hvsock.Service("x", 5000, handler, allow={2}), HYBRID)
    # One fitting rule is enough (a list may serve several kinds).
    host.add(hvsock.Service("y", 5001, handler, allow={2, "uid:0"}), HYBRID)


def test_refusal_names_the_rules_and_what_privilege_needs() -> None:
    why = refusal(Peer("vsock://1:50000", cid=1, port=50000), {PrivilegedCid(1), 3})
    assert "local:privileged" in why  # CID 1 by its name
    assert "3" in why
    assert "source port <= 1023" in why
    assert "50000" in why
    assert "root" in why


class FakeVsockSocket:
    """bind() as Linux's af_vsock answers it: EACCES below 1024 without the capability,
    EADDRINUSE for ports taken."""

    def __init__(self, *, privileged: bool, taken: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.privileged, self.taken = privileged, taken
        self.tried: list[int] = []
        self.bound: tuple[int, int] | None = None

    def bind(self, address: tuple[int, int]) -> None:
        self.tried.append(address[1])
        if address[1] <= 1023 and not self.privileged:
            raise OSError(errno.EACCES, "Permission denied")
        if address[1] in self.taken:
            raise OSError(errno.EADDRINUSE, "Address in use")
        self.bound = address


def test_reserved_port_counts_down_skipping_ports_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vsock._Rotation, "start", 0)  # where a new process may start
    sock = FakeVsockSocket(privileged=True, taken={1023, 1022})
    assert vsock.bind_reserved(sock, VSOCK, required=True) == 1021  # type: ignore[arg-type]
    assert sock.tried == [1023, 1022, 1021]
    assert sock.bound == (0xFFFFFFFF, 1021)


def test_back_to_back_connections_never_reuse_the_port_just_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A peer still closing the last connection would take a new one from the same port
    # for it (the same address pair) and reset it: the search goes on below, and wraps.
    monkeypatch.setattr(vsock._Rotation, "start", len(vsock.RESERVED_PORTS) - 2)
    taken = [
        vsock.bind_reserved(
            FakeVsockSocket(privileged=True),
            VSOCK,  # type: ignore[arg-type]
            required=True,
        )
        for _ in range(4)
    ]
    assert taken == [513, 512, 1023, 1022]
    ports = [
        vsock.bind_reserved(
            FakeVsockSocket(privileged=True),
            VSOCK,  # type: ignore[arg-type]
            required=True,
        )
        for _ in range(len(vsock.RESERVED_PORTS))
    ]
    assert sorted(ports) == list(range(512, 1024))  # each port once before any again


def test_a_new_process_starts_anywhere_in_the_range() -> None:
    code = "from hvsock._transports import vsock; print(vsock._Rotation.order()[0])"
    starts = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        ).stdout.strip()
        for _ in range(6)
    }
    assert len(starts) > 1  # six processes all starting at one port: 1 in 512**5


def test_reserved_port_without_privilege() -> None:
    sock = FakeVsockSocket(privileged=False)
    with pytest.raises(hvsock.PermissionDeniedError, match="only root"):
        vsock.bind_reserved(sock, VSOCK, required=True)  # type: ignore[arg-type]
    # "try": the connect goes on from an ordinary port.
    sock = FakeVsockSocket(privileged=False)
    assert vsock.bind_reserved(sock, VSOCK, required=False) is None  # type: ignore[arg-type]
    assert sock.bound is None


def test_reserved_ports_all_taken() -> None:
    sock = FakeVsockSocket(privileged=True, taken=set(range(512, 1024)))
    with pytest.raises(hvsock.AddressInUseError, match="every reserved"):
        vsock.bind_reserved(sock, VSOCK, required=True)  # type: ignore[arg-type]
    assert vsock.bind_reserved(sock, VSOCK, required=False) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [None, 1, "yes", "True"])
def test_reserved_port_takes_false_true_or_try(bad: object) -> None:
    with pytest.raises(hvsock.ArgumentError, match="reserved_port"):
        hvsock.connect("unix:///nonexistent/a.sock", reserved_port=bad)  # type: ignore[arg-type]


def test_reserved_port_true_needs_a_vsock_address() -> None:
    with pytest.raises(hvsock.ArgumentError, match="AF_VSOCK"):
        hvsock.connect("unix:///nonexistent/a.sock", reserved_port=True)
    # "try" is a no-op elsewhere: the usual error for a missing socket file.
    with pytest.raises(hvsock.HvsockError) as info:
        hvsock.connect("unix:///nonexistent/a.sock", reserved_port="try")
    assert not isinstance(info.value, hvsock.ArgumentError)
