"""The share service: directories served as 9P2000.L to the Linux kernel's v9fs client.

This module is the protocol: the connection, tags, fids, walks and the checks every
backend shares. The files are a backend's (:mod:`.backend` is the interface):
:mod:`.linuxfs` (``O_PATH`` descriptors, the default on Linux) or :mod:`.portable`
(checked paths, synthesized modes and owners; Windows, or ``portable=True``).

Jail: a fid is an export and a tuple of names below its root, never a host path. A
walk takes ``..`` off the tuple (it cannot climb above the root) and a name holding
``/`` or NUL is refused with EINVAL, as is ``.`` or ``..`` where a new name is
expected; the backend resolves the names again on every use, never following a link.

Concurrency: a connection is a sync handler (a thread with a blocking socket) that
reads messages and hands each request to a thread pool, up to ``max_inflight`` per
connection (past that it stops reading, so memory is bounded by msize times that);
the worker sends the reply itself, so a request costs one thread switch and no
event-loop round trip. Locks are never waited for: the client retries a blocked lock
itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from ..._core import ninep as p
from ..._errors import ArgumentError, ProtocolError, UnsupportedError
from ..._service.connection import SyncConnection
from ..._service.declaration import Limits, Service
from ..._transports import vsock as _vsock
from ..._transports._common import sendall_parts
from ..._validate import instance, quote, whole_number
from .backend import LOCK_ERROR, LOCK_READ, LOCK_UNLOCK, Backend, FsErrno, qid

__all__ = ["share_service"]

#: 9P's registered port, also the share's vsock port (Hyper-V service id
#: 00000234-facb-11e6-bd58-64006a7986d3).
DEFAULT_PORT = 564
SERVICE_NAME = "hvsock share"
#: "server": files belong to the server's user, ownership changes the server cannot
#: make are ignored (QEMU's security_model=none); "passthrough": new files get the
#: client's uid and gid and chown is applied (QEMU's passthrough; the server is root);
#: "synthesized": the portable backend's (owner the attaching uid, modes made up).
OWNERSHIP_MODES = ("server", "passthrough", "synthesized")
#: Largest msize this server agrees to (the kernel's fd transport caps at 1 MiB).
MAX_MSIZE = 1 << 20
#: The vsock buffer (receive credit) of each connection: room for two whole requests.
#: vsock's default, 256 KiB, is less than one 512 KiB Twrite, and its sender then
#: stalls until this side has read most of it and sent a credit update, every message.
VSOCK_BUFFER = 2 * MAX_MSIZE
MIN_MSIZE = 4096

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# The open flags of Tlopen/Tlcreate are 9P's P9_DOTL_* values (x86 Linux's numbers on
# every machine), mapped here to this machine's. Honoured: access mode, truncation,
# exclusive create, sync. Dropped: append (each write carries its offset), and
# non-blocking, direct, noatime, async (the client's business).
_DOTL_ACCESS = 3
_DOTL_FLAGS = (
    (0o100, os.O_CREAT),
    (0o200, os.O_EXCL),
    (0o1000, os.O_TRUNC),
    (0o10000, getattr(os, "O_DSYNC", 0)),
    (0o200000, getattr(os, "O_DIRECTORY", 0)),
    (0o4000000, getattr(os, "O_SYNC", 0)),
)
_AT_REMOVEDIR = 0x200
# Tsetattr valid bits (include/net/9p/9p.h P9_ATTR_*).
_ATTR_MODE, _ATTR_UID, _ATTR_GID, _ATTR_SIZE = 1, 2, 4, 8
_ATTR_ATIME, _ATTR_MTIME, _ATTR_ATIME_SET, _ATTR_MTIME_SET = 16, 32, 128, 256
_GETATTR_BASIC = 0x7FF
_XATTR_SIZE_MAX = 65536  # Linux's XATTR_SIZE_MAX
_XATTR_CREATE, _XATTR_REPLACE = 1, 2  # Linux's numbers, as 9P carries them
_NONUNAME = 0xFFFFFFFF
_Errno = FsErrno


_WAITALL = getattr(socket, "MSG_WAITALL", 0)


def _euid() -> int:
    return getattr(os, "geteuid", lambda: 0)()


@dataclass(frozen=True)
class Export:
    """A directory served under a name (the ``aname`` a client attaches with)."""

    name: str
    path: bytes  # its real path


@dataclass(frozen=True)
class _Config:
    exports: tuple[Export, ...]
    read_only: bool
    ownership: str
    max_fids: int
    max_inflight: int
    vm_allow_given: bool
    pool: ThreadPoolExecutor = field(compare=False)
    #: A session's file system (the Linux backend is one per session, the portable
    #: one shared); None: the Linux backend (the tests make sessions by hand).
    backend: Callable[[], Backend] | None = field(default=None, compare=False)

    def make_backend(self) -> Backend:
        if self.backend is not None:
            return self.backend()
        from .linuxfs import LinuxFs

        return LinuxFs([e.path for e in self.exports], self.ownership)


def _exports(dirs: object) -> tuple[Export, ...]:
    if isinstance(dirs, (str, bytes, os.PathLike)):
        dirs = [dirs]
    items: list[tuple[str | None, object]]
    if isinstance(dirs, Mapping):
        items = [(str(k), v) for k, v in dirs.items()]
    elif isinstance(dirs, Iterable):
        items = [(None, d) for d in dirs]
    else:
        raise ArgumentError(f"share_service takes a directory or a list of them, not {quote(dirs)}")
    out: list[Export] = []
    for name, path in items:
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise ArgumentError(f"an export must be a path, not {quote(path)}")
        real = os.path.realpath(os.fsencode(path))
        if not os.path.isdir(real):
            raise ArgumentError(
                f"{quote(os.fsdecode(os.fsencode(path)))} is not a directory; share a directory"
            )
        name = name if name is not None else os.fsdecode(os.path.basename(real)) or "root"
        if not name or "/" in name or "\0" in name:
            raise ArgumentError(f"export name {quote(name)} must be non-empty, without / or NUL")
        if any(e.name == name for e in out):
            raise ArgumentError(f"two exports are named {quote(name)}; name them NAME=DIR")
        out.append(Export(name, real))
    if not out:
        raise ArgumentError("share_service needs at least one directory")
    return tuple(out)


def _linux_backend_available() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    from .linuxfs import AVAILABLE

    return AVAILABLE


def share_service(
    dirs: Any,
    *,
    port: int | Any = DEFAULT_PORT,
    allow: Any = None,
    read_only: bool = False,
    ownership: str | None = None,
    portable: bool | None = None,
    max_fids: int = 16384,
    max_inflight: int = 32,
    limits: Limits | None = None,
    name: str = SERVICE_NAME,
) -> Service:
    """A 9P2000.L file server over *dirs*, for :class:`hvsock.ServiceHost`.

    *dirs* is a directory, a list of them (each exported under its base name), or a
    mapping ``{name: directory}``; a client picks one with the mount's ``aname``
    (none: the first). *allow* is the allowlist (CIDs, VM ids, hosts, ``"uid:N"``);
    ``"any"`` lets every peer in. A peer on a VM socket (vsock, Hyper-V) is refused
    unless *allow* was given: a share is never open to every VM by default.
    *read_only* answers every change with EROFS. *ownership* is one of
    :data:`OWNERSHIP_MODES` ("passthrough" needs root; "synthesized" is the portable
    backend's and its default; the Linux backend's default is "server").
    *portable* chooses the file system backend: the portable one (paths checked with
    lstat, modes and owners synthesized: what Windows uses; on Linux for testing), or
    the Linux one (``O_PATH`` descriptors); None picks by platform.
    *max_fids* bounds the fids one connection may hold, *max_inflight* its requests
    served at once. Raises :class:`ArgumentError` / :class:`UnsupportedError`.
    """
    exports = _exports(dirs)
    if portable is None:
        portable = not _linux_backend_available()
    elif not portable and not _linux_backend_available():
        raise UnsupportedError(
            "the Linux share backend needs Linux (O_PATH, OFD locks, /proc); "
            "use the portable one (portable=True)"
        )
    if ownership is None:
        ownership = "synthesized" if portable else "server"
    if ownership not in OWNERSHIP_MODES:
        raise ArgumentError(
            f"ownership {quote(ownership)}: choose one of {', '.join(OWNERSHIP_MODES)}"
        )
    if portable != (ownership == "synthesized"):
        raise ArgumentError(
            "ownership 'synthesized' is the portable backend's, and the only one it has"
            if portable
            else "ownership 'synthesized' needs the portable backend (portable=True)"
        )
    if ownership == "passthrough" and _euid() != 0:
        raise ArgumentError(
            "ownership='passthrough' needs the server to run as root; "
            "use the default 'server' mode otherwise"
        )
    whole_number(max_fids, "max_fids", 1, 1 << 24)
    whole_number(max_inflight, "max_inflight", 1, 1024)
    given = allow is not None
    if allow == "any" or (
        given and not isinstance(allow, (str, bytes, int)) and "any" in list(allow)
    ):
        allow = None
    limits = (
        instance(limits, Limits, "limits")
        if limits is not None
        else Limits(max_connections=64, idle_timeout=None)
    )
    backend: Callable[[], Backend] | None = None
    if portable:
        from .portable import PortableFs

        shared = PortableFs([e.path for e in exports])
        backend = lambda: shared  # noqa: E731
    config = _Config(
        exports,
        bool(read_only),
        ownership,
        max_fids,
        max_inflight,
        given,
        ThreadPoolExecutor(max_workers=16, thread_name_prefix="hvsock-share"),
        backend,
    )

    def handle(conn: SyncConnection) -> None:
        if not config.vm_allow_given and (conn.peer.cid is not None or conn.peer.vm_id is not None):
            conn.log.warning(
                "refused %s: a share reached over VM sockets needs an explicit "
                "allowlist (allow=[CID, ...] or 'any')",
                conn.peer,
            )
            return
        _Session(config, conn).run()

    return Service(name, port, handle, allow=allow, limits=limits)


@dataclass
class _Fid:
    export: int
    parts: tuple[bytes, ...]
    uid: int
    fd: Any = None  # the backend's open file or directory (Tlopen / Tlcreate)
    listing: list[tuple[p.Qid, int, bytes]] | None = None  # readdir snapshot
    xattr: bytes | None = None  # a Txattrwalk's value, read with Tread
    setting: _XattrSet | None = None  # a Txattrcreate's value, written, set at Tclunk
    users: int = 0  # requests using fd right now: a clunk closes it when they end
    clunked: bool = False


@dataclass
class _XattrSet:
    name: bytes
    size: int
    flags: int
    value: bytearray = field(default_factory=bytearray)


def _check_name(name: bytes) -> bytes:
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise _Errno(errno.EINVAL)
    return name


class _Session:
    """One client connection: its fids and the requests it has in flight."""

    def __init__(self, config: _Config, conn: SyncConnection) -> None:
        self.config = config
        self.conn = conn
        self.fids: dict[int, _Fid] = {}
        self.lock = threading.Lock()
        self.msize = 0
        self.fs: Backend | None = None
        self.tasks: dict[int, Future[None]] = {}
        #: run()'s receiver: a big Twrite's data is a view of its buffer, given back
        #: once served (None: the tests' hand-made sessions, which copy).
        self.receiver: p.Receiver | None = None
        # Replies leave whole and one at a time; a tag leaves `tasks` under this lock
        # together with its reply, so a Tflush sees either both or neither.
        self.send_lock = threading.Lock()

    @property
    def files(self) -> Backend:
        if self.fs is None:
            self.fs = self.config.make_backend()
        return self.fs

    # -- the connection ---------------------------------------------------------------
    def run(self) -> None:
        """Read requests on this thread, serve them in the pool; each worker sends its
        own reply (no hop back to an event loop: a request costs one thread switch)."""
        receiver = self.receiver = p.Receiver(MAX_MSIZE)
        slots = threading.BoundedSemaphore(self.config.max_inflight)
        recv_into = self.conn.sock.recv_into
        try:
            self.fs = self.config.make_backend()
            # Before the first reply, which tells the client the new credit.
            _vsock.ensure_buffer_size(self.conn.sock, VSOCK_BUFFER)
            waitall = _WAITALL
            while True:
                # Straight into the receiver's buffer: a big Twrite's data is written
                # to its file from where it arrived (serve() gives the buffer back
                # after). The rest of a big frame is taken in one call: one return to
                # Python per frame, not one per vsock packet (64 KiB) that was there.
                flags = waitall if receiver.in_frame else 0
                try:
                    count = recv_into(receiver.buffer(), 0, flags)
                except OSError:
                    if not flags:
                        raise
                    # Some sockets refuse it before reading a byte (vsock's ENOMEM
                    # when the rest is over its receive buffer, as on hv_sock's
                    # 4 KiB): plain reads from now on; a real error comes again.
                    waitall = 0
                    continue
                if not count:
                    break
                batch = receiver.received(count)
                for msg in batch:
                    if msg.type == p.TVERSION:
                        self.drain_tasks()
                        reply = self.version(msg)
                        receiver.msize = self.msize or MAX_MSIZE
                        self.send(reply)
                    elif msg.type == p.TFLUSH:
                        self.flush(msg)
                    elif msg.tag in self.tasks:
                        raise ProtocolError(f"tag {msg.tag} is already in use")
                    elif msg.type % 2:
                        raise ProtocolError(f"the client sent a reply ({msg.name})")
                    elif len(batch) == 1 and not self.tasks:
                        # Alone and nothing else running: served here, saving the
                        # hand-off. Requests that arrive meanwhile wait in the socket
                        # and come as a batch, which goes to the pool.
                        self.serve(msg)
                    else:
                        slots.acquire()  # past max_inflight, stop reading
                        self.submit(msg, slots)
        except ProtocolError as exc:
            self.conn.log.info("%s: closing the connection: %s", self.conn.peer, exc)
        except OSError as exc:
            self.conn.log.info("%s: connection lost: %s", self.conn.peer, exc)
        finally:
            self.drain_tasks()
            self.clunk_all()
            if self.fs is not None:
                self.fs.close()

    def submit(self, msg: p.Message, slots: threading.BoundedSemaphore) -> None:
        with self.lock:
            future = self.tasks[msg.tag] = self.config.pool.submit(self.serve, msg)
        future.add_done_callback(lambda _: slots.release())

    def drain_tasks(self) -> None:
        while True:
            with self.lock:
                pending = list(self.tasks.values())
            if not pending:
                return
            wait(pending)
            with self.lock:  # a request whose reply could not be sent keeps its tag
                for tag, future in list(self.tasks.items()):
                    if future.done():
                        del self.tasks[tag]

    def send(self, reply: p.Message, tag_done: int | None = None) -> None:
        parts = p.encode_parts(reply)
        with self.send_lock:
            if tag_done is not None:
                # The tag is free once its reply is on its way: the client may reuse
                # it as soon as it reads the reply.
                with self.lock:
                    self.tasks.pop(tag_done, None)
            try:
                sendall_parts(self.conn.sock, parts)
            except OSError:
                # The connection is gone: the reading side sees it too and ends.
                with contextlib.suppress(OSError):
                    self.conn.sock.shutdown(socket.SHUT_RDWR)

    def serve(self, msg: p.Message) -> None:
        try:
            reply = self.dispatch(msg)
        except _Errno as exc:
            reply = p.Message(p.RLERROR, msg.tag, (exc.code,))
        except OSError as exc:
            reply = p.Message(p.RLERROR, msg.tag, (exc.errno or errno.EIO,))
        except ValueError:  # a NUL inside a name the codec let through
            reply = p.Message(p.RLERROR, msg.tag, (errno.EINVAL,))
        except Exception:  # a bug here must not end the session: the client gets EIO
            self.conn.log.exception("%s: %s failed", self.conn.peer, msg.name)
            reply = p.Message(p.RLERROR, msg.tag, (errno.EIO,))
        if msg.type == p.TWRITE and self.receiver is not None:
            self.receiver.recycle(msg.args[2])  # written: its buffer may take the next
        try:
            self.send(reply, msg.tag)
        except ProtocolError:  # a reply that does not fit (e.g. a long readlink)
            self.send(p.Message(p.RLERROR, msg.tag, (errno.ENAMETOOLONG,)), msg.tag)

    def flush(self, msg: p.Message) -> None:
        """The flushed request's reply (if it is still running) goes first, then Rflush."""
        rflush = p.Message(p.RFLUSH, msg.tag, ())
        with self.send_lock, self.lock:
            old = self.tasks.get(msg.args[0])
        if old is None:
            self.send(rflush)
        else:
            old.add_done_callback(lambda _: self.send(rflush))

    def version(self, msg: p.Message) -> p.Message:
        msize, version = msg.args
        self.clunk_all()
        if not version.startswith(p.VERSION):
            self.msize = 0
            return p.Message(p.RVERSION, msg.tag, (min(msize, MAX_MSIZE), b"unknown"))
        self.msize = max(MIN_MSIZE, min(msize, MAX_MSIZE))
        return p.Message(p.RVERSION, msg.tag, (self.msize, p.VERSION))

    def clunk_all(self) -> None:
        with self.lock:
            fids, self.fids = list(self.fids.values()), {}
        for fid in fids:
            self.retire(fid)

    def retire(self, fid: _Fid) -> None:
        """*fid* is gone: close its file now, or when the last request using it ends."""
        with self.lock:
            fid.clunked = True
            fd = fid.fd if fid.users == 0 else None
        if fd is not None:
            self.files.close_handle(fd)

    @contextlib.contextmanager
    def opened(self, fid: _Fid) -> Iterator[Any]:
        """The fid's open descriptor, kept open while the caller uses it, even if
        the fid is clunked meanwhile (the number is never reused under a read)."""
        with self.lock:
            if fid.fd is None or fid.clunked:
                raise _Errno(errno.EBADF)
            fid.users += 1
            fd = fid.fd
        try:
            yield fd
        finally:
            with self.lock:
                fid.users -= 1
                close = fid.clunked and fid.users == 0
            if close:
                self.files.close_handle(fd)

    # -- fids and paths -------------------------------------------------------------
    def fid(self, number: int) -> _Fid:
        found = self.fids.get(number)
        if found is None:
            raise _Errno(errno.EBADF)
        return found

    def add_fid(self, number: int, fid: _Fid) -> None:
        with self.lock:
            if number == p.NOFID or number in self.fids:
                raise _Errno(errno.EBADF if number == p.NOFID else errno.EEXIST)
            if len(self.fids) >= self.config.max_fids:
                raise _Errno(errno.EMFILE)
            self.fids[number] = fid

    def writable(self) -> None:
        if self.config.read_only:
            raise _Errno(errno.EROFS)

    def new_name(self, name: bytes) -> bytes:
        """A name to create or act on: the session's rules, then the backend's."""
        _check_name(name)
        self.files.check_name(name)
        return name

    @contextlib.contextmanager
    def handle_of(self, fid: _Fid) -> Iterator[Any]:
        """The fid's open file if it has one (the name may be gone), else None."""
        if fid.fd is not None:
            with self.opened(fid) as handle:
                yield handle
        else:
            yield None

    def renamed(self, export: int, old: tuple[bytes, ...], new: tuple[bytes, ...]) -> None:
        with self.lock:
            for fid in self.fids.values():
                if fid.export == export and fid.parts[: len(old)] == old:
                    fid.parts = new + fid.parts[len(old) :]

    # -- requests ------------------------------------------------------------------
    def dispatch(self, msg: p.Message) -> p.Message:
        if not self.msize:
            raise _Errno(errno.EPROTO)  # no Tversion yet
        handler = _HANDLERS.get(msg.type)
        if handler is None:
            raise _Errno(errno.EOPNOTSUPP)
        return p.Message(msg.type + 1, msg.tag, handler(self, *msg.args))

    def t_attach(
        self, fid: int, afid: int, uname: bytes, aname: bytes, n_uname: int
    ) -> tuple[Any, ...]:
        wanted = aname.strip(b"/").decode("utf-8", "surrogateescape")
        exports = self.config.exports
        index = (
            0 if not wanted else next((i for i, e in enumerate(exports) if e.name == wanted), -1)
        )
        if index < 0:
            self.conn.log.info("%s: no export named %r", self.conn.peer, wanted)
            raise _Errno(errno.ENOENT)
        uid = n_uname if n_uname != _NONUNAME else _euid()
        attr = self.files.attr(index, (), None, uid)
        self.add_fid(fid, _Fid(index, (), uid))
        return (qid(attr),)

    def t_auth(self, *_: Any) -> tuple[Any, ...]:
        raise _Errno(errno.EOPNOTSUPP)  # no authentication: the allowlist decides

    def t_walk(self, fid: int, newfid: int, names: tuple[bytes, ...]) -> tuple[Any, ...]:
        start = self.fid(fid)
        if len(names) > p.MAXWELEM:
            raise _Errno(errno.EINVAL)
        if newfid != fid and newfid in self.fids:
            raise _Errno(errno.EEXIST)
        parts = start.parts
        qids: list[p.Qid] = []
        for name in names:
            if not name or b"/" in name or b"\0" in name:
                if not qids:
                    raise _Errno(errno.EINVAL)
                break
            candidate = parts[:-1] if name == b".." else parts if name == b"." else (*parts, name)
            try:
                attr = self.files.attr(start.export, candidate, None, start.uid)
            except (OSError, _Errno):
                if not qids:
                    raise
                break
            parts = candidate
            qids.append(qid(attr))
        if len(qids) == len(names):
            if newfid == fid:
                start.parts = parts
            else:
                self.add_fid(newfid, _Fid(start.export, parts, start.uid))
        return (tuple(qids),)

    def t_clunk(self, fid: int) -> tuple[Any, ...]:
        with self.lock:
            gone = self.fids.pop(fid, None)
        if gone is None:
            raise _Errno(errno.EBADF)
        self.retire(gone)
        if gone.setting is not None:
            self.set_xattr(gone, gone.setting)
        return ()

    def t_remove(self, fid: int) -> tuple[Any, ...]:
        target = self.fid(fid)
        try:
            self.writable()
            if not target.parts:
                raise _Errno(errno.EBUSY)  # the export's root has no name to act on
            self.files.remove(target.export, target.parts)
        finally:
            self.t_clunk(fid)  # Tremove clunks the fid whatever happens
        return ()

    def t_getattr(self, fid: int, mask: int) -> tuple[Any, ...]:
        target = self.fid(fid)
        with self.handle_of(target) as handle:
            a = self.files.attr(target.export, target.parts, handle, target.uid)
        return (
            _GETATTR_BASIC,
            qid(a),
            a.mode,
            a.uid,
            a.gid,
            a.nlink,
            a.rdev,
            a.size,
            a.blksize,
            a.blocks,
            a.atime_ns // 10**9,
            a.atime_ns % 10**9,
            a.mtime_ns // 10**9,
            a.mtime_ns % 10**9,
            a.ctime_ns // 10**9,
            a.ctime_ns % 10**9,
            0,
            0,
            0,
            0,
        )

    def t_setattr(
        self,
        fid: int,
        valid: int,
        mode: int,
        uid: int,
        gid: int,
        size: int,
        atime_s: int,
        atime_ns: int,
        mtime_s: int,
        mtime_ns: int,
    ) -> tuple[Any, ...]:
        self.writable()
        target = self.fid(fid)
        owner = None
        if valid & (_ATTR_UID | _ATTR_GID):
            owner = (uid if valid & _ATTR_UID else -1, gid if valid & _ATTR_GID else -1)
        atime = mtime = None
        if valid & _ATTR_ATIME:  # without *_SET: now (-1)
            atime = atime_s * 10**9 + atime_ns if valid & _ATTR_ATIME_SET else -1
        if valid & _ATTR_MTIME:
            mtime = mtime_s * 10**9 + mtime_ns if valid & _ATTR_MTIME_SET else -1
        with self.handle_of(target) as handle:
            self.files.setattr(
                target.export,
                target.parts,
                handle,
                stat.S_IMODE(mode) if valid & _ATTR_MODE else None,
                owner,
                size if valid & _ATTR_SIZE else None,
                (atime, mtime),
            )
        return ()

    def open_flags(self, flags: int) -> int:
        access = flags & _DOTL_ACCESS
        if access == 3:
            raise _Errno(errno.EINVAL)
        local = access | _O_CLOEXEC  # O_RDONLY/O_WRONLY/O_RDWR are 0/1/2 everywhere
        for dotl, here in _DOTL_FLAGS:
            if flags & dotl:
                local |= here
        local &= ~os.O_CREAT  # creation is Tlcreate's, with its own name check
        if self.config.read_only and (access != os.O_RDONLY or local & os.O_TRUNC):
            raise _Errno(errno.EROFS)
        return local

    def adopt(self, target: _Fid, handle: Any) -> None:
        """*handle* becomes the fid's open file, unless the fid was clunked meanwhile."""
        with self.lock:
            if not target.clunked:
                target.fd = handle
                return
        self.files.close_handle(handle)
        raise _Errno(errno.EBADF)

    @staticmethod
    def closed_plain(target: _Fid) -> None:
        """Tlopen/Tlcreate/Txattrcreate need a fid not opened nor holding an attribute."""
        if target.fd is not None or target.xattr is not None or target.setting is not None:
            raise _Errno(errno.EBUSY)

    def t_lopen(self, fid: int, flags: int) -> tuple[Any, ...]:
        target = self.fid(fid)
        self.closed_plain(target)
        mode = self.open_flags(flags) & ~os.O_EXCL
        attr, handle = self.files.lopen(target.export, target.parts, mode, target.uid)
        self.adopt(target, handle)
        target.listing = None
        return (qid(attr), 0)

    def t_lcreate(self, fid: int, name: bytes, flags: int, mode: int, gid: int) -> tuple[Any, ...]:
        self.writable()
        target = self.fid(fid)
        self.closed_plain(target)
        self.new_name(name)
        attr, handle = self.files.lcreate(
            target.export,
            target.parts,
            name,
            self.open_flags(flags),
            stat.S_IMODE(mode),
            target.uid,
            gid,
        )
        self.adopt(target, handle)
        target.parts = (*target.parts, name)
        return (qid(attr), 0)

    def t_read(self, fid: int, offset: int, count: int) -> tuple[Any, ...]:
        target = self.fid(fid)
        count = min(count, self.msize - p.HEADER - 4)
        if target.xattr is not None:
            return (target.xattr[offset : offset + count],)
        with self.opened(target) as handle:
            return (self.files.read(handle, offset, count),)

    def t_write(self, fid: int, offset: int, data: bytes | memoryview) -> tuple[Any, ...]:
        self.writable()
        target = self.fid(fid)
        if target.setting is not None:
            value = target.setting.value
            if offset != len(value) or offset + len(data) > target.setting.size:
                raise _Errno(errno.EINVAL)  # in order, and no more than announced
            value += data
            return (len(data),)
        with self.opened(target) as handle:
            return (self.files.write(handle, offset, data),)

    def t_readdir(self, fid: int, offset: int, count: int) -> tuple[Any, ...]:
        target = self.fid(fid)
        if offset == 0 or target.listing is None:
            with self.opened(target) as handle:
                target.listing = self.files.listing(target.export, target.parts, handle)
        count = min(count, self.msize - p.HEADER - 4)
        out = bytearray()
        for index in range(offset, len(target.listing)):
            entry_qid, kind, name = target.listing[index]
            entry = p.dirent(entry_qid, index + 1, kind, name)
            if len(out) + len(entry) > count:
                break
            out += entry
        return (bytes(out),)

    def t_mkdir(self, dfid: int, name: bytes, mode: int, gid: int) -> tuple[Any, ...]:
        self.writable()
        target = self.fid(dfid)
        self.new_name(name)
        attr = self.files.mkdir(
            target.export, target.parts, name, stat.S_IMODE(mode), target.uid, gid
        )
        return (qid(attr),)

    def t_symlink(self, fid: int, name: bytes, target_path: bytes, gid: int) -> tuple[Any, ...]:
        self.writable()
        target = self.fid(fid)
        self.new_name(name)
        if b"\0" in target_path:
            raise _Errno(errno.EINVAL)
        attr = self.files.symlink(target.export, target.parts, name, target_path, target.uid, gid)
        return (qid(attr),)

    def t_mknod(
        self, dfid: int, name: bytes, mode: int, major: int, minor: int, gid: int
    ) -> tuple[Any, ...]:
        self.writable()
        target = self.fid(dfid)
        self.new_name(name)
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISREG(mode)):
            raise _Errno(errno.EPERM)  # no device nodes on the host, whoever asks
        attr = self.files.mknod(target.export, target.parts, name, mode, target.uid, gid)
        return (qid(attr),)

    def t_link(self, dfid: int, fid: int, name: bytes) -> tuple[Any, ...]:
        self.writable()
        directory, source = self.fid(dfid), self.fid(fid)
        self.new_name(name)
        if directory.export != source.export:
            raise _Errno(errno.EXDEV)
        if not source.parts:
            raise _Errno(errno.EBUSY)
        self.files.link(directory.export, directory.parts, name, source.parts)
        return ()

    def t_readlink(self, fid: int) -> tuple[Any, ...]:
        target = self.fid(fid)
        return (self.files.readlink(target.export, target.parts),)

    def rename(self, old_dir: _Fid, old: bytes, new_dir: _Fid, new: bytes) -> None:
        self.writable()
        self.new_name(old)
        self.new_name(new)
        if old_dir.export != new_dir.export:
            raise _Errno(errno.EXDEV)
        self.files.rename(old_dir.export, old_dir.parts, old, new_dir.parts, new)
        self.renamed(old_dir.export, (*old_dir.parts, old), (*new_dir.parts, new))

    def t_renameat(
        self, olddirfid: int, oldname: bytes, newdirfid: int, newname: bytes
    ) -> tuple[Any, ...]:
        self.rename(self.fid(olddirfid), oldname, self.fid(newdirfid), newname)
        return ()

    def t_rename(self, fid: int, dfid: int, name: bytes) -> tuple[Any, ...]:
        source = self.fid(fid)
        if not source.parts:
            raise _Errno(errno.EBUSY)
        parent = _Fid(source.export, source.parts[:-1], source.uid)
        self.rename(parent, source.parts[-1], self.fid(dfid), name)
        return ()

    def t_unlinkat(self, dfid: int, name: bytes, flags: int) -> tuple[Any, ...]:
        self.writable()
        target = self.fid(dfid)
        self.new_name(name)
        self.files.unlink(target.export, target.parts, name, bool(flags & _AT_REMOVEDIR))
        return ()

    def t_statfs(self, fid: int) -> tuple[Any, ...]:
        target = self.fid(fid)
        with self.handle_of(target) as handle:
            return self.files.statfs(target.export, target.parts, handle)

    def t_fsync(self, fid: int, datasync: int) -> tuple[Any, ...]:
        with self.opened(self.fid(fid)) as handle:
            self.files.fsync(handle, bool(datasync))
        return ()

    def t_lock(
        self,
        fid: int,
        kind: int,
        flags: int,
        start: int,
        length: int,
        proc_id: int,
        client_id: bytes,
    ) -> tuple[Any, ...]:
        target = self.fid(fid)
        if target.fd is None or not LOCK_READ <= kind <= LOCK_UNLOCK:
            return (LOCK_ERROR,)
        try:
            with self.opened(target) as handle:
                return (self.files.lock(handle, kind, start, length),)
        except _Errno:
            return (LOCK_ERROR,)

    def t_getlock(
        self, fid: int, kind: int, start: int, length: int, proc_id: int, client_id: bytes
    ) -> tuple[Any, ...]:
        target = self.fid(fid)
        if target.fd is None or not LOCK_READ <= kind <= LOCK_UNLOCK:
            raise _Errno(errno.EINVAL)
        with self.opened(target) as handle:
            found = self.files.getlock(handle, kind, start, length)
        if found is None:
            return (LOCK_UNLOCK, start, length, proc_id, client_id)
        return (*found, 0, b"")

    def t_xattrwalk(self, fid: int, newfid: int, name: bytes) -> tuple[Any, ...]:
        target = self.fid(fid)
        value = self.files.getxattr(target.export, target.parts, name)
        self.add_fid(newfid, _Fid(target.export, target.parts, target.uid, xattr=value))
        return (len(value),)

    def t_xattrcreate(self, fid: int, name: bytes, size: int, flags: int) -> tuple[Any, ...]:
        """The fid becomes the attribute's: Twrite gives the value, Tclunk sets it
        (a size of 0 removes it, as QEMU's server does)."""
        self.writable()
        target = self.fid(fid)
        if not name.startswith(self.files.settable_xattrs) or b"\0" in name or len(name) > 255:
            raise _Errno(errno.EOPNOTSUPP)
        if size > _XATTR_SIZE_MAX:
            raise _Errno(errno.E2BIG)
        if flags & ~(_XATTR_CREATE | _XATTR_REPLACE):
            raise _Errno(errno.EINVAL)
        self.closed_plain(target)
        target.setting = _XattrSet(name, size, flags)
        return ()

    def set_xattr(self, fid: _Fid, setting: _XattrSet) -> None:
        if len(setting.value) != setting.size:
            raise _Errno(errno.EINVAL)  # clunked before the whole value came
        value = bytes(setting.value) if setting.size else None
        self.files.setxattr(fid.export, fid.parts, setting.name, value, setting.flags)


