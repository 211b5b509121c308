"""Sockets over the transports this machine can run for real: TCP, Unix, hybrid vsock.

Hybrid vsock runs against hvsock.testing.HybridVsockMuxer, an emulated VMM that
carries real bytes over real Unix sockets.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import hvsock
import hvsock.sockets
from hvsock.testing import HybridVsockMuxer

from ..attempts import connects_to

# A "server side" is (make a listening socket, address a client dials).
ServerFactory = Callable[[], tuple[socket.socket, hvsock.Address]]


@pytest.fixture
def muxer(short_tmp: Path) -> Iterator[HybridVsockMuxer]:
    with HybridVsockMuxer(str(short_tmp / "vm.sock")) as m:
        yield m


@pytest.fixture(params=["tcp", "unix", "hybrid"])
def server_factory(request: pytest.FixtureRequest, short_tmp: Path) -> Iterator[ServerFactory]:
    kind = request.param
    cleanups: list[Callable[[], None]] = []

    def make() -> tuple[socket.socket, hvsock.Address]:
        if kind == "tcp":
            listener = hvsock.listen("tcp://127.0.0.1:0")
            return listener, hvsock.sockets.listener_address(listener, "tcp://127.0.0.1:0")
        if kind == "unix":
            addr = hvsock.UnixAddress(str(short_tmp / "s.sock"))
            listener = hvsock.listen(addr)
            cleanups.append(lambda: hvsock.sockets.remove_socket_file(addr))
            return listener, addr
        m = HybridVsockMuxer(str(short_tmp / "vm.sock"))
        cleanups.append(m.close)
        return m.guest_listen(5000), m.address(5000)

    yield make
    for cleanup in reversed(cleanups):
        cleanup()


def _echo_once(listener: socket.socket) -> threading.Thread:
    def run() -> None:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


@pytest.mark.usefixtures("fd_baseline")
def test_echo_4mib_sha256_with_half_close(server_factory: ServerFactory) -> None:
    listener, addr = server_factory()
    payload = os.urandom(4 * 1024 * 1024)
    with listener:
        server = _echo_once(listener)
        with hvsock.connect(addr, timeout=5) as sock:
            received: list[bytes] = []
            reader = threading.Thread(target=lambda: received.append(_recv_all(sock)))
            reader.start()
            sock.sendall(payload)
            hvsock.close_write(sock)
            reader.join(30)
        server.join(30)
    assert hashlib.sha256(received[0]).hexdigest() == hashlib.sha256(payload).hexdigest()


@pytest.mark.usefixtures("fd_baseline")
def test_peer_half_close_keeps_our_direction_open(server_factory: ServerFactory) -> None:
    """The server says hello and shuts its write side, then still reads all we send."""
    listener, addr = server_factory()
    got: list[bytes] = []

    def server() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"hello")
            conn.shutdown(socket.SHUT_WR)
            got.append(_recv_all(conn))

    with listener:
        thread = threading.Thread(target=server, daemon=True)
        thread.start()
        with hvsock.connect(addr, timeout=5) as sock:
            assert _recv_all(sock) == b"hello"  # EOF after the greeting...
            sock.sendall(b"x" * 100_000)  # ...yet our direction still works
            hvsock.close_write(sock)
            thread.join(10)
    assert got == [b"x" * 100_000]


@pytest.mark.usefixtures("fd_baseline")
def test_connect_returns_blocking_socket(server_factory: ServerFactory) -> None:
    listener, addr = server_factory()
    with listener, hvsock.connect(addr, timeout=2) as sock:
        assert sock.gettimeout() is None
        assert isinstance(sock, socket.socket)


@pytest.mark.usefixtures("fd_baseline")
def test_nothing_listening_is_clear_and_fast(server_factory: ServerFactory) -> None:
    listener, addr = server_factory()
    listener.close()
    if isinstance(addr, hvsock.HybridAddress):
        pass  # the muxer still runs; the guest listener is gone
    elif isinstance(addr, hvsock.UnixAddress):
        hvsock.sockets.remove_socket_file(addr)
    start = time.monotonic()
    with pytest.raises(hvsock.NothingListeningError) as info:
        hvsock.connect(addr, timeout=5)
    assert time.monotonic() - start < 4
    assert "listening" in str(info.value) or "listens" in str(info.value)
    assert isinstance(info.value, ConnectionRefusedError)


@pytest.mark.usefixtures("fd_baseline")
def test_retries_wait_for_a_late_listener(short_tmp: Path) -> None:
    addr = hvsock.UnixAddress(str(short_tmp / "late.sock"))
    holder: list[socket.socket] = []

    def start_late() -> None:
        # Listen once the second attempt began: the first surely found nobody, so a
        # connect that does not retry fails here whatever the machine's speed.
        if attempts.reached(2):
            holder.append(hvsock.listen(addr))

    with connects_to(addr.path) as attempts:
        thread = threading.Thread(target=start_late)
        thread.start()
        try:
            with hvsock.connect(addr, timeout=1, retries=400, retry_wait=0.05) as sock:
                assert sock.fileno() >= 0
        finally:
            attempts.stop()  # the connect gave up early: the thread need not wait
            thread.join(60)
            for s in holder:
                s.close()
            hvsock.sockets.remove_socket_file(addr)


@pytest.mark.usefixtures("fd_baseline")
def test_retries_give_up_after_the_count(short_tmp: Path) -> None:
    addr = hvsock.UnixAddress(str(short_tmp / "never.sock"))
    with connects_to(addr.path) as attempts, pytest.raises(hvsock.NothingListeningError):
        hvsock.connect(addr, timeout=1, retries=3, retry_wait=0.05)
    # Retries really happened, and stopped; each pause at least its wait (the exact
    # schedule is tests/unit/test_retry_waits.py's: a busy machine stretches sleeps).
    assert len(attempts.times) == 4
    pauses = [b - a for a, b in zip(attempts.times[:-1], attempts.times[1:], strict=True)]
    assert all(p >= w - 0.005 for p, w in zip(pauses, (0.05, 0.1, 0.2), strict=True)), pauses


def test_retries_do_not_retry_permanent_errors() -> None:
    start = time.monotonic()
    with pytest.raises(hvsock.UnsupportedError):
        hvsock.connect("hvsock://parent/5000", retries=1, retry_wait=30)
    # A retry would wait 30 s; the margin is for a loaded machine.
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"retries": -1}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"retry_wait": -0.1}, "retry_wait"),
        ({"buffer_size": 0}, "buffer size"),
        ({"buffer_size": True}, "buffer size"),
    ],
)
def test_bad_connect_arguments(kwargs: dict[str, object], fragment: str, short_tmp: Path) -> None:
    with pytest.raises(hvsock.ArgumentError, match=fragment):
        hvsock.connect(f"unix://{short_tmp}/x.sock", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"backlog": -1}, "backlog"),
        ({"mode": 0o1777}, "mode"),
        ({"mode": "600"}, "mode"),
        ({"buffer_size": -5}, "buffer size"),
    ],
)
def test_bad_listen_arguments(kwargs: dict[str, object], fragment: str, short_tmp: Path) -> None:
    with pytest.raises(hvsock.ArgumentError, match=fragment):
        hvsock.listen(f"unix://{short_tmp}/x.sock", **kwargs)  # type: ignore[arg-type]
    assert not (short_tmp / "x.sock").exists()


def test_bad_address_text_is_an_address_error() -> None:
    with pytest.raises(hvsock.AddressError, match="vsock://<cid>:<port>"):
        hvsock.connect("vsock://3")


# -- Unix listeners: modes, stale files, never destroying data -------------------------


@pytest.mark.usefixtures("fd_baseline")
def test_unix_listener_is_private_by_default(short_tmp: Path) -> None:
    addr = hvsock.UnixAddress(str(short_tmp / "p.sock"))
    with hvsock.listen(addr):
        assert stat.S_IMODE(os.stat(addr.path).st_mode) == 0o600
    hvsock.sockets.remove_socket_file(addr)
    with hvsock.listen(addr, mode=0o660):
        assert stat.S_IMODE(os.stat(addr.path).st_mode) == 0o660
    hvsock.sockets.remove_socket_file(addr)
    assert not os.path.exists(addr.path)


@pytest.mark.usefixtures("fd_baseline")
def test_stale_socket_file_is_replaced(short_tmp: Path) -> None:
    addr = hvsock.UnixAddress(str(short_tmp / "stale.sock"))
    hvsock.listen(addr).close()  # leaves the file behind, nobody listening
    assert os.path.exists(addr.path)
    with hvsock.listen(addr) as listener, hvsock.connect(addr, timeout=2):
        conn, _ = listener.accept()
        conn.close()
    hvsock.sockets.remove_socket_file(addr)


@pytest.mark.usefixtures("fd_baseline")
def test_live_listener_is_not_stolen(short_tmp: Path) -> None:
    addr = hvsock.UnixAddress(str(short_tmp / "live.sock"))
    with hvsock.listen(addr):
        with pytest.raises(hvsock.AddressInUseError, match="already listens"):
            hvsock.listen(addr)
        assert os.path.exists(addr.path)
    hvsock.sockets.remove_socket_file(addr)


@pytest.mark.usefixtures("fd_baseline")
def test_regular_file_is_never_removed(short_tmp: Path) -> None:
    path = short_tmp / "data.txt"
    path.write_bytes(b"precious")
    with pytest.raises(hvsock.AddressInUseError, match="not a socket"):
        hvsock.listen(hvsock.UnixAddress(str(path)))
    assert path.read_bytes() == b"precious"


@pytest.mark.usefixtures("fd_baseline")
def test_abstract_unix_socket() -> None:
    addr = hvsock.parse_address(f"unix://@hvsock-test-{os.getpid()}")
    with hvsock.listen(addr) as listener:
        _echo_once(listener)
        with hvsock.connect(addr, timeout=2) as sock:
            sock.sendall(b"abc")
            hvsock.close_write(sock)
            assert _recv_all(sock) == b"abc"


@pytest.mark.usefixtures("fd_baseline")
def test_tcp_listener_port_zero_reports_real_port() -> None:
    with hvsock.listen("tcp://127.0.0.1:0") as listener:
        actual = hvsock.sockets.listener_address(listener, "tcp://127.0.0.1:0")
        assert isinstance(actual, hvsock.TcpAddress)
        assert actual.port == listener.getsockname()[1] != 0


@pytest.mark.usefixtures("fd_baseline")
def test_tcp_address_in_use() -> None:
    with hvsock.listen("tcp://127.0.0.1:0") as listener:
        port = listener.getsockname()[1]
        with pytest.raises(hvsock.AddressInUseError, match="already in use"):
            hvsock.listen(f"tcp://127.0.0.1:{port}")


@pytest.mark.usefixtures("fd_baseline")
def test_buffer_size_applies(short_tmp: Path) -> None:
    with hvsock.listen("tcp://127.0.0.1:0", buffer_size=65536) as listener:
        # Linux doubles the value it is given for its own bookkeeping.
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 65536
        port = listener.getsockname()[1]
        with hvsock.connect(f"tcp://127.0.0.1:{port}", buffer_size=32768) as sock:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 32768


# -- hybrid vsock: the handshake against the emulated muxer and broken VMMs ------------


@pytest.mark.usefixtures("fd_baseline")
def test_hybrid_bytes_right_after_ok_are_kept(muxer: HybridVsockMuxer) -> None:
    """A guest that speaks first: its bytes follow OK at once and must not be eaten."""
    listener = muxer.guest_listen(7000)

    def guest() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"GREETING\n")

    with listener:
        thread = threading.Thread(target=guest, daemon=True)
        thread.start()
        with hvsock.connect(muxer.address(7000), timeout=5) as sock:
            assert _recv_all(sock) == b"GREETING\n"
        thread.join(5)


@pytest.mark.usefixtures("fd_baseline")
def test_hybrid_no_guest_listener(muxer: HybridVsockMuxer) -> None:
    with pytest.raises(
        hvsock.NothingListeningError, match="nothing in the guest listens on port 4"
    ):
        hvsock.connect(muxer.address(4), timeout=5)


@pytest.mark.usefixtures("fd_baseline")
def test_hybrid_vmm_socket_missing(short_tmp: Path) -> None:
    with pytest.raises(hvsock.NothingListeningError, match="does not exist"):
        hvsock.connect(hvsock.HybridAddress(str(short_tmp / "none.sock"), 5), timeout=2)


@pytest.mark.usefixtures("fd_baseline")
def test_hybrid_guest_initiated_connections(muxer: HybridVsockMuxer) -> None:
    addr = muxer.address(1234)
    with hvsock.listen(addr) as listener:
        assert listener.getsockname() == f"{muxer.uds_path}_1234"
        assert stat.S_IMODE(os.stat(addr.listen_path).st_mode) == 0o600
        with muxer.guest_connect(1234) as guest:
            conn, _ = listener.accept()
            with conn:
                guest.sendall(b"from guest")
                guest.shutdown(socket.SHUT_WR)
                assert _recv_all(conn) == b"from guest"
    hvsock.sockets.remove_socket_file(addr)
    with pytest.raises(ConnectionResetError):
        muxer.guest_connect(1234)


class FakeVmm:
    """A one-shot VMM socket that answers a CONNECT with fixed bytes (or nothing)."""

    def __init__(self, path: str, reply: bytes | None, close_after: bool = True) -> None:
        self.path = path
        self.reply = reply
        self.close_after = close_after
        self.request = b""
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(5)
            while not self.request.endswith(b"\n"):
                byte = conn.recv(1)
                if not byte:
                    break
                self.request += byte
            if self.reply is not None:
                conn.sendall(self.reply)
            if not self.close_after:
                self.done.wait(5)

    def close(self) -> None:
        self.done.set()
        self.thread.join(5)
        self.listener.close()


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize(
    ("reply", "error", "fragment"),
    [
        (b"NO\n", hvsock.HandshakeError, "instead of 'OK <port>"),
        (b"OK x\n", hvsock.HandshakeError, "instead of 'OK <port>"),
        (b"OK 99999999999\n", hvsock.HandshakeError, "instead of 'OK <port>"),
        (b"A" * 40, hvsock.HandshakeError, "longer than"),
        (b"OK 12", hvsock.HandshakeError, "in the middle of its reply"),
        (b"", hvsock.NothingListeningError, "nothing in the guest listens"),
    ],
)
def test_hybrid_broken_vmm_replies(
    short_tmp: Path, reply: bytes, error: type[Exception], fragment: str
) -> None:
    vmm = FakeVmm(str(short_tmp / "vmm.sock"), reply)
    try:
        with pytest.raises(error, match=fragment):
            hvsock.connect(hvsock.HybridAddress(vmm.path, 52), timeout=3)
        assert vmm.request == b"CONNECT 52\n"
    finally:
        vmm.close()


@pytest.mark.usefixtures("fd_baseline")
def test_hybrid_silent_vmm_times_out(short_tmp: Path) -> None:
    vmm = FakeVmm(str(short_tmp / "vmm.sock"), None, close_after=False)
    try:
        start = time.monotonic()
        with pytest.raises(hvsock.ConnectTimeoutError, match="did not answer CONNECT 52"):
            hvsock.connect(hvsock.HybridAddress(vmm.path, 52), timeout=0.5)
        # Above: a busy machine's margin, still under the 10 s default a timeout
        # that was not passed on would give.
        assert 0.4 < time.monotonic() - start < 8
    finally:
        vmm.close()


def test_muxer_rejects_malformed_connect(muxer: HybridVsockMuxer) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.connect(muxer.uds_path)
        raw.sendall(b"HELLO there\n")
        raw.settimeout(5)
        assert raw.recv(10) == b""  # the muxer hangs up
    deadline = time.monotonic() + 30
    while not muxer.errors and time.monotonic() < deadline:
        time.sleep(0.01)
    assert muxer.errors
    assert "CONNECT" in muxer.errors[0]


# -- families this machine lacks, and vsock listen (never connect) here ---------------


def test_hyperv_on_linux_is_one_clear_error() -> None:
    if hvsock.sockets.has_hyperv():
        pytest.skip("this Python has AF_HYPERV")
    for call in (
        lambda: hvsock.connect("hvsock://parent/5000"),
        lambda: hvsock.listen("hvsock://wildcard/5000"),
    ):
        with pytest.raises(hvsock.UnsupportedError, match="Hyper-V sockets are not available"):
            call()


def test_local_cid_matches_the_device() -> None:
    if not os.path.exists("/dev/vsock"):
        with pytest.raises(hvsock.UnsupportedError):
            hvsock.sockets.local_cid()
        return
    if not os.access("/dev/vsock", os.R_OK):  # root's 0600 device, this run a user
        with pytest.raises(hvsock.TransportUnavailableError, match="run as a user that may"):
            hvsock.sockets.local_cid()
        return
    cid = hvsock.sockets.local_cid()
    assert isinstance(cid, int)
    assert 0 <= cid <= hvsock.sockets.CID_ANY


def test_local_cid_without_device(short_tmp: Path) -> None:
    from hvsock._transports.features import local_cid

    with pytest.raises(hvsock.TransportUnavailableError, match="modprobe"):
        local_cid(str(short_tmp / "no-vsock"))


@pytest.mark.usefixtures("fd_baseline")
def test_unix_full_backlog_times_out_clearly(short_tmp: Path) -> None:
    """A listener that never accepts: connects beyond its backlog wait, then time out."""
    addr = hvsock.UnixAddress(str(short_tmp / "full.sock"))
    pending: list[socket.socket] = []
    with hvsock.listen(addr, backlog=0):
        try:
            error: hvsock.ConnectTimeoutError | None = None
            for _ in range(10):  # Linux queues backlog + 1; the rest must wait
                try:
                    pending.append(hvsock.connect(addr, timeout=0.2))
                except hvsock.ConnectTimeoutError as exc:
                    error = exc
                    break
            assert error is not None
            assert "backlog" in str(error)
            assert 1 <= len(pending) < 10
        finally:
            for sock in pending:
                sock.close()
    hvsock.sockets.remove_socket_file(addr)
