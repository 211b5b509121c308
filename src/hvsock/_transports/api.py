"""``connect`` and ``listen`` for every address kind: the sync entry points."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable

from .._core.addresses import (
    NAMED_ADDRESS_TYPES,
    Address,
    HybridAddress,
    HyperVAddress,
    NamedAddress,
    NamedVmAddress,
    NamedVsockAddress,
    SocketAddress,
    TcpAddress,
    UnixAddress,
    VsockAddress,
    parse_address,
)
from .._errors import ArgumentError, UnsupportedError
from .._validate import instance, quote, whole_number
from . import dial, stream, sync
from ._common import (
    DEFAULT_CONNECT_TIMEOUT,
    check_buffer_size,
    check_timeout,
    set_stream_buffer_size,
)
from .stream import DEFAULT_UNIX_MODE

TYPE_CHECKING = False  # not typing's: docs/architecture.md, "Start-up rules"
if TYPE_CHECKING:
    from typing import Any

Resolver = Callable[[Address], SocketAddress]


def named_resolver(address: NamedAddress, resolve: Resolver | None) -> Resolver:
    """The resolver for a VM name; first, that this machine has the socket family the
    looked-up address needs (a Hyper-V VM id, a CID; a hybrid socket needs none)."""
    from .features import require_hyperv, require_vsock

    if isinstance(address, NamedVmAddress):
        require_hyperv()
    elif isinstance(address, NamedVsockAddress):
        require_vsock()
    if resolve is None:
        raise UnsupportedError(
            f"{address} names a VM: look it up first (hvsock.resolve_address), or connect "
            "with hvsock.connect, which does"
        )
    return resolve


def connect(
    address: Address | str,
    *,
    timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    retries: int = 0,
    retry_wait: float = 0.25,
    buffer_size: int | None = None,
    resolve: Resolver | None = None,
    reserved_port: bool | str = False,
) -> socket.socket:
    """Connect to *address* and return the connected, blocking ``socket.socket``.

    *timeout* bounds each attempt (connect, and the hybrid handshake); None waits
    as long as the OS does (AF_VSOCK's own default is 2 s). With *retries* > 0,
    transient failures (nothing listening yet, timed out, VM unreachable or
    rebooting) are retried after *retry_wait* seconds, doubling up to 5 s. A VM
    named in the address (``hvsock://wsl/5000``) is looked up at each attempt with
    *resolve* (given by the layer above: the transports know no VM names).
    *buffer_size* sets the socket's buffers (vsock buffer size, or SO_SNDBUF and
    SO_RCVBUF) before connecting. *reserved_port* binds an AF_VSOCK socket to a
    reserved source port (512-1023, see :func:`vsock.bind_reserved`) first, which only root
    (CAP_NET_BIND_SERVICE) may: services whose allow rule says ``"2:privileged"``
    let in only such peers. True: a reserved port or :class:`PermissionDeniedError`;
    ``"try"``: a reserved port when this process may bind one, else an ordinary one
    (and other address kinds connect as usual); False (the default): never.

    Raises :class:`AddressError`, :class:`UnsupportedError`,
    :class:`NothingListeningError`, :class:`ConnectTimeoutError`,
    :class:`UnreachableError`, :class:`PermissionDeniedError`,
    :class:`HandshakeError`, :class:`VmNotFoundError`, all :class:`HvsockError`.
    """
    named = parse_address(address)
    check_timeout(timeout)
    if buffer_size is not None:
        check_buffer_size(buffer_size)
    dial.check_reserved_port(reserved_port)
    resolver = named_resolver(named, resolve) if isinstance(named, NAMED_ADDRESS_TYPES) else None
    return sync.run(
        dial.dial(
            named,
            timeout=timeout,
            buffer_size=buffer_size,
            retries=retries,
            retry_wait=retry_wait,
            resolve=resolver,
            reserved_port=reserved_port,
        ),
        timeout,
    )


def listen(
    address: Address | str,
    *,
    backlog: int = 128,
    buffer_size: int | None = None,
    mode: int | None = DEFAULT_UNIX_MODE,
    resolve: Resolver | None = None,
) -> socket.socket:
    """Bind and listen on *address*; return the listening ``socket.socket``.

    Hybrid addresses listen at ``<uds_path>_<port>``, where the VMM forwards the
    guest's connections to host port *port*. Unix and hybrid listeners get file
    *mode* (0o600 by default; None keeps the umask's); a stale socket file with
    nobody listening is replaced, any other existing file is left alone and is
    an :class:`AddressInUseError`. The socket file stays after ``close()``:
    remove it with :func:`remove_socket_file` when done. A VM named in the address
    (``hvsock://wsl/5000``) is looked up first with *resolve*.
    """
    named = parse_address(address)
    whole_number(backlog, "backlog", 0, 65535)
    if mode is not None and (
        isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777
    ):
        raise ArgumentError(f"mode must be a permission number like 0o600, not {quote(mode)}")
    if buffer_size is not None:
        check_buffer_size(buffer_size)
    addr = (
        named_resolver(named, resolve)(named) if isinstance(named, NAMED_ADDRESS_TYPES) else named
    )
    return _LISTEN[type(addr)](addr, backlog, mode, buffer_size)


# The VM-socket modules load on first use (dial.family_module): see there.
_LISTEN: dict[type, Callable[[Any, int, int | None, int | None], socket.socket]] = {
    VsockAddress: lambda a, backlog, _mode, size: dial.family_module("vsock").listen(
        a, backlog=backlog, buffer_size=size
    ),
    HyperVAddress: lambda a, backlog, _mode, size: dial.family_module("hyperv").listen(
        a, backlog=backlog, buffer_size=size
    ),
    HybridAddress: lambda a, backlog, mode, size: dial.family_module("hybrid").listen(
        a, backlog=backlog, mode=mode, buffer_size=size
    ),
    TcpAddress: lambda a, backlog, _mode, size: stream.tcp_listen(
        a, backlog=backlog, buffer_size=size
    ),
    UnixAddress: lambda a, backlog, mode, size: stream.unix_listen(
        a, backlog=backlog, mode=mode, buffer_size=size
    ),
}


def where(address: Address) -> str:
    """How error messages name *address* ("port 5000 of CID 3", ...)."""
    return dial.WHERE.get(type(address), str)(address)


def listener_address(listener: socket.socket, address: Address | str) -> Address:
    """The address *listener* really listens on (the chosen port when ``any``/0 was asked)."""
    addr = parse_address(address)
    instance(listener, socket.socket, "listener")
    if isinstance(addr, VsockAddress):
        return VsockAddress(addr.cid, listener.getsockname()[1])
    if isinstance(addr, TcpAddress):
        return TcpAddress(addr.host, listener.getsockname()[1])
    return addr


def remove_socket_file(address: Address | str) -> None:
    """Remove the socket file a Unix or hybrid listener made (no-op for other kinds)."""
    addr = parse_address(address)
    path: str | None = None
    if isinstance(addr, HybridAddress):
        path = addr.listen_path
    elif isinstance(addr, UnixAddress) and not addr.abstract:
        path = addr.path
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def set_buffer_size(sock: socket.socket, size: int) -> None:
    """Set a socket's buffer size: the vsock buffer for AF_VSOCK, else SO_SNDBUF/SO_RCVBUF."""
    if getattr(socket, "AF_VSOCK", None) == sock.family:
        from . import vsock

        vsock.set_buffer_size(sock, size)
    else:
        set_stream_buffer_size(sock, size)
