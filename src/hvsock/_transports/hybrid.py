"""Hybrid vsock, host side (Firecracker, Cloud Hypervisor, vhost-device-vsock).

Connect: dial the VMM's Unix socket, send ``CONNECT <port>``, read ``OK <n>``.
Listen: guest connections to host port *p* arrive at ``<uds_path>_<p>``.
"""

from __future__ import annotations

import errno
import socket

from .._core import handshake
from .._core.addresses import HybridAddress
from .._errors import (
    ConnectTimeoutError,
    HandshakeError,
    HvsockError,
    NothingListeningError,
    translate,
)
from ._common import Deadline, close_on_error, set_stream_buffer_size
from .stream import unix_connect_path, unix_listen_path


def where(address: HybridAddress) -> str:
    return f"guest port {address.port} behind {address.uds_path}"


def vmm_where(address: HybridAddress) -> str:
    """How messages name the VMM's own socket (the first step of a connect)."""
    return f"the VMM socket {address.uds_path}"


def connect(address: HybridAddress, *, timeout: float | None,
            buffer_size: int | None) -> socket.socket:
    """Connect to guest *address.port*; the timeout covers connect and handshake."""
    deadline = Deadline(timeout)
    sock = unix_connect_path(address.uds_path, vmm_where(address),
                             timeout=timeout, family_name="hybrid")
    with close_on_error(sock):
        if buffer_size is not None:
            set_stream_buffer_size(sock, buffer_size)
        try:
            sock.settimeout(deadline.remaining())
            sock.sendall(handshake.encode_connect(address.port))
            _read_ok(sock, address, deadline)
            sock.settimeout(None)
        except OSError as exc:
            if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                raise no_listener(address, exc.errno) from exc
            raise translate(exc, op="connect", family="hybrid", where=where(address)) from exc
    return sock


def no_listener(address: HybridAddress, code: int | None = None) -> NothingListeningError:
    return NothingListeningError(
        f"the VMM at {address.uds_path} closed the connection: nothing in the guest "
        f"listens on port {address.port}; start the guest service first (or pass "
        "retries=N to wait for it)", errno=code or errno.ECONNRESET)


def reply_cut_short(address: HybridAddress, buffer: bytes) -> HvsockError:
    """The error for a VMM that hung up before a whole reply line."""
    if buffer:
        return HandshakeError(
            f"the VMM at {address.uds_path} closed the connection in the middle of "
            f"its reply ({buffer!r})")
    return no_listener(address)


def reply_timeout(address: HybridAddress) -> ConnectTimeoutError:
    return ConnectTimeoutError(
        f"the VMM at {address.uds_path} did not answer CONNECT {address.port} in "
        "time; is it a hybrid vsock socket? raise the timeout if the VM is slow",
        errno=errno.ETIMEDOUT)


def _read_ok(sock: socket.socket, address: HybridAddress, deadline: Deadline) -> int:
    # One byte at a time: bytes after the reply line already belong to the
    # guest's stream and must stay in the socket for the caller. The line is at
    # most MAX_LINE bytes, so this costs a few dozen tiny reads once per connect.
    buffer = b""
    while True:
        remaining = deadline.remaining()
        try:
            if remaining is not None and remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            byte = sock.recv(1)
        except TimeoutError:
            raise reply_timeout(address) from None
        if not byte:
            raise reply_cut_short(address, buffer)
        buffer += byte
        parsed = handshake.parse_ok(buffer)
        if parsed is not None:
            return parsed[0]


def listen(address: HybridAddress, *, backlog: int, mode: int | None,
           buffer_size: int | None) -> socket.socket:
    return unix_listen_path(address.listen_path, address.listen_path, backlog=backlog,
                            mode=mode, buffer_size=buffer_size, family_name="hybrid")
