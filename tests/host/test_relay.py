"""The relay (hvsock._relay, ``hvsock relay``): behaviour over real TCP, Unix and hybrid sockets.

Payloads are checked by SHA-256 on every pair of address kinds and both data
paths; half-close both ways, resets, a target that is down, the allowlist, Unix
socket modes, back-pressure, idle timeout and graceful stop are checked by what
the peers see and by the relay's per-connection records. Waits are bounded.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import hvsock
import hvsock.sockets
from hvsock._cli import main as cli
from hvsock._relay import ConnectionRecord, Relay
from hvsock._relay.datapath import SPLICE_WORKS
from hvsock.testing import HybridVsockMuxer

from ..signals import with_default_signals
from ._peers import (
    EchoServer,
    recv_exactly,
    recv_until_eof,
    running_relay,
    sha,
    wait_for,
)

DATA_PATHS = ["splice", "copy"] if SPLICE_WORKS else ["copy"]
MiB = 1 << 20


# -- endpoints --------------------------------------------------------------------------------
class Site:
    """Where things listen for one test: TCP, Unix paths in a short dir, one muxer."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._muxer: HybridVsockMuxer | None = None
        self._n = 0
        self.cleanups: list[Callable[[], None]] = []

    @property
    def muxer(self) -> HybridVsockMuxer:
        if self._muxer is None:
            self._muxer = HybridVsockMuxer(str(self.tmp / "vm.sock"))
            self.cleanups.append(self._muxer.close)
        return self._muxer

    def path(self, name: str) -> str:
        self._n += 1
        return str(self.tmp / f"{name}{self._n}.sock")

    def target(self, kind: str) -> tuple[socket.socket, hvsock.Address]:
        """A listening socket for the target side, and the address the relay dials."""
        if kind == "tcp":
            sock = hvsock.listen("tcp://127.0.0.1:0")
            return sock, hvsock.sockets.listener_address(sock, "tcp://127.0.0.1:0")
        if kind == "tcp6":
            sock = hvsock.listen("tcp://[::1]:0")
            return sock, hvsock.sockets.listener_address(sock, "tcp://[::1]:0")
        if kind == "unix":
            addr = hvsock.UnixAddress(self.path("t"))
            sock = hvsock.listen(addr)
            self.cleanups.append(lambda: hvsock.sockets.remove_socket_file(addr))
            return sock, addr
        assert kind == "hybrid"
        port = 5000 + self._n
        self._n += 1
        return self.muxer.guest_listen(port), self.muxer.address(port)

    def listen_address(self, kind: str) -> str:
        """What the relay listens on."""
        if kind == "tcp":
            return "tcp://127.0.0.1:0"
        if kind == "tcp6":
            return "tcp://[::1]:0"
        if kind == "unix":
            return f"unix://{self.path('l')}"
        assert kind == "hybrid"
        # The relay plays the host service guests reach at <uds>_<port>.
        return str(hvsock.HybridAddress(self.muxer.uds_path, 6000 + self._n))

    def client(self, kind: str, address: hvsock.Address) -> socket.socket:
        """A client of the relay's listener."""
        if kind == "hybrid":
            assert isinstance(address, hvsock.HybridAddress)
            return self.muxer.guest_connect(address.port)
        return hvsock.connect(address)

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            cleanup()


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
def site(short_tmp: Path) -> Iterator[Site]:
    s = Site(short_tmp)
    yield s
    s.close()


def _echo_through(client: socket.socket, data: bytes) -> bytes:
    """Send *data* (in a thread), half-close, and read the echo until EOF."""

    def send() -> None:
        view = memoryview(data)
        for i in range(0, len(data), MiB):
            client.sendall(view[i : i + MiB])
        client.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    got = recv_until_eof(client, limit=len(data) + 1)
    sender.join(30)
    assert not sender.is_alive()
    return got


PAIRS = [
    ("tcp", "tcp"),
    ("tcp", "unix"),
    ("unix", "tcp"),
    ("unix", "unix"),
    ("tcp", "hybrid"),
    ("hybrid", "tcp"),
    ("hybrid", "hybrid"),
    ("unix", "hybrid"),
]
if _has_ipv6():
    PAIRS += [("tcp6", "tcp"), ("tcp", "tcp6")]


