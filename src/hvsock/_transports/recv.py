"""Reading a blocking socket until a count is met: exact byte counts, and whole frames.

The one loop for each: :func:`recv_into_exactly` fills a buffer (short only at EOF),
:func:`recv_frame` reads the next frame through a
:class:`~hvsock._core.framing.FrameReader`, asking for exactly what completes the piece
being read, so no byte after the frame is taken and a whole body is the very object
``recv`` returned. A *deadline* (``time.monotonic()`` seconds) bounds the whole read,
however the peer spaces its bytes: the socket's timeout is set to what is left before
each call (the caller restores it), and ``TimeoutError`` follows once it passed.
"""

from __future__ import annotations

import time

from .._core.framing import FrameReader
from .._errors import PeerClosedError

TYPE_CHECKING = False  # not typing's: docs/architecture.md, "Start-up rules"
if TYPE_CHECKING:
    import socket

__all__: list[str] = []


def _time_left(sock: socket.socket, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the bytes did not arrive in time")
    sock.settimeout(left)


def recv_into_exactly(
    sock: socket.socket, view: memoryview | bytearray, deadline: float | None = None
) -> int:
    """Fill *view* from *sock*; the count read, which is short only at EOF."""
    view = memoryview(view).cast("B")
    size = len(view)
    got = 0
    while got < size:
        if deadline is not None:
            _time_left(sock, deadline)
        n = sock.recv_into(view[got:])
        if n == 0:
            break
        got += n
    return got


def recv_frame(
    sock: socket.socket, reader: FrameReader, deadline: float | None = None, flags: int = 0
) -> tuple[int, bytes] | None:
    """The next ``(tag, body)`` *reader* completes from *sock*; None at EOF between frames.

    Raises :class:`PeerClosedError` at EOF inside a frame, the reader's
    :class:`ProtocolError` (:class:`FrameTooLargeError` before any of an oversized
    body is read) for a bad header, and ``TimeoutError`` after *deadline*. *flags*
    go to ``recv`` (``MSG_WAITALL`` where it is safe).
    """
    while True:
        if deadline is not None:
            _time_left(sock, deadline)
        data = sock.recv(reader.wanted(), flags)
        if not data:
            if reader.at_boundary():
                return None
            raise cut_short(reader)
        frames = reader.feed(data)
        if frames:
            return frames[0]


def cut_short(reader: FrameReader) -> PeerClosedError:
    """The error for EOF where *reader* is inside a frame."""
    in_header, got, size = reader.progress()
    if not in_header and not got:
        return PeerClosedError(f"connection closed before a {size}-byte frame body")
    return PeerClosedError(f"connection closed in the middle of a frame ({got} of {size} bytes)")
