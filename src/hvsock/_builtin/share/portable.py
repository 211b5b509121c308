"""The share's portable backend: paths, ``lstat`` and what CPython offers on Windows.

This is what a Windows host uses (it has no ``O_PATH``, ``dir_fd`` or ``/proc``), and
what ``share_service(..., portable=True)`` / ``hvsock share --portable`` force on
Linux, where it is tested. **It has never run on Windows.**

The jail: every operation resolves its node again from the export's root, one
component at a time, each checked by :func:`name_problem` (``/``, ``\\``, NUL, ``:``,
Windows' reserved device names ...) and ``lstat``-ed; a symlink, junction or other
name-surrogate reparse point (:func:`redirects`) is never passed through (ENOTDIR) nor
opened (ELOOP). Resolving and acting happen under one lock per server, so a client
cannot swap a directory for a link between the check and the act; a file opened is
then checked to be the one ``lstat`` saw (device and inode). What this cannot stop is
a *local* process on the server swapping a checked directory for a link in that
window: the Linux backend (descriptors) has no such window.

Ownership and modes are synthesized (:func:`synth_mode`): the attaching uid owns
everything; directories are 0755; regular files 0644, 0444 without the owner's write
bit (Windows: the read-only attribute), plus 0111 with the owner's execute bit
(Windows: ``.exe``, ``.bat``, ``.cmd``, ``.com``, as CPython's ``stat`` reports them).
Locks are kept by the server (between its clients only); no extended attributes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import threading
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..._core import ninep as p
from .backend import (
    DT_DIR,
    DT_LNK,
    DT_REG,
    DT_UNKNOWN,
    LOCK_BLOCKED,
    LOCK_ERROR,
    LOCK_READ,
    LOCK_SUCCESS,
    LOCK_UNLOCK,
    LOCK_WRITE,
    V9FS_MAGIC,
    Attr,
    Entry,
    FsErrno,
    Times,
    qid,
)

__all__: list[str] = []

FILE_ATTRIBUTE_REPARSE_POINT = 0x400
#: A reparse tag with this bit names another file (symlinks, junctions, mount points);
#: others (OneDrive placeholders, dedup) are ordinary files stored differently.
REPARSE_NAME_SURROGATE = 0x20000000
_DEVICES = ("CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "CLOCK$")
#: Windows opens these as devices whatever the directory and extension (``nul.txt``).
RESERVED = frozenset(
    [*_DEVICES]
    + [f"{port}{n}" for port in ("COM", "LPT") for n in ("0123456789\u00b9\u00b2\u00b3")]
)
#: Characters Windows refuses in a name, ``:`` (streams) and ``\\`` among them.
FORBIDDEN = frozenset('<>:"/\\|?*') | frozenset(chr(c) for c in range(32))
_BLOCK = 4096
# No O_NOFOLLOW, although Linux has it: Windows has not, and this backend is tested on
# Linux; the lstat check before and the identity check after each open are the jail.
_OPEN_EXTRA = (
    getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0) | getattr(os, "O_CLOEXEC", 0)
)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_LINK_NOFOLLOW = os.link in os.supports_follow_symlinks
_TO_EOF = 1 << 64


class _StatLike(Protocol):
    @property
    def st_mode(self) -> int: ...


def name_problem(name: bytes) -> str | None:
    """Why *name* cannot be a name in a portable export, or None if it can be.

    The rules are Windows' (so a Linux test run refuses what a Windows host would):
    not empty, ``.`` or ``..``; UTF-8; none of ``<>:"/\\|?*``, NUL or control
    characters; no trailing dot or space (Windows strips them: ``"a."`` is ``"a"``,
    ``".. "`` would be ``..``); not a reserved device name (``CON``, ``NUL``,
    ``COM1`` ..., with any extension or case).
    """
    if name in (b"", b".", b".."):
        return "empty, . or .."
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8"
    bad = next((c for c in text if c in FORBIDDEN), None)
    if bad is not None:
        return f"holds {bad!r}"
    if text[-1] in ". ":
        return "ends with a dot or a space"
    # NFKC folds COM\u00b9 into COM1 (Windows takes both as the port), and fullwidth
    # letters too (refused, though Windows would not: better one name too many).
    stem = unicodedata.normalize("NFKC", text.split(".", 1)[0]).rstrip(" ").upper()
    if stem in RESERVED:
        return f"{stem} is a device name on Windows"
    return None


def check_name(name: bytes) -> None:
    """:func:`name_problem` as the errno a client gets: EINVAL."""
    if name_problem(name) is not None:
        raise FsErrno(errno.EINVAL)


def redirects(st: _StatLike) -> bool:
    """Whether an ``lstat`` result names another file: a symlink, or a junction, mount
    point or other name-surrogate reparse point on Windows."""
    if stat.S_ISLNK(st.st_mode):
        return True
    attrs = getattr(st, "st_file_attributes", 0)
    tag = getattr(st, "st_reparse_tag", 0)
    return bool(attrs & FILE_ATTRIBUTE_REPARSE_POINT and tag & REPARSE_NAME_SURROGATE)


def synth_mode(st: _StatLike) -> int:
    """The mode a client sees (the rule docs/share.md states)."""
    mode = st.st_mode
    if redirects(st):
        return stat.S_IFLNK | 0o777
    if stat.S_ISDIR(mode):
        return stat.S_IFDIR | 0o755
    if stat.S_ISREG(mode):
        return (
            stat.S_IFREG
            | 0o444
            | (0o200 if mode & stat.S_IWUSR else 0)
            | (0o111 if mode & stat.S_IXUSR else 0)
        )
    return stat.S_IFMT(mode) | 0o644  # FIFOs and sockets (Linux only)


def qid_path(ino: int, dev: int, root_dev: int, where: tuple[int, tuple[bytes, ...]]) -> int:
    """A qid's path: the inode (NTFS's file index, as ``os.stat`` gives it), mixed with
    the device when it is not the export's; a hash of the path where there is no inode
    (FAT, some network file systems), its top bit set so it cannot meet an inode."""
    if ino:
        return (ino if dev == root_dev else ino ^ (dev * 0x9E3779B97F4A7C15)) & (2**64 - 1)
    export, parts = where
    digest = hashlib.blake2b(b"/".join(parts), digest_size=8, person=b"%d" % export).digest()
    return int.from_bytes(digest, "little") | 1 << 63


@dataclass(eq=False)
class _Open:
    """An open file, or a directory (Windows cannot ``os.open`` one: ``fd`` is None)."""

    fd: int | None
    ident: tuple[int, int]
    writable: bool
    io: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Range:
    owner: _Open
    write: bool
    start: int
    end: int  # exclusive


class LockTable:
    """POSIX byte-range locks between the server's own open files (best effort: other
    programs on the server do not see them)."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.files: dict[tuple[int, int] | int, list[_Range]] = {}

    @staticmethod
    def key(owner: _Open) -> tuple[int, int] | int:
        return owner.ident if owner.ident[1] else id(owner)

    def conflict(self, owner: _Open, write: bool, start: int, end: int) -> _Range | None:
        for r in self.files.get(self.key(owner), []):
            if r.owner is not owner and r.start < end and start < r.end and (write or r.write):
                return r
        return None

    def set(self, owner: _Open, kind: int, start: int, length: int) -> int:
        end = start + length if length else _TO_EOF
        if kind not in (LOCK_READ, LOCK_WRITE, LOCK_UNLOCK) or end <= start:
            return LOCK_ERROR
        with self.mutex:
            write = kind == LOCK_WRITE
            if kind != LOCK_UNLOCK and self.conflict(owner, write, start, end):
                return LOCK_BLOCKED
            ranges = self.files.setdefault(self.key(owner), [])
            kept: list[_Range] = []
            for r in ranges:  # this owner's overlapping ranges give way to the new one
                if r.owner is not owner or r.end <= start or end <= r.start:
                    kept.append(r)
                    continue
                if r.start < start:
                    kept.append(_Range(owner, r.write, r.start, start))
                if end < r.end:
                    kept.append(_Range(owner, r.write, end, r.end))
            if kind != LOCK_UNLOCK:
                kept.append(_Range(owner, write, start, end))
            if kept:
                self.files[self.key(owner)] = kept
            else:
                del self.files[self.key(owner)]
        return LOCK_SUCCESS

    def get(self, owner: _Open, kind: int, start: int, length: int) -> tuple[int, int, int] | None:
        end = start + length if length else _TO_EOF
        with self.mutex:
            found = self.conflict(owner, kind == LOCK_WRITE, start, end)
        if found is None:
            return None
        size = 0 if found.end == _TO_EOF else found.end - found.start
        return (LOCK_WRITE if found.write else LOCK_READ, found.start, size)

    def release(self, owner: _Open) -> None:
        with self.mutex:
            key = self.key(owner)
            kept = [r for r in self.files.get(key, []) if r.owner is not owner]
            if kept:
                self.files[key] = kept
            else:
                self.files.pop(key, None)


