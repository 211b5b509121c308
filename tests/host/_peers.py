"""Peers for the relay, bench and stress tests: echo servers (honest and corrupting),
bounded reads, and a relay run in a background thread that collects its records."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import hvsock
from hvsock._relay import ConnectionRecord, Relay

IO_TIMEOUT = 30.0


class EchoServer:
    """Echo every byte back on each accepted connection (a thread each); close after EOF.

    *corrupt*, when given, picks connections by accept order (0-based) whose
    echo gets one byte flipped: the deliberately broken server stress must catch.
    """

    def __init__(
        self, listener: socket.socket, *, corrupt: Callable[[int], bool] | None = None
    ) -> None:
        self.listener = listener
        self.corrupt = corrupt
        self.accepted = 0
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        # A short accept timeout and a flag: shutdown() wakes a blocked accept()
        # for TCP and Unix listeners but not for every family (AF_VSOCK).
        self.listener.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self._lock:
                number = self.accepted
                self.accepted += 1
                self._conns.add(conn)
            bad = self.corrupt is not None and self.corrupt(number)
            t = threading.Thread(target=self._serve, args=(conn, bad), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket, bad: bool) -> None:
        try:
            with conn:
                conn.settimeout(IO_TIMEOUT)
                flipped = False
                while data := conn.recv(65536):
                    if bad and not flipped:
                        data = bytes([data[0] ^ 0xFF]) + data[1:]
                        flipped = True
                    conn.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(10)

    def __enter__(self) -> EchoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def recv_until_eof(sock: socket.socket, limit: int = 1 << 30, timeout: float = IO_TIMEOUT) -> bytes:
    """Everything until EOF; fails past *limit* bytes or *timeout* seconds."""
    sock.settimeout(timeout)
    parts: list[bytes] = []
    total = 0
    deadline = time.monotonic() + timeout
    while total <= limit:
        assert time.monotonic() < deadline, f"no EOF within {timeout} s ({total} bytes)"
        data = sock.recv(1 << 16)
        if not data:
            return b"".join(parts)
        parts.append(data)
        total += len(data)
    raise AssertionError(f"more than {limit} bytes")


def recv_exactly(sock: socket.socket, n: int, timeout: float = IO_TIMEOUT) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while len(data) < n:
        part = sock.recv(n - len(data))
        assert part, f"EOF after {len(data)} of {n} bytes"
        data += part
    return data


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.01)


class RunningRelay:
    """A relay serving in a background thread; ``records`` fill as connections end."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.records: list[ConnectionRecord] = []
        self._cond = threading.Condition()

    def _on_close(self, record: ConnectionRecord) -> None:
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()

    def wait_records(self, n: int, timeout: float = 30.0) -> list[ConnectionRecord]:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.records) >= n, timeout)
            assert ok, f"{len(self.records)} of {n} connection records within {timeout} s"
            return list(self.records)

    @property
    def address(self) -> hvsock.Address:
        return self.relay.address


@contextlib.contextmanager
def running_relay(listen: Any, target: Any, **options: Any) -> Iterator[RunningRelay]:
    holder: list[RunningRelay] = []
    relay = Relay(listen, target, on_close=lambda r: holder[0]._on_close(r), **options)
    running = RunningRelay(relay)
    holder.append(running)
    with relay:
        yield running


def frame_echo_handler(style: str) -> Any:
    """A service handler echoing frames: "sync" (thread), "async", or "rpc" (an rpc_handler
    with one method, ``echo``)."""

    def sync_echo(conn: hvsock.SyncConnection) -> None:
        while (frame := conn.recv_frame()) is not None:
            conn.send_frame(frame)

    async def async_echo(conn: hvsock.Connection) -> None:
        while (frame := await conn.read_frame()) is not None:
            await conn.write_frame(frame)

    return {
        "sync": sync_echo,
        "async": async_echo,
        "rpc": hvsock.rpc_handler({"echo": lambda c, p: p}),
    }[style]
