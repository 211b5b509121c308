"""The share's Linux backend: every name resolved with ``O_PATH`` descriptors.

Each use resolves the names again from the export root's descriptor, and a symlink is
never followed by the server: in one ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)``
where the kernel has it (5.6+), else one component at a time with ``O_PATH |
O_NOFOLLOW`` (directories also ``O_DIRECTORY``). The kernel's v9fs client with no
cache walks every path from the mount's root, one name per request, so a request at
depth k cost the loop k opens: a tree 30 deep made CPython's walk tests quadratic.

Operations on the file itself go through that descriptor (``/proc/self/fd/N`` reaches
the exact inode it pins); operations on a name go through its parent's descriptor.
Locks are open-file-description locks on the open file's descriptor. Linux only
(``O_PATH``, OFD locks, /proc); one per session (it holds the exports' root descriptors).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import platform
import stat
import struct
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ..._core import ninep as p
from .backend import (
    DT_DIR,
    DT_LNK,
    DT_REG,
    DT_UNKNOWN,
    LOCK_BLOCKED,
    LOCK_ERROR,
    LOCK_SUCCESS,
    V9FS_MAGIC,
    Attr,
    Entry,
    FsErrno,
    Times,
    qid,
)

__all__: list[str] = []

_O_PATH = getattr(os, "O_PATH", 0)
AVAILABLE = bool(_O_PATH) and hasattr(fcntl, "F_OFD_SETLK")
_DIR_PATH = _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ANY_PATH = _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_LOCK_TYPES = {0: fcntl.F_RDLCK, 1: fcntl.F_WRLCK, 2: fcntl.F_UNLCK}
_F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on 64-bit Linux
#: The namespaces a client may set or remove attributes in. Not trusted.*, security.*
#: (file capabilities, SELinux labels) nor system.* (ACLs): those would let a guest
#: grant rights on the server beyond what the files' modes say.
SETTABLE_XATTRS = (b"user.",)


# -- openat2 ---------------------------------------------------------------------------
#: openat2's number is the same on every architecture that has it (the syscall table
#: was unified before 5.6) but alpha's; machines not listed use the loop.
_OPENAT2_NR = 437
_OPENAT2_MACHINES = frozenset(
    ("x86_64", "aarch64", "arm64", "riscv64", "ppc64le", "ppc64", "s390x", "i686", "i386")
)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
#: A rename racing the resolution makes openat2 answer EAGAIN; after this many, the loop.
_OPENAT2_TRIES = 3


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_BENEATH_PATH = _OpenHow(
    _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
    0,
    _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS,
)


class _Openat2:
    """``openat2`` through libc's ``syscall``, or None when this machine cannot."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.call = libc.syscall
        self.call.restype = ctypes.c_long
        self.call.argtypes = (
            ctypes.c_long,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.POINTER(_OpenHow),
            ctypes.c_size_t,
        )
        self.how = ctypes.byref(_BENEATH_PATH)

    def beneath(self, dir_fd: int, path: bytes) -> int:
        """An ``O_PATH`` descriptor of *path* below *dir_fd*, no symlink followed
        (one as the last name is opened itself). OSError as openat2 gives it."""
        fd = self.call(_OPENAT2_NR, dir_fd, path, self.how, ctypes.sizeof(_OpenHow))
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return int(fd)

    @classmethod
    def probe(cls) -> _Openat2 | None:
        """Works here? ENOSYS (before 5.6) and EPERM (a seccomp filter, as older
        container runtimes have) say no."""
        if platform.machine() not in _OPENAT2_MACHINES or not _O_PATH:
            return None
        try:
            found = cls()
            root = os.open("/", _DIR_PATH)
        except (OSError, AttributeError):
            return None
        try:
            os.close(found.beneath(root, b"."))
        except OSError:
            return None
        finally:
            os.close(root)
        return found


@functools.cache
def openat2() -> _Openat2 | None:
    """The machine's openat2, probed once per process."""
    return _Openat2.probe()


