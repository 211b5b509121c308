"""The file-copy protocol, sans I/O: messages, remote paths, chunk framing, policies.

A session is a stream of frames (4-byte big-endian length, then a body). A body is
one message: a type byte and the message's fields in a fixed order, each an
unsigned/signed 64-bit integer or a length-prefixed byte string. Names travel as
bytes, so a Linux name that is not UTF-8 arrives exactly as it left.

Push (client writes on the server)::

    C: HELLO            S: HELLO
    C: PUT(entry)       S: READY(offset, prefix sha) | SKIPPED | ERROR | DONE (dir, link)
    C: DATA(start, length)  <length raw bytes, or chunks when length is -1>  FILE_END(sha)
                        S: DONE | ERROR
    (with F_EAGER, small files: PUT, DATA, bytes, FILE_END at once; S: DONE | SKIPPED | ERROR)

Pull (client reads from the server)::

    C: GET(path, flags)
    S: ENTRY(entry)     C: READY(offset, prefix sha) | SKIPPED        (files only)
    S: DATA(start, length) <raw bytes> FILE_END(sha)      ... next ENTRY ...   S: END
    (inside a tree, S: SKIPPED(why) in place of an entry not sent: a FIFO, a device)

After ``DATA`` the bytes are raw (no framing), so a large file moves at socket
speed; a stream of unknown size (stdin) is sent as chunks: a 4-byte length and
that many bytes, ending with a zero length. ``FILE_END`` carries the SHA-256 of
the whole file (prefix included) and whether the sender read it all; the
receiver checks it before the file is put in place.
"""

from __future__ import annotations

import struct

from .._errors import ArgumentError, ProtocolError
from .values import Value, set_fields

# Not typing.TYPE_CHECKING: `hvsock cp` imports this module on every run, and
# typing alone costs a good share of Python's own start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar

__all__: list[str] = []  # internal: hvsock.copy is the public face

VERSION = 1
#: Largest control message; a name or link target is at most PATH_MAX (4096) bytes.
MAX_MESSAGE = 64 * 1024
MAX_PATH = 4096
MAX_NAME = 255
MAX_TEXT = 4096
#: Largest chunk of an unknown-size stream.
MAX_CHUNK = 16 * 1024 * 1024
SHA_LEN = 32
UNKNOWN_SIZE = -1

# Entry kinds.
KIND_MISSING = 0
KIND_FILE = 1
KIND_DIR = 2
KIND_SYMLINK = 3
KINDS = (KIND_MISSING, KIND_FILE, KIND_DIR, KIND_SYMLINK)

# Flags of PUT and GET.
F_RECURSIVE = 1
F_PRESERVE = 2  # keep mode and mtime
F_OWNER = 4  # keep uid and gid (the writing side must run as root)
F_PARENTS = 8  # create missing parent directories
F_RESUME = 16  # keep a verified partial file when the copy is cut, and continue one
F_NO_CLOBBER = 32
F_UPDATE = 64
F_FORCE = 128
#: PUT: the file's DATA follows at once (no READY awaited). GET: send files of at
#: most EAGER_MAX bytes straight after their ENTRY. Small files then cost no
#: round trip each; replies are collected in a window.
F_EAGER = 256
ALL_FLAGS = 511
EAGER_MAX = 1024 * 1024

_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_LEN = struct.Struct(">I")


# -- messages -------------------------------------------------------------------


class Entry(Value):
    """One file, directory or symlink: its path (bytes) and what -p keeps."""

    path: bytes
    kind: int
    mode: int
    mtime_ns: int
    size: int  # UNKNOWN_SIZE for a stream of unknown length
    uid: int
    gid: int
    link: bytes  # a symlink's target
    _fields = __match_args__ = ("path", "kind", "mode", "mtime_ns", "size", "uid", "gid", "link")

    def __init__(
        self,
        path: bytes,
        kind: int,
        mode: int = 0o644,
        mtime_ns: int = 0,
        size: int = 0,
        uid: int = -1,
        gid: int = -1,
        link: bytes = b"",
    ) -> None:
        set_fields(
            self,
            path=path,
            kind=kind,
            mode=mode,
            mtime_ns=mtime_ns,
            size=size,
            uid=uid,
            gid=gid,
            link=link,
        )


