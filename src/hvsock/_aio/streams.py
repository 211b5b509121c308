"""``open_connection`` and ``start_server`` in the spirit of asyncio's, for every address.

Same timeouts, retries and errors as the sync layer. Connects are native
non-blocking connects on the loop (``loop.sock_connect``; Unix sockets retry
their connect while the listener's backlog is full), so cancelling one closes
its socket; only AF_HYPERV on a proactor loop uses a thread (see
:mod:`hvsock._aio.hyperv`).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from .._core import handshake
from .._core.addresses import (
    Address,
    HybridAddress,
    HyperVAddress,
    NamedVmAddress,
    SocketAddress,
    TcpAddress,
    VsockAddress,
    parse_address,
)
from .._errors import (
    ConnectTimeoutError,
    HvsockError,
    UnsupportedError,
    is_transient,
    translate,
)
from .._transports import api, hybrid, stream, vsock
from .._transports._common import (
    DEFAULT_CONNECT_TIMEOUT,
    check_buffer_size,
    check_timeout,
    close_on_error,
    retry_waits,
    set_stream_buffer_size,
)
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
) -> socket.socket:
    """Like :func:`hvsock.connect`, without blocking the loop. Returns a non-blocking socket."""
    addr = parse_address(address)
    check_timeout(timeout)
    if buffer_size is not None:
        check_buffer_size(buffer_size)
    for wait in retry_waits(retries, retry_wait):
        try:
            return await _attempt(addr, timeout, buffer_size)
        except OSError as exc:
            if not is_transient(exc):
                raise
        await asyncio.sleep(wait)
    return await _attempt(addr, timeout, buffer_size)


async def _attempt(named: Address, timeout: float | None,
                   buffer_size: int | None) -> socket.socket:
    # Looking a VM name up runs PowerShell: keep it off the loop.
    addr = (await asyncio.to_thread(api.resolve, named) if isinstance(named, NamedVmAddress)
            else named)
    if isinstance(addr, HyperVAddress):
        return await aio_hyperv.connect(addr, timeout=timeout, buffer_size=buffer_size)
    progress = _Progress()
    try:
        if timeout is None:
            return await _connect(addr, timeout, buffer_size, progress)
        return await asyncio.wait_for(_connect(addr, timeout, buffer_size, progress), timeout)
    except asyncio.TimeoutError:
        if progress.backlog_full:
            raise stream.backlog_full(_dial_where(addr)) from None
        if isinstance(addr, HybridAddress):
            raise hybrid.reply_timeout(addr) from None
        raise ConnectTimeoutError(
            f"connect to {api.where(addr)} timed out; check that the peer is running and "
            "listening, or raise the timeout") from None


class _Progress:
    """What one connect attempt got to, for the message if it times out."""

    backlog_full = False


async def _connect_unix(sock: socket.socket, target: Any, progress: _Progress) -> None:
    # A non-blocking AF_UNIX connect never completes later: with the listener's
    # backlog full, Linux fails it at once with EAGAIN and it has to be made
    # again. (loop.sock_connect would wait for writability, which an unconnected
    # Unix socket always has, and hand back a socket that is not connected.)
    # Poll, backing off to 50 ms; the caller's wait_for bounds it.
    delay = 0.001
    while True:
        try:
            sock.connect(target)
            return
        except BlockingIOError:
            progress.backlog_full = True
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def _connect(addr: SocketAddress, timeout: float | None, buffer_size: int | None,
                   progress: _Progress) -> socket.socket:
    loop = asyncio.get_running_loop()
    if isinstance(addr, TcpAddress):
        return await _connect_tcp(addr, buffer_size)
    if isinstance(addr, VsockAddress):
        sock = vsock.prepare(addr, timeout=timeout, buffer_size=buffer_size)
        target: Any = addr.sockaddr
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = addr.uds_path if isinstance(addr, HybridAddress) else addr.sockaddr
    with close_on_error(sock):
        sock.setblocking(False)
        try:
            if buffer_size is not None and not isinstance(addr, VsockAddress):
                set_stream_buffer_size(sock, buffer_size)
            if sock.family == socket.AF_UNIX:
                await _connect_unix(sock, target, progress)
            else:
                await loop.sock_connect(sock, target)
            if isinstance(addr, HybridAddress):
                await loop.sock_sendall(sock, handshake.encode_connect(addr.port))
                await _read_ok(loop, sock, addr)
        except HvsockError:
            raise
        except OSError as exc:
            if isinstance(addr, HybridAddress) and isinstance(
                    exc, (ConnectionResetError, BrokenPipeError)):
                raise hybrid.no_listener(addr, exc.errno) from exc
            family = "hybrid" if isinstance(addr, HybridAddress) else addr.kind
            raise translate(exc, op="connect", family=family, where=_dial_where(addr)) from exc
    return sock


def _dial_where(addr: SocketAddress) -> str:
    """What the socket being connected is called in messages."""
    return hybrid.vmm_where(addr) if isinstance(addr, HybridAddress) else api.where(addr)


async def _read_ok(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                   addr: HybridAddress) -> None:
    # Byte by byte, as in the sync layer: what follows the line is the guest's.
    buffer = b""
    while True:
        byte = await loop.sock_recv(sock, 1)
        if not byte:
            raise hybrid.reply_cut_short(addr, buffer)
        buffer += byte
        if handshake.parse_ok(buffer) is not None:
            return


async def _connect_tcp(addr: TcpAddress, buffer_size: int | None) -> socket.socket:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise stream.unresolvable(addr, exc) from exc
    last: BaseException | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        with close_on_error(sock):
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if buffer_size is not None:
                    set_stream_buffer_size(sock, buffer_size)
                await loop.sock_connect(sock, sockaddr)
                return sock
            except OSError as exc:
                last = exc
                sock.close()
    assert last is not None
    raise translate(last, op="connect", family="tcp", where=str(addr)) from last


async def open_connection(
    address: Address | str,
    *,
    timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    retries: int = 0,
    retry_wait: float = 0.25,
    buffer_size: int | None = None,
    limit: int = STREAM_LIMIT,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to *address*; return asyncio's ``(StreamReader, StreamWriter)``.

    The same arguments and errors as :func:`hvsock.connect`.
    """
    sock = await connect_socket(address, timeout=timeout, retries=retries,
                                retry_wait=retry_wait, buffer_size=buffer_size)
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
) -> asyncio.Server:
    """Listen on *address* and serve each connection with *client_connected_cb*.

    As :func:`asyncio.start_server`, with :func:`hvsock.listen`'s addresses and
    options. Closing the server leaves a Unix / hybrid socket file behind: remove
    it with :func:`hvsock.remove_socket_file`.
    """
    if isinstance(parse_address(address), NamedVmAddress):
        address = await asyncio.to_thread(api.resolve, address)
    listener = api.listen(address, backlog=backlog, buffer_size=buffer_size, mode=mode)
    with close_on_error(listener):
        if aio_hyperv.needs_thread(listener):  # pragma: no cover - Windows proactor only
            raise UnsupportedError(
                "asyncio's proactor loop cannot accept AF_HYPERV connections; use "
                "hvsock.ServiceHost (it accepts in a thread), or run this server on "
                "asyncio.WindowsSelectorEventLoopPolicy()")
        listener.setblocking(False)
        return await asyncio.start_server(client_connected_cb, sock=listener, limit=limit,
                                          start_serving=start_serving)


__all__ = ["connect_socket", "open_connection", "start_server"]
