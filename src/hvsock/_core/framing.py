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
    if isinstance(max_size, bool) or not isinstance(max_size, int) or not (
        1 <= max_size <= ABSOLUTE_MAX_FRAME
    ):
        raise ArgumentError(f"max frame size must be a whole number in 1..{ABSOLUTE_MAX_FRAME}, "
                         f"not {quote(max_size)}")
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
            "send it in parts or raise max_frame_size on both sides")
    return HEADER.pack(len(payload)) + payload


def frame_length(header: bytes, max_size: int) -> int:
    """The body length a 4-byte *header* announces, checked against *max_size*."""
    (length,) = HEADER.unpack(header)
    if length > max_size:
        raise FrameTooLargeError(
            f"peer announced a {length}-byte frame, over the {max_size}-byte limit; "
            "closing the connection (raise max_frame_size if such messages are expected)")
    return int(length)


class FrameDecoder:
    """Incremental decoder: ``feed(data)`` returns the frames completed by *data*.

    After a :class:`FrameTooLargeError` the stream is out of step; the decoder
    refuses further input and the connection should be closed.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME) -> None:
        self.max_size = check_max_size(max_size)
        self._buffer = bytearray()
        self._need: int | None = None  # body length once the header is read
        self._broken = False
        self._pending_error: FrameTooLargeError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Frames completed by *data*. Frames completed before an oversized header
        are returned first; the error is raised by the next call."""
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error
        if self._broken:
            raise ProtocolError("the frame stream is already broken; close the connection")
        self._buffer += data
        frames: list[bytes] = []
        while True:
            if self._need is None:
                if len(self._buffer) < HEADER_SIZE:
                    break
                try:
                    self._need = frame_length(bytes(self._buffer[:HEADER_SIZE]), self.max_size)
                except FrameTooLargeError as exc:
                    self._broken = True
                    self._buffer.clear()
                    if frames:
                        self._pending_error = exc
                        return frames
                    raise
                del self._buffer[:HEADER_SIZE]
            if len(self._buffer) < self._need:
                break
            frames.append(bytes(self._buffer[: self._need]))
            del self._buffer[: self._need]
            self._need = None
        return frames

    def at_boundary(self) -> bool:
        """True when no partial frame is buffered (a clean place for EOF).

        False once the stream is broken: the bytes after a refused header were never framed.
        """
        return not self._broken and self._need is None and not self._buffer


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
            raise ProtocolError(f"request method must be a non-empty string, "
                                f"not {quote(message.method)}")
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
        obj = json.loads(body.decode("utf-8"), parse_constant=_reject_constant,
                         parse_float=_finite_float)
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
        if not isinstance(err, dict) or not isinstance(err.get("code"), str) or not isinstance(
                err.get("message"), str):
            raise ProtocolError("error reply needs {'code': str, 'message': str}")
        return ErrorReply(msg_id, err["code"], err["message"])
    if "result" in obj:
        if not _is_id(msg_id):
            raise ProtocolError(f"response id must be an integer 0..2**53, not {quote(msg_id)}")
        return Response(msg_id, obj["result"])
    raise ProtocolError("message has none of 'method', 'result', 'error'")