_HANDLERS = {
    p.TATTACH: _Session.t_attach,
    p.TAUTH: _Session.t_auth,
    p.TWALK: _Session.t_walk,
    p.TCLUNK: _Session.t_clunk,
    p.TREMOVE: _Session.t_remove,
    p.TGETATTR: _Session.t_getattr,
    p.TSETATTR: _Session.t_setattr,
    p.TLOPEN: _Session.t_lopen,
    p.TLCREATE: _Session.t_lcreate,
    p.TREAD: _Session.t_read,
    p.TWRITE: _Session.t_write,
    p.TREADDIR: _Session.t_readdir,
    p.TMKDIR: _Session.t_mkdir,
    p.TSYMLINK: _Session.t_symlink,
    p.TMKNOD: _Session.t_mknod,
    p.TLINK: _Session.t_link,
    p.TREADLINK: _Session.t_readlink,
    p.TRENAMEAT: _Session.t_renameat,
    p.TRENAME: _Session.t_rename,
    p.TUNLINKAT: _Session.t_unlinkat,
    p.TSTATFS: _Session.t_statfs,
    p.TFSYNC: _Session.t_fsync,
    p.TLOCK: _Session.t_lock,
    p.TGETLOCK: _Session.t_getlock,
    p.TXATTRWALK: _Session.t_xattrwalk,
    p.TXATTRCREATE: _Session.t_xattrcreate,
}
