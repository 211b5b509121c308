"""``hvsock stress``: many connections of random data through an echo server, checked by hash.

Like linuxkit's ``sock_stress``: *connections* connections, *parallel* at a
time; each sends a random number of random bytes (``min_size..max_size``) in
random-sized writes, half-closes, and reads the echo until EOF, comparing the
SHA-256 and length of what came back with what went. Everything a connection
does follows from its own seed (``seed + index``), so a failure can be replayed
alone: ``stress(..., seed=failure.seed, connections=1)``. Reading runs alongside
writing, so an echo server that answers as it reads never deadlocks us.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .. import _validate
from .._core.addresses import Address, parse_address
from .._endpoints import connect_socket
from .._transports._common import DEFAULT_CONNECT_TIMEOUT

#: Largest single write, unless the caller says otherwise.
DEFAULT_MAX_CHUNK = 64 * 1024
_SEED_SPACE = 2**63

AsyncConnector = Callable[[], Awaitable[socket.socket]]
Progress = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class StressFailure:
    """One connection that went wrong: replay it with ``seed`` and one connection."""

    index: int
    seed: int
    size: int
    sent: int
    received: int
    error: str
    sent_sha256: str = ""
    received_sha256: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "seed": self.seed,
            "size": self.size,
            "sent": self.sent,
            "received": self.received,
            "error": self.error,
            "sent_sha256": self.sent_sha256,
            "received_sha256": self.received_sha256,
        }

    def __str__(self) -> str:
        return (
            f"connection {self.index} (seed {self.seed}, {self.size} bytes): {self.error}; "
            f"replay: --seed {self.seed} --connections 1"
        )


@dataclass(frozen=True)
class StressResult:
    """The run: counts, bytes both ways, time, and every failure."""

    address: str
    connections: int
    parallel: int
    seed: int
    bytes_sent: int
    bytes_received: int
    seconds: float
    failures: list[StressFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "connections": self.connections,
            "parallel": self.parallel,
            "seed": self.seed,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "seconds": self.seconds,
            "ok": self.ok,
            "failures": [f.as_dict() for f in self.failures],
        }


@dataclass(frozen=True)
class Plan:
    """What connection *index* of a run with base seed *seed* sends: sizes of each write."""

    index: int
    seed: int
    size: int
    chunks: tuple[int, ...]


def plan(seed: int, index: int, min_size: int, max_size: int, max_chunk: int) -> Plan:
    """The connection's plan; its payload is :func:`payload` of the same seed."""
    own = (seed + index) % _SEED_SPACE
    rng = random.Random(own)
    size = rng.randint(min_size, max_size)
    chunks = []
    left = size
    while left:
        n = min(left, rng.randint(1, max_chunk))
        chunks.append(n)
        left -= n
    return Plan(index, own, size, tuple(chunks))


def payload(p: Plan) -> list[bytes]:
    """The bytes of each write of plan *p* (deterministic from its seed)."""
    rng = random.Random(p.seed ^ 0x5EED)
    return [rng.randbytes(n) for n in p.chunks]


def _check(name: str, value: object, low: int, high: int) -> int:
    return _validate.whole_number(value, name, low, high)


