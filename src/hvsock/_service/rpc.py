"""Turn a table of methods into a service handler speaking hvsock's framed JSON RPC."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from .._core.framing import (
    ErrorReply,
    Request,
    Response,
    encode_message,
)
from .._errors import ArgumentError, ProtocolError, RemoteError
from .._validate import quote
from .connection import Connection

Method = Callable[..., Any]


def rpc_handler(methods: Mapping[str, Method]) -> Callable[[Connection], Any]:
    """An async handler that answers ``{"method": name, "params": p}`` with ``methods[name]``.

    A method gets ``(connection, params)`` and returns a JSON-able result (it may
    be ``async``; a plain one must not block). :class:`RemoteError` raised by a
    method becomes an error reply with its code; any other exception becomes
    ``internal_error`` and is logged. Unknown methods get ``unknown_method``.
    A malformed or oversized frame ends the connection (:class:`ProtocolError`).
    """
    table = dict(methods)
    for name, fn in table.items():
        if not isinstance(name, str) or not name or not callable(fn):
            raise ArgumentError(f"rpc method {quote(name)} must map a non-empty name to a "
                                "callable")

    async def handler(conn: Connection) -> None:
        while True:
            message = await conn.read_message()
            if message is None:
                return
            if not isinstance(message, Request):
                raise ProtocolError(f"expected a request, got {type(message).__name__}")
            fn = table.get(message.method)
            if fn is None:
                await conn.write_message(ErrorReply(
                    message.id, "unknown_method",
                    f"no method {message.method!r}; known: {', '.join(sorted(table))}"))
                continue
            try:
                result = fn(conn, message.params)
                if inspect.isawaitable(result):
                    result = await result
                reply = encode_message(Response(message.id, result))
            except RemoteError as exc:
                await conn.write_message(ErrorReply(message.id, exc.code, exc.remote_message))
                continue
            except Exception:
                conn.log.exception("method %r failed for peer %s", message.method, conn.peer)
                await conn.write_message(ErrorReply(message.id, "internal_error",
                                                    f"method {message.method!r} failed"))
                continue
            await conn.write_frame(reply)

    return handler
