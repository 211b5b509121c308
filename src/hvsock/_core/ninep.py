"""9P2000.L messages, sans I/O: bytes in, :class:`Message` out, and back.

Every message is ``size[4] type[1] tag[2]`` then its fields, little-endian;
strings are ``len[2]`` then bytes (kept as ``bytes``: names need not be UTF-8);
a qid is ``type[1] version[4] path[8]``. The layouts follow the Linux kernel's
client (net/9p/client.c's format strings, include/net/9p/9p.h's numbers), the
peer this codec is written for. A message is ``Message(type, tag, args)`` whose
*args* are in the order of :data:`LAYOUTS`; the server unpacks them by position.

:class:`Decoder` takes bytes as they arrive and yields whole messages; a size
over its *msize*, an unknown type, a short or overlong body is a
:class:`~hvsock.ProtocolError` (the stream cannot be trusted past it).
:class:`Receiver` does the same for a server's hot path without copying: the caller
receives straight into the buffer it lends (``recv_into``), and a big Twrite's data
comes out as a view of that buffer, not a copy (still no I/O here).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .._errors import ProtocolError

__all__ = [
    "HEADER",
    "LAYOUTS",
    "NOFID",
    "NOTAG",
    "VERSION",
    "Decoder",
    "Message",
    "Qid",
    "Receiver",
    "decode",
    "decode_dirents",
    "dirent",
    "encode",
    "encode_parts",
]

VERSION = b"9P2000.L"
NOTAG = 0xFFFF
NOFID = 0xFFFFFFFF
HEADER = 7  # size[4] type[1] tag[2]
#: The most names one Twalk may carry (the protocol's MAXWELEM).
MAXWELEM = 16

# Qid types (the top bits of a mode, as 9P has them).
QTDIR = 0x80
QTSYMLINK = 0x02
QTFILE = 0x00

# Message numbers (include/net/9p/9p.h).
TLERROR, RLERROR = 6, 7
TSTATFS, RSTATFS = 8, 9
TLOPEN, RLOPEN = 12, 13
TLCREATE, RLCREATE = 14, 15
TSYMLINK, RSYMLINK = 16, 17
TMKNOD, RMKNOD = 18, 19
TRENAME, RRENAME = 20, 21
TREADLINK, RREADLINK = 22, 23
TGETATTR, RGETATTR = 24, 25
TSETATTR, RSETATTR = 26, 27
TXATTRWALK, RXATTRWALK = 30, 31
TXATTRCREATE, RXATTRCREATE = 32, 33
TREADDIR, RREADDIR = 40, 41
TFSYNC, RFSYNC = 50, 51
TLOCK, RLOCK = 52, 53
TGETLOCK, RGETLOCK = 54, 55
TLINK, RLINK = 70, 71
TMKDIR, RMKDIR = 72, 73
TRENAMEAT, RRENAMEAT = 74, 75
TUNLINKAT, RUNLINKAT = 76, 77
TVERSION, RVERSION = 100, 101
TAUTH, RAUTH = 102, 103
TATTACH, RATTACH = 104, 105
TFLUSH, RFLUSH = 108, 109
TWALK, RWALK = 110, 111
TREAD, RREAD = 116, 117
TWRITE, RWRITE = 118, 119
TCLUNK, RCLUNK = 120, 121
TREMOVE, RREMOVE = 122, 123

# Field codes: b u8, w u16, d u32, q u64, s string, Q qid,
# S count[2] strings, R count[2] qids, D count[4] bytes.
_S = "s"
LAYOUTS: dict[int, str] = {
    RLERROR: "d",
    TSTATFS: "d",
    RSTATFS: "ddqqqqqqd",
    TLOPEN: "dd",
    RLOPEN: "Qd",
    TLCREATE: "dsddd",
    RLCREATE: "Qd",
    TSYMLINK: "dssd",
    RSYMLINK: "Q",
    TMKNOD: "dsdddd",
    RMKNOD: "Q",
    TRENAME: "dds",
    RRENAME: "",
    TREADLINK: "d",
    RREADLINK: "s",
    TGETATTR: "dq",
    RGETATTR: "qQdddqqqqqqqqqqqqqqq",
    TSETATTR: "dddddqqqqq",
    RSETATTR: "",
    TXATTRWALK: "dds",
    RXATTRWALK: "q",
    TXATTRCREATE: "dsqd",
    RXATTRCREATE: "",
    TREADDIR: "dqd",
    RREADDIR: "D",
    TFSYNC: "dd",
    RFSYNC: "",
    TLOCK: "dbdqqds",
    RLOCK: "b",
    TGETLOCK: "dbqqds",
    RGETLOCK: "bqqds",
    TLINK: "dds",
    RLINK: "",
    TMKDIR: "dsdd",
    RMKDIR: "Q",
    TRENAMEAT: "dsds",
    RRENAMEAT: "",
    TUNLINKAT: "dsd",
    RUNLINKAT: "",
    TVERSION: "ds",
    RVERSION: "ds",
    TAUTH: "dssd",
    RAUTH: "Q",
    TATTACH: "ddssd",
    RATTACH: "Q",
    TFLUSH: "w",
    RFLUSH: "",
    TWALK: "ddS",
    RWALK: "R",
    TREAD: "dqd",
    RREAD: "D",
    TWRITE: "dqD",
    RWRITE: "d",
    TCLUNK: "d",
    RCLUNK: "",
    TREMOVE: "d",
    RREMOVE: "",
}
#: Message names, for logs and errors.
NAMES = {
    number: name
    for name, number in globals().items()
    if name[:1] in "TR" and name.isupper() and isinstance(number, int) and number in LAYOUTS
}

_FIXED = {
    "b": struct.Struct("<B"),
    "w": struct.Struct("<H"),
    "d": struct.Struct("<I"),
    "q": struct.Struct("<Q"),
}
_QID = struct.Struct("<BIQ")
_HEAD = struct.Struct("<IBH")
_U16 = _FIXED["w"]
_U32 = _FIXED["d"]
# Messages whose fields are all numbers, header included: one struct call each way
# (Tread, Tgetattr, Tclunk, Rwrite, Rlerror...: most of a busy session's messages).
_WHOLE = {
    kind: struct.Struct("<IBH" + "".join(_FIXED[c].format[1:] for c in layout))
    for kind, layout in LAYOUTS.items()
    if all(c in _FIXED for c in layout)
}
# A Twrite's (and a Tread's) fields before the data: fid[4] offset[8] count[4].
_IO = struct.Struct("<IQI")
_IO_HEAD = HEADER + _IO.size
# Messages whose last field is data (Twrite, Rread, Rreaddir): encode_parts sends
# that data as it is, after the rest.
_DATA_LAST = {kind for kind, layout in LAYOUTS.items() if layout.endswith("D")}


@dataclass(frozen=True)
class Qid:
    """A file's identity on the server: its kind (QT* bits), version and unique path."""

    type: int
    version: int
    path: int


