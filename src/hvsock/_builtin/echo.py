"""Echo: every byte comes back. The peer of ``hvsock ping`` and of many tests."""

from __future__ import annotations

import math
import os
import statistics
import time
import uuid
from dataclasses import asdict, dataclass

from .. import _endpoints, _validate
from .._core.addresses import Address
from .._errors import HandshakeError, HvsockError
from .._service.connection import Connection
from .._service.declaration import Limits, Service
from .._transports._common import DEFAULT_CONNECT_TIMEOUT
from .._transports.recv import recv_into_exactly

#: The echo service's default port (and so its template service id).
ECHO_PORT = 7


async def _echo(conn: Connection) -> None:
    while data := await conn.read(65536):
        await conn.write(data)


def echo_service(
    service_id: int | str | uuid.UUID = ECHO_PORT,
    *,
    name: str = "hvsock echo",
    limits: Limits | None = None,
    allow: object = None,
) -> Service:
    """A service that sends back everything it receives, until the peer's EOF."""
    return Service(name, service_id, _echo, allow=allow, limits=limits or Limits())


@dataclass(frozen=True)
class PingStats:
    """Round-trip times of one ``ping`` run, in milliseconds."""

    address: str
    count: int
    size: int
    min_ms: float
    median_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    """The *q*-th percentile (nearest rank) of non-empty *values*."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ping(
    address: Address | str,
    *,
    count: int = 10,
    size: int = 1,
    interval: float = 0.0,
    timeout: float = DEFAULT_CONNECT_TIMEOUT,
    retries: int = 0,
) -> PingStats:
    """Time *count* round trips of *size* random bytes through an echo service.

    Raises :class:`HvsockError` if the connection fails, and
    :class:`HandshakeError` if what comes back differs from what was sent.
    """
    _validate.whole_number(count, "count", 1, 10_000_000)
    _validate.whole_number(size, "size (bytes)", 1, 16 * 2**20)
    _validate.non_negative_number(interval, "interval (seconds)")
    rtts: list[float] = []
    with _endpoints.connect(address, timeout=timeout, retries=retries) as sock:
        sock.settimeout(timeout)
        buf = bytearray(size)
        view = memoryview(buf)
        for i in range(count):
            payload = os.urandom(size)
            start = time.perf_counter()
            sock.sendall(payload)
            if recv_into_exactly(sock, view) < size:
                raise HvsockError(
                    f"echo service at {address} closed the connection after {i} replies"
                )
            rtts.append((time.perf_counter() - start) * 1000)
            if bytes(buf) != payload:
                raise HandshakeError(
                    f"echo reply {i} differs from what was sent: is {address} an echo service?"
                )
            if interval and i + 1 < count:
                time.sleep(interval)
    return PingStats(
        str(address),
        count,
        size,
        min(rtts),
        statistics.median(rtts),
        percentile(rtts, 99),
        max(rtts),
        statistics.fmean(rtts),
    )
