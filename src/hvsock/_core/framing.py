"""Length-prefixed frames and a JSON request/response layer, sans I/O.

Hyper-V sockets carry a byte stream ("data streams only"), so messages need
framing. A frame is a 4-byte big-endian length and that many bytes. The decoder
checks a claimed length against its maximum *before* it buffers any of the body,
so a hostile 4 GiB claim costs nothing.

On top, an RPC message is one frame holding a JSON object::

    request   {"id": 7, "method": "get", "params": {...}}
    response  {"id": 7, "result": ...}
    error     {"id": 7, "error": {"code": "not_found", "message": "..."}}
"""

from __future__ import annotations

import math
import struct

from .._errors import ArgumentError, FrameTooLargeError, ProtocolError
from .._validate import quote
from .values import Value, set_fields

# Not typing.TYPE_CHECKING: `hvsock cp` and `hvsock exec` import this module for its
# frame functions on every run; typing, and json (imported where a message is
# encoded or decoded), are start-up they do not need.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeGuard

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
#: Default largest frame body: big enough for any control message, small enough
#: that a peer cannot make a service buffer much.
DEFAULT_MAX_FRAME = 1024 * 1024
#: Largest value the 4-byte header can carry.
ABSOLUTE_MAX_FRAME = 0xFFFFFFFF


def check_max_size(max_size: int) -> int:
    if (
        isinstance(max_size, bool)
        or not isinstance(max_size, int)
        or not (1 <= max_size <= ABSOLUTE_MAX_FRAME)
    ):
        raise ArgumentError(
            f"max frame size must be a whole number in 1..{ABSOLUTE_MAX_FRAME}, "
            f"not {quote(max_size)}"
        )
    return max_size


def encode_frame(payload: bytes, max_size: int = DEFAULT_MAX_FRAME) -> bytes:
    """The frame carrying *payload*; :class:`FrameTooLargeError` if it is over *max_size*.

    Raises :class:`ArgumentError` when *payload* is not bytes or *max_size* is not a size.
    """
    check_max_size(max_size)
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ArgumentError(f"payload must be bytes, not {type(payload).__name__}")
    payload = bytes(payload)
    if len(payload) > max_size:
        raise FrameTooLargeError(
            f"message of {len(payload)} bytes is over the {max_size}-byte frame limit; "
            "send it in parts or raise max_frame_size on both sides"
        )
    return HEADER.pack(len(payload)) + payload


def frame_length(header: bytes, max_size: int) -> int:
    """The body length a 4-byte *header* announces, checked against *max_size*."""
    (length,) = HEADER.unpack(header)
    if length > max_size:
        raise FrameTooLargeError(
            f"peer announced a {length}-byte frame, over the {max_size}-byte limit; "
            "closing the connection (raise max_frame_size if such messages are expected)"
        )
    return int(length)


#: The tag of a frame read by an untagged :class:`FrameReader` (it has none).
NO_TAG = -1