@dataclass(frozen=True)
class Message:
    """One 9P message: its number (T*/R*), tag and fields in :data:`LAYOUTS` order."""

    type: int
    tag: int
    args: tuple[Any, ...]

    @property
    def name(self) -> str:
        return NAMES.get(self.type, str(self.type))


def _pack(code: str, value: Any, out: list[bytes]) -> None:
    fixed = _FIXED.get(code)
    if fixed is not None:
        out.append(fixed.pack(value))
    elif code == "s":
        out.append(_U16.pack(len(value)))
        out.append(bytes(value))
    elif code == "Q":
        out.append(_QID.pack(value.type, value.version, value.path))
    elif code == "S":
        out.append(_U16.pack(len(value)))
        for item in value:
            _pack("s", item, out)
    elif code == "R":
        out.append(_U16.pack(len(value)))
        for item in value:
            _pack("Q", item, out)
    else:  # "D"
        out.append(_U32.pack(len(value)))
        out.append(bytes(value))


def encode(message: Message) -> bytes:
    """The wire bytes of *message*. Raises ProtocolError for a field that does not fit."""
    parts = encode_parts(message)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def encode_parts(message: Message) -> list[Any]:
    """The wire bytes of *message* as pieces to send in order (``sendmsg``): a
    message ending in data (Rread, Rreaddir, Twrite) is its head then that data
    object itself, not copied. Raises ProtocolError for a field that does not fit."""
    layout = LAYOUTS.get(message.type)
    if layout is None:
        raise ProtocolError(f"9P message type {message.type} is not part of 9P2000.L")
    args = message.args
    if len(args) != len(layout):
        raise ProtocolError(f"{message.name} has {len(layout)} fields, not {len(args)}")
    whole = _WHOLE.get(message.type)
    try:
        if whole is not None:
            return [whole.pack(whole.size, message.type, message.tag, *args)]
        body: list[bytes] = []
        data = None
        if message.type in _DATA_LAST:
            args, data = args[:-1], args[-1]
            layout = layout[:-1]
        for code, value in zip(layout, args, strict=True):
            _pack(code, value, body)
        if data is not None:
            body.append(_U32.pack(len(data)))
            if not isinstance(data, (bytes, bytearray, memoryview)):
                data = bytes(data)
    except (struct.error, TypeError, AttributeError) as exc:
        raise ProtocolError(f"{message.name}: a field does not fit the wire: {exc}") from None
    head = b"".join(body)
    size = HEADER + len(head) + (len(data) if data is not None else 0)
    try:
        head = _HEAD.pack(size, message.type, message.tag) + head
    except struct.error:
        raise ProtocolError(f"{message.name} is too big for a 9P message") from None
    return [head, data] if data else [head]


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.data):
            raise ProtocolError("a 9P message ends inside a field")
        view = self.data[self.pos : end]
        self.pos = end
        return view

    def field(self, code: str) -> Any:
        fixed = _FIXED.get(code)
        if fixed is not None:
            return fixed.unpack(self.take(fixed.size))[0]
        if code == "s":
            return bytes(self.take(_U16.unpack(self.take(2))[0]))
        if code == "Q":
            return Qid(*_QID.unpack(self.take(_QID.size)))
        if code in "SR":
            count = _U16.unpack(self.take(2))[0]
            return tuple(self.field("s" if code == "S" else "Q") for _ in range(count))
        return bytes(self.take(_U32.unpack(self.take(4))[0]))  # "D"


