"""The demo behind ``hvsock demo``: the seed's "HV Socket Demo", working anywhere.

A demo service is declared with the service framework, served by a
:class:`ServiceHost`, and called by a client, over the best transport here:
Hyper-V loopback (Windows, Python 3.12+); AF_VSOCK to CID 1, only when
``vsock_loopback`` is loaded (otherwise a vsock connect would leave this machine
for its hypervisor); else hybrid vsock through the emulated VMM muxer of
:mod:`hvsock._server.muxer` (also in :mod:`hvsock.testing`), with the service on
the host side and the client as the guest.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import _endpoints
from .._core import ids
from .._core.addresses import Address, HyperVAddress, VsockAddress
from .._errors import HvsockError, TransportUnavailableError, UnsupportedError
from .._server.muxer import HybridVsockMuxer
from .._service.connection import Connection
from .._service.declaration import Service
from .._service.frames import RpcClient
from .._service.host import ServiceHost
from .._service.rpc import rpc_handler
from .._transports._common import close_write
from .._transports.features import has_hyperv, has_vsock, vsock_loopback_loaded

TRANSPORTS = ("auto", "hyperv", "vsock", "hybrid")
MESSAGES = ("Hello from the client", "Hyper-V sockets need no network", "data streams only")
DEMO_NAME = "HV Socket Demo"
DEMO_TIMEOUT = 10.0


@dataclass
class DemoReport:
    transport: str
    why: str
    service: str
    service_id: str
    address: str
    registration: str
    exchanged: list[tuple[str, str]] = field(default_factory=list)


def choose_transport(requested: str = "auto") -> tuple[str, str]:
    """(transport, why) for *requested*; a forced transport that cannot run is an error."""
    if requested not in TRANSPORTS:
        raise UnsupportedError(
            f"unknown demo transport {requested!r}; use one of " + ", ".join(TRANSPORTS)
        )
    if requested in ("auto", "hyperv") and has_hyperv():
        return "hyperv", "AF_HYPERV is available: Hyper-V loopback (HV_GUID_LOOPBACK)"
    if requested == "hyperv":
        raise UnsupportedError("the hyperv demo needs Windows and CPython 3.12+ (AF_HYPERV)")
    if requested in ("auto", "vsock") and has_vsock() and vsock_loopback_loaded():
        return "vsock", "vsock_loopback is loaded: AF_VSOCK to CID 1 stays in this kernel"
    if requested == "vsock":
        raise TransportUnavailableError(
            "the vsock demo needs the vsock_loopback module (`modprobe vsock_loopback`): "
            "without it a vsock connect leaves this machine for its hypervisor, which "
            "hvsock's demo never does"
        )
    return "hybrid", (
        "no Hyper-V sockets and no vsock_loopback here: hybrid vsock through "
        "an emulated Firecracker-style muxer (Unix sockets)"
    )


def demo_service(port: int) -> Service:
    """The demo service: ``hello`` and ``echo`` methods over framed JSON RPC."""
    count = 0

    def hello(conn: Connection, params: Any) -> str:
        return f"Hello, {conn.peer}; this is {conn.service.name}"

    def echo(conn: Connection, params: Any) -> dict[str, object]:
        nonlocal count
        count += 1
        text = str(params.get("text", "")) if isinstance(params, dict) else ""
        return {"received": text, "bytes": len(text.encode()), "count": count}

    return Service(DEMO_NAME, port, rpc_handler({"hello": hello, "echo": echo}))


Connector = Callable[[], socket.socket]


@contextlib.contextmanager
def _placement(transport: str, port: int) -> Iterator[tuple[Address, Connector | None]]:
    """Where the service listens, and how the client connects (None: to that address)."""
    if transport == "hyperv":  # pragma: no cover - Windows only
        yield HyperVAddress.for_port(ids.LOOPBACK, port), None
    elif transport == "vsock":
        yield VsockAddress(ids.CID_ANY, port), None
    else:
        with (
            tempfile.TemporaryDirectory(prefix="hvsock-demo-") as tmp,
            HybridVsockMuxer(f"{tmp}/vm.vsock") as muxer,
        ):
            # The service runs on the host side (it listens at <uds>_<port>); the
            # client plays the guest, which reaches host port <port> through the VMM.
            yield muxer.address(port), lambda: muxer.guest_connect(port, timeout=DEMO_TIMEOUT)


def _client(connect: Connector) -> list[tuple[str, str]]:
    log: list[tuple[str, str]] = []
    with connect() as sock:
        sock.settimeout(DEMO_TIMEOUT)
        rpc = RpcClient(sock)
        log.append(("client called", "hello"))
        log.append(("service said", str(rpc.call("hello"))))
        for message in MESSAGES:
            log.append(("client sent", message))
            reply = rpc.call("echo", {"text": message})
            log.append(
                (
                    "service replied",
                    f"#{reply['count']}: {reply['bytes']} bytes, {reply['received']!r}",
                )
            )
        close_write(sock)
        log.append(("client", "half-closed its side"))
        if sock.recv(1) != b"":
            raise HvsockError("demo service sent data after the last reply")
        log.append(("service", "saw EOF and closed the connection"))
    return log


async def _run(requested: str) -> DemoReport:
    transport, why = choose_transport(requested)
    port = random.randint(20000, 60000) if transport != "hybrid" else 5000
    service = demo_service(port)
    registration = (
        "not needed: Hyper-V loopback with a VSOCK template id"
        if transport == "hyperv"
        else "not needed here (registration is a Windows host step)"
    )
    with _placement(transport, port) as (address, connector):
        host = ServiceHost(grace=2.0)
        host.add(service, address)
        async with host:
            served = host.addresses[DEMO_NAME]
            if connector is None:
                target = VsockAddress(ids.CID_LOCAL, port) if transport == "vsock" else served

                def connect_to_target() -> socket.socket:
                    return _endpoints.connect(target, timeout=DEMO_TIMEOUT)

                connector = connect_to_target
            exchanged = await asyncio.wait_for(
                asyncio.to_thread(_client, connector), DEMO_TIMEOUT * 2
            )
    return DemoReport(
        transport, why, DEMO_NAME, str(service.service_id), str(served), registration, exchanged
    )


def run_demo(requested: str = "auto") -> DemoReport:
    """Run the demo once; return what happened. Raises HvsockError on failure."""
    return asyncio.run(_run(requested))