def _proc(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def attr_of(st: os.stat_result) -> Attr:
    return Attr(
        st.st_mode,
        st.st_ino,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        st.st_rdev,
        st.st_size,
        st.st_blksize,
        st.st_blocks,
        st.st_atime_ns,
        st.st_mtime_ns,
        st.st_ctime_ns,
    )


def _signed(length: int) -> int:
    return length if length < 2**63 else length - 2**64


class LinuxFs:
    """The exports seen through descriptors: one per session."""

    settable_xattrs: tuple[bytes, ...] = SETTABLE_XATTRS

    def __init__(self, roots: Sequence[bytes], ownership: str, *, use_openat2: bool = True) -> None:
        """*use_openat2* False: the component loop even where openat2 works (both
        resolutions are tested against each other)."""
        self.passthrough = ownership == "passthrough"
        self.openat2 = openat2() if use_openat2 else None
        self.roots: list[int] = []
        try:
            for path in roots:
                self.roots.append(os.open(path, _DIR_PATH))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        while self.roots:
            os.close(self.roots.pop())

    def check_name(self, name: bytes) -> None:
        """Linux takes every name the session lets through."""

    # -- resolution -----------------------------------------------------------------
    def resolve(self, export: int, parts: tuple[bytes, ...]) -> int:
        """An O_PATH descriptor of *parts* below the export's root, no link followed."""
        if parts and self.openat2 is not None:
            # Names never hold "/" or NUL, nor are "." or ".." (the session checks),
            # so the joined path has exactly these components.
            path = b"/".join(parts)
            for _ in range(_OPENAT2_TRIES):
                try:
                    return self.openat2.beneath(self.roots[export], path)
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        # A symlink where a directory must be: the client sees ENOTDIR.
                        raise FsErrno(errno.ENOTDIR) from None
                    if exc.errno == errno.EXDEV:  # out of the export: cannot happen
                        raise FsErrno(errno.EACCES) from None
                    if exc.errno != errno.EAGAIN:
                        raise
            # A rename kept racing the resolution: the loop below has no such retry.
        fd = os.open(".", _DIR_PATH, dir_fd=self.roots[export])
        try:
            for i, name in enumerate(parts):
                flags = _ANY_PATH if i == len(parts) - 1 else _DIR_PATH
                try:
                    nxt = os.open(name, flags, dir_fd=fd)
                except OSError as exc:
                    # A symlink where a directory must be: the client sees ENOTDIR.
                    if exc.errno == errno.ELOOP:
                        raise FsErrno(errno.ENOTDIR) from None
                    raise
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextlib.contextmanager
    def path_fd(self, export: int, parts: tuple[bytes, ...]) -> Iterator[int]:
        fd = self.resolve(export, parts)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def file_fd(self, export: int, parts: tuple[bytes, ...], handle: int | None) -> Iterator[int]:
        """The file itself: its open descriptor if it has one (the name may be gone)."""
        if handle is not None:
            yield handle
        else:
            with self.path_fd(export, parts) as fd:
                yield fd

    @contextlib.contextmanager
    def dir_fd(self, export: int, parts: tuple[bytes, ...]) -> Iterator[int]:
        with self.path_fd(export, parts) as fd:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise FsErrno(errno.ENOTDIR)
            yield fd

    @contextlib.contextmanager
    def parent_of(self, export: int, parts: tuple[bytes, ...]) -> Iterator[tuple[int, bytes]]:
        if not parts:
            raise FsErrno(errno.EBUSY)  # the export's root has no name to act on
        with self.path_fd(export, parts[:-1]) as fd:
            yield fd, parts[-1]

    def owned(self, dir_fd: int, name: bytes, uid: int, gid: int) -> None:
        """Passthrough: a new entry gets the client's uid and gid."""
        if self.passthrough:
            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)

    # -- files ---------------------------------------------------------------------
    def attr(self, export: int, parts: tuple[bytes, ...], handle: Any, uid: int) -> Attr:
        with self.file_fd(export, parts, handle) as fd:
            return attr_of(os.fstat(fd))

    def lopen(
        self, export: int, parts: tuple[bytes, ...], flags: int, uid: int
    ) -> tuple[Attr, Any]:
        with self.path_fd(export, parts) as fd:
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                raise FsErrno(errno.ELOOP)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise FsErrno(errno.ENXIO)  # devices and FIFOs open in the guest, not here
            # The /proc link reaches exactly the inode the O_PATH descriptor pins.
            return attr_of(st), os.open(_proc(fd), flags)

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
        with self.dir_fd(export, parts) as parent:
            fd = os.open(name, flags | os.O_CREAT | os.O_NOFOLLOW, mode, dir_fd=parent)
            try:
                self.owned(parent, name, uid, gid)
                return attr_of(os.fstat(fd)), fd
            except BaseException:
                os.close(fd)
                raise

    def read(self, handle: Any, offset: int, count: int) -> bytes:
        return os.pread(handle, count, offset)

    def write(self, handle: Any, offset: int, data: bytes | memoryview) -> int:
        return os.pwrite(handle, data, offset)

    def close_handle(self, handle: Any) -> None:
        os.close(handle)

    def fsync(self, handle: Any, datasync: bool) -> None:
        (os.fdatasync if datasync else os.fsync)(handle)

    def listing(self, export: int, parts: tuple[bytes, ...], handle: Any) -> list[Entry]:
        here = qid(attr_of(os.fstat(handle)))
        entries = [(here, DT_DIR, b"."), (here, DT_DIR, b"..")]
        with os.scandir(handle) as scan:
            for entry in scan:
                if entry.is_symlink():
                    qtype, dtype = p.QTSYMLINK, DT_LNK
                elif entry.is_dir(follow_symlinks=False):
                    qtype, dtype = p.QTDIR, DT_DIR
                elif entry.is_file(follow_symlinks=False):
                    qtype, dtype = p.QTFILE, DT_REG
                else:
                    qtype, dtype = p.QTFILE, DT_UNKNOWN  # the client asks getattr
                entries.append((p.Qid(qtype, 0, entry.inode()), dtype, os.fsencode(entry.name)))
        return entries

    def mkdir(
        self, export: int, parts: tuple[bytes, ...], name: bytes, mode: int, uid: int, gid: int
    ) -> Attr:
        with self.dir_fd(export, parts) as parent:
            os.mkdir(name, mode, dir_fd=parent)
            self.owned(parent, name, uid, gid)
            return attr_of(os.stat(name, dir_fd=parent, follow_symlinks=False))

    def symlink(
        self, export: int, parts: tuple[bytes, ...], name: bytes, target: bytes, uid: int, gid: int
    ) -> Attr:
        with self.dir_fd(export, parts) as parent:
            os.symlink(target, name, dir_fd=parent)
            self.owned(parent, name, uid, gid)
            return attr_of(os.stat(name, dir_fd=parent, follow_symlinks=False))

    def mknod(
        self, export: int, parts: tuple[bytes, ...], name: bytes, mode: int, uid: int, gid: int
    ) -> Attr:
        with self.dir_fd(export, parts) as parent:
            os.mknod(name, mode, 0, dir_fd=parent)
            self.owned(parent, name, uid, gid)
            return attr_of(os.stat(name, dir_fd=parent, follow_symlinks=False))

    def link(
        self, export: int, parts: tuple[bytes, ...], name: bytes, source: tuple[bytes, ...]
    ) -> None:
        with self.dir_fd(export, parts) as parent, self.parent_of(export, source) as (sdir, src):
            os.link(src, name, src_dir_fd=sdir, dst_dir_fd=parent, follow_symlinks=False)

    def readlink(self, export: int, parts: tuple[bytes, ...]) -> bytes:
        with self.parent_of(export, parts) as (parent, name):
            return os.readlink(name, dir_fd=parent)

    def rename(
        self,
        export: int,
        old_dir: tuple[bytes, ...],
        old: bytes,
        new_dir: tuple[bytes, ...],
        new: bytes,
    ) -> None:
        with self.dir_fd(export, old_dir) as src, self.dir_fd(export, new_dir) as dst:
            os.rename(old, new, src_dir_fd=src, dst_dir_fd=dst)

    def unlink(self, export: int, parts: tuple[bytes, ...], name: bytes, rmdir: bool) -> None:
        with self.dir_fd(export, parts) as parent:
            if rmdir:
                os.rmdir(name, dir_fd=parent)
            else:
                os.unlink(name, dir_fd=parent)

    def remove(self, export: int, parts: tuple[bytes, ...]) -> None:
        with self.parent_of(export, parts) as (parent, name):
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(name, dir_fd=parent)
            else:
                os.unlink(name, dir_fd=parent)

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
        with self.file_fd(export, parts, handle) as fd:
            st = os.fstat(fd)
            link = stat.S_ISLNK(st.st_mode)
            if mode is not None and not link:
                os.chmod(_proc(fd), mode)
            if owner is not None:
                try:
                    if parts and link:
                        with self.parent_of(export, parts) as (parent, name):
                            os.chown(name, *owner, dir_fd=parent, follow_symlinks=False)
                    else:
                        os.chown(_proc(fd), *owner)
                except PermissionError:
                    if self.passthrough:
                        raise
            if size is not None:
                if link or stat.S_ISDIR(st.st_mode):
                    raise FsErrno(errno.EINVAL)
                if (
                    handle is not None
                    and os.O_ACCMODE & fcntl.fcntl(fd, fcntl.F_GETFL) != os.O_RDONLY
                ):
                    os.ftruncate(fd, size)
                else:
                    os.truncate(_proc(fd), size)
            atime, mtime = times
            if (atime is not None or mtime is not None) and not link:
                old, now = os.fstat(fd), time.time_ns()
                a = old.st_atime_ns if atime is None else now if atime < 0 else atime
                m = old.st_mtime_ns if mtime is None else now if mtime < 0 else mtime
                os.utime(_proc(fd), ns=(a, m))

    def statfs(self, export: int, parts: tuple[bytes, ...], handle: Any) -> tuple[int, ...]:
        with self.file_fd(export, parts, handle) as fd:
            vfs = (
                os.statvfs(_proc(fd))
                if not stat.S_ISLNK(os.fstat(fd).st_mode)
                else os.statvfs(_proc(self.roots[export]))
            )
        return (
            V9FS_MAGIC,
            vfs.f_bsize,
            vfs.f_blocks,
            vfs.f_bfree,
            vfs.f_bavail,
            vfs.f_files,
            vfs.f_ffree,
            vfs.f_fsid & (2**64 - 1),
            vfs.f_namemax,
        )

    # -- locks: OFD locks on the open file's own descriptor, never waited for ------------
    def lock(self, handle: Any, kind: int, start: int, length: int) -> int:
        request = _FLOCK.pack(_LOCK_TYPES[kind], os.SEEK_SET, start, _signed(length), 0)
        try:
            fcntl.fcntl(handle, _F_OFD_SETLK, request)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return LOCK_BLOCKED  # the client waits and asks again
            return LOCK_ERROR
        return LOCK_SUCCESS

    def getlock(
        self, handle: Any, kind: int, start: int, length: int
    ) -> tuple[int, int, int] | None:
        request = _FLOCK.pack(_LOCK_TYPES[kind], os.SEEK_SET, start, _signed(length), 0)
        found_type, _, found_start, found_len, _ = _FLOCK.unpack(
            fcntl.fcntl(handle, _F_OFD_GETLK, request)
        )
        if found_type == fcntl.F_UNLCK:
            return None
        back = {v: k for k, v in _LOCK_TYPES.items()}[found_type]
        return (back, found_start, found_len)

    # -- extended attributes ---------------------------------------------------------
    def getxattr(self, export: int, parts: tuple[bytes, ...], name: bytes) -> bytes:
        with self.path_fd(export, parts) as fd:
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise FsErrno(errno.ENODATA)
            path = _proc(fd)
            if name:
                return os.getxattr(path, name)
            return b"".join(os.fsencode(n) + b"\0" for n in os.listxattr(path))

    def setxattr(
        self, export: int, parts: tuple[bytes, ...], name: bytes, value: bytes | None, flags: int
    ) -> None:
        if not name.startswith(SETTABLE_XATTRS):
            raise FsErrno(errno.EOPNOTSUPP)
        with self.path_fd(export, parts) as fd:
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise FsErrno(errno.EPERM)  # as Linux answers for user.* on a link
            if value is not None:
                os.setxattr(_proc(fd), name, value, flags)
            else:
                os.removexattr(_proc(fd), name)
