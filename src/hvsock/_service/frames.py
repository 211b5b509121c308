"""Frames and RPC over real connections: a sync adapter (sockets), an async one (streams)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .._core.framing import (
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    ErrorReply,
    Request,
    Response,
    check_max_size,
    decode_message,
    encode_frame,
    encode_message,
    frame_length,
)
from .._errors import NotAllowedError, ProtocolError, RemoteError

#: The error code a service sends a peer its allowlist refuses, before closing.
NOT_ALLOWED = "not_allowed"

# -- sync ----------------------------------------------------------------------


def _recv_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytes | None:
    """Exactly *n* bytes, or None at EOF before the first byte.

    With *deadline* (``time.monotonic()`` seconds) all *n* bytes must arrive by then
    (``TimeoutError``), however the peer spaces them: the socket's timeout is set to
    what is left before each read.
    """
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the frame did not arrive in time")
            sock.settimeout(left)
        k = sock.recv_into(view[got:])
        if k == 0:
            if got == 0:
                return None
            raise ProtocolError(f"connection closed in the middle of a frame "
                                f"({got} of {n} bytes)")
        got += k
    return bytes(buf)


def send_frame(sock: socket.socket, payload: bytes, max_size: int = DEFAULT_MAX_FRAME) -> None:
    """Send *payload* as one frame on a blocking socket."""
    sock.sendall(encode_frame(payload, max_size))


def recv_frame(sock: socket.socket, max_size: int = DEFAULT_MAX_FRAME) -> bytes | None:
    """The next frame's payload, or None at a clean EOF (between frames).

    Raises :class:`FrameTooLargeError` before reading the body of an oversized
    frame, and :class:`ProtocolError` for EOF inside a frame.
    """
    return recv_frame_by(sock, max_size, None)


def recv_frame_by(sock: socket.socket, max_size: int, deadline: float | None) -> bytes | None:
    """:func:`recv_frame`, with the whole frame due by *deadline* (``time.monotonic()``);
    ``TimeoutError`` after it. The socket's timeout is changed (the caller restores it)."""
    check_max_size(max_size)
    header = _recv_exact(sock, HEADER_SIZE, deadline)
    if header is None:
        return None
    length = frame_length(header, max_size)
    if length == 0:
        return b""
    body = _recv_exact(sock, length, deadline)
    if body is None:
        raise ProtocolError(f"connection closed before a {length}-byte frame body")
    return body


class RpcClient:
    """Blocking request/response over a socket: ``client.call("method", params)``."""

    def __init__(self, sock: socket.socket, max_size: int = DEFAULT_MAX_FRAME) -> None:
        self.sock = sock
        self.max_size = max_size
        self._ids = itertools.count(1)

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def call(self, method: str, params: Any = None) -> Any:
        """Send a request and wait for its answer; :class:`RemoteError` for an error reply."""
        msg_id = next(self._ids)
        try:
            send_frame(self.sock, encode_message(Request(msg_id, method, params)),
                       self.max_size)
        except (BrokenPipeError, ConnectionResetError):
            # A refused peer may find the connection closed before it sends; the
            # service's reason may still be waiting to be read.
            early: bytes | None = None
            with contextlib.suppress(OSError, ProtocolError):
                early = recv_frame(self.sock, self.max_size)
            if early is not None:
                _result(decode_message(early), msg_id)
            raise
        body = recv_frame(self.sock, self.max_size)
        if body is None:
            raise ProtocolError(f"the service closed the connection before answering {method!r}")
        return _result(decode_message(body), msg_id)


def _result(reply: object, msg_id: int) -> Any:
    if isinstance(reply, ErrorReply) and reply.code == NOT_ALLOWED:
        raise NotAllowedError(f"refused by the service's allowlist ({reply.message}); ask "
                              "its owner to add this peer to the service's allow rules")
    if isinstance(reply, ErrorReply):
        # A null id answers no request in particular; another id means we are out of step.
        if reply.id is not None and reply.id != msg_id:
            raise ProtocolError(f"error reply to request {reply.id}, expected {msg_id}")
        raise RemoteError(reply.code, reply.message)
    if not isinstance(reply, Response):
        raise ProtocolError("expected a response, got a request")
    if reply.id != msg_id:
        raise ProtocolError(f"response to request {reply.id}, expected {msg_id}")
    return reply.result


# -- async ---------------------------------------------------------------------


async def read_frame(reader: asyncio.StreamReader,
                     max_size: int = DEFAULT_MAX_FRAME) -> bytes | None:
    """The next frame's payload from a StreamReader, or None at a clean EOF."""
    return await read_frame_with(reader.readexactly, max_size)


async def read_frame_with(readexactly: Callable[[int], Awaitable[bytes]],
                          max_size: int = DEFAULT_MAX_FRAME) -> bytes | None:
    """:func:`read_frame` over any ``readexactly(n)`` that raises
    ``asyncio.IncompleteReadError`` at EOF, as ``StreamReader.readexactly`` does."""
    check_max_size(max_size)
    try:
        header = await readexactly(HEADER_SIZE)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ProtocolError("connection closed in the middle of a frame header") from None
    length = frame_length(header, max_size)
    try:
        return await readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError(f"connection closed in the middle of a frame "
                            f"({len(exc.partial)} of {length} bytes)") from None


async def write_frame(writer: asyncio.StreamWriter, payload: bytes,
                      max_size: int = DEFAULT_MAX_FRAME) -> None:
    writer.write(encode_frame(payload, max_size))
    await writer.drain()


class AsyncRpcClient:
    """Request/response over asyncio streams, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 max_size: int = DEFAULT_MAX_FRAME) -> None:
        self.reader = reader
        self.writer = writer
        self.max_size = max_size
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    async def call(self, method: str, params: Any = None) -> Any:
        async with self._lock:
            msg_id = next(self._ids)
            await write_frame(self.writer, encode_message(Request(msg_id, method, params)),
                              self.max_size)
            body = await read_frame(self.reader, self.max_size)
        if body is None:
            raise ProtocolError(f"the service closed the connection before answering {method!r}")
        return _result(decode_message(body), msg_id)

    async def __aenter__(self) -> AsyncRpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