def _past_last_field(kind: int, extra: int) -> ProtocolError:
    return ProtocolError(f"{NAMES[kind]} carries {extra} bytes past its last field")


def decode(frame: bytes | bytearray | memoryview, *, borrow: bool = False) -> Message:
    """One whole message (its size field included). Raises ProtocolError.

    *borrow*: a Twrite's data is a view of *frame*, not a copy; the caller keeps
    *frame* unchanged until the message is done with."""
    view = memoryview(frame)
    if len(view) < HEADER:
        raise ProtocolError(f"a 9P message is at least {HEADER} bytes, not {len(view)}")
    size, kind, tag = _HEAD.unpack_from(view)
    if size != len(view):
        raise ProtocolError(f"a 9P message says {size} bytes but has {len(view)}")
    whole = _WHOLE.get(kind)
    if whole is not None:
        if size != whole.size:
            if size < whole.size:
                raise ProtocolError("a 9P message ends inside a field")
            raise _past_last_field(kind, size - whole.size)
        return Message(kind, tag, whole.unpack(view)[3:])
    if kind == TWRITE:
        if size < _IO_HEAD:
            raise ProtocolError("a 9P message ends inside a field")
        fid, offset, count = _IO.unpack_from(view, HEADER)
        if _IO_HEAD + count != size:
            if _IO_HEAD + count > size:
                raise ProtocolError("a 9P message ends inside a field")
            raise _past_last_field(kind, size - _IO_HEAD - count)
        data = view[_IO_HEAD:]
        return Message(kind, tag, (fid, offset, data if borrow else bytes(data)))
    layout = LAYOUTS.get(kind)
    if layout is None:
        raise ProtocolError(f"9P message type {kind} is not part of 9P2000.L")
    reader = _Reader(view[HEADER:])
    args = tuple(reader.field(code) for code in layout)
    if reader.pos != len(reader.data):
        raise _past_last_field(kind, len(reader.data) - reader.pos)
    return Message(kind, tag, args)


