"""AF_HYPERV (Windows, CPython 3.12+). Kept thin: only this module touches the family.

Never run on Windows in hvsock's own CI (there is none); the logic around it
(addresses, option values, error translation) is tested on Linux.
"""

from __future__ import annotations

import math
import socket

from .._core.addresses import HyperVAddress
from .._errors import translate
from ._common import bind_and_listen, set_stream_buffer_size
from .features import require_hyperv

HV_PROTOCOL_RAW = 1
HVSOCKET_CONNECT_TIMEOUT = 1
HVSOCKET_CONNECT_TIMEOUT_MAX = 300_000
HVSOCKET_CONTAINER_PASSTHRU = 2
HVSOCKET_CONNECTED_SUSPEND = 4
HVSOCKET_HIGH_VTL = 8


def where(address: HyperVAddress) -> str:
    vm = address.vm_name or f"VM {address.vm_id}"
    port = address.port
    service = f"service {address.service_id}" + (f" (port {port})" if port is not None else "")
    return f"{service} of {vm}"


def connect_timeout_ms(timeout: float) -> int:
    """HVSOCKET_CONNECT_TIMEOUT's value for *timeout* seconds (rounded up, capped)."""
    return max(1, min(HVSOCKET_CONNECT_TIMEOUT_MAX, math.ceil(timeout * 1000)))


def new_socket() -> socket.socket:
    family = require_hyperv()
    proto = getattr(socket, "HV_PROTOCOL_RAW", HV_PROTOCOL_RAW)
    try:
        return socket.socket(family, socket.SOCK_STREAM, proto)
    except OSError as exc:  # pragma: no cover - Windows only
        raise translate(exc, op="socket", family="hyperv", where="AF_HYPERV") from exc


def listen(
    address: HyperVAddress, *, backlog: int, buffer_size: int | None
) -> socket.socket:  # pragma: no cover - Windows only
    sock = new_socket()
    return bind_and_listen(
        sock,
        address.sockaddr,
        backlog,
        family="hyperv",
        where=where(address),
        before_bind=None
        if buffer_size is None
        else lambda: set_stream_buffer_size(sock, buffer_size),
    )