class FrameReader:
    """The one incremental reader of frames: bytes in, ``(tag, body)`` pairs out.

    Every frame on a socket, a stream or a buffer is read through one of these (the
    blocking and asyncio drivers are ``recv_frame`` and ``read_frame_with`` in
    ``hvsock._service.frames`` and ``hvsock._transports.recv``). A claimed length is
    checked against *max_size* as soon as its 4 bytes are in, before any of the body
    is buffered, so a hostile 4 GiB claim costs nothing.

    *tagged* frames carry a one-byte tag first (exec's frame kind): it is read with the
    header and handed out apart, so the rest of the body can be the very object a read
    returned. A tagged frame needs its tag (a zero length is a :class:`ProtocolError`);
    untagged frames come out with the tag :data:`NO_TAG`.

    :meth:`wanted` says how many bytes complete the piece being read (the header, or
    the body): a driver that reads exactly that many, and gets them, has the body
    handed on with no copy, and never reads a byte past the frame. Bytes arriving in
    any other cut are buffered and joined.

    After a bad header the stream is out of step: the frames completed before it are
    returned first, the error is raised by the next call, and every call after that
    raises :class:`ProtocolError`.
    """

    __slots__ = ("_body", "_broken", "_buffer", "_head", "_pending", "_tag", "_tagged", "max_size")

    #: The message for a tagged frame of length 0.
    EMPTY = "empty frame: a tagged frame carries at least its tag byte"

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME, *, tagged: bool = False) -> None:
        self.max_size = check_max_size(max_size)
        self._tagged = tagged
        self._head = HEADER_SIZE + 1 if tagged else HEADER_SIZE
        self._buffer = bytearray()
        self._body = -1  # the body's size once its header was read; -1 while reading one
        self._tag = NO_TAG
        self._broken = False
        self._pending: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buffer)

    @property
    def broken(self) -> bool:
        """True once a bad header was met (its error raised, or still to come)."""
        return self._broken

    def wanted(self) -> int:
        """Bytes that would complete the header or body being read (at least 1)."""
        if self._body < 0:
            return self._head - len(self._buffer)
        return max(1, self._body - len(self._buffer))

    def at_boundary(self) -> bool:
        """True when no part of a frame is buffered (a clean place for EOF).

        False once the stream is broken: the bytes after a refused header were never framed.
        """
        return not self._broken and self._body < 0 and not self._buffer

    def progress(self) -> tuple[bool, int, int]:
        """Where a cut stream stopped: (in the header?, bytes of that piece read, its size).

        For the message of an EOF that :meth:`at_boundary` says is not clean.
        """
        if self._body < 0:
            return True, len(self._buffer), self._head
        return False, len(self._buffer), self._body

    def _length(self, header: bytes | bytearray | memoryview) -> int:
        """The body size after the header (and tag); raises for a bad header."""
        length = frame_length(bytes(header[:HEADER_SIZE]), self.max_size)
        if self._tagged and length == 0:
            raise ProtocolError(self.EMPTY)
        return length - 1 if self._tagged else length

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, bytes]]:
        """The frames *data* completes, as ``(tag, body)``; see the class for errors."""
        self._refuse_if_broken()
        frames: list[tuple[int, bytes]] = []
        view = memoryview(data).cast("B")  # slices without copies, whatever *data* is
        pos, end = 0, len(view)
        buffer = self._buffer
        while True:
            if self._body < 0:  # the header (and tag)
                need = self._head - len(buffer)
                if end - pos < need:
                    buffer += view[pos:end]
                    if len(buffer) >= HEADER_SIZE:  # the length is in: check it now
                        self._check(buffer, frames)
                    break
                if buffer:
                    buffer += view[pos : pos + need]
                    head: bytes | bytearray | memoryview = buffer
                else:
                    head = view[pos : pos + need]
                pos += need
                self._body = self._check(head, frames)
                if self._body < 0:
                    return frames
                if self._tagged:
                    self._tag = head[HEADER_SIZE]
                buffer.clear()
            need = self._body - len(buffer)
            if end - pos < need:
                buffer += view[pos:end]
                break
            if buffer:
                buffer += view[pos : pos + need]
                body = bytes(buffer)
                buffer.clear()
            elif pos == 0 and end == need and isinstance(data, bytes):
                body = data  # read exactly what was wanted: no copy
            else:
                body = bytes(view[pos : pos + need])
            pos += need
            frames.append((self._tag, body))
            self._body, self._tag = -1, NO_TAG
        return frames

    def take(self, buffer: bytearray) -> tuple[int, bytes] | int:
        """The whole frame at the front of *buffer* as ``(tag, body)``, removed from it;
        or, while *buffer* holds less, the count it must hold (nothing is taken).

        For a source its reader buffers itself (the file-copy channel reads ahead, and
        raw file bytes follow its messages). Call it between frames only (never with a
        frame half fed to :meth:`feed`); errors as :meth:`feed`'s, raised at once.
        """
        self._refuse_if_broken()
        if len(buffer) < self._head:
            return self._head
        try:
            size = self._length(buffer[:HEADER_SIZE])
        except ProtocolError:
            self._broken = True
            raise
        end = self._head + size
        if len(buffer) < end:
            return end
        tag = buffer[HEADER_SIZE] if self._tagged else NO_TAG
        body = bytes(buffer[self._head : end])
        del buffer[:end]
        return tag, body

    def _refuse_if_broken(self) -> None:
        if self._pending is not None:
            error, self._pending = self._pending, None
            raise error
        if self._broken:
            raise ProtocolError("the frame stream is already broken; close the connection")

    def _check(self, head: bytes | bytearray | memoryview, frames: list[tuple[int, bytes]]) -> int:
        """:meth:`_length`; on a bad header the stream breaks, and the error is raised
        now, or (with *frames* to hand out first) by the next call (then -1 back)."""
        try:
            return self._length(head)
        except ProtocolError as exc:
            self._broken = True
            self._buffer.clear()
            if not frames:
                raise
            self._pending = exc
            return -1


