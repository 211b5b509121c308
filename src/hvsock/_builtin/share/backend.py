"""What the share's 9P session asks of a file system: the backend interface.

The session (``server.py``) owns the protocol: tags, fids, walks, the read-only switch
and the names every backend refuses. A backend owns the files: it resolves a node (an
export's index and the names below its root) inside that export's jail and acts on
it. Two implement this: :mod:`.linuxfs` (``O_PATH`` descriptors, the default on
Linux) and :mod:`.portable` (paths checked with ``lstat`` component by component;
what a Windows host uses, and what ``portable=True`` forces on Linux for testing).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Protocol

from ..._core import ninep as p

__all__: list[str] = []

#: 9P's dirent types (Linux's DT_*).
DT_UNKNOWN, DT_DIR, DT_REG, DT_LNK = 0, 4, 8, 10


class FsErrno(Exception):
    """A request answered with Rlerror(errno)."""

    def __init__(self, code: int) -> None:
        super().__init__(os.strerror(code))
        self.code = code


class Attr(NamedTuple):
    """What Rgetattr carries of a file (and its qid's path)."""

    mode: int
    qid_path: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blksize: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


def qid(attr: Attr) -> p.Qid:
    kind = attr.mode & 0o170000
    qtype = p.QTDIR if kind == 0o040000 else p.QTSYMLINK if kind == 0o120000 else p.QTFILE
    version = (attr.mtime_ns ^ (attr.size << 8)) & 0xFFFFFFFF
    return p.Qid(qtype, version, attr.qid_path & 0xFFFFFFFFFFFFFFFF)


#: A listing entry: (qid, dirent type, name).
Entry = tuple[p.Qid, int, bytes]
#: Tsetattr's times: None leaves it, -1 means now, else nanoseconds.
Times = tuple[int | None, int | None]


class Backend(Protocol):
    """One session's view of the exports. *parts* never hold ``/``, NUL, ``.`` or ``..``
    (the session takes those off); *handle* is what :meth:`lopen`/:meth:`lcreate`
    returned, kept open by the session while a request uses it."""

    #: The xattr namespaces a client may set in (none: every Txattrcreate is EOPNOTSUPP).
    settable_xattrs: tuple[bytes, ...]

    def close(self) -> None: ...
    def check_name(self, name: bytes) -> None: ...
    def attr(self, export: int, parts: tuple[bytes, ...], handle: Any, uid: int) -> Attr: ...
    def lopen(
        self, export: int, parts: tuple[bytes, ...], flags: int, uid: int
    ) -> tuple[Attr, Any]: ...
    def lcreate(
        self,
        export: int,
        parts: tuple[bytes, ...],
        name: bytes,
        flags: int,
        mode: int,
        uid: int,
        gid: int,
    ) -> tuple[Attr, Any]: ...
    def read(self, handle: Any, offset: int, count: int) -> bytes: ...
    def write(self, handle: Any, offset: int, data: bytes | memoryview) -> int: ...
    def close_handle(self, handle: Any) -> None: ...
    def fsync(self, handle: Any, datasync: bool) -> None: ...
    def listing(self, export: int, parts: tuple[bytes, ...], handle: Any) -> list[Entry]: ...
    def mkdir(
        self, export: int, parts: tuple[bytes, ...], name: bytes, mode: int, uid: int, gid: int
    ) -> Attr: ...
    def symlink(
        self, export: int, parts: tuple[bytes, ...], name: bytes, target: bytes, uid: int, gid: int
    ) -> Attr: ...
    def mknod(
        self, export: int, parts: tuple[bytes, ...], name: bytes, mode: int, uid: int, gid: int
    ) -> Attr: ...
    def link(
        self, export: int, parts: tuple[bytes, ...], name: bytes, source: tuple[bytes, ...]
    ) -> None: ...
    def readlink(self, export: int, parts: tuple[bytes, ...]) -> bytes: ...
    def rename(
        self,
        export: int,
        old_dir: tuple[bytes, ...],
        old: bytes,
        new_dir: tuple[bytes, ...],
        new: bytes,
    ) -> None: ...
    def unlink(self, export: int, parts: tuple[bytes, ...], name: bytes, rmdir: bool) -> None: ...
    def remove(self, export: int, parts: tuple[bytes, ...]) -> None: ...
    def setattr(
        self,
        export: int,
        parts: tuple[bytes, ...],
        handle: Any,
        mode: int | None,
        owner: tuple[int, int] | None,
        size: int | None,
        times: Times,
    ) -> None: ...
    def statfs(self, export: int, parts: tuple[bytes, ...], handle: Any) -> tuple[int, ...]: ...
    def lock(self, handle: Any, kind: int, start: int, length: int) -> int: ...
    def getlock(
        self, handle: Any, kind: int, start: int, length: int
    ) -> tuple[int, int, int] | None: ...
    def getxattr(self, export: int, parts: tuple[bytes, ...], name: bytes) -> bytes: ...
    def setxattr(
        self, export: int, parts: tuple[bytes, ...], name: bytes, value: bytes | None, flags: int
    ) -> None: ...


#: Tlock's answers, and its lock kinds (9P's P9_LOCK_TYPE_*).
LOCK_SUCCESS, LOCK_BLOCKED, LOCK_ERROR = 0, 1, 2
LOCK_READ, LOCK_WRITE, LOCK_UNLOCK = 0, 1, 2
V9FS_MAGIC = 0x01021997