# -- payloads ---------------------------------------------------------------------------------
@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("data_path", DATA_PATHS)
@pytest.mark.parametrize(("listen", "target"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_payload_exact_on_every_path(site: Site, listen: str, target: str, data_path: str) -> None:
    tl, taddr = site.target(target)
    data = os.urandom(3 * MiB + 12345)
    with (
        EchoServer(tl),
        running_relay(site.listen_address(listen), taddr, data_path=data_path) as relay,
    ):
        with site.client(listen, relay.address) as client:
            got = _echo_through(client, data)
        (record,) = relay.wait_records(1)
    assert (len(got), sha(got)) == (len(data), sha(data))
    assert record.end == "closed"
    assert (record.bytes_up, record.bytes_down) == (len(data), len(data))
    assert record.error is None


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("data_path", DATA_PATHS)
def test_many_concurrent_connections_each_exact(site: Site, data_path: str) -> None:
    tl, taddr = site.target("tcp")
    n = 60
    payloads = [os.urandom(20_000 + 997 * i) for i in range(n)]
    results: list[bytes | None] = [None] * n
    errors: list[BaseException] = []
    with EchoServer(tl), running_relay("tcp://127.0.0.1:0", taddr, data_path=data_path) as relay:

        def one(i: int) -> None:
            try:
                with hvsock.connect(relay.address) as c:
                    results[i] = _echo_through(c, payloads[i])
            except BaseException as exc:  # handed to the test below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        records = relay.wait_records(n)
    assert not errors
    assert all(results[i] == payloads[i] for i in range(n))
    assert sorted(r.bytes_up for r in records) == sorted(len(p) for p in payloads)
    assert {r.end for r in records} == {"closed"}


@pytest.mark.usefixtures("fd_baseline")
def test_empty_connection_ends_cleanly(site: Site) -> None:
    tl, taddr = site.target("unix")
    with EchoServer(tl), running_relay("tcp://127.0.0.1:0", taddr) as relay:
        with hvsock.connect(relay.address) as client:
            client.shutdown(socket.SHUT_WR)
            assert recv_until_eof(client) == b""
        (record,) = relay.wait_records(1)
    assert (record.end, record.bytes_up, record.bytes_down) == ("closed", 0, 0)


@pytest.mark.usefixtures("fd_baseline")
def test_target_by_host_name_is_dialled_in_a_thread(site: Site) -> None:
    tl, taddr = site.target("tcp")
    assert isinstance(taddr, hvsock.TcpAddress)
    with (
        EchoServer(tl),
        running_relay("tcp://127.0.0.1:0", f"tcp://localhost:{taddr.port}") as relay,
    ):
        for i in range(3):
            with hvsock.connect(relay.address) as client:
                assert _echo_through(client, b"named %d" % i) == b"named %d" % i
        records = relay.wait_records(3)
    assert [r.end for r in records] == ["closed"] * 3


@pytest.mark.usefixtures("fd_baseline")
def test_unix_target_with_a_full_backlog_is_waited_for(site: Site) -> None:
    # A non-blocking Unix connect fails at once while the backlog is full; the relay
    # then waits for the listener the blocking way (in a thread), bounded by its
    # connect timeout, and the bytes get through once the target accepts.
    path = site.path("full")
    tl = hvsock.listen(f"unix://{path}", backlog=1)
    site.cleanups.append(lambda: hvsock.sockets.remove_socket_file(f"unix://{path}"))
    with running_relay("tcp://127.0.0.1:0", f"unix://{path}") as relay:
        clients = [hvsock.connect(relay.address) for _ in range(4)]
        for i, c in enumerate(clients):
            c.sendall(b"%d" % i)
        # The relay has taken all four and dialled each (the dial starts as a client is
        # admitted): the target's backlog holds fewer, so some dials are waiting.
        wait_for(lambda: relay.relay.stats().accepted == 4, what="the relay accepting four")
        with EchoServer(tl):
            for i, c in enumerate(clients):
                c.shutdown(socket.SHUT_WR)
                assert recv_until_eof(c) == b"%d" % i
                c.close()
            records = relay.wait_records(4)
    assert [r.end for r in records] == ["closed"] * 4


# -- half-close -------------------------------------------------------------------------------
@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("data_path", DATA_PATHS)
@pytest.mark.parametrize("target_kind", ["tcp", "unix", "hybrid"])
def test_client_half_close_reaches_target_which_still_answers(
    site: Site, target_kind: str, data_path: str
) -> None:
    tl, taddr = site.target(target_kind)
    request = os.urandom(300_000)
    reply = os.urandom(500_000)
    with tl, running_relay("tcp://127.0.0.1:0", taddr, data_path=data_path) as relay:
        with hvsock.connect(relay.address) as client:
            tl.settimeout(10)
            server, _ = tl.accept()
            with server:
                client.sendall(request)
                client.shutdown(socket.SHUT_WR)
                # The target reads the whole request, then EOF: the client's half-close.
                assert recv_until_eof(server) == request
                # It can still answer after that EOF, and the client gets all of it.
                server.sendall(reply)
                server.shutdown(socket.SHUT_WR)
                assert recv_until_eof(client) == reply
        (record,) = relay.wait_records(1)
    assert record.end == "closed"
    assert (record.bytes_up, record.bytes_down) == (len(request), len(reply))


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("data_path", DATA_PATHS)
@pytest.mark.parametrize("target_kind", ["tcp", "unix", "hybrid"])
def test_target_half_close_reaches_client_which_still_sends(
    site: Site, target_kind: str, data_path: str
) -> None:
    tl, taddr = site.target(target_kind)
    banner = os.urandom(200_000)
    upload = os.urandom(700_000)
    with tl, running_relay("tcp://127.0.0.1:0", taddr, data_path=data_path) as relay:
        with hvsock.connect(relay.address) as client:
            tl.settimeout(10)
            server, _ = tl.accept()
            with server:
                server.sendall(banner)
                server.shutdown(socket.SHUT_WR)
                # The client gets the banner and then EOF, and the connection lives on.
                assert recv_until_eof(client) == banner
                client.sendall(upload)
                assert recv_exactly(server, len(upload)) == upload
                assert relay.relay.active_connections == 1
                client.shutdown(socket.SHUT_WR)
                assert recv_until_eof(server) == b""
        (record,) = relay.wait_records(1)
    assert record.end == "closed"
    assert (record.bytes_up, record.bytes_down) == (len(upload), len(banner))


# -- resets -----------------------------------------------------------------------------------
def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _sees_reset_or_eof(sock: socket.socket, timeout: float = 30.0) -> str:
    """'reset' or 'eof', whichever *sock* sees first (after any bytes in flight)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return "reset"
    return "eof"


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("data_path", DATA_PATHS)
def test_target_reset_resets_the_client_promptly(site: Site, data_path: str) -> None:
    tl, taddr = site.target("tcp")
    with tl, running_relay("tcp://127.0.0.1:0", taddr, data_path=data_path) as relay:
        with hvsock.connect(relay.address) as client:
            tl.settimeout(10)
            server, _ = tl.accept()
            client.sendall(b"hello")
            assert recv_exactly(server, 5) == b"hello"
            start = time.monotonic()
            _reset(server)
            # A TCP client is reset too, so it cannot take the cut for a complete stream.
            assert _sees_reset_or_eof(client) == "reset"
            assert time.monotonic() - start < 5
        (record,) = relay.wait_records(1)
    assert record.end == "target reset"
    assert record.error is not None
    assert "ECONNRESET" in record.error


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("data_path", DATA_PATHS)
def test_client_reset_closes_the_target_promptly(site: Site, data_path: str) -> None:
    tl, taddr = site.target("tcp")
    with tl, running_relay("tcp://127.0.0.1:0", taddr, data_path=data_path) as relay:
        client = hvsock.connect(relay.address)
        tl.settimeout(10)
        server, _ = tl.accept()
        with server:
            server.sendall(b"banner")
            assert recv_exactly(client, 6) == b"banner"
            _reset(client)
            assert _sees_reset_or_eof(server) == "reset"
        (record,) = relay.wait_records(1)
    assert record.end == "client reset"


@pytest.mark.usefixtures("fd_baseline")
def test_unix_target_that_closes_is_an_eof_then_a_reset_if_sent_to(site: Site) -> None:
    tl, taddr = site.target("unix")
    with tl, running_relay("tcp://127.0.0.1:0", taddr) as relay:
        with hvsock.connect(relay.address) as client:
            tl.settimeout(10)
            server, _ = tl.accept()
            server.close()
            # The close reaches the client as EOF (it may be a half-close)...
            assert recv_until_eof(client) == b""
            # ...and bytes sent after it cannot arrive: the client's sends fail soon,
            # instead of filling buffers forever.
            block = os.urandom(MiB)
            client.settimeout(10)
            with pytest.raises((BrokenPipeError, ConnectionResetError)):  # noqa: PT012
                for _ in range(64):
                    client.sendall(block)
        (record,) = relay.wait_records(1)
    assert record.end == "target reset"


# -- the target is down -----------------------------------------------------------------------
@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("target_kind", ["tcp", "unix", "hybrid"])
def test_target_down_closes_the_client_at_once_and_is_logged(
    site: Site, target_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    tl, taddr = site.target(target_kind)
    tl.close()  # nobody listens there any more
    if target_kind == "hybrid":
        assert isinstance(taddr, hvsock.HybridAddress)
        site.muxer.guest_unlisten(taddr.port)
    caplog.set_level("INFO", logger="hvsock.relay")
    with running_relay("tcp://127.0.0.1:0", taddr) as relay:
        start = time.monotonic()
        try:
            client = hvsock.connect(relay.address)
        except hvsock.ConnectionResetByPeerError as exc:
            # The relay's reset can land while connect() is still returning: that is
            # the same reset, and it must never read as "nothing is listening".
            seen = "reset" if "nothing is listening" not in str(exc) else str(exc)
        else:
            with client:
                seen = _sees_reset_or_eof(client)
        assert seen in ("reset", "eof")
        assert time.monotonic() - start < 5
        (record,) = relay.wait_records(1)
        assert relay.relay.stats().target_down == 1
    assert record.end == "target down"
    assert record.error is not None
    assert "nothing is listening" in record.error or "nothing in the guest" in record.error
    assert any("target down" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


# -- allowlist --------------------------------------------------------------------------------
@pytest.mark.usefixtures("fd_baseline")
def test_allowlist_denies_a_tcp_peer_before_dialling(site: Site) -> None:
    tl, taddr = site.target("tcp")
    with tl, running_relay("tcp://127.0.0.1:0", taddr, allow={"192.0.2.1"}) as relay:
        for _ in range(2):
            with hvsock.connect(relay.address) as client:
                assert _sees_reset_or_eof(client) in ("reset", "eof")
        records = relay.wait_records(2)
        # Nothing was dialled: the target has no connection waiting. The second denial
        # went round the relay's loop after the first one's whole handling, so a dial
        # either had started would be in the target's accept queue by now (a loopback
        # TCP handshake completes inside the connect call: the relay counts on it too).
        # The short accept after it only adds a window; neither check can fail on a
        # relay that never dials. What they could miss: a dial whose handshake the
        # kernel put off past both records and the 0.2 s.
        assert _accept_queue(hvsock.sockets.listener_address(tl, "tcp://127.0.0.1:0").port) == 0
        tl.settimeout(0.2)
        with pytest.raises(TimeoutError):
            tl.accept()
    assert [r.end for r in records] == ["denied", "denied"]
    assert relay.relay.stats().denied == 2


@pytest.mark.usefixtures("fd_baseline")
def test_allowlist_by_unix_uid(site: Site) -> None:
    tl, taddr = site.target("tcp")
    me = os.getuid()
    with EchoServer(tl):
        with running_relay(site.listen_address("unix"), taddr, allow={f"uid:{me + 1}"}) as r:
            with site.client("unix", r.address) as client:
                assert _sees_reset_or_eof(client) in ("reset", "eof")
            assert r.wait_records(1)[0].end == "denied"
        with running_relay(site.listen_address("unix"), taddr, allow={f"uid:{me}"}) as r:
            with site.client("unix", r.address) as client:
                assert _echo_through(client, b"let in") == b"let in"
            assert r.wait_records(1)[0].end == "closed"


def test_bad_allow_rule_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="uid"):
        Relay("tcp://127.0.0.1:0", "tcp://127.0.0.1:1", allow={"uid:me"})


# -- Unix socket mode -------------------------------------------------------------------------
@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize(("mode", "expected"), [(None, 0o600), (0o660, 0o660)])
def test_unix_listener_mode(site: Site, mode: int | None, expected: int) -> None:
    tl, taddr = site.target("tcp")
    path = site.path("mode")
    options = {} if mode is None else {"mode": mode}
    with tl, running_relay(f"unix://{path}", taddr, **options):
        assert stat.S_IMODE(os.stat(path).st_mode) == expected
    assert not os.path.exists(path), "the relay removes its socket file when it stops"


# -- back-pressure ----------------------------------------------------------------------------
@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("workers", [1, 2])
def test_back_pressure_at_the_connection_limit(site: Site, workers: int) -> None:
    """The limit is the whole relay's: with two workers, still two connections."""
    tl, taddr = site.target("tcp")
    with (
        EchoServer(tl) as echo,
        running_relay("tcp://127.0.0.1:0", taddr, workers=workers, max_connections=2) as relay,
    ):
        first = [hvsock.connect(relay.address) for _ in range(2)]
        for c in first:
            c.sendall(b"x")
            assert recv_exactly(c, 1) == b"x"
        # The third is queued in the backlog, not accepted and not dropped. No fixed
        # wait decides it: once the kernel has it queued, a round trip through every
        # first connection makes the relay's loops go round (and a loop still watching
        # its listener would take the third in that round); after that it is still
        # queued and the counters still say two.
        third = hvsock.connect(relay.address)
        third.sendall(b"y")
        port = relay.address.port
        wait_for(lambda: _accept_queue(port) == 1, what="the third in the accept queue")
        for c in first:
            c.sendall(b"r")
            assert recv_exactly(c, 1) == b"r"
        assert _accept_queue(port) == 1
        assert relay.relay.stats().accepted == 2
        assert echo.accepted == 2
        first[0].close()
        # A slot frees: the third is accepted and served, its early bytes intact.
        assert recv_exactly(third, 1) == b"y"
        assert echo.accepted == 3
        for c in (first[1], third):
            c.shutdown(socket.SHUT_WR)
            assert recv_until_eof(c) == b""
            c.close()
        relay.wait_records(3)


def _accept_queue(port: int) -> int:
    """Connections waiting in the accept queue of the IPv4 TCP listener on *port*.

    For a listening socket /proc/net/tcp's rx_queue field is the accept backlog.
    """
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, state, queues = fields[1], fields[3], fields[4]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                return int(queues.split(":")[1], 16)
    raise AssertionError(f"no TCP listener on port {port} in /proc/net/tcp")


# -- idle timeout -----------------------------------------------------------------------------
@pytest.mark.usefixtures("fd_baseline")
def test_idle_timeout_closes_a_silent_connection(site: Site) -> None:
    tl, taddr = site.target("tcp")
    # Pauses of 0.05 s against a 1.5 s timeout: a margin a busy machine cannot eat.
    with (
        EchoServer(tl),
        running_relay("tcp://127.0.0.1:0", taddr, idle_timeout=1.5) as relay,
        hvsock.connect(relay.address) as busy,
        hvsock.connect(relay.address) as idle,
    ):
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:  # busy keeps talking past the timeout
            busy.sendall(b"p")
            assert recv_exactly(busy, 1) == b"p"
            time.sleep(0.05)
        assert _sees_reset_or_eof(idle) == "eof"
        records = relay.wait_records(1)
        assert [r.end for r in records] == ["idle timeout"]
        busy.sendall(b"still here")
        assert recv_exactly(busy, 10) == b"still here"


# -- stopping ---------------------------------------------------------------------------------
@pytest.mark.usefixtures("fd_baseline")
def test_graceful_stop_lets_a_connection_finish(site: Site) -> None:
    tl, taddr = site.target("tcp")
    with EchoServer(tl), running_relay("tcp://127.0.0.1:0", taddr) as relay:
        with hvsock.connect(relay.address) as client:
            client.sendall(b"a")
            assert recv_exactly(client, 1) == b"a"
            relay.relay.request_stop(grace=20)
            # No new connections...
            wait_for(lambda: _refused(relay.address), what="the listener closing")
            # ...but the one in flight still works, and ends normally.
            client.sendall(b"b")
            assert recv_exactly(client, 1) == b"b"
            client.shutdown(socket.SHUT_WR)
            assert recv_until_eof(client) == b""
        assert relay.relay._served.wait(10)
        # A probe above may have slipped in before the listener closed; the
        # client's connection is the one that carried "a" and "b" each way.
        records = [r for r in relay.wait_records(1) if r.bytes_up == 2]
    assert len(records) == 1
    assert records[0].bytes_down == 2
    assert records[0].end == "closed"


def _refused(address: hvsock.Address) -> bool:
    try:
        hvsock.connect(address, timeout=1).close()
    except hvsock.NothingListeningError:
        return True
    except hvsock.ConnectionResetByPeerError:
        # The probe reached the backlog just before the listener closed, and the
        # kernel reset it: the close is under way, and the next probe is refused.
        pass
    return False


@pytest.mark.usefixtures("fd_baseline")
def test_stop_cuts_connections_after_the_grace_period(site: Site) -> None:
    tl, taddr = site.target("tcp")
    with EchoServer(tl), running_relay("tcp://127.0.0.1:0", taddr) as relay:
        client = hvsock.connect(relay.address)
        with client:
            client.sendall(b"a")
            assert recv_exactly(client, 1) == b"a"
            start = time.monotonic()
            relay.relay.stop(grace=0.2, timeout=10)
            assert time.monotonic() - start < 5
            assert _sees_reset_or_eof(client) in ("reset", "eof")
        (record,) = relay.wait_records(1)
    assert record.end == "stopped"


def test_start_failure_leaves_nothing_open(site: Site, fd_baseline: None) -> None:
    tl, taddr = site.target("tcp")
    with tl:
        taken = hvsock.sockets.listener_address(tl, "tcp://127.0.0.1:0")
        relay = Relay(taken, taddr)
        with pytest.raises(hvsock.AddressInUseError):
            relay.start()


def test_started_but_never_served_relay_stops_cleanly(site: Site, fd_baseline: None) -> None:
    tl, taddr = site.target("tcp")
    path = site.path("idle")
    with tl:
        relay = Relay(f"unix://{path}", taddr)
        relay.start()
        assert os.path.exists(path)
        relay.stop(timeout=5)
    assert not os.path.exists(path)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_connections", 0),
        ("idle_timeout", -1),
        ("connect_timeout", 0),
        ("grace", -1),
        ("chunk_size", 10),
        ("data_path", "teleport"),
        ("buffer_size", 0),
        ("busy_poll", -1),
        ("busy_poll", 1.0),
    ],
)
def test_bad_settings_are_rejected(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option.split("_")[0]):
        Relay("tcp://127.0.0.1:0", "tcp://127.0.0.1:1", **{option: value})


