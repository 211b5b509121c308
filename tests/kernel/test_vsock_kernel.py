"""The library over the real kernel socket core: AF_VSOCK to CID 1 via vsock_loopback.

Cases mirror Linux's tools/testing/vsock/vsock_test.c where they overlap: reset
with no listener, a bound-but-not-listening peer, client close / server close,
many simultaneous connections, payloads checked by hash.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import socket
import threading
import time

import pytest

import hvsock
import hvsock.sockets

from ..attempts import connects_to
from ._support import (
    CID_LOCAL,
    SO_VM_SOCKETS_BUFFER_MAX_SIZE,
    SO_VM_SOCKETS_BUFFER_MIN_SIZE,
    SO_VM_SOCKETS_BUFFER_SIZE,
    Listening,
    connect_timeout_of,
    get_u64,
    hash_until_eof,
    listening,
    open_fds,
    payload,
    recv_until_eof,
    send_then_close_write,
    sha256,
    started,
    target,
    unused_port,
    vsock_socket,
)

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]

MiB = 1024 * 1024


def test_only_the_loopback_transport_is_loaded_and_the_local_cid_is_1() -> None:
    assert hvsock.sockets.loaded_vsock_transports() == ["vsock_loopback"]
    assert hvsock.sockets.vsock_loopback_loaded()
    assert hvsock.sockets.local_cid() == CID_LOCAL


# -- data -------------------------------------------------------------------------------


def _echo_one(server: Listening) -> tuple[str, int]:
    """Accept one connection, echo it until EOF, pass the EOF on; return what came in."""
    digest = hashlib.sha256()
    total = 0
    with server.accept() as conn:
        conn.settimeout(60)
        for _ in range(1 << 20):  # far more reads than 16 MiB needs; the EOF ends it
            data = conn.recv(256 * 1024)
            if not data:
                break
            digest.update(data)
            total += len(data)
            conn.sendall(data)
        hvsock.close_write(conn)
    return digest.hexdigest(), total


@pytest.mark.timeout(120)
def test_echo_of_16_mib_keeps_every_byte(vsock_listener: Listening) -> None:
    data = payload(16 * MiB, seed=1)
    server = started(_echo_one, vsock_listener)
    with hvsock.connect(target(vsock_listener.port), timeout=10) as client:
        client.settimeout(60)
        sender = started(send_then_close_write, client, data)
        echoed = hash_until_eof(client, limit=len(data))
        sender.finish(60)
    received = server.finish(60)
    assert received == (sha256(data), len(data)), "the server got other bytes than were sent"
    assert echoed == (sha256(data), len(data)), "the echo differs from what was sent"


def test_many_simultaneous_connections_each_carry_their_own_payload(
    vsock_listener: Listening,
) -> None:
    count = 100
    payloads = [payload(16 * 1024 + i, seed=1000 + i) for i in range(count)]
    accepted: list[socket.socket] = []
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [conn.close() for conn in accepted])

        def accept_all() -> None:
            for _ in range(count):
                accepted.append(vsock_listener.accept())

        acceptor = started(accept_all)
        clients = [
            stack.enter_context(hvsock.connect(target(vsock_listener.port), timeout=10))
            for _ in range(count)
        ]
        acceptor.finish(30)

        # All of them are open at once, and each is its own connection.
        assert len(accepted) == count
        client_ports = sorted(c.getsockname()[1] for c in clients)
        assert len(set(client_ports)) == count
        # A client's own name keeps CID any; the server sees it as CID 1.
        assert sorted(s.getpeername()[1] for s in accepted) == client_ports
        assert {s.getpeername()[0] for s in accepted} == {CID_LOCAL}

        for client, data in zip(clients, payloads, strict=True):
            client.sendall(data)  # fits the 256 KiB vsock buffer: never blocks here
            hvsock.close_write(client)
        for conn in accepted:
            got = recv_until_eof(conn, limit=64 * 1024)
            conn.sendall(hashlib.sha256(got).digest() + got[::-1])
            conn.close()
        for client, data in zip(clients, payloads, strict=True):
            reply = recv_until_eof(client, limit=64 * 1024)
            assert reply == hashlib.sha256(data).digest() + data[::-1]


# -- failures that must be quick and clear ------------------------------------------------


def _assert_nothing_listening(port: int) -> None:
    start = time.monotonic()
    with pytest.raises(hvsock.NothingListeningError) as info:
        hvsock.connect(target(port), timeout=10)
    elapsed = time.monotonic() - start
    # A behaviour check, not a benchmark: the reset comes back at once, no hanging on.
    assert elapsed < 2.0, f"connect took {elapsed:.2f} s to report nothing listening"
    error = info.value
    assert isinstance(error, ConnectionRefusedError)
    assert error.errno in (errno.ECONNRESET, errno.ECONNREFUSED)
    assert f"port {port}" in str(error)
    assert f"CID {CID_LOCAL}" in str(error)
    assert isinstance(error.__cause__, OSError)


def test_connect_with_nothing_listening_fails_at_once_and_says_where() -> None:
    _assert_nothing_listening(unused_port())


def test_connect_to_a_bound_but_not_listening_socket_fails_the_same_way() -> None:
    with vsock_socket() as bound:
        bound.bind((hvsock.sockets.CID_ANY, hvsock.sockets.PORT_ANY))
        _assert_nothing_listening(bound.getsockname()[1])


def test_listen_on_a_port_in_use_is_address_in_use(vsock_listener: Listening) -> None:
    with pytest.raises(hvsock.AddressInUseError, match=str(vsock_listener.port)):
        hvsock.listen(f"vsock://any:{vsock_listener.port}")


def _send_until_it_fails(sock: socket.socket) -> OSError:
    """Send one byte at a time until the kernel reports the peer gone (bounded)."""
    sock.settimeout(5)
    deadline = time.monotonic() + 30
    for _ in range(10_000):
        try:
            sock.send(b"x")
        except OSError as exc:
            return exc
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    raise AssertionError("sends kept succeeding for 30 s after the peer closed")


@pytest.mark.parametrize("closer", ["client", "server"])
def test_after_the_peer_closes_sends_fail_but_buffered_data_stays_readable(
    vsock_listener: Listening, closer: str
) -> None:
    last_words = b"sent just before close"
    with (
        hvsock.connect(target(vsock_listener.port), timeout=10) as client,
        vsock_listener.accept() as server,
    ):
        closing, survivor = (client, server) if closer == "client" else (server, client)
        closing.sendall(last_words)
        closing.close()

        error = _send_until_it_fails(survivor)
        assert isinstance(error, (BrokenPipeError, ConnectionResetError)), error
        # The bytes that arrived before the close are still there, then EOF.
        assert recv_until_eof(survivor, limit=1024, timeout=10) == last_words
        assert survivor.recv(1) == b""


def test_close_write_sends_eof_and_the_other_way_keeps_flowing(vsock_listener: Listening) -> None:
    with (
        hvsock.connect(target(vsock_listener.port), timeout=10) as client,
        vsock_listener.accept() as server,
    ):
        server.sendall(b"server speaks first")
        hvsock.close_write(server)
        assert recv_until_eof(client, limit=1024) == b"server speaks first"
        # The server only shut its write side: the client can still send to it.
        more = payload(2 * MiB, seed=7)
        sender = started(send_then_close_write, client, more)
        assert hash_until_eof(server, limit=len(more)) == (sha256(more), len(more))
        sender.finish(30)
        # close_write again, on a half-closed or gone peer, is not an error.
        hvsock.close_write(server)
        hvsock.close_write(client)


# -- connect options -----------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0.5, 3.5, 10.0, 42.25])
def test_connect_timeout_is_set_as_the_kernel_option(
    vsock_listener: Listening, timeout: float
) -> None:
    with (
        hvsock.connect(target(vsock_listener.port), timeout=timeout) as client,
        vsock_listener.accept(),
    ):
        # The kernel keeps it in jiffies: allow one tick (HZ >= 100).
        assert connect_timeout_of(client) == pytest.approx(timeout, abs=0.011)
        # Our own deadline is gone: the socket handed back blocks.
        assert client.gettimeout() is None


def test_default_connect_timeout_and_none(vsock_listener: Listening) -> None:
    with hvsock.connect(target(vsock_listener.port)) as client, vsock_listener.accept():
        assert connect_timeout_of(client) == pytest.approx(
            hvsock.sockets.DEFAULT_CONNECT_TIMEOUT, abs=0.011
        )
    with (
        hvsock.connect(target(vsock_listener.port), timeout=None) as client,
        vsock_listener.accept(),
    ):
        # None leaves the kernel's own default (2 s) alone.
        assert connect_timeout_of(client) == pytest.approx(2.0, abs=0.011)
        assert client.gettimeout() is None


def test_retries_with_nothing_listening_wait_then_raise() -> None:
    port = unused_port()
    start = time.monotonic()
    with (
        connects_to((CID_LOCAL, port)) as attempts,
        pytest.raises(hvsock.NothingListeningError, match=f"port {port}"),
    ):
        hvsock.connect(target(port), timeout=10, retries=3, retry_wait=0.2)
    elapsed = time.monotonic() - start
    assert len(attempts.times) == 4  # the first and three retries, then it gave up
    pauses = [b - a for a, b in zip(attempts.times[:-1], attempts.times[1:], strict=True)]
    # retry_wait, doubling: each pause at least its wait (a sleep never ends early).
    # Only a wide bound above, against a hang: a busy machine stretches sleeps, and
    # the schedule's values are checked exactly in tests/unit/test_retry_waits.py.
    for pause, wait in zip(pauses, (0.2, 0.4, 0.8), strict=True):
        assert pause >= wait - 0.01, f"pauses {pauses}, expected 0.2, 0.4, 0.8"
    assert elapsed < 1.4 + 30, f"took {elapsed:.2f} s, expected ~1.4 s"


def test_a_retry_succeeds_when_the_listener_appears_midway() -> None:
    port = unused_port()
    stop = threading.Event()  # lets the server go at once if the client side fails

    def late_server() -> float | None:
        # Listen once the second attempt began: the first surely found nobody, so a
        # connect that does not retry fails here whatever the machine's speed.
        if not attempts.reached(2):
            return None
        up_at = time.monotonic()
        with listening(f"vsock://any:{port}") as server:
            server.sock.settimeout(0.2)  # a poll interval: the loop is bounded below
            for _ in range(300):  # 60 s at most
                if stop.is_set():
                    return None
                try:
                    conn, _ = server.sock.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.sendall(b"late but here")
                return up_at
        raise AssertionError("nobody connected within 60 s")

    with connects_to((CID_LOCAL, port)) as attempts:
        server = started(late_server)
        try:
            with hvsock.connect(target(port), timeout=10, retries=20, retry_wait=0.05) as client:
                connected_at = time.monotonic()
                assert recv_until_eof(client, limit=1024, timeout=20) == b"late but here"
            up_at = server.finish(60)
        finally:
            stop.set()
            attempts.stop()
            server.join(5)
    assert up_at is not None
    assert connected_at >= up_at, "connected before anyone listened"
    # Waits are 0.05, 0.1, 0.2, 0.4, ...: the first attempt after the listener came up
    # wins (or the one under way as it came up, and then none began after it).
    assert sum(t > up_at for t in attempts.times) <= 1, (up_at, attempts.times)


# -- buffer sizes --------------------------------------------------------------------------


def test_buffer_size_on_connect_and_listen_is_applied() -> None:
    with listening(buffer_size=64 * 1024) as small:
        assert get_u64(small.sock, SO_VM_SOCKETS_BUFFER_SIZE) == 64 * 1024
        with (
            hvsock.connect(target(small.port), timeout=10, buffer_size=96 * 1024) as client,
            small.accept() as conn,
        ):
            assert get_u64(client, SO_VM_SOCKETS_BUFFER_SIZE) == 96 * 1024
            # The kernel gives an accepted socket its listener's buffer size.
            assert get_u64(conn, SO_VM_SOCKETS_BUFFER_SIZE) == 64 * 1024


def test_set_buffer_size_widens_the_kernel_bounds() -> None:
    with vsock_socket() as sock:
        default_max = get_u64(sock, SO_VM_SOCKETS_BUFFER_MAX_SIZE)
        big = 4 * default_max
        hvsock.sockets.set_buffer_size(sock, big)
        assert get_u64(sock, SO_VM_SOCKETS_BUFFER_SIZE) == big
        assert get_u64(sock, SO_VM_SOCKETS_BUFFER_MAX_SIZE) >= big
        default_min = get_u64(sock, SO_VM_SOCKETS_BUFFER_MIN_SIZE)
        small = max(1, default_min // 2)
        hvsock.sockets.set_buffer_size(sock, small)
        assert get_u64(sock, SO_VM_SOCKETS_BUFFER_SIZE) == small
        assert get_u64(sock, SO_VM_SOCKETS_BUFFER_MIN_SIZE) <= small


def test_ensure_buffer_size_only_grows_a_vsock_buffer() -> None:
    from hvsock._transports.vsock import ensure_buffer_size

    with vsock_socket() as sock:
        default = get_u64(sock, SO_VM_SOCKETS_BUFFER_SIZE)
        ensure_buffer_size(sock, default // 2)  # already that big: unchanged
        assert get_u64(sock, SO_VM_SOCKETS_BUFFER_SIZE) == default
        ensure_buffer_size(sock, 8 * default)  # past the default maximum too
        assert get_u64(sock, SO_VM_SOCKETS_BUFFER_SIZE) == 8 * default


@pytest.mark.timeout(90)
def test_data_flows_with_big_buffers_on_both_ends() -> None:
    size = 1 * MiB
    data = payload(4 * MiB, seed=3)
    with listening(buffer_size=size) as server_side:
        server = started(_echo_one, server_side)
        with hvsock.connect(target(server_side.port), timeout=10, buffer_size=size) as client:
            assert get_u64(client, SO_VM_SOCKETS_BUFFER_SIZE) == size
            sender = started(send_then_close_write, client, data)
            assert hash_until_eof(client, limit=len(data)) == (sha256(data), len(data))
            sender.finish(60)
        assert server.finish(60) == (sha256(data), len(data))


# -- no descriptor left behind -------------------------------------------------------------


def test_failure_paths_leave_no_descriptor_open(vsock_listener: Listening) -> None:
    """The autouse fd check covers every test; this one hammers the error paths."""
    port = unused_port()
    before = open_fds()
    for _ in range(20):
        with pytest.raises(hvsock.NothingListeningError):
            hvsock.connect(target(port), timeout=5)
        with pytest.raises(hvsock.NothingListeningError):
            hvsock.connect(
                target(port), timeout=5, retries=1, retry_wait=0.001, buffer_size=64 * 1024
            )
        with pytest.raises(hvsock.AddressInUseError):
            hvsock.listen(f"vsock://any:{vsock_listener.port}")
        with pytest.raises(hvsock.AddressInUseError):
            hvsock.listen(f"vsock://any:{vsock_listener.port}", buffer_size=64 * 1024)
        with pytest.raises(hvsock.AddressError):
            hvsock.listen(f"vsock://{CID_LOCAL + 40}:{port}")  # not our CID: EADDRNOTAVAIL
        with pytest.raises(hvsock.ArgumentError):
            hvsock.connect(target(port), timeout=-1)
    assert open_fds() == before


def test_vsock_listen_on_any_port_here() -> None:
    """The listener's address as the kernel chose it (moved from the host tier, which
    makes no real AF_VSOCK socket)."""
    with hvsock.listen("vsock://any:any") as listener:
        actual = hvsock.sockets.listener_address(listener, "vsock://any:any")
        assert isinstance(actual, hvsock.VsockAddress)
        assert actual.cid == hvsock.sockets.CID_ANY
        assert 1024 <= actual.port < hvsock.sockets.PORT_ANY
