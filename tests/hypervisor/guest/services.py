"""Services the tests host in L2 (the ``serve`` step) and the kinds it knows."""

from __future__ import annotations

from typing import Any

import hvsock

from . import SERVICE_KINDS, payload, service_kind, step

#: ServiceHosts started by ``serve``, by port, until ``stop_serving``.
RUNNING: dict[int, hvsock.ServiceHost] = {}


def _allow(allow: list[Any] | None) -> set[Any] | None:
    return None if allow is None else set(allow)


@service_kind
def echo(port: int, allow: list[Any] | None = None) -> hvsock.Service:
    from hvsock._builtin.echo import echo_service  # not all of hvsock.services: L2 is slow

    return echo_service(port, name=f"echo-{port}", allow=_allow(allow))


@service_kind
def whoami(port: int, allow: list[Any] | None = None) -> hvsock.Service:
    """Answers the peer's CID as a line, then closes."""

    async def handler(conn: hvsock.Connection) -> None:
        await conn.write(f"{conn.peer.cid}\n".encode())

    return hvsock.Service(f"whoami-{port}", port, handler, allow=_allow(allow))


@service_kind
def stream(port: int, size: int = 1 << 30) -> hvsock.Service:
    """Sends up to *size* bytes (256 KiB blocks) until the peer goes: a long transfer."""
    block = payload(256 * 1024, seed=port)

    async def handler(conn: hvsock.Connection) -> None:
        for _ in range(size // len(block)):
            await conn.write(block)

    return hvsock.Service(f"stream-{port}", port, handler)


@step
async def serve(kind: str, port: int, **params: Any) -> int:
    """Host a service of *kind* on vsock://any:*port* in L2; returns the port."""
    if port in RUNNING:
        raise ValueError(f"port {port} already serves")
    factory = SERVICE_KINDS[kind]
    host = hvsock.ServiceHost(grace=1)
    host.add(factory(port, **params), f"vsock://any:{port}")
    await host.start()
    RUNNING[port] = host
    return port


@step
async def stop_serving(port: int) -> None:
    await RUNNING.pop(port).stop()
