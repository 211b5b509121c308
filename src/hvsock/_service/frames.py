"""Frames and RPC over real connections: a sync adapter (sockets), an async one (streams)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from .._core.framing import (
    DEFAULT_MAX_FRAME,
    ErrorReply,
    FrameReader,
    Request,
    Response,
    decode_message,
    encode_frame,
    encode_message,
)
from .._errors import NotAllowedError, PeerClosedError, ProtocolError, RemoteError
from .._transports.recv import recv_frame as recv_frame_from

#: The error code a service sends a peer its allowlist refuses, before closing.
NOT_ALLOWED = "not_allowed"

# -- sync ----------------------------------------------------------------------


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
    got = recv_frame_from(sock, FrameReader(max_size), deadline)
    return None if got is None else got[1]


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
            send_frame(self.sock, encode_message(Request(msg_id, method, params)), self.max_size)
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
            raise PeerClosedError(f"the service closed the connection before answering {method!r}")
        return _result(decode_message(body), msg_id)


def _result(reply: object, msg_id: int) -> Any:
    if isinstance(reply, ErrorReply) and reply.code == NOT_ALLOWED:
        raise NotAllowedError(
            f"refused by the service's allowlist ({reply.message}); ask "
            "its owner to add this peer to the service's allow rules"
        )
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


async def read_frame(
    reader: asyncio.StreamReader, max_size: int = DEFAULT_MAX_FRAME
) -> bytes | None:
    """The next frame's payload from a StreamReader, or None at a clean EOF."""
    return await read_frame_with(reader.readexactly, max_size)


async def read_frame_with(
    readexactly: Callable[[int], Awaitable[bytes]], max_size: int = DEFAULT_MAX_FRAME
) -> bytes | None:
    """:func:`read_frame` over any ``readexactly(n)`` that raises
    ``asyncio.IncompleteReadError`` at EOF, as ``StreamReader.readexactly`` does."""
    got = await read_next(readexactly, FrameReader(max_size))
    return None if got is None else got[1]


async def read_next(
    readexactly: Callable[[int], Awaitable[bytes]], reader: FrameReader
) -> tuple[int, bytes] | None:
    """The next ``(tag, body)`` *reader* completes, read through *readexactly*; None at
    EOF between frames. The asyncio driver of the one frame reader: each read asks for
    exactly the rest of a header or body, so a body is the very object the stream
    returned. Raises :class:`PeerClosedError` at EOF inside a frame, and the reader's
    :class:`ProtocolError` for a bad header (before any of an oversized body is read)."""
    while True:
        try:
            data = await readexactly(reader.wanted())
        except asyncio.IncompleteReadError as exc:
            if not exc.partial and reader.at_boundary():
                return None
            reader.feed(exc.partial)  # counted in the message; cannot complete a piece
            in_header, got, size = reader.progress()
            if in_header:
                raise PeerClosedError("connection closed in the middle of a frame header") from None
            raise PeerClosedError(
                f"connection closed in the middle of a frame ({got} of {size} bytes)"
            ) from None
        frames = reader.feed(data)
        if frames:
            return frames[0]


async def write_frame(
    writer: asyncio.StreamWriter, payload: bytes, max_size: int = DEFAULT_MAX_FRAME
) -> None:
    writer.write(encode_frame(payload, max_size))
    await writer.drain()


class AsyncRpcClient:
    """Request/response over asyncio streams, one request at a time."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_size: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.max_size = max_size
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    async def call(self, method: str, params: Any = None) -> Any:
        async with self._lock:
            msg_id = next(self._ids)
            await write_frame(
                self.writer, encode_message(Request(msg_id, method, params)), self.max_size
            )
            body = await read_frame(self.reader, self.max_size)
        if body is None:
            raise PeerClosedError(f"the service closed the connection before answering {method!r}")
        return _result(decode_message(body), msg_id)

    async def __aenter__(self) -> AsyncRpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
