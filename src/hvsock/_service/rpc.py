"""Turn a table of methods into a service handler speaking hvsock's framed JSON RPC."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .._core.framing import (
    HEADER_SIZE,
    ErrorReply,
    Message,
    Request,
    Response,
    decode_message,
    encode_message,
)
from .._errors import ArgumentError, IdleTimeoutError, ProtocolError, RemoteError
from .._validate import quote
from . import frames
from .connection import Connection, service_limit_named

Method = Callable[..., Any]


#: Set on a handler that speaks hvsock frames from its first byte (rpc_handler's do):
#: ServiceHost then tells a refused peer why, in an error frame, before closing.
FRAMED_ATTRIBUTE = "hvsock_framed"


def rpc_handler(methods: Mapping[str, Method]) -> Callable[[Connection], Any]:
    """An async handler that answers ``{"method": name, "params": p}`` with ``methods[name]``.

    A method gets ``(connection, params)`` and returns a JSON-able result (it may
    be ``async``; a plain one must not block). :class:`RemoteError` raised by a
    method becomes an error reply with its code; any other exception becomes
    ``internal_error`` and is logged. Unknown methods get ``unknown_method``; a
    result over the service's ``max_message_size`` gets ``result_too_large``. A
    malformed or oversized request ends the connection (:class:`ProtocolError`), and
    a request must arrive whole within the idle timeout (:class:`IdleTimeoutError`).

    While an ``async`` method runs, a peer that hangs up cancels it, so a method
    that never returns does not keep its connection slot. Raises
    :class:`ArgumentError` for a bad *methods* table.
    """
    table = dict(methods)
    for name, fn in table.items():
        if not isinstance(name, str) or not name or not callable(fn):
            raise ArgumentError(f"rpc method {quote(name)} must map a non-empty name to a callable")

    async def handler(conn: Connection) -> None:
        stream = _Requests(conn)
        while True:
            message = await stream.next()
            if message is None:
                return
            if not isinstance(message, Request):
                raise ProtocolError(f"expected a request, got {type(message).__name__}")
            fn = table.get(message.method)
            if fn is None:
                await conn.write_message(
                    ErrorReply(
                        message.id,
                        "unknown_method",
                        f"no method {message.method!r}; known: {', '.join(sorted(table))}",
                    )
                )
                continue
            try:
                result = fn(conn, message.params)
                if inspect.isawaitable(result):
                    result = await stream.run_unless_gone(result, message.method)
                reply = encode_message(Response(message.id, result))
            except _PeerGone:
                return
            except RemoteError as exc:
                await conn.write_message(ErrorReply(message.id, exc.code, exc.remote_message))
                continue
            except Exception:
                conn.log.exception("method %r failed for peer %s", message.method, conn.peer)
                await conn.write_message(
                    ErrorReply(message.id, "internal_error", f"method {message.method!r} failed")
                )
                continue
            limit = conn.service.limits.max_message_size
            if len(reply) > limit:
                conn.log.warning(
                    "method %r returned %d bytes for peer %s, over the service's "
                    "max_message_size of %d (hvsock.Limits): answered result_too_large",
                    message.method,
                    len(reply),
                    conn.peer,
                    limit,
                )
                await conn.write_message(
                    ErrorReply(
                        message.id,
                        "result_too_large",
                        f"the result of {message.method!r} is {len(reply)} bytes, over the "
                        f"service's max_message_size of {limit} bytes; ask for less",
                    )
                )
                continue
            await conn.write_frame(reply)

    setattr(handler, FRAMED_ATTRIBUTE, True)
    return handler


class _PeerGone(Exception):
    """The peer hung up while a method ran."""


class _Requests:
    """The requests of one connection. While a method runs the connection is watched
    for a hang-up; bytes of requests the peer sends meanwhile are kept in ``ahead``
    and read first."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.max = conn.service.limits.max_message_size
        self.ahead = bytearray()
        self.eof = False

    async def next(self) -> Message | None:
        """The next request; None at a clean EOF. The whole request must arrive within
        the idle timeout (the meaning of the idle timeout on every path)."""
        idle = self.conn.service.limits.idle_timeout
        try:
            body = await asyncio.wait_for(self._frame(), idle)
        except asyncio.TimeoutError:
            raise IdleTimeoutError(
                f"peer {self.conn.peer} did not send a whole request within {idle:g} s "
                "(the service's idle timeout)"
            ) from None
        return None if body is None else decode_message(body)

    async def _frame(self) -> bytes | None:
        with service_limit_named():
            return await frames.read_frame_with(self._readexactly, self.max)

    async def _readexactly(self, n: int) -> bytes:
        reader = self.conn.reader
        if not self.ahead:
            return await reader.readexactly(n)
        taken = bytes(self.ahead[:n])
        del self.ahead[:n]
        if len(taken) == n:
            return taken
        try:
            return taken + await reader.readexactly(n - len(taken))
        except asyncio.IncompleteReadError as exc:
            raise asyncio.IncompleteReadError(taken + exc.partial, n) from None

    async def run_unless_gone(self, work: Awaitable[Any], method: str) -> Any:
        """*work*'s result; if the peer hangs up first, cancel it and raise _PeerGone."""
        task = asyncio.ensure_future(work)
        try:
            while not task.done():
                # Read ahead at most one request's worth (back-pressure); then just wait.
                if self.eof or len(self.ahead) > self.max + HEADER_SIZE:
                    return await task
                watch = asyncio.ensure_future(self.conn.reader.read(65536))
                await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
                if not watch.done():
                    watch.cancel()
                try:
                    data = await watch
                except asyncio.CancelledError:
                    if not watch.cancelled():
                        raise
                    continue
                except (ConnectionError, OSError):
                    data = b""
                if data:
                    self.ahead += data
                    continue
                self.eof = True
                if not task.done():
                    self.conn.log.info(
                        "peer %s hung up while %r ran: cancelled it", self.conn.peer, method
                    )
                    raise _PeerGone
            return task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