class Hello(Value):
    TYPE: ClassVar[int] = 1
    version: int
    flags: int  # server: 1 = read-only roots, 2 = runs as root
    _fields = __match_args__ = ("version", "flags")

    def __init__(self, version: int, flags: int = 0) -> None:
        set_fields(self, version=version, flags=flags)


class Stat(Value):
    TYPE: ClassVar[int] = 2
    path: bytes
    _fields = __match_args__ = ("path",)

    def __init__(self, path: bytes) -> None:
        set_fields(self, path=path)


class StatReply(Value):
    TYPE: ClassVar[int] = 3
    entry: Entry
    _fields = __match_args__ = ("entry",)

    def __init__(self, entry: Entry) -> None:
        set_fields(self, entry=entry)


class Put(Value):
    TYPE: ClassVar[int] = 4
    entry: Entry
    flags: int
    _fields = __match_args__ = ("entry", "flags")

    def __init__(self, entry: Entry, flags: int = 0) -> None:
        set_fields(self, entry=entry, flags=flags)


class Get(Value):
    TYPE: ClassVar[int] = 5
    path: bytes
    flags: int
    _fields = __match_args__ = ("path", "flags")

    def __init__(self, path: bytes, flags: int = 0) -> None:
        set_fields(self, path=path, flags=flags)


class EntryMsg(Value):
    TYPE: ClassVar[int] = 6
    entry: Entry
    _fields = __match_args__ = ("entry",)

    def __init__(self, entry: Entry) -> None:
        set_fields(self, entry=entry)


class Ready(Value):
    TYPE: ClassVar[int] = 7
    offset: int
    prefix_sha: bytes  # SHA-256 of the partial file's first *offset* bytes
    _fields = __match_args__ = ("offset", "prefix_sha")

    def __init__(self, offset: int = 0, prefix_sha: bytes = b"") -> None:
        set_fields(self, offset=offset, prefix_sha=prefix_sha)


class Skipped(Value):
    TYPE: ClassVar[int] = 8
    reason: str
    _fields = __match_args__ = ("reason",)

    def __init__(self, reason: str) -> None:
        set_fields(self, reason=reason)


class Data(Value):
    TYPE: ClassVar[int] = 9
    start: int
    length: int  # UNKNOWN_SIZE: chunked
    _fields = __match_args__ = ("start", "length")

    def __init__(self, start: int, length: int) -> None:
        set_fields(self, start=start, length=length)


class FileEnd(Value):
    TYPE: ClassVar[int] = 10
    sha256: bytes
    complete: bool  # False: the source changed or failed; discard
    _fields = __match_args__ = ("sha256", "complete")

    def __init__(self, sha256: bytes, complete: bool = True) -> None:
        set_fields(self, sha256=sha256, complete=complete)


class Done(Value):
    TYPE: ClassVar[int] = 11
    size: int
    _fields = __match_args__ = ("size",)

    def __init__(self, size: int = 0) -> None:
        set_fields(self, size=size)


class Error(Value):
    TYPE: ClassVar[int] = 12
    code: str
    message: str
    _fields = __match_args__ = ("code", "message")

    def __init__(self, code: str, message: str) -> None:
        set_fields(self, code=code, message=message)


class End(Value):
    TYPE: ClassVar[int] = 13
    count: int
    _fields = __match_args__ = ("count",)

    def __init__(self, count: int = 0) -> None:
        set_fields(self, count=count)


Message = (
    Hello
    | Stat
    | StatReply
    | Put
    | Get
    | EntryMsg
    | Ready
    | Skipped
    | Data
    | FileEnd
    | Done
    | Error
    | End
)
MESSAGES: tuple[type[Message], ...] = (
    Hello,
    Stat,
    StatReply,
    Put,
    Get,
    EntryMsg,
    Ready,
    Skipped,
    Data,
    FileEnd,
    Done,
    Error,
    End,
)
_BY_TYPE: dict[int, type[Message]] = {cls.TYPE: cls for cls in MESSAGES}

# Field encodings by (class, field name): "u" unsigned 64, "i" signed 64, "b" bytes,
# "s" UTF-8 text, "?" bool, "e" an Entry.
_INTS_SIGNED = {"mtime_ns", "size", "uid", "gid", "length"}


def _kind_of(cls: type[object], name: str, annotation: object) -> str:
    text = str(annotation)
    if text == "Entry":
        return "e"
    if text == "bytes":
        return "b"
    if text == "str":
        return "s"
    if text == "bool":
        return "?"
    return "i" if name in _INTS_SIGNED else "u"