def _too_big(size: int, msize: int) -> ProtocolError:
    return ProtocolError(
        f"a 9P message of {size} bytes; this side takes {HEADER} to {msize} (the negotiated msize)"
    )


class Decoder:
    """Splits a byte stream into messages, none bigger than *msize* bytes."""

    def __init__(self, msize: int) -> None:
        self.msize = msize
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[Message]:
        """The messages *data* completes, in order. Raises ProtocolError for a frame
        over msize (before buffering it) or a malformed one."""
        self._buffer += data
        while len(self._buffer) >= 4:
            size = _U32.unpack_from(self._buffer)[0]
            if size < HEADER or size > self.msize:
                raise _too_big(size, self.msize)
            if len(self._buffer) < size:
                return
            frame = self._buffer[:size]  # a copy: the buffer moves on below
            del self._buffer[:size]
            yield decode(frame)

    @property
    def pending(self) -> int:
        """Bytes held for a message not yet complete."""
        return len(self._buffer)


class Receiver:
    """A :class:`Decoder` that lends its buffer, for a server's receiving loop::

        while n := sock.recv_into(receiver.buffer()):
            for message in receiver.received(n): ...

    Small messages arrive in a small buffer of 64 KiB, all an idle connection keeps.
    A frame of more than *borrow_over* bytes is received in a buffer of msize bytes:
    once its size is known, :meth:`buffer` is exactly the rest of it, so its bytes
    land where they stay. A Twrite received so keeps that buffer: its data is a view
    of it (``decode(..., borrow=True)``) and this side goes on in another. Give that
    view to :meth:`recycle` once nothing uses it any more (the write is done) and the
    buffer takes a later big frame; one never given back is only garbage. A run of
    Twrites so goes round two buffers and is never copied here; the first other
    small message (an fsync, a clunk) lets them go. Every other message is decoded
    as :func:`decode` does, with copies. A frame over *msize* is refused
    (ProtocolError) as soon as its size field has come, before more of it is read.
    """

    #: Buffers given back and kept for the next big frames (more are garbage).
    SPARES = 2
    #: The small buffer's size.
    HEAD = 65536

    def __init__(self, msize: int, *, borrow_over: int = 16384) -> None:
        #: The largest msize this receiver takes (the one it is made with).
        self.capacity = msize
        self.msize = msize
        self.borrow_over = min(borrow_over, self.HEAD // 2)
        self._head = bytearray(self.HEAD)
        self._buf = self._head  # where bytes are received now
        self._view = memoryview(self._buf)
        self._start = 0  # the first byte not yet decoded
        self._end = 0  # past the last byte received
        self._spares: list[bytearray] = []

    @property
    def msize(self) -> int:
        """The largest frame taken; at most the msize this receiver was made with."""
        return self._msize

    @msize.setter
    def msize(self, value: int) -> None:
        if not HEADER <= value <= self.capacity:
            raise ValueError(f"msize {value}: this receiver takes {HEADER} to {self.capacity}")
        self._msize = value

    @property
    def in_frame(self) -> bool:
        """Whether :meth:`buffer` is exactly the rest of one big frame: the caller
        may wait for all of it at once (``MSG_WAITALL``), never reading past it."""
        start, end = self._start, self._end
        return end - start >= 4 and _U32.unpack_from(self._buf, start)[0] > self.borrow_over

    def buffer(self) -> memoryview:
        """Where the next bytes go (``recv_into`` it, then call :meth:`received`)."""
        start, end = self._start, self._end
        if end - start >= 4:
            size = _U32.unpack_from(self._buf, start)[0]
            if size > self.borrow_over:
                return self._view[end : start + size]
        return self._view[end:]

    def received(self, count: int) -> list[Message]:
        """The messages the *count* bytes just put in :meth:`buffer` complete, in
        order. Raises ProtocolError for a frame over msize or a malformed one."""
        self._end += count
        out: list[Message] = []
        other = False  # a small message besides a Twrite: the run of writes is over
        while (avail := self._end - self._start) >= 4:
            start = self._start
            size = _U32.unpack_from(self._buf, start)[0]
            if size < HEADER or size > self._msize:
                raise _too_big(size, self._msize)
            if avail < size:
                if size > self.borrow_over and self._buf is self._head:
                    self._move(self._big(size))  # the rest goes where it stays
                elif start + size > len(self._buf):
                    self._move(self._buf if size <= len(self._buf) else self._big(size))
                break
            frame = self._view[start : start + size]
            self._start = start + size
            if size <= self.borrow_over:
                # (A small Twrite is a big write()'s tail: 1 MiB is two Twrites of
                # msize 512 KiB less headers, then 48 bytes.)
                other = other or self._buf[start + 4] != TWRITE
                out.append(decode(frame))
            elif self._buf is not self._head and self._buf[start + 4] == TWRITE:
                out.append(decode(frame, borrow=True))
                self._lend()
            else:
                out.append(decode(frame))
            frame.release()
        if other:  # not a run of big Twrites (any more): keep only the small buffer
            self._spares.clear()
        if self._start == self._end:
            self._start = self._end = 0
            if other and self._buf is not self._head:
                self._switch(self._head)
        elif self._end == len(self._buf) and self._end - self._start < 4:
            self._move(self._buf)  # a size field cut at the buffer's end
        return out

    def _big(self, size: int) -> bytearray:
        """A buffer for a big frame (or *size* bytes): a spare, or a new one of msize."""
        while self._spares:
            spare = self._spares.pop()
            if len(spare) >= size:
                return spare
        return bytearray(max(self._msize, size))

    def _switch(self, buf: bytearray) -> None:
        self._buf = buf
        self._view = memoryview(buf)

    def _move(self, to: bytearray) -> None:
        """What is not decoded yet goes to the start of *to*, which becomes the buffer."""
        start, end = self._start, self._end
        if to is self._buf:
            self._view[: end - start] = self._view[start:end]
        else:
            memoryview(to)[: end - start] = self._view[start:end]
            self._switch(to)
        self._start, self._end = 0, end - start

    def _lend(self) -> None:
        """The buffer goes with a borrowed Twrite: go on in another, taking along what
        was received past that frame. Another big one: the next frame of a run of big
        writes is likely to come next, and lands in place too."""
        self._move(self._big(self._end - self._start))

    def recycle(self, data: Any) -> None:
        """A borrowed Twrite's data, no longer used by anyone: its buffer may be reused."""
        if not isinstance(data, memoryview):
            return
        try:
            owner = data.obj
            data.release()
        except ValueError:  # given back already
            return
        except BufferError:  # still exported somewhere: never reuse it
            return
        if (
            isinstance(owner, bytearray)
            and owner is not self._buf
            and owner is not self._head
            and len(self._spares) < self.SPARES
            and all(owner is not spare for spare in self._spares)
        ):
            self._spares.append(owner)

    @property
    def pending(self) -> int:
        """Bytes held for a message not yet complete."""
        return self._end - self._start


_DIRENT = struct.Struct("<BIQQB")


def dirent(qid: Qid, offset: int, kind: int, name: bytes) -> bytes:
    """One Rreaddir entry: ``qid[13] offset[8] type[1] name[s]`` (type is a DT_* value)."""
    return _DIRENT.pack(qid.type, qid.version, qid.path, offset, kind) + _U16.pack(len(name)) + name


def decode_dirents(data: bytes) -> list[tuple[Qid, int, int, bytes]]:
    """The entries of an Rreaddir's data: ``(qid, offset, type, name)``. ProtocolError."""
    reader = _Reader(memoryview(data))
    entries = []
    while reader.pos < len(data):
        qtype, version, path, offset, kind = _DIRENT.unpack(reader.take(_DIRENT.size))
        entries.append((Qid(qtype, version, path), offset, kind, reader.field("s")))
    return entries