async def stress_async(
    address: Address | str,
    *,
    connections: int = 100,
    parallel: int = 10,
    min_size: int = 0,
    max_size: int = 1 << 20,
    max_chunk: int = DEFAULT_MAX_CHUNK,
    seed: int | None = None,
    timeout: float = 60.0,
    sync_start: bool = False,
    hold: float = 0.0,
    progress: Progress | None = None,
    connect: AsyncConnector | None = None,
) -> StressResult:
    """The stress run on the running loop; see :func:`stress`."""
    _check("connections", connections, 1, 10_000_000)
    _check("parallel", parallel, 1, 100_000)
    _check("min_size", min_size, 0, 1 << 34)
    _check("max_size", max_size, min_size, 1 << 34)
    _check("max_chunk", max_chunk, 1, 64 << 20)
    _validate.positive_number(timeout, "timeout (seconds)")
    _validate.non_negative_number(hold, "hold (seconds)")
    if seed is None:
        seed = random.SystemRandom().randrange(_SEED_SPACE)
    _check("seed", seed, 0, _SEED_SPACE - 1)
    addr = parse_address(address)
    dial = connect or (lambda: connect_socket(addr, timeout=min(timeout, DEFAULT_CONNECT_TIMEOUT)))
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(parallel)
    first = min(parallel, connections)
    all_connected = asyncio.Event()
    connected = [0]
    failures: list[StressFailure] = []
    totals = [0, 0]  # sent, received
    done = [0]

    def arrived() -> None:
        connected[0] += 1
        if connected[0] >= first:
            all_connected.set()

    async def one(index: int) -> None:
        p = plan(seed, index, min_size, max_size, max_chunk)
        state = {"sent": 0, "received": 0}
        sent_hash = hashlib.sha256()
        got_hash = hashlib.sha256()
        sock: socket.socket | None = None
        counted = False
        try:
            sock = await dial()
            if sync_start and index < first:
                counted = True
                arrived()
                await all_connected.wait()
                if hold:
                    await asyncio.sleep(hold)

            async def receive() -> None:
                assert sock is not None
                buf = bytearray(256 * 1024)
                while True:
                    n = await loop.sock_recv_into(sock, buf)
                    if n == 0:
                        return
                    got_hash.update(memoryview(buf)[:n])
                    state["received"] += n
                    if state["received"] > p.size:
                        raise _Mismatch(
                            f"received more bytes than sent ({state['received']} > {p.size})"
                        )

            reader = asyncio.ensure_future(receive())
            try:
                for chunk in payload(p):
                    if reader.done():
                        break  # it failed or saw EOF early; its outcome says which
                    await loop.sock_sendall(sock, chunk)
                    sent_hash.update(chunk)
                    state["sent"] += len(chunk)
                sock.shutdown(socket.SHUT_WR)
                await reader
            finally:
                if not reader.done():
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await reader
            if state["received"] != state["sent"] or got_hash.digest() != sent_hash.digest():
                raise _Mismatch(
                    "what came back differs from what was sent"
                    if state["received"] == state["sent"]
                    else f"sent {state['sent']} bytes, {state['received']} came back"
                )
        except (OSError, _Mismatch, asyncio.TimeoutError) as exc:
            what = (
                f"timed out after {timeout:g} s"
                if isinstance(exc, asyncio.TimeoutError)
                else str(exc) or type(exc).__name__
            )
            failures.append(
                StressFailure(
                    index,
                    p.seed,
                    p.size,
                    state["sent"],
                    state["received"],
                    what,
                    sent_hash.hexdigest(),
                    got_hash.hexdigest(),
                )
            )
        finally:
            if sync_start and index < first and not counted:
                arrived()  # a failed connect must not keep the others waiting
            if sock is not None:
                sock.close()
            totals[0] += state["sent"]
            totals[1] += state["received"]
            done[0] += 1
            if progress is not None:
                progress(done[0], connections)

    async def guarded(index: int) -> None:
        async with slots:
            try:
                await asyncio.wait_for(one(index), timeout)
            except asyncio.TimeoutError:
                p = plan(seed, index, min_size, max_size, max_chunk)
                failures.append(
                    StressFailure(index, p.seed, p.size, 0, 0, f"timed out after {timeout:g} s")
                )

    start = time.perf_counter()
    # Start at most a window of tasks at a time: a million connections must not
    # mean a million pending tasks.
    pending: set[asyncio.Task[None]] = set()
    for index in range(connections):
        pending.add(asyncio.ensure_future(guarded(index)))
        if len(pending) >= 2 * parallel:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    if pending:
        await asyncio.wait(pending)
    seconds = time.perf_counter() - start
    failures.sort(key=lambda f: f.index)
    return StressResult(
        str(address), connections, parallel, seed, totals[0], totals[1], round(seconds, 4), failures
    )


class _Mismatch(Exception):
    pass


def stress(address: Address | str, **options: Any) -> StressResult:
    """Run a stress test against the echo server at *address*; never raises for failures.

    Options: *connections* (100), *parallel* (10), *min_size* / *max_size* bytes
    per connection (0 .. 1 MiB), *max_chunk* (largest write, 64 KiB), *seed*
    (random if None; connection *i* uses ``seed + i``), *timeout* per connection
    (60 s), *sync_start* (the first *parallel* connections all connect before any
    sends; *hold* seconds more), *progress* ``(done, total)``, *connect* (an async
    callable returning a connected socket, instead of connecting to *address*).
    Failures (errors, timeouts, mismatches) are in the result, each with its
    seed. Raises :class:`ArgumentError` for bad options.
    """
    return asyncio.run(stress_async(address, **options))