def _schema(cls: type[Value]) -> tuple[tuple[str, str], ...]:
    # The annotations are strings (``from __future__ import annotations``).
    return tuple((name, _kind_of(cls, name, cls.__annotations__[name])) for name in cls._fields)


_SCHEMAS: dict[type[object], tuple[tuple[str, str], ...]] = {
    cls: _schema(cls) for cls in (*MESSAGES, Entry)
}


def _put_int(out: bytearray, value: object, signed: bool, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{what} must be an integer, not {type(value).__name__}")
    try:
        out += (_I64 if signed else _U64).pack(value)
    except struct.error:
        raise ProtocolError(f"{what} {value} is out of range for the wire") from None


def _put_bytes(out: bytearray, value: bytes, limit: int, what: str) -> None:
    if len(value) > limit:
        raise ProtocolError(f"{what} is {len(value)} bytes; at most {limit}")
    out += _LEN.pack(len(value))
    out += value


def _encode_into(out: bytearray, obj: object) -> None:
    for name, kind in _SCHEMAS[type(obj)]:
        value = getattr(obj, name)
        what = f"{type(obj).__name__}.{name}"
        if kind == "e":
            if not isinstance(value, Entry):
                raise ProtocolError(f"{what} must be an Entry")
            _encode_into(out, value)
        elif kind == "b":
            if not isinstance(value, bytes):
                raise ProtocolError(f"{what} must be bytes")
            _put_bytes(out, value, MAX_PATH, what)
        elif kind == "s":
            if not isinstance(value, str):
                raise ProtocolError(f"{what} must be text")
            _put_bytes(out, value.encode("utf-8", "replace"), MAX_TEXT, what)
        elif kind == "?":
            out.append(1 if value else 0)
        else:
            _put_int(out, value, kind == "i", what)


def encode(message: Message) -> bytes:
    """The frame body of *message*; :class:`ProtocolError` if a field cannot be sent."""
    cls = type(message)
    if cls not in _BY_TYPE.values():
        raise ProtocolError(f"{cls.__name__} is not a file-copy message")
    out = bytearray([cls.TYPE])
    _encode_into(out, message)
    if isinstance(message, (Put, StatReply, EntryMsg)):
        check_entry(message.entry)
    return bytes(out)


class _Reader:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.pos = 1

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.body):
            raise ProtocolError(f"file-copy message ends inside {what}")
        data = self.body[self.pos : self.pos + n]
        self.pos += n
        return data

    def read(self, cls: type[object]) -> object:
        values: dict[str, object] = {}
        for name, kind in _SCHEMAS[cls]:
            what = f"{cls.__name__}.{name}"
            if kind == "e":
                values[name] = self.read(Entry)
            elif kind in "bs":
                (length,) = _LEN.unpack(self.take(4, what))
                if length > (MAX_PATH if kind == "b" else MAX_TEXT):
                    raise ProtocolError(f"{what} claims {length} bytes, over the limit")
                raw = self.take(length, what)
                if kind == "s":
                    try:
                        values[name] = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        raise ProtocolError(f"{what} is not UTF-8") from None
                else:
                    values[name] = raw
            elif kind == "?":
                flag = self.take(1, what)[0]
                if flag > 1:
                    raise ProtocolError(f"{what} is {flag}, not 0 or 1")
                values[name] = bool(flag)
            else:
                (values[name],) = (_I64 if kind == "i" else _U64).unpack(self.take(8, what))
        return cls(**values)


def decode(body: bytes) -> Message:
    """Parse one frame body; any bytes give a message or :class:`ProtocolError`."""
    if not body:
        raise ProtocolError("empty file-copy message")
    cls = _BY_TYPE.get(body[0])
    if cls is None:
        raise ProtocolError(f"unknown file-copy message type {body[0]}")
    reader = _Reader(body)
    message = reader.read(cls)
    if reader.pos != len(body):
        raise ProtocolError(f"{len(body) - reader.pos} stray bytes after a {cls.__name__}")
    assert isinstance(message, MESSAGES)
    if isinstance(message, (Put, StatReply, EntryMsg)):
        check_entry(message.entry)
    if isinstance(message, (Put, Get)) and message.flags & ~ALL_FLAGS:
        raise ProtocolError(f"unknown flags {message.flags:#x}")
    if isinstance(message, FileEnd) and len(message.sha256) != SHA_LEN:
        raise ProtocolError(f"FILE_END carries a {len(message.sha256)}-byte digest, not 32")
    if isinstance(message, Ready) and len(message.prefix_sha) not in (0, SHA_LEN):
        raise ProtocolError("READY carries a prefix digest that is not 32 bytes")
    return message


