"""AF_VSOCK (Linux): KVM/QEMU guests and hosts, Hyper-V Linux guests, the loopback transport."""

from __future__ import annotations

import socket
import struct

from .._core import ids
from .._core.addresses import VsockAddress
from .._errors import translate
from ._common import check_buffer_size, close_on_error
from .features import require_vsock

# Option names at level AF_VSOCK (vm_sockets.h); CPython exports only the first three.
SO_VM_SOCKETS_BUFFER_SIZE = 0
SO_VM_SOCKETS_BUFFER_MIN_SIZE = 1
SO_VM_SOCKETS_BUFFER_MAX_SIZE = 2
SO_VM_SOCKETS_PEER_HOST_VM_ID = 3
SO_VM_SOCKETS_TRUSTED = 5
# The 64-bit layout (a struct timeval of two longs); 8 is the y2038 variant.
SO_VM_SOCKETS_CONNECT_TIMEOUT = 6
SO_VM_SOCKETS_NONBLOCK_TXRX = 7


def where(address: VsockAddress) -> str:
    cid = ids.CID_NAMES.get(address.cid)
    cid_text = f"CID {address.cid}" + (f" ({cid})" if cid else "")
    return f"port {address.port} of {cid_text}"


def new_socket() -> socket.socket:
    family = require_vsock()
    try:
        return socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise translate(exc, op="socket", family="vsock", where="AF_VSOCK") from exc


def set_buffer_size(sock: socket.socket, size: int) -> None:
    """Set the vsock buffer size, widening the min/max bounds when *size* is outside them."""
    check_buffer_size(size)
    level = sock.family
    packed = struct.pack("Q", size)
    (current_max,) = struct.unpack("Q", sock.getsockopt(level, SO_VM_SOCKETS_BUFFER_MAX_SIZE, 8))
    (current_min,) = struct.unpack("Q", sock.getsockopt(level, SO_VM_SOCKETS_BUFFER_MIN_SIZE, 8))
    if size > current_max:
        sock.setsockopt(level, SO_VM_SOCKETS_BUFFER_MAX_SIZE, packed)
    if size < current_min:
        sock.setsockopt(level, SO_VM_SOCKETS_BUFFER_MIN_SIZE, packed)
    sock.setsockopt(level, SO_VM_SOCKETS_BUFFER_SIZE, packed)


def get_buffer_size(sock: socket.socket) -> int:
    (size,) = struct.unpack("Q", sock.getsockopt(sock.family, SO_VM_SOCKETS_BUFFER_SIZE, 8))
    return int(size)


def set_connect_timeout(sock: socket.socket, timeout: float) -> None:
    """The kernel's own connect timeout (default 2 s), so it agrees with ours."""
    seconds = int(timeout)
    micros = round((timeout - seconds) * 1_000_000)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, 0
    sock.setsockopt(sock.family, SO_VM_SOCKETS_CONNECT_TIMEOUT, struct.pack("qq", seconds, micros))


def prepare(address: VsockAddress, *, timeout: float | None,
            buffer_size: int | None) -> socket.socket:
    """A new, unconnected vsock socket with the buffer size and kernel connect timeout set."""
    sock = new_socket()
    with close_on_error(sock):
        try:
            if buffer_size is not None:
                set_buffer_size(sock, buffer_size)
            if timeout is not None:
                set_connect_timeout(sock, timeout)
        except OSError as exc:
            raise translate(exc, op="connect", family="vsock", where=where(address)) from exc
    return sock


def connect(address: VsockAddress, *, timeout: float | None,
            buffer_size: int | None) -> socket.socket:
    sock = prepare(address, timeout=timeout, buffer_size=buffer_size)
    with close_on_error(sock):
        try:
            sock.settimeout(timeout)
            sock.connect(address.sockaddr)
            sock.settimeout(None)
        except OSError as exc:
            raise translate(exc, op="connect", family="vsock", where=where(address)) from exc
    return sock


def listen(address: VsockAddress, *, backlog: int, buffer_size: int | None) -> socket.socket:
    sock = new_socket()
    with close_on_error(sock):
        op = "bind"
        try:
            if buffer_size is not None:
                set_buffer_size(sock, buffer_size)
            sock.bind(address.sockaddr)
            op = "listen"
            sock.listen(backlog)
        except OSError as exc:
            raise translate(exc, op=op, family="vsock", where=where(address)) from exc
    return sock
