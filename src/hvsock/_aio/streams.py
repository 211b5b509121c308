"""``open_connection`` and ``start_server`` in the spirit of asyncio's, for every address.

Same timeouts, retries and errors as the sync layer: both run the one dial of
:mod:`hvsock._transports.dial`, here with the asyncio driver (:mod:`.drive`), so
cancelling a connect closes its socket.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from .._core.addresses import NAMED_ADDRESS_TYPES, Address, parse_address
from .._errors import UnsupportedError
from .._transports import api, dial
from .._transports._common import (
    DEFAULT_CONNECT_TIMEOUT,
    check_buffer_size,
    check_timeout,
    close_on_error,
)
from . import drive
from . import hyperv as aio_hyperv

STREAM_LIMIT = 2**16

ClientConnected = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]


async def connect_socket(
    address: Address | str,
    *,
    timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    retries: int = 0,
    retry_wait: float = 0.25,
    buffer_size: int | None = None,
    resolve: api.Resolver | None = None,
    reserved_port: bool | str = False,
) -> socket.socket:
    """Like :func:`hvsock.connect`, without blocking the loop. Returns a non-blocking socket.

    *resolve* looks a VM name up (in a thread), as for :func:`hvsock.connect`.
    """
    addr = parse_address(address)
    check_timeout(timeout)
    if buffer_size is not None:
        check_buffer_size(buffer_size)
    dial.check_reserved_port(reserved_port)
    # Looking a VM name up runs PowerShell: the driver runs it in a thread.
    resolver = api.named_resolver(addr, resolve) if isinstance(addr, NAMED_ADDRESS_TYPES) else None
    return await drive.run(
        dial.dial(
            addr,
            timeout=timeout,
            buffer_size=buffer_size,
            retries=retries,
            retry_wait=retry_wait,
            resolve=resolver,
            reserved_port=reserved_port,
        ),
        timeout,
    )


async def open_connection(
    address: Address | str,
    *,
    timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    retries: int = 0,
    retry_wait: float = 0.25,
    buffer_size: int | None = None,
    limit: int = STREAM_LIMIT,
    resolve: api.Resolver | None = None,
    reserved_port: bool | str = False,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to *address*; return asyncio's ``(StreamReader, StreamWriter)``.

    The same arguments and errors as :func:`hvsock.connect`.
    """
    sock = await connect_socket(
        address,
        timeout=timeout,
        retries=retries,
        retry_wait=retry_wait,
        buffer_size=buffer_size,
        resolve=resolve,
        reserved_port=reserved_port,
    )
    with close_on_error(sock):
        return await asyncio.open_connection(sock=sock, limit=limit)


async def start_server(
    client_connected_cb: ClientConnected,
    address: Address | str,
    *,
    backlog: int = 128,
    buffer_size: int | None = None,
    mode: int | None = 0o600,
    limit: int = STREAM_LIMIT,
    start_serving: bool = True,
    resolve: api.Resolver | None = None,
) -> asyncio.Server:
    """Listen on *address* and serve each connection with *client_connected_cb*.

    As :func:`asyncio.start_server`, with :func:`hvsock.listen`'s addresses and
    options. Closing the server leaves a Unix / hybrid socket file behind: remove
    it with :func:`hvsock.sockets.remove_socket_file`.
    """
    named = parse_address(address)
    if isinstance(named, NAMED_ADDRESS_TYPES):
        address = await asyncio.to_thread(api.named_resolver(named, resolve), named)
    listener = api.listen(address, backlog=backlog, buffer_size=buffer_size, mode=mode)
    with close_on_error(listener):
        if aio_hyperv.needs_thread(listener):  # pragma: no cover - Windows proactor only
            raise UnsupportedError(
                "asyncio's proactor loop cannot accept AF_HYPERV connections; use "
                "hvsock.ServiceHost (it accepts in a thread), or run this server on "
                "asyncio.WindowsSelectorEventLoopPolicy()"
            )
        listener.setblocking(False)
        return await asyncio.start_server(
            client_connected_cb, sock=listener, limit=limit, start_serving=start_serving
        )


__all__ = ["connect_socket", "open_connection", "start_server"]