def check_entry(entry: Entry) -> Entry:
    """Reject an entry no honest peer sends: unknown kind, bad size, mode bits."""
    if entry.kind not in KINDS:
        raise ProtocolError(f"unknown entry kind {entry.kind}")
    if entry.size < UNKNOWN_SIZE:
        raise ProtocolError(f"entry size {entry.size} is negative")
    if not 0 <= entry.mode <= 0o7777:
        raise ProtocolError(f"entry mode {entry.mode:#o} is outside 0..7777")
    if entry.kind == KIND_SYMLINK and not entry.link:
        raise ProtocolError("a symlink entry without a target")
    if b"\0" in entry.link or b"\0" in entry.path:
        raise ProtocolError("a name with a NUL byte")
    return entry


# -- chunk framing for streams of unknown size ------------------------------------


def encode_chunk(data: bytes) -> bytes:
    """One chunk; ``encode_chunk(b"")`` is the end marker."""
    if len(data) > MAX_CHUNK:
        raise ProtocolError(f"chunk of {len(data)} bytes is over {MAX_CHUNK}")
    return _LEN.pack(len(data)) + data


def chunk_length(header: bytes) -> int:
    """The length a 4-byte chunk header announces (0: the end)."""
    if len(header) != 4:
        raise ProtocolError("a chunk header is 4 bytes")
    (length,) = _LEN.unpack(header)
    if length > MAX_CHUNK:
        raise ProtocolError(f"peer announced a {length}-byte chunk, over {MAX_CHUNK}")
    return int(length)


# -- remote paths -------------------------------------------------------------------


def split_path(path: bytes) -> tuple[bool, tuple[bytes, ...]]:
    """``(absolute, components)`` of a remote path, with ``.`` and empty parts dropped.

    Raises :class:`ArgumentError` for ``..`` anywhere (never resolved, even when it
    would stay inside a root), a NUL byte, or an over-long path or name.
    """
    if not isinstance(path, bytes):
        raise ArgumentError(f"a remote path travels as bytes, not {type(path).__name__}")
    if len(path) > MAX_PATH:
        raise ArgumentError(f"path is {len(path)} bytes; at most {MAX_PATH}")
    if b"\0" in path:
        raise ArgumentError("path has a NUL byte")
    parts = tuple(p for p in path.split(b"/") if p not in (b"", b"."))
    for part in parts:
        if part == b"..":
            raise ArgumentError(f"path {_show(path)} has '..'; give a path inside the served roots")
        if len(part) > MAX_NAME:
            raise ArgumentError(f"name of {len(part)} bytes in {_show(path)}; at most {MAX_NAME}")
    return path.startswith(b"/"), parts


def check_name(name: bytes) -> bytes:
    """One entry name within a tree: a single component, never ``.``/``..``/empty."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name or len(name) > MAX_NAME:
        raise ProtocolError(f"peer sent an unsafe name {_show(name)}")
    return name


def relative_parts(path: bytes) -> tuple[bytes, ...]:
    """The components of a path inside a tree: relative, each a safe name."""
    if path.startswith(b"/"):
        raise ProtocolError(f"peer sent an absolute path {_show(path)} inside a tree")
    parts = tuple(p for p in path.split(b"/") if p)
    if not parts:
        raise ProtocolError("peer sent an empty path inside a tree")
    return tuple(check_name(p) for p in parts)


def match_root(
    absolute: bool, parts: tuple[bytes, ...], roots: tuple[tuple[bytes, ...], ...]
) -> tuple[int, tuple[bytes, ...]]:
    """Which root a remote path lies in, and its components below that root.

    A relative path is relative to the first root; an absolute one must start with
    a root's components (the longest match wins). The rest is then resolved one
    component at a time with ``openat``; this only picks the starting directory.
    Raises :class:`ArgumentError` when no root holds the path.
    """
    if not roots:
        raise ArgumentError("the service has no roots configured")
    if not absolute:
        return 0, parts
    best = -1
    for i, root in enumerate(roots):
        if parts[: len(root)] == root and (best < 0 or len(root) > len(roots[best])):
            best = i
    if best < 0:
        shown = b"/" + b"/".join(parts)
        raise ArgumentError(
            f"{_show(shown)} is outside the served roots "
            f"({', '.join(_show(b'/' + b'/'.join(r)) for r in roots)})"
        )
    return best, parts[len(roots[best]) :]


def _show(raw: bytes) -> str:
    text = raw.decode("utf-8", "backslashreplace")
    return repr(text if len(text) <= 60 else text[:59] + "…")


def eager_entry(flags: int, entry: Entry) -> bool:
    """In a GET with F_EAGER: is this ENTRY's data sent without waiting for READY?"""
    return bool(flags & F_EAGER) and entry.kind == KIND_FILE and 0 <= entry.size <= EAGER_MAX


