"""The service framework over real AF_VSOCK (CID 1, vsock_loopback) in the test VM."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import pytest

import hvsock
import hvsock.services
import hvsock.sockets

from ._support import payload, target, unused_port

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(240)]

CLIENTS = 200
SIZE = 8 * 1024


def test_200_concurrent_clients_with_checked_payloads() -> None:
    port = unused_port()
    service = hvsock.services.echo_service(port, limits=hvsock.Limits(max_connections=CLIENTS + 16))

    async def client(i: int) -> bool:
        data = payload(SIZE, seed=i)
        reader, writer = await hvsock.open_connection(target(port), timeout=30, retries=3)
        try:
            writer.write(data)
            await writer.drain()
            writer.write_eof()
            echoed = await asyncio.wait_for(reader.read(), 120)
        finally:
            writer.close()
            await writer.wait_closed()
        return hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()

    host = hvsock.ServiceHost(grace=5)
    host.add(service, f"vsock://any:{port}")

    async def run() -> list[bool]:
        async with host:
            return await asyncio.gather(*(client(i) for i in range(CLIENTS)))

    results = asyncio.run(run())
    assert len(results) == CLIENTS
    assert all(results), f"{results.count(False)} payloads came back wrong"


def _whoami_service(port: int, allow: object) -> tuple[hvsock.Service, list[int | None]]:
    seen: list[int | None] = []

    async def whoami(conn: hvsock.Connection) -> None:
        seen.append(conn.peer.cid)
        await conn.write(f"{conn.peer.cid}\n".encode())

    return hvsock.Service("whoami", port, whoami, allow=allow), seen


def _ask(port: int) -> bytes:
    with hvsock.connect(target(port), timeout=10) as sock:
        sock.settimeout(30)
        chunks = []
        while data := sock.recv(100):
            chunks.append(data)
        return b"".join(chunks)


@pytest.mark.parametrize("allowed", [True, False])
def test_allowlist_by_cid(allowed: bool, caplog: pytest.LogCaptureFixture) -> None:
    port = unused_port()
    # A client on the loopback transport comes from CID 1 (local).
    service, seen = _whoami_service(port, {hvsock.sockets.CID_LOCAL} if allowed else {3, 4})
    host = hvsock.ServiceHost(grace=2)
    host.add(service, f"vsock://any:{port}")

    async def run() -> bytes:
        async with host:
            return await asyncio.to_thread(_ask, port)

    with caplog.at_level(logging.INFO, logger="hvsock.service.whoami"):
        answer = asyncio.run(run())
    if allowed:
        assert answer == b"1\n"
        assert seen == [1]
    else:
        assert answer == b""  # closed before the handler ran
        assert seen == []
        denied = [r for r in caplog.records if "not in the allowlist" in r.getMessage()]
        assert len(denied) == 1
        assert "vsock://1:" in denied[0].getMessage()


def test_graceful_stop_finishes_in_flight_then_refuses() -> None:
    port = unused_port()
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(conn: hvsock.Connection) -> None:
        request = await conn.readline()
        started.set()
        await release.wait()
        await conn.write(b"done: " + request)

    host = hvsock.ServiceHost(grace=30)
    host.add(hvsock.Service("slow", port, slow), f"vsock://any:{port}")
    # stop() logs that it waits for the connections in flight right after it closed
    # the listeners: one connect after that record must be refused, no retry loop.
    waiting_logged = asyncio.Event()

    class Waiting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("stopping: waiting"):
                waiting_logged.set()

    async def run() -> tuple[bytes, BaseException | None]:
        await host.start()
        reader, writer = await hvsock.open_connection(target(port), timeout=10)
        writer.write(b"job 1\n")
        await writer.drain()
        await asyncio.wait_for(started.wait(), 60)
        stopping = asyncio.create_task(host.stop())
        await asyncio.wait_for(waiting_logged.wait(), 60)
        refused: BaseException | None = None
        try:
            _, w2 = await hvsock.open_connection(target(port), timeout=5)
        except hvsock.NothingListeningError as exc:
            refused = exc
        else:
            w2.close()
            await w2.wait_closed()
        release.set()
        reply = await asyncio.wait_for(reader.read(), 60)
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(stopping, 60)
        return reply, refused

    logger = logging.getLogger("hvsock.service")
    handler, level = Waiting(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        reply, refused = asyncio.run(run())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert reply == b"done: job 1\n"
    assert isinstance(refused, hvsock.NothingListeningError)
