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
    "decode",
    "decode_dirents",
    "dirent",
    "encode",
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
    layout = LAYOUTS.get(message.type)
    if layout is None:
        raise ProtocolError(f"9P message type {message.type} is not part of 9P2000.L")
    if len(message.args) != len(layout):
        raise ProtocolError(f"{message.name} has {len(layout)} fields, not {len(message.args)}")
    body: list[bytes] = []
    try:
        for code, value in zip(layout, message.args, strict=True):
            _pack(code, value, body)
    except (struct.error, TypeError, AttributeError) as exc:
        raise ProtocolError(f"{message.name}: a field does not fit the wire: {exc}") from None
    payload = b"".join(body)
    try:
        return _HEAD.pack(HEADER + len(payload), message.type, message.tag) + payload
    except struct.error:
        raise ProtocolError(f"{message.name} is too big for a 9P message") from None


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


def decode(frame: bytes | bytearray | memoryview) -> Message:
    """One whole message (its size field included). Raises ProtocolError."""
    view = memoryview(frame)
    if len(view) < HEADER:
        raise ProtocolError(f"a 9P message is at least {HEADER} bytes, not {len(view)}")
    size, kind, tag = _HEAD.unpack(view[:HEADER])
    if size != len(view):
        raise ProtocolError(f"a 9P message says {size} bytes but has {len(view)}")
    layout = LAYOUTS.get(kind)
    if layout is None:
        raise ProtocolError(f"9P message type {kind} is not part of 9P2000.L")
    reader = _Reader(view[HEADER:])
    args = tuple(reader.field(code) for code in layout)
    if reader.pos != len(reader.data):
        raise ProtocolError(
            f"{NAMES[kind]} carries {len(reader.data) - reader.pos} bytes past its last field"
        )
    return Message(kind, tag, args)


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
                raise ProtocolError(
                    f"a 9P message of {size} bytes; this side takes "
                    f"{HEADER} to {self.msize} (the negotiated msize)"
                )
            if len(self._buffer) < size:
                return
            frame = bytes(self._buffer[:size])
            del self._buffer[:size]
            yield decode(frame)

    @property
    def pending(self) -> int:
        """Bytes held for a message not yet complete."""
        return len(self._buffer)


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
