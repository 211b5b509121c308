"""What a handler gets: the peer's identity, the service, and the byte stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from .._core.framing import Message, decode_message, encode_frame, encode_message
from .._errors import FrameTooLargeError, IdleTimeoutError
from .._server.peers import Peer
from . import frames

if TYPE_CHECKING:
    from .declaration import Service


@contextlib.contextmanager
def service_limit_named() -> Iterator[None]:
    """Frame-size errors name the setting a service has: ``max_message_size``."""
    try:
        yield
    except FrameTooLargeError as exc:
        raise FrameTooLargeError(
            str(exc).replace("max_frame_size", "max_message_size (hvsock.Limits)")
        ) from None


async def drain(recv: Callable[[int], Awaitable[bytes]], seconds: float, limit: int) -> None:
    """Read and drop what the peer sends, through *recv*, until its EOF: at most *seconds*
    (then :class:`asyncio.TimeoutError`) and *limit* bytes. The end of a clean close
    after our own half-close: closing with unread bytes would reset the connection."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    dropped = 0
    while dropped < limit and loop.time() < deadline:
        data = await asyncio.wait_for(recv(1 << 16), max(0.0, deadline - loop.time()))
        if not data:
            return
        dropped += len(data)


class Connection:
    """An accepted connection for an ``async`` handler.

    Reads and writes through it honour the service's idle timeout
    (:class:`IdleTimeoutError`); frame and message helpers honour its maximum
    message size. ``reader``/``writer`` are the plain asyncio streams underneath.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: Peer,
        service: Service,
        log: logging.Logger,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.service = service
        self.log = log
        self._idle = service.limits.idle_timeout
        self._max = service.limits.max_message_size

    async def _timed(self, awaitable: Any) -> Any:
        if self._idle is None:
            return await awaitable
        try:
            return await asyncio.wait_for(awaitable, self._idle)
        except asyncio.TimeoutError:
            raise IdleTimeoutError(
                f"peer {self.peer} was idle for {self._idle:g} s (the service's idle timeout)"
            ) from None

    async def read(self, n: int = 65536) -> bytes:
        """Up to *n* bytes; b"" at EOF."""
        data: bytes = await self._timed(self.reader.read(n))
        return data

    async def readexactly(self, n: int) -> bytes:
        data: bytes = await self._timed(self.reader.readexactly(n))
        return data

    async def readline(self) -> bytes:
        data: bytes = await self._timed(self.reader.readline())
        return data

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self._timed(self.writer.drain())

    def close_write(self) -> None:
        """Half-close: the peer reads EOF; we can still read what it sends."""
        if self.writer.can_write_eof():
            self.writer.write_eof()

    async def linger(self, seconds: float = 5.0, limit: int = 16 << 20) -> None:
        """Half-close, then read and drop what the peer still sends until it hangs up
        (at most *seconds* and *limit* bytes): the way to end a connection whose peer
        may still be sending when the handler is done.

        Closing a socket with unread bytes in it makes the kernel send a reset, and a
        reset throws away what the peer has not read yet, the last reply included (exec's
        EXIT, while the client still streams stdin to a command that stopped reading)."""
        try:
            self.close_write()
            await drain(self.reader.read, seconds, limit)
        except (OSError, asyncio.TimeoutError):
            pass

    async def read_frame(self) -> bytes | None:
        """The next length-prefixed frame, or None at a clean EOF."""
        with service_limit_named():
            frame: bytes | None = await self._timed(frames.read_frame(self.reader, self._max))
        return frame

    async def write_frame(self, payload: bytes) -> None:
        with service_limit_named():
            self.writer.write(encode_frame(payload, self._max))
        await self._timed(self.writer.drain())

    async def read_message(self) -> Message | None:
        body = await self.read_frame()
        return None if body is None else decode_message(body)

    async def write_message(self, message: Message) -> None:
        await self.write_frame(encode_message(message))


class SyncConnection:
    """An accepted connection for a plain (thread-pool) handler: a blocking socket.

    The socket's timeout is the service's idle timeout, so a silent peer makes
    ``recv`` (and the other methods here) raise :class:`IdleTimeoutError`, a
    ``TimeoutError``; on ``sock`` itself it is a plain ``TimeoutError``.
    """

    def __init__(
        self, sock: socket.socket, peer: Peer, service: Service, log: logging.Logger
    ) -> None:
        self.sock = sock
        self.peer = peer
        self.service = service
        self.log = log
        self._max = service.limits.max_message_size

    @contextlib.contextmanager
    def _idle(self) -> Iterator[None]:
        try:
            yield
        except TimeoutError:
            raise IdleTimeoutError(
                f"peer {self.peer} was idle for {self.sock.gettimeout() or 0:g} s (the "
                "service's idle timeout)"
            ) from None

    def recv(self, n: int = 65536) -> bytes:
        with self._idle():
            return self.sock.recv(n)

    def sendall(self, data: bytes) -> None:
        with self._idle():
            self.sock.sendall(data)

    def close_write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def recv_frame(self) -> bytes | None:
        """The next frame, or None at a clean EOF. The whole frame must arrive within
        the idle timeout, as on the asyncio path (a peer dripping a byte at a time
        cannot hold the connection): :class:`IdleTimeoutError` otherwise."""
        idle = self.sock.gettimeout()
        deadline = None if idle is None else time.monotonic() + idle
        try:
            with service_limit_named():
                return frames.recv_frame_by(self.sock, self._max, deadline)
        except TimeoutError:
            raise IdleTimeoutError(
                f"peer {self.peer} did not send a whole frame within {idle or 0:g} s (the "
                "service's idle timeout)"
            ) from None
        finally:
            with contextlib.suppress(OSError):
                self.sock.settimeout(idle)

    def send_frame(self, payload: bytes) -> None:
        with self._idle(), service_limit_named():
            frames.send_frame(self.sock, payload, self._max)
