"""One test set for the one dial, run over its three drivers and every host transport.

Drivers: blocking (``hvsock.connect``), asyncio (``hvsock.connect_socket``) and the
relay's poll loop (``hvsock._relay.dial`` stepped by a small loop built like the
relay's, with its thread fallback). Transports: TCP, Unix, and hybrid vsock through
the emulated muxer. Every test checks that no descriptor is left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import hvsock
import hvsock.sockets
from hvsock._relay import dial as relay_dial
from hvsock._relay._poll import Poller
from hvsock.testing import HybridVsockMuxer

from ..attempts import blocked_in_connect, connects_to
from .test_relay import _sees_reset_or_eof
from .test_transports import _echo_once

Connect = Callable[..., socket.socket]


# -- the three drivers ---------------------------------------------------------------------
def sync_driver(address: Any, **kwargs: Any) -> socket.socket:
    return hvsock.connect(address, **kwargs)


def asyncio_driver(address: Any, **kwargs: Any) -> socket.socket:
    sock = asyncio.run(hvsock.connect_socket(address, **kwargs))
    sock.setblocking(True)
    return sock


def relay_driver(
    address: Any, *, timeout: float | None = 10.0, retries: int = 0, retry_wait: float = 0.25
) -> socket.socket:
    """What the relay's loop does with a dial: poll it, and enforce the deadline."""
    addr = hvsock.parse_address(address)
    try:
        dialled = relay_dial.dial(
            addr, timeout=timeout, buffer_size=None, retries=retries, retry_wait=retry_wait
        )
    except relay_dial.UseThread:
        # The relay runs these in a worker thread with the blocking driver.
        return hvsock.connect(addr, timeout=timeout, retries=retries, retry_wait=retry_wait)
    if isinstance(dialled, socket.socket):  # connected at once
        dialled.setblocking(True)
        return dialled
    gen = dialled
    deadline = None if timeout is None else time.monotonic() + timeout
    poller = Poller()
    try:
        try:
            sock, mask = next(gen)
        except StopIteration as done:
            result: socket.socket = done.value
            result.setblocking(True)
            return result
        fd = sock.fileno()
        poller.add(fd, mask)
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise relay_dial.timed_out(gen)
            if not poller.poll(remaining):
                continue
            try:
                sock, new_mask = gen.send(None)
            except StopIteration as done:
                result = done.value
                poller.remove(fd)
                result.setblocking(True)
                return result
            assert sock.fileno() == fd  # the relay polls one socket per dial
            if new_mask != mask:
                poller.modify(fd, new_mask)
                mask = new_mask
    finally:
        gen.close()
        poller.close()


DRIVERS = {"sync": sync_driver, "asyncio": asyncio_driver, "relay": relay_driver}


@pytest.fixture(params=list(DRIVERS))
def connect(request: pytest.FixtureRequest) -> Connect:
    return DRIVERS[request.param]


# -- servers on each transport ------------------------------------------------------------
class Site:
    """Makes listeners of one kind, and cleans them up."""

    def __init__(self, kind: str, tmp: Path, **muxer_options: Any) -> None:
        self.kind = kind
        self.tmp = tmp
        self.muxer = (
            HybridVsockMuxer(str(tmp / "vm.sock"), **muxer_options) if kind == "hybrid" else None
        )

    def listen(self, backlog: int = 16) -> tuple[socket.socket, hvsock.Address]:
        if self.kind == "tcp":
            listener = hvsock.listen("tcp://127.0.0.1:0", backlog=backlog)
            return listener, hvsock.sockets.listener_address(listener, "tcp://127.0.0.1:0")
        if self.kind == "unix":
            addr = hvsock.UnixAddress(str(self.tmp / "s.sock"))
            return hvsock.listen(addr, backlog=backlog), addr
        assert self.muxer is not None
        return self.muxer.guest_listen(5000, backlog), self.muxer.address(5000)

    def nobody_address(self) -> hvsock.Address:
        """An address where nothing listens (yet)."""
        if self.kind == "tcp":
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            return hvsock.TcpAddress("127.0.0.1", port)
        if self.kind == "unix":
            return hvsock.UnixAddress(str(self.tmp / "s.sock"))
        assert self.muxer is not None
        return self.muxer.address(5000)

    def listen_at(self, address: hvsock.Address) -> socket.socket:
        if self.kind == "hybrid":
            assert self.muxer is not None
            return self.muxer.guest_listen(5000)
        return hvsock.listen(address)

    def close(self) -> None:
        if self.muxer is not None:
            self.muxer.close()
        with contextlib.suppress(FileNotFoundError):
            (self.tmp / "s.sock").unlink()