class FrameDecoder:
    """Incremental decoder: ``feed(data)`` returns the frames (their bodies) completed by
    *data*. A :class:`FrameReader` of untagged frames.

    After a :class:`FrameTooLargeError` the stream is out of step; the decoder
    refuses further input and the connection should be closed.
    """

    __slots__ = ("_reader",)

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME) -> None:
        self._reader = FrameReader(max_size)

    @property
    def max_size(self) -> int:
        return self._reader.max_size

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return self._reader.buffered

    def wanted(self) -> int:
        """Bytes that would complete the header or body being read (see :class:`FrameReader`)."""
        return self._reader.wanted()

    def feed(self, data: bytes) -> list[bytes]:
        """Frames completed by *data*. Frames completed before an oversized header
        are returned first; the error is raised by the next call."""
        return [body for _, body in self._reader.feed(data)]

    def at_boundary(self) -> bool:
        """True when no partial frame is buffered (a clean place for EOF).

        False once the stream is broken: the bytes after a refused header were never framed.
        """
        return self._reader.at_boundary()


# -- the RPC layer --------------------------------------------------------------


class Request(Value):
    """A call: *method* with *params* (any JSON value), answered under the same *id*."""

    id: int
    method: str
    params: Any
    _fields = __match_args__ = ("id", "method", "params")

    def __init__(self, id: int, method: str, params: Any = None) -> None:
        set_fields(self, id=id, method=method, params=params)


class Response(Value):
    """The *result* (any JSON value) of the request *id*."""

    id: int
    result: Any
    _fields = __match_args__ = ("id", "result")

    def __init__(self, id: int, result: Any = None) -> None:
        set_fields(self, id=id, result=result)


class ErrorReply(Value):
    """A request that failed: a short *code* and a *message* for people."""

    id: int | None
    code: str
    message: str
    _fields = __match_args__ = ("id", "code", "message")

    def __init__(self, id: int | None, code: str, message: str) -> None:
        set_fields(self, id=id, code=code, message=message)


Message = Request | Response | ErrorReply


def encode_message(message: Message) -> bytes:
    """The JSON frame body for *message* (wrap with :func:`encode_frame` to send)."""
    obj: dict[str, Any]
    if message.id is not None and not _is_id(message.id):
        raise ProtocolError(f"message id must be an integer 0..2**53, not {quote(message.id)}")
    if isinstance(message, Request):
        if not isinstance(message.method, str) or not message.method:
            raise ProtocolError(
                f"request method must be a non-empty string, not {quote(message.method)}"
            )
        obj = {"id": message.id, "method": message.method}
        if message.params is not None:
            obj["params"] = message.params
    elif isinstance(message, Response):
        obj = {"id": message.id, "result": message.result}
    else:
        if not isinstance(message.code, str) or not isinstance(message.message, str):
            raise ProtocolError("an error reply needs a string code and message")
        obj = {"id": message.id, "error": {"code": message.code, "message": message.message}}
    import json

    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"message cannot be sent as JSON: {exc}") from exc


def _is_id(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def decode_message(body: bytes) -> Message:
    """Parse one frame body; :class:`ProtocolError` says what is wrong with it.

    Raises :class:`ArgumentError` when *body* is not bytes.
    """
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise ArgumentError(f"a frame body is bytes, not {type(body).__name__}")
    body = bytes(body)
    import json

    try:
        # Strict: UTF-8 only (json.loads(bytes) would guess UTF-16/32 too) and no
        # NaN/Infinity, so whatever decodes here also encodes again.
        obj = json.loads(
            body.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame is not UTF-8 JSON: {exc}") from None
    except RecursionError:
        # json's C scanner recurses per nesting level; a 1 MiB frame of "[" overflows it.
        raise ProtocolError("frame JSON is nested too deeply to decode") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"message must be a JSON object, not {type(obj).__name__}")
    msg_id = obj.get("id")
    if "method" in obj:
        method = obj["method"]
        if not _is_id(msg_id):
            raise ProtocolError(f"request id must be an integer 0..2**53, not {quote(msg_id)}")
        if not isinstance(method, str) or not method:
            raise ProtocolError(f"request method must be a non-empty string, not {quote(method)}")
        return Request(msg_id, method, obj.get("params"))
    if "error" in obj:
        err = obj["error"]
        if msg_id is not None and not _is_id(msg_id):
            raise ProtocolError(f"error reply id must be an integer or null, not {quote(msg_id)}")
        if (
            not isinstance(err, dict)
            or not isinstance(err.get("code"), str)
            or not isinstance(err.get("message"), str)
        ):
            raise ProtocolError("error reply needs {'code': str, 'message': str}")
        return ErrorReply(msg_id, err["code"], err["message"])
    if "result" in obj:
        if not _is_id(msg_id):
            raise ProtocolError(f"response id must be an integer 0..2**53, not {quote(msg_id)}")
        return Response(msg_id, obj["result"])
    raise ProtocolError("message has none of 'method', 'result', 'error'")