# -- decisions -------------------------------------------------------------------------


def should_replace(
    flags: int, exists: bool, source_mtime_ns: int, target_mtime_ns: int
) -> str | None:
    """None to go ahead, else why the existing target is kept (no-clobber, update)."""
    if not exists:
        return None
    if flags & F_NO_CLOBBER:
        return "exists (no-clobber)"
    if flags & F_UPDATE and source_mtime_ns <= target_mtime_ns:
        return "target is as new or newer (update)"
    return None


# -- the scp-like ADDRESS:PATH form of the command line -------------------------------

#: Schemes the ``ADDRESS:PATH`` form recognises (hvsock's address schemes).
ADDRESS_SCHEMES = ("vsock", "hvsock", "hybrid", "tcp", "unix")


def split_address_path(arg: str) -> tuple[str, str] | None:
    """``(address, remote path)`` of an scp-like ``ADDRESS:PATH`` argument, else None.

    Only an argument that starts with one of :data:`ADDRESS_SCHEMES` and ``://``
    is taken as one (a local path that looks so is written ``./vsock://...``).
    The address ends at the ``:`` that follows its own last part:

    - ``vsock://CID:PORT:PATH`` and ``tcp://HOST:PORT:PATH``
      (``tcp://[v6]:PORT:PATH``): the ``:`` after the port;
    - ``hvsock://VM/SERVICE:PATH``: the first ``:`` after the ``/``;
    - ``hybrid://UDS:PORT:PATH``: the first ``:<number>`` followed by ``:``;
    - ``unix://SOCKET:PATH``: the first ``:`` (a socket path with ``:`` in it, or
      a hybrid one with ``:<number>:``, is given with ``--remote`` instead).

    The path may be empty (the service's first root). Raises ArgumentError for
    an address with no ``:PATH``.
    """
    scheme, sep, rest = arg.partition("://")
    kind = scheme.lower()
    if not sep or kind not in ADDRESS_SCHEMES:
        return None
    if kind == "unix":
        end = rest.find(":")
    elif kind == "hybrid":
        end = _hybrid_port_end(rest)
    elif kind == "hvsock":
        slash = rest.find("/")
        end = rest.find(":", slash + 1) if slash >= 0 else -1
    else:  # vsock, tcp: HOST:PORT, the host in brackets when it is IPv6
        start = rest.find("]") + 1 if kind == "tcp" and rest.startswith("[") else 0
        first = rest.find(":", start)
        end = rest.find(":", first + 1) if first >= 0 else -1
    if end < 0:
        raise ArgumentError(
            f"{arg!r} is an address without a remote path: write ADDRESS:PATH, e.g. "
            f"{arg}:/srv/file (or {arg}: for the service's first root), or give the "
            "address with --remote and the path as :PATH"
        )
    cut = len(scheme) + 3 + end
    return arg[:cut], arg[cut + 1 :]


def _hybrid_port_end(rest: str) -> int:
    """Where the first ``:<number>`` that is followed by ``:`` ends, or -1."""
    pos = rest.find(":")
    while pos >= 0:
        nxt = rest.find(":", pos + 1)
        if nxt < 0:
            return -1
        port = rest[pos + 1 : nxt]
        digits = port[2:] if port[:2].lower() == "0x" else port
        if digits and all(
            c in ("0123456789abcdefABCDEF" if digits is not port else "0123456789") for c in digits
        ):
            return nxt
        pos = nxt
    return -1
