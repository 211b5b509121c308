"""Connecting to the relay's target without blocking its loop.

A dial is a generator: it yields ``(socket, IN or OUT)`` to wait for, and returns
the connected socket; errors come out as hvsock errors with the same messages as
:func:`hvsock.connect`. TCP to a literal IP, Unix, vsock and hybrid (with its
``CONNECT``/``OK`` handshake) dial on the loop. Anything else (host names, AF_HYPERV,
a Unix listener whose backlog is full) raises :class:`UseThread` before its first
yield, and the relay runs the blocking :func:`hvsock.connect` in a worker thread.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import socket
from collections.abc import Generator
from typing import Any

from .._core import handshake
from .._core.addresses import Address, HybridAddress, TcpAddress, UnixAddress, VsockAddress
from .._errors import HvsockError, translate
from .._transports import hybrid, vsock
from .._transports._common import close_on_error, set_stream_buffer_size
from ._poll import IN, OUT

Dial = Generator[tuple[socket.socket, int], None, socket.socket]

#: Made non-blocking at creation where the OS can (one call fewer per connection).
_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)
_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK, errno.EALREADY})


class UseThread(Exception):
    """This target is dialled with the blocking connect, in a thread."""


def dial(address: Address, *, timeout: float | None, buffer_size: int | None) -> Dial:
    """A dial generator for *address* (see the module docstring)."""
    if isinstance(address, TcpAddress):
        return _tcp(address, buffer_size)
    if isinstance(address, UnixAddress):
        return _unix(address.sockaddr, address.path, "unix", buffer_size)
    if isinstance(address, HybridAddress):
        return _hybrid(address, buffer_size)
    if isinstance(address, VsockAddress):
        return _vsock(address, timeout, buffer_size)
    return _thread()


def _thread() -> Dial:
    raise UseThread
    yield  # pragma: no cover - makes this a generator


def _error(sock: socket.socket) -> int:
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))


def _established(sock: socket.socket) -> bool:
    """True if a connect in progress has in fact completed (loopback completes at once).

    One call instead of a trip round the poll loop per connection.
    """
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def _os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@functools.lru_cache(maxsize=64)
def _ip_family(host: str) -> socket.AddressFamily | None:
    """AF_INET / AF_INET6 for a literal IP, None for a name or a scoped IPv6 address."""
    if "%" in host:
        return None  # let getaddrinfo work the scope out
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def _tcp(address: TcpAddress, buffer_size: int | None) -> Dial:
    family = _ip_family(address.host)
    if family is None:
        raise UseThread  # a name: resolving it may block
    sock = socket.socket(family, socket.SOCK_STREAM | _NONBLOCK)
    with close_on_error(sock):
        if not _NONBLOCK:
            sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if buffer_size is not None:
            set_stream_buffer_size(sock, buffer_size)
        code = sock.connect_ex(address.sockaddr)
        if code in _IN_PROGRESS:
            if _established(sock):
                code = 0
            else:
                yield sock, OUT
                code = _error(sock)
        if code:
            exc = _os_error(code)
            raise translate(exc, op="connect", family="tcp", where=str(address)) from exc
    return sock


def _unix(target: Any, where: str, family: str, buffer_size: int | None) -> Dial:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with close_on_error(sock):
        sock.setblocking(False)
        if buffer_size is not None:
            set_stream_buffer_size(sock, buffer_size)
        try:
            sock.connect(target)
        except BlockingIOError:
            # The listener's backlog is full; a non-blocking Unix connect never
            # completes later, so wait for it the blocking way, in a thread.
            raise UseThread from None
        except OSError as exc:
            raise translate(exc, op="connect", family=family, where=where) from exc
    return sock
    yield  # pragma: no cover - makes this a generator


def _hybrid(address: HybridAddress, buffer_size: int | None) -> Dial:
    sock = yield from _unix(address.uds_path, hybrid.vmm_where(address), "hybrid",
                            buffer_size)
    with close_on_error(sock):
        try:
            # A fresh socket's buffer takes these few bytes whole.
            sock.send(handshake.encode_connect(address.port))
            seen = -1
            while True:
                yield sock, IN
                # Peek, so bytes after the reply (the guest's first bytes) stay queued.
                try:
                    data = sock.recv(handshake.MAX_LINE, socket.MSG_PEEK)
                except (BlockingIOError, InterruptedError):
                    continue
                parsed = handshake.parse_ok(data)
                if parsed is not None:
                    sock.recv(parsed[1])
                    return sock
                if not data or len(data) == seen:
                    # Readable with nothing new: the VMM hung up mid-reply.
                    raise hybrid.reply_cut_short(address, data)
                seen = len(data)
        except HvsockError:
            raise
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise hybrid.no_listener(address, exc.errno) from exc
        except OSError as exc:
            raise translate(exc, op="connect", family="hybrid",
                            where=hybrid.where(address)) from exc


def _vsock(address: VsockAddress, timeout: float | None, buffer_size: int | None) -> Dial:
    sock = vsock.prepare(address, timeout=timeout, buffer_size=buffer_size)
    with close_on_error(sock):
        sock.setblocking(False)
        code = sock.connect_ex(address.sockaddr)
        if code in _IN_PROGRESS:
            yield sock, OUT
            code = _error(sock)
        if code:
            exc = _os_error(code)
            raise translate(exc, op="connect", family="vsock",
                            where=vsock.where(address)) from exc
    return sock