@pytest.fixture(params=["tcp", "unix", "hybrid"])
def site(request: pytest.FixtureRequest, short_tmp: Path) -> Iterator[Site]:
    s = Site(request.param, short_tmp)
    yield s
    s.close()


def _round_trip(sock: socket.socket, payload: bytes = b"hello through the one dial") -> None:
    sock.settimeout(5)
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        assert chunk
        got += chunk
    assert got == payload


# -- the shared set -------------------------------------------------------------------------
@pytest.mark.usefixtures("fd_baseline")
def test_success(connect: Connect, site: Site) -> None:
    listener, addr = site.listen()
    with listener:
        thread = _echo_once(listener)
        with connect(addr, timeout=5) as sock:
            assert sock.getblocking()
            _round_trip(sock)
        thread.join(5)


@pytest.mark.usefixtures("fd_baseline")
def test_nothing_listening(connect: Connect, site: Site) -> None:
    with pytest.raises(hvsock.NothingListeningError) as info:
        connect(site.nobody_address(), timeout=5)
    assert isinstance(info.value, ConnectionRefusedError)


@pytest.mark.usefixtures("fd_baseline")
def test_retries_until_the_service_starts(connect: Connect, site: Site) -> None:
    addr = site.nobody_address()
    started = threading.Event()
    holder: list[socket.socket] = []

    def start_later() -> None:
        # Listen once the second attempt began: the first surely found nobody, so a
        # dial that does not retry fails here whatever the machine's speed.
        if attempts.reached(2):
            holder.append(site.listen_at(addr))
            started.set()

    with connects_to(_dialled(addr)) as attempts:
        thread = threading.Thread(target=start_later, daemon=True)
        thread.start()
        try:
            with connect(addr, timeout=2, retries=400, retry_wait=0.05) as sock:
                # The connect can win the race with started.set() right after listen.
                assert started.wait(30)
                assert sock.getpeername() is not None
        finally:
            attempts.stop()  # the dial gave up early: the thread need not wait
            thread.join(60)
            for listener in holder:
                listener.close()


def _dialled(addr: hvsock.Address) -> object:
    """What a dial of *addr* passes to ``socket.connect`` (hybrid: the VMM's socket)."""
    if isinstance(addr, hvsock.TcpAddress):
        return (addr.host, addr.port)
    if isinstance(addr, hvsock.HybridAddress):
        return addr.uds_path
    assert isinstance(addr, hvsock.UnixAddress)
    return addr.path


@pytest.mark.usefixtures("fd_baseline")
def test_retries_give_up_with_the_last_error(connect: Connect, site: Site) -> None:
    start = time.monotonic()
    with pytest.raises(hvsock.NothingListeningError):
        connect(site.nobody_address(), timeout=2, retries=2, retry_wait=0.05)
    assert time.monotonic() - start >= 0.05 + 0.1  # two pauses: 0.05, then 0.1


@pytest.mark.usefixtures("fd_baseline")
def test_bad_arguments_are_argument_errors(connect: Connect, site: Site) -> None:
    addr = site.nobody_address()
    for kwargs in (
        {"timeout": -1},
        {"timeout": "soon"},
        {"retries": -1},
        {"retries": 10**9},
        {"retry_wait": float("nan")},
    ):
        with pytest.raises(hvsock.ArgumentError):
            connect(addr, **kwargs)


