"""``hvsock demo``: the seed's "HV Socket Demo", a server and a client on the best transport here.

Order of preference: Hyper-V loopback (Windows, Python 3.12+); AF_VSOCK CID 1,
only when ``vsock_loopback`` is loaded (otherwise a vsock connect would leave
this machine for its hypervisor); else hybrid vsock through the emulated VMM
muxer that ships in :mod:`hvsock.testing`.
"""

from __future__ import annotations

import contextlib
import random
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from .. import _core
from .._core.addresses import Address, HyperVAddress, VsockAddress
from .._errors import HvsockError, TransportUnavailableError, UnsupportedError
from .._transports import api
from .._transports._common import close_write
from .._transports.features import has_hyperv, has_vsock, vsock_loopback_loaded
from ..testing import HybridVsockMuxer

TRANSPORTS = ("auto", "hyperv", "vsock", "hybrid")
MESSAGES = ("Hello from the client", "Hyper-V sockets need no network",
            "data streams only")
DEMO_TIMEOUT = 10.0


@dataclass
class DemoReport:
    transport: str
    why: str
    server: str
    client_target: str
    exchanged: list[tuple[str, str]] = field(default_factory=list)


def choose_transport(requested: str = "auto") -> tuple[str, str]:
    """(transport, why) for *requested*; a forced transport that cannot run is an error."""
    if requested not in TRANSPORTS:
        raise UnsupportedError(f"unknown demo transport {requested!r}; use one of "
                               + ", ".join(TRANSPORTS))
    if requested in ("auto", "hyperv") and has_hyperv():
        return "hyperv", "AF_HYPERV is available: Hyper-V loopback (HV_GUID_LOOPBACK)"
    if requested == "hyperv":
        raise UnsupportedError("the hyperv demo needs Windows and CPython 3.12+ (AF_HYPERV)")
    loopback = has_vsock() and vsock_loopback_loaded()
    if requested in ("auto", "vsock") and loopback:
        return "vsock", "vsock_loopback is loaded: AF_VSOCK to CID 1 stays in this kernel"
    if requested == "vsock":
        raise TransportUnavailableError(
            "the vsock demo needs the vsock_loopback module (`modprobe vsock_loopback`): "
            "without it a vsock connect leaves this machine for its hypervisor, which "
            "hvsock's demo never does")
    why = ("no Hyper-V sockets and no vsock_loopback here: hybrid vsock through an "
           "emulated Firecracker-style muxer (Unix sockets)")
    return "hybrid", why


@contextlib.contextmanager
def _endpoints(transport: str) -> Iterator[tuple[socket.socket, Address]]:
    """A listening 'server' socket and the address a client connects to."""
    if transport == "hyperv":  # pragma: no cover - Windows only
        port = random.randint(0x10000000, 0x7FFFFFFF)
        addr = HyperVAddress.for_port(_core.ids.LOOPBACK, port)
        with api.listen(addr) as server:
            yield server, addr
    elif transport == "vsock":
        with api.listen(VsockAddress(_core.ids.CID_ANY, _core.ids.PORT_ANY)) as server:
            port = server.getsockname()[1]
            yield server, VsockAddress(_core.ids.CID_LOCAL, port)
    else:
        with tempfile.TemporaryDirectory(prefix="hvsock-demo-") as tmp, \
                HybridVsockMuxer(f"{tmp}/vm.vsock") as muxer:
            port = 5000
            with muxer.guest_listen(port) as server:
                yield server, muxer.address(port)


def _serve_one(server: socket.socket, log: list[tuple[str, str]]) -> None:
    conn, _ = server.accept()
    with conn, conn.makefile("rb") as reader:
        count = 0
        for raw in reader:
            line = raw.decode().rstrip("\n")
            log.append(("server received", line))
            count += 1
            conn.sendall(f"ack {count}: {len(line)} bytes\n".encode())
        # The client half-closed: answer once more, then close.
        conn.sendall(f"bye: {count} messages\n".encode())


def run_demo(requested: str = "auto") -> DemoReport:
    """Run the demo once; return what happened. Raises HvsockError on failure."""
    transport, why = choose_transport(requested)
    with _endpoints(transport) as (server, target):
        report = DemoReport(transport, why, server=str(target), client_target=str(target))
        server_log: list[tuple[str, str]] = []
        server_error: list[BaseException] = []

        def serve() -> None:
            try:
                _serve_one(server, server_log)
            except BaseException as exc:  # reported by the client side below
                server_error.append(exc)

        server.settimeout(DEMO_TIMEOUT)
        thread = threading.Thread(target=serve, name="hvsock-demo-server", daemon=True)
        thread.start()
        with api.connect(target, timeout=DEMO_TIMEOUT) as client:
            client.settimeout(DEMO_TIMEOUT)
            replies = client.makefile("rb")
            for message in MESSAGES:
                client.sendall(message.encode() + b"\n")
                report.exchanged.append(("client sent", message))
                report.exchanged.append(("client got", replies.readline().decode().strip()))
            close_write(client)
            report.exchanged.append(("client", "half-closed (no more to send)"))
            report.exchanged.append(("client got", replies.readline().decode().strip()))
            if replies.readline() != b"":
                raise HvsockError("demo server sent more than expected after 'bye'")
            replies.close()
        thread.join(DEMO_TIMEOUT)
        if server_error:
            raise HvsockError(f"demo server failed: {server_error[0]}") from server_error[0]
        report.exchanged.extend(server_log)
    return report