def test_record_text_and_dict() -> None:
    record = ConnectionRecord(
        3,
        "tcp://127.0.0.1:5",
        "unix:///x",
        10,
        20,
        0.5,
        "target reset",
        "ECONNRESET: Connection reset by peer",
    )
    assert str(record) == (
        "#3 tcp://127.0.0.1:5 -> unix:///x: target reset, up 10 B, "
        "down 20 B, 0.500 s (ECONNRESET: Connection reset by peer)"
    )
    assert record.as_dict()["bytes_down"] == 20
    assert set(record.as_dict()) == {
        "id",
        "peer",
        "target",
        "bytes_up",
        "bytes_down",
        "duration",
        "end",
        "error",
    }


# -- the command ------------------------------------------------------------------------------
class RelayProcess:
    """``hvsock relay`` as a child process; stderr read line by line in a thread."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_line(self, predicate: Callable[[str], bool], timeout: float = 20) -> str:
        with self._cond:
            found: list[str] = []

            def seen() -> bool:
                found[:] = [line for line in self.lines if predicate(line)]
                return bool(found) or self.proc.poll() is not None

            self._cond.wait_for(seen, timeout)
            assert found, f"no such line within {timeout} s; stderr: {self.lines}"
            return found[0]

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        status = self.proc.wait(20)
        self._reader.join(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return status


@pytest.mark.usefixtures("fd_baseline")
def test_cli_relay_json_log_and_graceful_sigterm(
    site: Site, hvsock_cmd: list[str], short_tmp: Path
) -> None:
    tl, taddr = site.target("unix")
    ready = short_tmp / "ready.json"
    with EchoServer(tl):
        proc = RelayProcess(
            [
                *hvsock_cmd,
                "relay",
                "tcp://127.0.0.1:0",
                str(taddr),
                "--json",
                "--ready-file",
                str(ready),
                "--grace",
                "20",
            ]
        )
        try:
            line = json.loads(proc.wait_line(lambda s: '"listening"' in s))
            address = line["listen"]
            assert json.loads(ready.read_text())["listen"] == address
            with hvsock.connect(address) as c1:
                assert _echo_through(c1, b"one") == b"one"
            record = json.loads(proc.wait_line(lambda s: '"connection"' in s))
            assert record["end"] == "closed"
            assert (record["bytes_up"], record["bytes_down"]) == (3, 3)
            assert record["peer"].startswith("tcp://127.0.0.1:")
            assert record["duration"] >= 0
            # SIGTERM with a connection open: it keeps working until it ends.
            c2 = hvsock.connect(address)
            c2.sendall(b"x")
            assert recv_exactly(c2, 1) == b"x"
            proc.proc.send_signal(signal.SIGTERM)
            proc.wait_line(lambda s: "stopping" in s)
            c2.sendall(b"y")
            assert recv_exactly(c2, 1) == b"y"
            c2.shutdown(socket.SHUT_WR)
            assert recv_until_eof(c2) == b""
            c2.close()
            assert proc.proc.wait(20) == 0
        finally:
            proc.close()


@pytest.mark.usefixtures("fd_baseline")
def test_cli_relay_text_log_and_unix_mode(site: Site, hvsock_cmd: list[str]) -> None:
    tl, taddr = site.target("tcp")
    path = site.path("cli")
    with tl:
        # SIGINT below: at its default in the child even if this run ignores it.
        proc = RelayProcess(
            with_default_signals(
                [*hvsock_cmd, "relay", f"unix://{path}", str(taddr), "--mode", "640"]
            )
        )
        try:
            proc.wait_line(lambda s: s.startswith("hvsock: listening on unix://"))
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
            tl.close()  # now the target is down
            with hvsock.connect(f"unix://{path}") as c:
                assert _sees_reset_or_eof(c) == "eof"
            line = proc.wait_line(lambda s: "target down" in s)
            assert "nothing is listening" in line
            proc.proc.send_signal(signal.SIGINT)
            assert proc.proc.wait(20) == 0
            assert not os.path.exists(path)
        finally:
            proc.close()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["relay", "tcp://127.0.0.1:0"], "required"),
        (["relay", "tcp://127.0.0.1:0", "ftp://x"], "unknown address scheme"),
        (
            ["relay", "tcp://127.0.0.1:0", "tcp://127.0.0.1:1", "--max-connections", "0"],
            "max_connections",
        ),
        (["relay", "tcp://127.0.0.1:0", "tcp://127.0.0.1:1", "--mode", "999"], "octal"),
        (["relay", "tcp://127.0.0.1:0", "tcp://127.0.0.1:1", "--chunk-size", "lots"], "size"),
        (["relay", "tcp://127.0.0.1:0", "tcp://127.0.0.1:1", "--allow", "uid:x"], "uid"),
    ],
)
def test_cli_relay_bad_arguments_exit_2(argv: list[str], fragment: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(argv, out=out, err=err) == cli.EXIT_USAGE
    assert fragment in err.getvalue()


def test_cli_allow_rules_digits_are_cids() -> None:
    parsed = cli.build_parser().parse_args(
        [
            "relay",
            "vsock://any:1",
            "tcp://127.0.0.1:1",
            "--allow",
            "2",
            "--allow",
            "127.0.0.1",
            "--allow",
            "uid:1000",
            "--busy-poll",
            "0",
        ]
    )
    assert parsed.allow == [2, "127.0.0.1", "uid:1000"]
    assert parsed.busy_poll == 0
    relay = Relay(parsed.listen, parsed.target, allow=parsed.allow)
    assert relay.allow == frozenset({2, "127.0.0.1", "uid:1000"})


def test_cli_relay_address_in_use_exits_7(site: Site) -> None:
    tl, taddr = site.target("tcp")
    with tl:
        out, err = io.StringIO(), io.StringIO()
        status = cli.main(["relay", str(taddr), "tcp://127.0.0.1:1"], out=out, err=err)
    assert status == cli.EXIT_IN_USE
    assert "in use" in err.getvalue()


def test_library_never_prints(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    tl, taddr = site.target("tcp")
    with EchoServer(tl), running_relay("tcp://127.0.0.1:0", taddr) as relay:
        with hvsock.connect(relay.address) as c:
            assert _echo_through(c, b"quiet") == b"quiet"
        relay.wait_records(1)
    assert capsys.readouterr() == ("", "")


def test_relay_function_runs_until_sigterm(site: Site, short_tmp: Path) -> None:
    tl, taddr = site.target("tcp")
    ready = short_tmp / "r.json"
    code = (
        "import sys, hvsock._relay as r; "
        "r.relay('tcp://127.0.0.1:0', sys.argv[1], ready_file=sys.argv[2])"
    )
    with tl, contextlib.ExitStack() as stack:
        proc = subprocess.Popen([sys.executable, "-c", code, str(taddr), str(ready)])
        stack.callback(lambda: proc.poll() is None and proc.kill())
        wait_for(ready.exists, 20, "the ready file")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


@pytest.mark.usefixtures("fd_baseline")
def test_a_second_shorter_stop_request_cuts_at_once(site: Site) -> None:
    """A second SIGTERM (or stop(grace=0)) must not wait out the first one's grace."""
    tl, taddr = site.target("tcp")
    with EchoServer(tl), running_relay("tcp://127.0.0.1:0", taddr, grace=30) as relay:
        client = hvsock.connect(relay.address)
        with client:
            client.sendall(b"a")
            assert recv_exactly(client, 1) == b"a"
            relay.relay.request_stop()  # grace 30 s: the connection may go on
            wait_for(lambda: _refused(relay.address), what="the listener closing")
            start = time.monotonic()
            relay.relay.request_stop(0)
            assert relay.relay._served.wait(10)
            assert time.monotonic() - start < 5
            assert _sees_reset_or_eof(client) in ("reset", "eof")


# -- defect 1: a VMM whose OK reply comes in pieces -------------------------------------------
@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize(("chunk", "pause"), [(1, 0.0), (1, 0.01), (4, 0.05)])
def test_relay_takes_a_hybrid_reply_split_over_writes(
    short_tmp: Path, chunk: int, pause: float
) -> None:
    with (
        HybridVsockMuxer(str(short_tmp / "vm.sock"), reply_chunk=chunk, reply_pause=pause) as muxer,
        muxer.guest_listen(52) as guest,
        EchoServer(guest),
        running_relay("tcp://127.0.0.1:0", muxer.address(52)) as relay,
        hvsock.connect(relay.address) as client,
    ):
        assert _echo_through(client, b"split reply" * 1000) == b"split reply" * 1000