def _fill_backlog(addr: hvsock.Address) -> list[socket.socket]:
    """Raw connects until the next one would wait (Linux queues backlog + 1)."""
    path = addr.uds_path if isinstance(addr, hvsock.HybridAddress) else str(addr.path)  # type: ignore[union-attr]
    pending: list[socket.socket] = []
    for _ in range(64):
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.setblocking(False)
        try:
            raw.connect(path)
        except BlockingIOError:
            raw.close()
            return pending
        pending.append(raw)
    raise AssertionError("the backlog never filled")


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("kind", ["unix", "hybrid"])
def test_full_backlog_times_out_then_waits_for_room(
    connect: Connect, kind: str, short_tmp: Path
) -> None:
    if kind == "unix":
        addr: hvsock.Address = hvsock.UnixAddress(str(short_tmp / "full.sock"))
        listener = hvsock.listen(addr, backlog=0)
    else:
        # A VMM socket that does not accept: the first stage of a hybrid connect waits.
        vmm = str(short_tmp / "vmm.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(vmm)
        listener.listen(0)
        addr = hvsock.HybridAddress(vmm, 5000)
    pending = _fill_backlog(addr)
    try:
        start = time.monotonic()
        with pytest.raises(hvsock.ConnectTimeoutError, match="backlog stayed full"):
            connect(addr, timeout=0.3)
        assert 0.25 < time.monotonic() - start < 5
        if kind == "unix":
            # Room appears while a connect waits: it completes. Room is made only once
            # the kernel holds a thread in connect(): the wait is surely under way.
            stop = threading.Event()

            def make_room() -> None:
                deadline = time.monotonic() + 60
                while not blocked_in_connect():
                    if stop.wait(0.005) or time.monotonic() > deadline:
                        return
                conn, _ = listener.accept()
                conn.close()

            thread = threading.Thread(target=make_room, daemon=True)
            thread.start()
            try:
                with connect(addr, timeout=30):
                    pass
            finally:
                stop.set()
                thread.join(60)
    finally:
        for raw in pending:
            raw.close()
        listener.close()


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize(("chunk", "pause"), [(1, 0.0), (1, 0.02), (3, 0.05), (5, 0.1)])
def test_hybrid_reply_split_over_many_writes(
    connect: Connect, short_tmp: Path, chunk: int, pause: float
) -> None:
    """Defect 1: a VMM's OK reply in several writes, with pauses, is still one reply."""
    with (
        HybridVsockMuxer(str(short_tmp / "vm.sock"), reply_chunk=chunk, reply_pause=pause) as muxer,
        muxer.guest_listen(5000) as guest,
    ):
        thread = _echo_once(guest)
        with connect(muxer.address(5000), timeout=5) as sock:
            _round_trip(sock)
        thread.join(5)


class _Vmm:
    """A VMM socket that answers every CONNECT with fixed bytes, then holds or closes."""

    def __init__(self, path: str, reply: bytes, *, hold: bool) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(8)
        self.reply, self.hold = reply, hold
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.listener.settimeout(0.05)
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            self.conns.append(conn)
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                conn.recv(64)
                conn.sendall(self.reply)
            if not self.hold:
                conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.listener.close()
        for conn in self.conns:
            conn.close()


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize(
    ("reply", "hold", "error", "fragment"),
    [
        (b"NO\n", False, hvsock.HandshakeError, "instead of 'OK <port>"),
        (b"A" * 40, True, hvsock.HandshakeError, "longer than"),
        (b"OK 12", False, hvsock.HandshakeError, "in the middle of its reply"),
        (b"", False, hvsock.NothingListeningError, "nothing in the guest listens"),
        (b"OK 1", True, hvsock.ConnectTimeoutError, "did not answer CONNECT 52"),
    ],
)
def test_hybrid_bad_handshake(
    connect: Connect,
    short_tmp: Path,
    reply: bytes,
    hold: bool,
    error: type[Exception],
    fragment: str,
) -> None:
    vmm = _Vmm(str(short_tmp / "vmm.sock"), reply, hold=hold)
    try:
        with pytest.raises(error, match=fragment):
            connect(hvsock.HybridAddress(str(short_tmp / "vmm.sock"), 52), timeout=0.5)
    finally:
        vmm.close()


@pytest.mark.usefixtures("fd_baseline")
def test_tcp_reset_after_accept_is_a_reset_not_nothing_listening(connect: Connect) -> None:
    """A TCP server that accepts and resets: never 'nothing is listening' (issue 13.1)."""
    listener = hvsock.listen("tcp://127.0.0.1:0")
    addr = hvsock.sockets.listener_address(listener, "tcp://127.0.0.1:0")
    stop = threading.Event()

    def reset_all() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            conn.close()  # linger 0: a reset

    thread = threading.Thread(target=reset_all, daemon=True)
    thread.start()
    try:
        outcomes = [_reset_outcome(connect, addr) for _ in range(5)]
        assert set(outcomes) <= {"reset at connect", "reset after connect"}
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _reset_outcome(connect: Connect, addr: hvsock.Address) -> str:
    """Where the server's reset reached the client; never as "nothing is listening"."""
    try:
        sock = connect(addr, timeout=5)
    except hvsock.ConnectionResetByPeerError as exc:
        return "reset at connect" if "nothing is listening" not in str(exc) else str(exc)
    with sock:
        return f"{_sees_reset_or_eof(sock)} after connect"


# -- cancellation: the socket being connected is closed ----------------------------------
@pytest.mark.usefixtures("fd_baseline")
def test_asyncio_cancel_during_handshake_closes_the_socket(short_tmp: Path) -> None:
    vmm = _Vmm(str(short_tmp / "vmm.sock"), b"", hold=True)
    try:

        async def main() -> None:
            task = asyncio.create_task(
                hvsock.connect_socket(
                    hvsock.HybridAddress(str(short_tmp / "vmm.sock"), 52), timeout=30
                )
            )
            for _ in range(500):  # until the VMM has the connection
                if vmm.conns:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        (conn,) = vmm.conns
        conn.settimeout(5)
        received = b""
        while chunk := conn.recv(64):  # the CONNECT line (if the VMM has not read it), then
            received += chunk  # EOF: the client's socket was closed
        assert received in (b"", b"CONNECT 52\n")
    finally:
        vmm.close()


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("end", ["closed", "timed out"])
def test_a_relay_dial_ended_mid_handshake_closes_its_socket(short_tmp: Path, end: str) -> None:
    """The relay drops a dial (its client left) or its deadline passes (a stalled stage)."""
    vmm = _Vmm(str(short_tmp / "vmm.sock"), b"OK", hold=True)
    try:
        gen = relay_dial.dial(
            hvsock.HybridAddress(str(short_tmp / "vmm.sock"), 52), timeout=30, buffer_size=None
        )
        assert not isinstance(gen, socket.socket)  # it waits for the VMM's reply
        sock, _mask = next(gen)
        if end == "closed":
            gen.close()
        else:
            error = relay_dial.timed_out(gen)
            assert isinstance(error, hvsock.ConnectTimeoutError)
            assert "did not answer CONNECT 52" in str(error)
        assert sock.fileno() == -1
    finally:
        vmm.close()


def test_relay_dial_hands_blocking_first_steps_to_a_thread() -> None:
    with pytest.raises(relay_dial.UseThread):
        relay_dial.dial(hvsock.TcpAddress("localhost", 1), timeout=1, buffer_size=None)
    with pytest.raises(relay_dial.UseThread):
        relay_dial.dial(hvsock.TcpAddress("127.0.0.1", 1), timeout=1, buffer_size=None, retries=2)