class PortableFs:
    """The exports seen through checked paths: one for the whole server (its lock
    orders every client's resolve-then-act)."""

    settable_xattrs: tuple[bytes, ...] = ()

    def __init__(self, roots: Sequence[bytes]) -> None:
        self.roots = [os.fsdecode(r) for r in roots]
        self.root_devs = [os.stat(r).st_dev for r in self.roots]
        self.meta = threading.RLock()
        self.locks = LockTable()

    def close(self) -> None:
        """Shared by every session: nothing is held per session."""

    def check_name(self, name: bytes) -> None:
        check_name(name)

    # -- resolution (the caller holds self.meta) -------------------------------------
    def walk(self, export: int, parts: tuple[bytes, ...]) -> tuple[str, os.stat_result]:
        """The path of *parts* and its ``lstat``; every component checked."""
        path = self.roots[export]
        st = os.lstat(path)
        for name in parts:
            check_name(name)
            if redirects(st) or not stat.S_ISDIR(st.st_mode):
                raise FsErrno(errno.ENOTDIR)
            path = os.path.join(path, name.decode("utf-8"))
            st = os.lstat(path)
        return path, st

    def directory(self, export: int, parts: tuple[bytes, ...]) -> str:
        path, st = self.walk(export, parts)
        if redirects(st) or not stat.S_ISDIR(st.st_mode):
            raise FsErrno(errno.ENOTDIR)
        return path

    def child(self, export: int, parts: tuple[bytes, ...], name: bytes) -> str:
        check_name(name)
        return os.path.join(self.directory(export, parts), name.decode("utf-8"))

    def synth(self, export: int, parts: tuple[bytes, ...], st: os.stat_result, uid: int) -> Attr:
        size = st.st_size if not stat.S_ISDIR(st.st_mode) else _BLOCK
        blocks = getattr(st, "st_blocks", None)
        return Attr(
            synth_mode(st),
            qid_path(st.st_ino, st.st_dev, self.root_devs[export], (export, parts)),
            st.st_nlink or 1,
            uid,
            uid,
            0,
            size,
            _BLOCK,
            blocks if blocks is not None else -(-size // 512),
            st.st_atime_ns,
            st.st_mtime_ns,
            st.st_ctime_ns,
        )

    @staticmethod
    def opened_is(fd: int, st: os.stat_result) -> None:
        """The file opened is the one ``lstat`` saw (nothing swapped in between)."""
        now = os.fstat(fd)
        if st.st_ino and now.st_ino and (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise FsErrno(errno.ESTALE)

    # -- files ---------------------------------------------------------------------
    def attr(self, export: int, parts: tuple[bytes, ...], handle: Any, uid: int) -> Attr:
        with self.meta:
            try:
                _, st = self.walk(export, parts)
            except FileNotFoundError:
                if handle is None or handle.fd is None:
                    raise
                st = os.fstat(handle.fd)  # an open file whose name is gone
            return self.synth(export, parts, st, uid)

    def open_file(self, path: str, st: os.stat_result, flags: int) -> _Open:
        """Open the file *st* describes; O_TRUNC only once it is known to be that file."""
        fd = os.open(path, (flags & ~(os.O_TRUNC | _O_DIRECTORY | os.O_CREAT)) | _OPEN_EXTRA)
        self.opened_is(fd, st)
        if flags & os.O_TRUNC:
            os.ftruncate(fd, 0)
        access = flags & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
        return _Open(fd, (st.st_dev, st.st_ino), access != os.O_RDONLY)

    def lopen(
        self, export: int, parts: tuple[bytes, ...], flags: int, uid: int
    ) -> tuple[Attr, Any]:
        with self.meta:
            path, st = self.walk(export, parts)
            if redirects(st):
                raise FsErrno(errno.ELOOP)
            if stat.S_ISDIR(st.st_mode):
                if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
                    raise FsErrno(errno.EISDIR)
                return self.synth(export, parts, st, uid), _Open(
                    None, (st.st_dev, st.st_ino), False
                )
            if flags & _O_DIRECTORY:
                raise FsErrno(errno.ENOTDIR)
            if not stat.S_ISREG(st.st_mode):
                raise FsErrno(errno.ENXIO)  # FIFOs open in the guest, not here
            return self.synth(export, parts, st, uid), self.open_file(path, st, flags)

    def lcreate(
        self,
        export: int,
        parts: tuple[bytes, ...],
        name: bytes,
        flags: int,
        mode: int,
        uid: int,
        gid: int,
    ) -> tuple[Attr, Any]:
        with self.meta:
            path = self.child(export, parts, name)
            here = (*parts, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                pass
            else:
                if flags & os.O_EXCL:
                    raise FsErrno(errno.EEXIST)
                if redirects(st):
                    raise FsErrno(errno.ELOOP)
                if not stat.S_ISREG(st.st_mode):
                    raise FsErrno(errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.ENXIO)
                return self.synth(export, here, st, uid), self.open_file(path, st, flags)
            # O_EXCL: a link planted at the name meanwhile makes this fail, never followed.
            created = (0o666 if mode & stat.S_IWUSR else 0o444) | (
                0o111 if mode & stat.S_IXUSR else 0
            )
            fd = os.open(
                path,
                (flags & ~(os.O_TRUNC | _O_DIRECTORY)) | os.O_CREAT | os.O_EXCL | _OPEN_EXTRA,
                created,
            )
            st = os.fstat(fd)
            access = flags & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
            return self.synth(export, here, st, uid), _Open(
                fd, (st.st_dev, st.st_ino), access != os.O_RDONLY
            )

    @staticmethod
    def fd_of(handle: _Open) -> int:
        if handle.fd is None:
            raise FsErrno(errno.EISDIR)
        return handle.fd

    def read(self, handle: Any, offset: int, count: int) -> bytes:
        fd = self.fd_of(handle)
        with handle.io:  # no pread on Windows: the seek and the read go together
            os.lseek(fd, offset, os.SEEK_SET)
            data = os.read(fd, count)
            if len(data) == count or not data:
                return data  # a regular file's usual answer, not copied again
            out = bytearray(data)
            while len(out) < count and (piece := os.read(fd, count - len(out))):
                out += piece
        return bytes(out)

    def write(self, handle: Any, offset: int, data: bytes | memoryview) -> int:
        fd = self.fd_of(handle)
        with handle.io:
            os.lseek(fd, offset, os.SEEK_SET)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        return len(data)

    def close_handle(self, handle: Any) -> None:
        self.locks.release(handle)
        if handle.fd is not None:
            os.close(handle.fd)

    def fsync(self, handle: Any, datasync: bool) -> None:
        if handle.fd is not None:
            os.fsync(handle.fd)  # Windows has no fdatasync

    def listing(self, export: int, parts: tuple[bytes, ...], handle: Any) -> list[Entry]:
        with self.meta:
            path = self.directory(export, parts)
            here = qid(self.synth(export, parts, os.lstat(path), 0))
            entries: list[Entry] = [(here, DT_DIR, b"."), (here, DT_DIR, b"..")]
            with os.scandir(path) as scan:
                for entry in scan:
                    name = os.fsencode(entry.name)
                    if name_problem(name) is not None:
                        continue  # a name no request could reach (Linux only)
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # gone since the listing began
                    mode = synth_mode(st)
                    dtype = (
                        DT_LNK
                        if stat.S_ISLNK(mode)
                        else DT_DIR
                        if stat.S_ISDIR(mode)
                        else DT_REG
                        if stat.S_ISREG(mode)
                        else DT_UNKNOWN
                    )
                    where = (export, (*parts, name))
                    path_id = qid_path(st.st_ino, st.st_dev, self.root_devs[export], where)
                    qtype = p.QTSYMLINK if dtype == DT_LNK else p.QTDIR if dtype == DT_DIR else 0
                    entries.append((p.Qid(qtype, 0, path_id), dtype, name))
        return entries

    def mkdir(
        self, export: int, parts: tuple[bytes, ...], name: bytes, mode: int, uid: int, gid: int
    ) -> Attr:
        with self.meta:
            path = self.child(export, parts, name)
            os.mkdir(path, 0o777)  # shown as 0755 whatever was asked
            return self.synth(export, (*parts, name), os.lstat(path), uid)

    def symlink(
        self, export: int, parts: tuple[bytes, ...], name: bytes, target: bytes, uid: int, gid: int
    ) -> Attr:
        with self.meta:
            path = self.child(export, parts, name)
            # Stored as the guest wrote it; the server never follows it.
            os.symlink(target.decode("utf-8"), path)
            return self.synth(export, (*parts, name), os.lstat(path), uid)

    def mknod(
        self, export: int, parts: tuple[bytes, ...], name: bytes, mode: int, uid: int, gid: int
    ) -> Attr:
        if not stat.S_ISREG(mode):
            raise FsErrno(errno.EPERM)  # no devices, FIFOs or sockets on a portable share
        with self.meta:
            path = self.child(export, parts, name)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_EXTRA, 0o666))
            return self.synth(export, (*parts, name), os.lstat(path), uid)

    def link(
        self, export: int, parts: tuple[bytes, ...], name: bytes, source: tuple[bytes, ...]
    ) -> None:
        with self.meta:
            path = self.child(export, parts, name)
            if not source:
                raise FsErrno(errno.EPERM)
            src, st = self.walk(export, source)
            if _LINK_NOFOLLOW:
                os.link(src, path, follow_symlinks=False)
            elif redirects(st):
                raise FsErrno(errno.EPERM)  # would link what the link names
            else:
                os.link(src, path)

    def readlink(self, export: int, parts: tuple[bytes, ...]) -> bytes:
        with self.meta:
            path, st = self.walk(export, parts)
            if not redirects(st):
                raise FsErrno(errno.EINVAL)
            return os.readlink(path).encode("utf-8", "surrogateescape")

    def rename(
        self,
        export: int,
        old_dir: tuple[bytes, ...],
        old: bytes,
        new_dir: tuple[bytes, ...],
        new: bytes,
    ) -> None:
        with self.meta:
            source = self.child(export, old_dir, old)
            os.lstat(source)
            os.replace(source, self.child(export, new_dir, new))

    def unlink(self, export: int, parts: tuple[bytes, ...], name: bytes, rmdir: bool) -> None:
        with self.meta:
            path = self.child(export, parts, name)
            self.remove_path(path, os.lstat(path), rmdir)

    @staticmethod
    def remove_path(path: str, st: os.stat_result, rmdir: bool) -> None:
        is_dir = stat.S_ISDIR(st.st_mode) and not redirects(st)
        if rmdir and not is_dir:
            raise FsErrno(errno.ENOTDIR)
        if not rmdir and is_dir:
            raise FsErrno(errno.EISDIR)
        (os.rmdir if rmdir else os.unlink)(path)

    def remove(self, export: int, parts: tuple[bytes, ...]) -> None:
        if not parts:
            raise FsErrno(errno.EBUSY)
        with self.meta:
            path, st = self.walk(export, parts)
            self.remove_path(path, st, stat.S_ISDIR(st.st_mode) and not redirects(st))

    def setattr(
        self,
        export: int,
        parts: tuple[bytes, ...],
        handle: Any,
        mode: int | None,
        owner: tuple[int, int] | None,
        size: int | None,
        times: Times,
    ) -> None:
        # owner: accepted and ignored (everything belongs to whoever attached).
        with self.meta:
            path: str | int
            try:
                path, st = self.walk(export, parts)
            except FileNotFoundError:
                if handle is None or handle.fd is None:
                    raise
                # An open file whose name is gone: what CPython can do by descriptor.
                path, st = handle.fd, os.fstat(handle.fd)
            plain = stat.S_ISREG(st.st_mode) and not redirects(st)
            by_fd = isinstance(path, int)
            if mode is not None and plain and (not by_fd or os.chmod in os.supports_fd):
                # Only the owner's write bit (Windows: the read-only attribute).
                os.chmod(path, (stat.S_IMODE(st.st_mode) & ~stat.S_IWUSR) | (mode & stat.S_IWUSR))
            if size is not None:
                if not plain:
                    raise FsErrno(errno.EINVAL)
                if handle is not None and handle.fd is not None and handle.writable:
                    os.ftruncate(handle.fd, size)
                else:
                    os.truncate(path, size)
            atime, mtime = times
            if (
                (atime is not None or mtime is not None)
                and not redirects(st)
                and (not by_fd or os.utime in os.supports_fd)
            ):
                now = time.time_ns()
                a = st.st_atime_ns if atime is None else now if atime < 0 else atime
                m = st.st_mtime_ns if mtime is None else now if mtime < 0 else mtime
                os.utime(path, ns=(a, m))

    def statfs(self, export: int, parts: tuple[bytes, ...], handle: Any) -> tuple[int, ...]:
        usage = shutil.disk_usage(self.roots[export])
        free = usage.free // _BLOCK
        return (V9FS_MAGIC, _BLOCK, usage.total // _BLOCK, free, free, 0, 0, 0, 255)

    def lock(self, handle: Any, kind: int, start: int, length: int) -> int:
        return self.locks.set(handle, kind, start, length)

    def getlock(
        self, handle: Any, kind: int, start: int, length: int
    ) -> tuple[int, int, int] | None:
        return self.locks.get(handle, kind, start, length)

    def getxattr(self, export: int, parts: tuple[bytes, ...], name: bytes) -> bytes:
        raise FsErrno(errno.EOPNOTSUPP)

    def setxattr(
        self, export: int, parts: tuple[bytes, ...], name: bytes, value: bytes | None, flags: int
    ) -> None:
        raise FsErrno(errno.EOPNOTSUPP)
