"""``hvsock bench``: a benchmark server and the client measurements, over any address.

The server speaks a one-byte protocol so one listener serves every test: the
client's first byte picks the mode.

- ``s`` (sink): count everything until EOF, answer the count as 8 bytes, close.
- ``e`` (echo): send everything back; close after the client's EOF.
- ``c`` (connect): answer ``c`` and close at once.

Measurements: single- or multi-stream throughput (``s``), 1-byte round trips
(``e``), new connections per second (``c``: connect, one byte each way, close).
They return :class:`BenchResult` and report progress through an optional
callback ``progress(done, total)`` (total None when the run is bounded by time);
they never print. The server is asyncio (stdlib) with a reused receive buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from .. import _endpoints, _validate
from .._core.addresses import Address, parse_address
from .._errors import ArgumentError, PeerClosedError, ProtocolError
from .._server.lifecycle import (
    DEFAULT_GRACE,
    StopRequest,
    announce_ready,
    announce_stopping,
    check_ready_file,
    loop_stop_signals,
)
from .._transports._common import DEFAULT_CONNECT_TIMEOUT
from .._transports.recv import recv_into_exactly

SINK = b"s"
ECHO = b"e"
CONNECT = b"c"
_COUNT = struct.Struct("!Q")

DEFAULT_BUFFER = 256 * 1024
#: Seconds between two progress reports, at most.
PROGRESS_EVERY = 0.1

LOG = logging.getLogger("hvsock.bench")

Progress = Callable[[int, "int | None"], None]
Connector = Callable[[], socket.socket]


@dataclass(frozen=True)
class BenchResult:
    """One measurement: *value* in *unit*, over *seconds*, with the details that made it."""

    test: str
    address: str
    value: float
    unit: str
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "address": self.address,
            "value": self.value,
            "unit": self.unit,
            "seconds": self.seconds,
            **self.details,
        }


# -- the server -----------------------------------------------------------------------------
class _BenchProtocol(asyncio.BufferedProtocol):
    def __init__(self, server: BenchServer) -> None:
        self.server = server
        self.buffer = server.buffer
        self.transport: asyncio.Transport | None = None
        self.mode = b""
        self.count = 0
        #: Done when the connection is gone (what a graceful stop waits for).
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections[transport] = self.closed

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server.connections.pop(self.transport, None)
        if not self.closed.done():
            self.closed.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = self.buffer[:nbytes]
        if not self.mode:
            self.mode = bytes(data[:1])
            data = data[1:]
            if self.mode == CONNECT:
                assert self.transport is not None
                self.transport.write(CONNECT)
                self.transport.close()
                return
            if self.mode not in (SINK, ECHO):
                assert self.transport is not None
                self.transport.abort()
                return
        if self.mode == ECHO:
            if data:
                assert self.transport is not None
                self.transport.write(bytes(data))
        else:
            self.count += len(data)

    def eof_received(self) -> bool:
        assert self.transport is not None
        if self.mode == SINK:
            self.transport.write(_COUNT.pack(self.count))
        self.transport.close()
        return True


class BenchServer:
    """The benchmark peer: listen on *address* and serve the three modes.

    Use :meth:`run` (blocking; stops on SIGTERM / SIGINT) or a ``with`` block
    (serves in a background thread). *address* of the listener is
    :attr:`address` once started. *listener* replaces binding one. The lifecycle
    is :class:`hvsock.ServiceHost`'s: *grace*, *ready_file*, *on_ready*,
    ``serve(handle_signals=True)``, ``request_stop(grace)``; a second SIGTERM /
    SIGINT cuts the connections still open.
    """

    def __init__(
        self,
        address: Address | str,
        *,
        listener: socket.socket | None = None,
        mode: int | None = 0o600,
        backlog: int = 1024,
        grace: float = DEFAULT_GRACE,
        ready_file: str | None = None,
        on_ready: Callable[[Address], None] | None = None,
    ) -> None:
        self.requested = parse_address(address)
        self.address: Address = self.requested
        self.buffer = memoryview(bytearray(1 << 20))
        #: Each open connection and a future done when it is gone.
        self.connections: dict[asyncio.Transport, asyncio.Future[None]] = {}
        self.on_ready = on_ready
        self._listener = listener
        self._owns = listener is None
        self._mode = mode
        self._backlog = backlog
        self._stop_request = StopRequest(grace)
        self._ready_file = check_ready_file(ready_file)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def grace(self) -> float:
        return self._stop_request.grace

    def _bind(self) -> socket.socket:
        if self._listener is None:
            self._listener = _endpoints.listen(
                self.requested, backlog=self._backlog, mode=self._mode
            )
            self.address = _endpoints.listener_address(self._listener, self.requested)
        self._listener.setblocking(False)
        return self._listener

    async def serve(
        self, *, handle_signals: bool = True, on_ready: Callable[[Address], None] | None = None
    ) -> None:
        """Serve until :meth:`request_stop` or SIGTERM / SIGINT (with *handle_signals*,
        in the main thread), then stop gracefully. *on_ready* (else the one given
        when made) is called with the address once listening."""
        loop = asyncio.get_running_loop()
        self._stop_request.attach(loop)
        signals = (
            loop_stop_signals(loop, self._stop_request.signal)
            if handle_signals
            else contextlib.nullcontext()
        )
        with signals:
            listener = self._bind()
            try:
                server = await loop.create_server(
                    lambda: _BenchProtocol(self), sock=listener, backlog=self._backlog
                )
            except BaseException:
                listener.close()
                raise
            try:
                announce_ready(
                    self._ready_file,
                    {"pid": os.getpid(), "address": str(self.address)},
                    f"serving the benchmark on {self.address}",
                    LOG,
                )
                ready = on_ready or self.on_ready
                if ready is not None:
                    ready(self.address)
                self._ready.set()
                await self._stop_request.wait_requested()
                announce_stopping()
                server.close()
                await self._stop_request.wait_out(self.connections.values())
            finally:
                server.close()
                for transport in list(self.connections):
                    transport.abort()
                await server.wait_closed()
                if self._owns:
                    _endpoints.remove_socket_file(self.address)

    def request_stop(self, grace: float | None = None) -> None:
        """Stop accepting; open connections get *grace* s (default: the server's).
        From any thread; returns at once."""
        self._stop_request.request(grace)

    def run(self, on_ready: Callable[[Address], None] | None = None) -> None:
        """Serve in this (main) thread until SIGTERM / SIGINT."""
        asyncio.run(self.serve(on_ready=on_ready))

    def __enter__(self) -> BenchServer:
        def target() -> None:
            try:
                asyncio.run(self.serve())
            except BaseException as exc:  # handed to __enter__ below
                self._error = exc
                self._ready.set()

        self._thread = threading.Thread(target=target, name="hvsock-bench-server", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.request_stop(0 if exc is not None else None)
        if self._thread is not None:
            self._thread.join(30)


# -- the client -------------------------------------------------------------------------------
def _connector(address: Address | str, timeout: float | None) -> Connector:
    addr = parse_address(address)
    return lambda: _endpoints.connect(addr, timeout=timeout)


def _check_bounds(count: int | None, duration: float | None, what: str) -> None:
    if (count is None) == (duration is None):
        raise ArgumentError(f"give either {what} or duration, not both or neither")
    if count is not None:
        _validate.whole_number(count, what, 1, 2**63)
    _validate.positive_number(duration, "duration (seconds)", optional=True)


class _Reporter:
    """Throttled, thread-safe progress: sums what workers did, reports every 0.1 s."""

    def __init__(self, progress: Progress | None, total: int | None) -> None:
        self.progress = progress
        self.total = total
        self.done = 0
        self._lock = threading.Lock()
        self._next = 0.0

    def add(self, n: int) -> None:
        if self.progress is None:
            return
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now < self._next:
                return
            self._next = now + PROGRESS_EVERY
            done = self.done
        self.progress(done, self.total)

    def final(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total)


def _run_workers(n: int, work: Callable[[int], Any]) -> list[Any]:
    """Run work(i) for i in range(n) in threads started together; re-raise the first error."""
    results: list[Any] = [None] * n
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            start.wait(60)
            results[i] = work(i)
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)
            start.abort()

    threads = [
        threading.Thread(target=run, args=(i,), name=f"hvsock-bench-{i}", daemon=True)
        for i in range(n)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise next(
            (e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0]
        )
    return results


def _recv_exactly(sock: socket.socket, n: int, what: str) -> bytes:
    buf = bytearray(n)
    if recv_into_exactly(sock, buf) < n:
        raise PeerClosedError(
            f"the bench server closed the connection before {what}; is "
            "the address a `hvsock bench server`?"
        )
    return bytes(buf)


def throughput(
    address: Address | str,
    *,
    total_bytes: int | None = None,
    duration: float | None = None,
    buffer_size: int = DEFAULT_BUFFER,
    streams: int = 1,
    progress: Progress | None = None,
    connect: Connector | None = None,
    timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
) -> BenchResult:
    """Send *total_bytes* (split over *streams*) or for *duration* seconds; MB/s received.

    Each stream sends in writes of *buffer_size* bytes, half-closes, and waits for
    the server's count of what arrived, which must match. Raises
    :class:`HvsockError` on connection failures, :class:`ProtocolError` on a
    count mismatch.
    """
    _check_bounds(total_bytes, duration, "total_bytes")
    _validate.whole_number(streams, "streams", 1, 4096)
    _validate.whole_number(buffer_size, "buffer_size (bytes)", 1, 64 * 2**20)
    dial = connect or _connector(address, timeout)
    reporter = _Reporter(progress, total_bytes)
    block = memoryview(os.urandom(buffer_size))
    shares: list[int | None] = (
        [None] * streams
        if total_bytes is None
        else [
            total_bytes // streams + (1 if i < total_bytes % streams else 0) for i in range(streams)
        ]
    )
    socks = [dial() for _ in range(streams)]
    try:
        for sock in socks:
            sock.settimeout(timeout if timeout is None else max(timeout, 60.0))
            sock.sendall(SINK)

        def work(i: int) -> tuple[int, float]:
            sock = socks[i]
            limit = shares[i]
            start = time.perf_counter()
            end = start + duration if duration is not None else math.inf
            sent = 0
            while True:
                if limit is not None:
                    if sent >= limit:
                        break
                    piece = block[: min(buffer_size, limit - sent)]
                elif time.perf_counter() >= end:
                    break
                else:
                    piece = block
                sock.sendall(piece)
                sent += len(piece)
                reporter.add(len(piece))
            sock.shutdown(socket.SHUT_WR)
            got = _COUNT.unpack(_recv_exactly(sock, _COUNT.size, "its byte count"))[0]
            if got != sent:
                raise ProtocolError(f"stream {i}: sent {sent} bytes but the server counted {got}")
            return sent, time.perf_counter() - start

        wall = time.perf_counter()
        results = _run_workers(streams, work)
        wall = time.perf_counter() - wall
    finally:
        for sock in socks:
            sock.close()
    reporter.final()
    total = sum(sent for sent, _ in results)
    name = "throughput" if streams == 1 else f"throughput x{streams}"
    return BenchResult(
        name,
        str(address),
        round(total / wall / 1e6, 2),
        "MB/s",
        round(wall, 4),
        {"bytes": total, "streams": streams, "buffer_size": buffer_size},
    )


def round_trip(
    address: Address | str,
    *,
    count: int | None = None,
    duration: float | None = None,
    size: int = 1,
    progress: Progress | None = None,
    connect: Connector | None = None,
    timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
) -> BenchResult:
    """Time *count* round trips of *size* bytes (or as many as fit in *duration*).

    Value: the median in microseconds; details carry min, p99, max and mean.
    Raises :class:`ProtocolError` if an echo differs from what was sent.
    """
    _check_bounds(count, duration, "count")
    _validate.whole_number(size, "size (bytes)", 1, 2**20)
    dial = connect or _connector(address, timeout)
    reporter = _Reporter(progress, count)
    payload = os.urandom(size)
    buf = bytearray(size)
    view = memoryview(buf)
    times: list[float] = []
    clock = time.perf_counter
    with dial() as sock:
        sock.settimeout(timeout if timeout is None else max(timeout, 30.0))
        sock.sendall(ECHO)
        end = clock() + duration if duration is not None else math.inf
        while (count is None or len(times) < count) and (duration is None or clock() < end):
            start = clock()
            sock.sendall(payload)
            if recv_into_exactly(sock, view) < size:
                raise PeerClosedError(f"the echo server closed after {len(times)} round trips")
            times.append(clock() - start)
            if buf != payload:
                raise ProtocolError(f"round trip {len(times)}: the echo differs from what was sent")
            reporter.add(1)
    reporter.final()
    us = sorted(t * 1e6 for t in times)
    p99 = us[max(0, math.ceil(0.99 * len(us)) - 1)]
    return BenchResult(
        "round trip",
        str(address),
        round(statistics.median(us), 2),
        "us",
        round(sum(times), 4),
        {
            "count": len(us),
            "size": size,
            "min_us": round(us[0], 2),
            "p99_us": round(p99, 2),
            "max_us": round(us[-1], 2),
            "mean_us": round(statistics.fmean(us), 2),
        },
    )


def connect_rate(
    address: Address | str,
    *,
    count: int | None = None,
    duration: float | None = None,
    parallel: int = 1,
    progress: Progress | None = None,
    connect: Connector | None = None,
    timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
) -> BenchResult:
    """New connections per second: connect, one byte each way, close; *parallel* at once.

    Raises :class:`HvsockError` if a connection fails, :class:`ProtocolError` if
    the answer is wrong.
    """
    _check_bounds(count, duration, "count")
    _validate.whole_number(parallel, "parallel", 1, 1024)
    dial = connect or _connector(address, timeout)
    reporter = _Reporter(progress, count)
    lock = threading.Lock()
    left = [count if count is not None else 0]
    clock = time.perf_counter

    def work(i: int) -> int:
        done = 0
        end = clock() + duration if duration is not None else math.inf
        while True:
            if count is not None:
                with lock:
                    if left[0] <= 0:
                        break
                    left[0] -= 1
            elif clock() >= end:
                break
            with dial() as sock:
                sock.settimeout(timeout)
                sock.sendall(CONNECT)
                if _recv_exactly(sock, 1, "its answer") != CONNECT:
                    raise ProtocolError("the bench server answered the connect test wrongly")
            done += 1
            reporter.add(1)
        return done

    wall = clock()
    done = sum(_run_workers(parallel, work))
    wall = clock() - wall
    reporter.final()
    return BenchResult(
        "connect rate",
        str(address),
        round(done / wall, 1),
        "conn/s",
        round(wall, 4),
        {"count": done, "parallel": parallel},
    )


def format_table(results: list[BenchResult]) -> str:
    """The results as an aligned text table (for the CLI)."""
    rows = [("test", "value", "unit", "seconds", "details")]
    for r in results:
        details = ", ".join(f"{k}={v}" for k, v in r.details.items())
        rows.append((r.test, f"{r.value:g}", r.unit, f"{r.seconds:g}", details))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for row in rows:
        lines.append(
            "  ".join(
                cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)
            ).rstrip()
        )
    return "\n".join(lines)
