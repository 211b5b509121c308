"""Hybrid vsock, host side (Firecracker, Cloud Hypervisor, vhost-device-vsock).

Connect: dial the VMM's Unix socket, send ``CONNECT <port>``, read ``OK <n>``.
Listen: guest connections to host port *p* arrive at ``<uds_path>_<p>``.
"""

from __future__ import annotations

import errno
import socket

from .._core.addresses import HybridAddress
from .._errors import (
    ConnectTimeoutError,
    HandshakeError,
    HvsockError,
    NothingListeningError,
)
from .stream import unix_listen_path


def where(address: HybridAddress) -> str:
    return f"guest port {address.port} behind {address.uds_path}"


def vmm_where(address: HybridAddress) -> str:
    """How messages name the VMM's own socket (the first step of a connect)."""
    return f"the VMM socket {address.uds_path}"


def no_listener(address: HybridAddress, code: int | None = None) -> NothingListeningError:
    return NothingListeningError(
        f"the VMM at {address.uds_path} closed the connection: nothing in the guest "
        f"listens on port {address.port}; start the guest service first (or pass "
        "retries=N to wait for it)",
        errno=code or errno.ECONNRESET,
    )


def reply_cut_short(address: HybridAddress, buffer: bytes) -> HvsockError:
    """The error for a VMM that hung up before a whole reply line."""
    if buffer:
        return HandshakeError(
            f"the VMM at {address.uds_path} closed the connection in the middle of "
            f"its reply ({buffer!r})"
        )
    return no_listener(address)


def reply_timeout(address: HybridAddress) -> ConnectTimeoutError:
    return ConnectTimeoutError(
        f"the VMM at {address.uds_path} did not answer CONNECT {address.port} in "
        "time; is it a hybrid vsock socket? raise the timeout if the VM is slow",
        errno=errno.ETIMEDOUT,
    )


def listen(
    address: HybridAddress, *, backlog: int, mode: int | None, buffer_size: int | None
) -> socket.socket:
    return unix_listen_path(
        address.listen_path,
        address.listen_path,
        backlog=backlog,
        mode=mode,
        buffer_size=buffer_size,
        family_name="hybrid",
    )
