"""The file-copy channel: frames of messages and raw file bytes over one blocking socket."""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Callable

from ..._core import filecopy as fc
from ..._core.framing import HEADER_SIZE, FrameReader, encode_frame
from ..._errors import (
    ArgumentError,
    Cancelled,
    HvsockError,
    PeerClosedError,
    ProtocolError,
    RemoteError,
)
from ..._transports.recv import recv_into_exactly

__all__: list[str] = []


#: Bytes per read/write on the data path: big enough that Python's per-call cost
#: vanishes next to the copy itself.
CHUNK = 1024 * 1024
#: A block of zeros (a file that shrank is padded with it; a hole is recognised by it).
ZERO_VIEW = memoryview(bytes(CHUNK))

#: A progress hook on the data path: called with the bytes just moved.
Tick = Callable[[int], None]


def error_code(exc: BaseException) -> str:
    """The short code an ERROR message carries for *exc*."""
    code = getattr(exc, "errno", None)
    if isinstance(exc, ArgumentError):
        return "bad_path"
    return errno.errorcode.get(code, "failed").lower() if isinstance(code, int) else "failed"


class Channel:
    """Frames of file-copy messages and raw data over one blocking socket, buffered.

    Small writes (messages, small files) are queued and sent together; the
    queue goes out before this side waits to read (so neither side can wait on
    the other) or once it holds FLUSH_AT bytes. Reads come through a buffer
    too, except large blocks, which land straight in the caller's memory. A
    tree of small files thus costs a few system calls per batch, not per file.
    """

    FLUSH_AT = 256 * 1024
    READ_AHEAD = 256 * 1024

    def __init__(self, sock: socket.socket, cancel: threading.Event | None = None) -> None:
        self.sock = sock
        self.cancel = cancel
        self._out: list[bytes] = []
        self._out_size = 0
        self._in = bytearray()
        self._frames = FrameReader(fc.MAX_MESSAGE)

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("the copy was cancelled")

    # -- writing --------------------------------------------------------------
    def send(self, message: fc.Message) -> None:
        self._queue(encode_frame(fc.encode(message), fc.MAX_MESSAGE))

    def write(self, data: memoryview | bytes) -> None:
        """Raw bytes of a file: queued when small, else sent at once (after the queue)."""
        if len(data) < 64 * 1024:
            self._queue(bytes(data))
            return
        self.flush()
        self.sock.sendall(data)

    def _queue(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= self.FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self._out_size = 0
            self.sock.sendall(data)

    # -- reading --------------------------------------------------------------
    def _fill(self, need: int) -> bool:
        """At least *need* bytes buffered; False at EOF before that."""
        while len(self._in) < need:
            self.flush()
            data = self.sock.recv(max(self.READ_AHEAD, need - len(self._in)))
            if not data:
                return False
            self._in += data
        return True

    def recv_or_eof(self) -> fc.Message | None:
        """The next message, or None at a clean EOF (between messages)."""
        while True:
            got = self._frames.take(self._in)
            if not isinstance(got, int):
                return fc.decode(got[1])
            if not self._fill(got):
                if not self._in:
                    return None
                raise PeerClosedError(
                    "the peer closed the connection in the middle of a "
                    "message" + (" header" if len(self._in) < HEADER_SIZE else "")
                )

    def recv(self, expect: str = "a message") -> fc.Message:
        """The next message; :class:`ProtocolError` at EOF."""
        message = self.recv_or_eof()
        if message is None:
            raise PeerClosedError(f"the peer closed the connection while we waited for {expect}")
        return message

    def recv_into(self, view: memoryview) -> None:
        got = min(len(self._in), len(view))
        if got:
            view[:got] = self._in[:got]
            del self._in[:got]
        if got < len(view) and len(view) - got < 64 * 1024:
            if not self._fill(len(view) - got):
                raise PeerClosedError("the peer closed the connection in the middle of a file")
            view[got:] = self._in[: len(view) - got]
            del self._in[: len(view) - got]
            return
        if got < len(view):
            self.flush()
            got += recv_into_exactly(self.sock, view[got:])
            if got < len(view):
                raise PeerClosedError(
                    f"the peer closed the connection in the middle of "
                    f"a file ({got} of {len(view)} bytes of a block)"
                )


def remote_error(message: fc.Message, doing: str) -> HvsockError:
    """What to raise when the peer answered *message* instead of what we expected."""
    if isinstance(message, fc.Error):
        return RemoteError(message.code, message.message)
    return ProtocolError(f"unexpected {type(message).__name__} while {doing}")
