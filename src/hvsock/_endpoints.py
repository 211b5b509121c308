"""The public ``connect`` / ``listen`` family: VM names looked up, then the transports.

The transports take socket addresses only; a VM named in an address is looked up
here, one layer up (:func:`resolve_address`): a Hyper-V VM (``hvsock://wsl/5000``,
``hvsock://name:MyVM/5000``) with the Windows layer, a VM of this KVM host
(``vsock://name:web1:5000``, ``hybrid://name:fc1:52``) with the KVM layer. Everything
else is the transports' own function; the asyncio ones import asyncio only when called.
"""

from __future__ import annotations

import socket

from ._core.addresses import (
    Address,
    NamedHybridAddress,
    NamedVmAddress,
    NamedVsockAddress,
    SocketAddress,
    parse_address,
)
from ._transports import api
from ._transports._common import DEFAULT_CONNECT_TIMEOUT
from ._transports.api import listener_address, remove_socket_file, set_buffer_size, where
from ._transports.stream import DEFAULT_UNIX_MODE

TYPE_CHECKING = False  # not typing's: docs/architecture.md, "Start-up rules"
if TYPE_CHECKING:
    import asyncio

    from ._aio.streams import ClientConnected
    from ._windows.vms import Runner

# The helpers that need no name lookup are the transports' own, re-exported so callers
# import one module.
__all__ = [
    "connect",
    "connect_socket",
    "listen",
    "listener_address",
    "open_connection",
    "remove_socket_file",
    "resolve_address",
    "set_buffer_size",
    "start_server",
    "where",
]


def resolve(address: Address) -> SocketAddress:
    """*address* with a VM name looked up (runs PowerShell on Windows; about a second)."""
    return resolve_address(address)


def resolve_address(address: Address | str, runner: Runner | None = None) -> SocketAddress:
    """*address* with a VM it names looked up; other addresses come back as they are.

    ``hvsock://name:MyVM/...`` and ``hvsock://wsl/...`` become a ``HyperVAddress`` (on
    the Windows host: PowerShell, about a second; *runner* runs it, for tests).
    ``vsock://name:web1:5100`` becomes ``vsock://<its CID>:5100`` and
    ``hybrid://name:fc1:52`` ``hybrid://<its socket>:52`` (on a KVM host: libvirt,
    ``/proc`` and the VMMs' APIs, see ``hvsock vms``). Resolve once and reuse the
    result when connecting often. Raises :class:`VmNotFoundError` (Hyper-V) or
    :class:`AddressError` (KVM host) for an unknown name, :class:`AddressError` for an
    ambiguous one, :class:`UnreachableError` for a VM that is not running, and
    :class:`UnsupportedError` where PowerShell is missing.
    """
    addr = parse_address(address)
    if isinstance(addr, NamedVmAddress):
        from ._windows.vms import resolve_address as resolve_hyperv

        return resolve_hyperv(addr, runner)
    if isinstance(addr, (NamedVsockAddress, NamedHybridAddress)):
        from ._kvm.vms import resolve_host_address

        return resolve_host_address(addr)
    return addr


def connect(
    address: Address | str,
    *,
    timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    retries: int = 0,
    retry_wait: float = 0.25,
    buffer_size: int | None = None,
    reserved_port: bool | str = False,
) -> socket.socket:
    return api.connect(
        address,
        timeout=timeout,
        retries=retries,
        retry_wait=retry_wait,
        buffer_size=buffer_size,
        resolve=resolve,
        reserved_port=reserved_port,
    )


def listen(
    address: Address | str,
    *,
    backlog: int = 128,
    buffer_size: int | None = None,
    mode: int | None = DEFAULT_UNIX_MODE,
) -> socket.socket:
    return api.listen(address, backlog=backlog, buffer_size=buffer_size, mode=mode, resolve=resolve)


async def connect_socket(
    address: Address | str,
    *,
    timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    retries: int = 0,
    retry_wait: float = 0.25,
    buffer_size: int | None = None,
    reserved_port: bool | str = False,
) -> socket.socket:
    """Like :func:`hvsock.connect`, without blocking the loop; a non-blocking socket.

    Cancelling it closes the socket being connected. Raises as :func:`hvsock.connect`.
    """
    from ._aio import streams

    return await streams.connect_socket(
        address,
        timeout=timeout,
        retries=retries,
        retry_wait=retry_wait,
        buffer_size=buffer_size,
        resolve=resolve,
        reserved_port=reserved_port,
    )


async def open_connection(
    address: Address | str,
    *,
    timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    retries: int = 0,
    retry_wait: float = 0.25,
    buffer_size: int | None = None,
    limit: int = 2**16,
    reserved_port: bool | str = False,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to *address*; return asyncio's ``(StreamReader, StreamWriter)``.

    The same arguments and errors as :func:`hvsock.connect` (*reserved_port* too).
    """
    from ._aio import streams

    return await streams.open_connection(
        address,
        timeout=timeout,
        retries=retries,
        retry_wait=retry_wait,
        buffer_size=buffer_size,
        limit=limit,
        resolve=resolve,
        reserved_port=reserved_port,
    )


async def start_server(
    client_connected_cb: ClientConnected,
    address: Address | str,
    *,
    backlog: int = 128,
    buffer_size: int | None = None,
    mode: int | None = DEFAULT_UNIX_MODE,
    limit: int = 2**16,
    start_serving: bool = True,
) -> asyncio.Server:
    """Listen on *address* and serve each connection with *client_connected_cb*.

    As :func:`asyncio.start_server`, with :func:`hvsock.listen`'s addresses and
    options. Closing the server leaves a Unix / hybrid socket file behind: remove
    it with :func:`hvsock.sockets.remove_socket_file`. Raises as :func:`hvsock.listen`.
    """
    from ._aio import streams

    return await streams.start_server(
        client_connected_cb,
        address,
        backlog=backlog,
        buffer_size=buffer_size,
        mode=mode,
        limit=limit,
        start_serving=start_serving,
        resolve=resolve,
    )


# The documentation is the transports' (one text): only the name lookup is added here.
connect.__doc__ = api.connect.__doc__
listen.__doc__ = api.listen.__doc__
