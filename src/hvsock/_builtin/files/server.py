"""The file service: serves configured roots for push and pull, nothing outside them.

Every remote path is split into components (``..`` refused outright), matched to
a root, then opened one component at a time below the root's descriptor with
``O_NOFOLLOW``: a symlink anywhere in a remote path is refused, never followed,
so no string trick and no link planted in a root reaches outside it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from ..._core import filecopy as fc
from ..._errors import (
    ArgumentError,
    HvsockError,
    PermissionDeniedError,
    ProtocolError,
    translate,
)
from ..._service.connection import SyncConnection
from ..._service.declaration import Limits, Service
from ..._validate import instance, quote, whole_number
from .atomic_write import AtomicWriter, set_dir_times
from .channel import Channel, error_code
from .paths import DIR_FLAGS, READ_FLAGS, entry_of, kind_name, lstat_at, open_dir, show
from .receiving import drain_file
from .sending import send_file

__all__ = ["DEFAULT_PORT", "file_service"]

#: The file service's default vsock port (so its Hyper-V service id is
#: 0000138d-facb-11e6-bd58-64006a7986d3).
DEFAULT_PORT = 5005
SERVICE_NAME = "hvsock files"


@dataclass(frozen=True)
class _Config:
    roots: tuple[bytes, ...]  # real paths
    root_parts: tuple[tuple[bytes, ...], ...]
    read_only: bool
    max_file_size: int | None
    max_files: int | None
    refuse_hardlinks: bool


def _root(path: object) -> bytes:
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise ArgumentError(f"a root must be a path, not {quote(path)}")
    raw = os.fsencode(path)
    real = os.path.realpath(raw)
    if not os.path.isdir(real):
        raise ArgumentError(f"root {quote(os.fsdecode(raw))} is not a directory")
    return real


def file_service(
    roots: Iterable[str | bytes | os.PathLike[str]],
    *,
    port: int = DEFAULT_PORT,
    allow: Iterable[object] | None = None,
    read_only: bool = False,
    max_file_size: int | None = None,
    max_files: int | None = None,
    refuse_hardlinks: bool = False,
    limits: Limits | None = None,
    name: str = SERVICE_NAME,
) -> Service:
    """The file-copy service over *roots* (directories), for :class:`hvsock.ServiceHost`.

    *port* defaults to :data:`DEFAULT_PORT` (5005). *allow* is the service's
    allowlist (CIDs, VM ids, hosts, ``"uid:N"``). *read_only* refuses every
    write. *max_file_size* (bytes) and *max_files* (entries per connection) bound
    what one client may write or read. *refuse_hardlinks* refuses to send a file
    with more than one hard link (a link in a root may lead to a file outside
    it: see docs/file-copy.md). Raises :class:`ArgumentError` for a root
    that is not a directory or a bad limit.
    """
    if isinstance(roots, (str, bytes)):
        roots = [roots]
    real = tuple(_root(r) for r in roots)
    if not real:
        raise ArgumentError("file_service needs at least one root directory")
    if max_file_size is not None:
        whole_number(max_file_size, "max_file_size", 0, 2**63 - 1)
    if max_files is not None:
        whole_number(max_files, "max_files", 1, 2**63 - 1)
    config = _Config(
        real,
        tuple(fc.split_path(r)[1] for r in real),
        bool(read_only),
        max_file_size,
        max_files,
        bool(refuse_hardlinks),
    )
    limits = (
        instance(limits, Limits, "limits")
        if limits is not None
        else Limits(max_connections=16, idle_timeout=120.0)
    )

    def handle(conn: SyncConnection) -> None:
        _Session(config, conn).run()

    return Service(name, port, handle, allow=allow, limits=limits)


class _Session:
    def __init__(self, config: _Config, conn: SyncConnection) -> None:
        self.config = config
        self.conn = conn
        self.chan = Channel(conn.sock)
        self.files = 0
        self.consumed = True
        self.top = b""  # the path of the GET being answered
        self.owner_ok = hasattr(os, "geteuid") and os.geteuid() == 0
        #: Directory metadata (-p) applied once their contents are written.
        self.dir_times: list[tuple[bytes, fc.Entry, bool]] = []

    def run(self) -> None:
        fds = [os.open(r, DIR_FLAGS) for r in self.config.roots]
        try:
            self.root_fds = fds
            while (msg := self.chan.recv_or_eof()) is not None:
                try:
                    self.dispatch(msg)
                except ProtocolError:
                    raise
                except (HvsockError, OSError) as exc:
                    if isinstance(exc, (ConnectionError, TimeoutError)):
                        raise
                    self.conn.log.info("%s: %s", self.conn.peer, exc)
                    self.chan.send(fc.Error(error_code(exc), str(exc)))
        finally:
            for fd in fds:
                os.close(fd)

    def dispatch(self, msg: fc.Message) -> None:
        if isinstance(msg, fc.Hello):
            if msg.version != fc.VERSION:
                raise ProtocolError(
                    f"client speaks file-copy version {msg.version}; "
                    f"this service speaks {fc.VERSION}"
                )
            self.chan.send(
                fc.Hello(
                    fc.VERSION, (1 if self.config.read_only else 0) | (2 if self.owner_ok else 0)
                )
            )
        elif isinstance(msg, fc.Stat):
            self.stat(msg.path)
        elif isinstance(msg, fc.Put):
            self.put(msg)
        elif isinstance(msg, fc.Get):
            self.get(msg)
        elif isinstance(msg, fc.End):
            self.finish_dirs()
            self.chan.send(fc.Done(self.files))
        else:
            raise ProtocolError(f"unexpected {type(msg).__name__} from the client")

    # -- paths -------------------------------------------------------------
    def resolve(self, path: bytes) -> tuple[int, tuple[bytes, ...]]:
        """The root descriptor and the components below it; ArgumentError outside."""
        absolute, parts = fc.split_path(path)
        index, rest = fc.match_root(absolute, parts, self.config.root_parts)
        return self.root_fds[index], rest

    def count(self) -> None:
        self.files += 1
        limit = self.config.max_files
        if limit is not None and self.files > limit:
            raise HvsockError(
                f"over the service's limit of {limit} files per "
                "connection; copy the rest in another run"
            )

    def stat(self, path: bytes) -> None:
        root_fd, parts = self.resolve(path)
        entry = fc.Entry(path, fc.KIND_MISSING)
        try:
            parent = open_dir(root_fd, parts[:-1])
        except HvsockError as exc:
            if not isinstance(exc.__cause__, FileNotFoundError):
                raise
        else:
            name = parts[-1] if parts else b"."
            try:
                st = lstat_at(parent, name)
                link = (
                    os.readlink(name, dir_fd=parent)
                    if st is not None and stat.S_ISLNK(st.st_mode)
                    else b""
                )
            finally:
                os.close(parent)
            if st is not None:
                entry = entry_of(st, path, link)
        self.chan.send(fc.StatReply(entry))

    # -- push -----------------------------------------------------------------
    def put(self, msg: fc.Put) -> None:
        eager = bool(msg.flags & fc.F_EAGER) and msg.entry.kind == fc.KIND_FILE
        self.consumed = not eager
        try:
            self._put(msg, eager)
        except (HvsockError, OSError) as exc:
            # An eager file's bytes are on their way whatever we answer: read
            # them first so the session stays in step.
            if not self.consumed and not isinstance(
                exc, (ProtocolError, ConnectionError, TimeoutError)
            ):
                self.consumed = True
                drain_file(self.chan)
            raise

    def _put(self, msg: fc.Put, eager: bool) -> None:
        entry, flags = msg.entry, msg.flags
        if self.config.read_only:
            raise PermissionDeniedError("the service's roots are read-only")
        root_fd, parts = self.resolve(entry.path)
        self.count()
        if not parts:
            if entry.kind != fc.KIND_DIR:
                raise HvsockError("a root directory cannot be replaced by a file")
            self.chan.send(fc.Done())
            return
        parent = open_dir(
            root_fd,
            parts[:-1],
            create=bool(flags & fc.F_PARENTS),
            what=entry.path,
            parents_hint=True,
        )
        writer = AtomicWriter(
            parent,
            parts[-1],
            entry,
            flags,
            shown=show(entry.path),
            max_size=self.config.max_file_size,
            owner=bool(flags & fc.F_OWNER) and self.owner_ok,
        )
        try:
            answer = fc.Ready() if entry.kind == fc.KIND_DIR else writer.prepare()
            if isinstance(answer, fc.Skipped):
                if eager:
                    self.consumed = True
                    drain_file(self.chan)
                self.chan.send(answer)
            elif entry.kind == fc.KIND_FILE:
                if not eager:
                    self.chan.send(answer)
                self.consumed = True
                size = writer.receive(self.chan)
                self.chan.send(fc.Done(size))
            else:
                writer.place_special()
                if entry.kind == fc.KIND_DIR and flags & fc.F_PRESERVE:
                    self.dir_times.append((entry.path, entry, writer.keeps_owner))
                self.chan.send(fc.Done())
        finally:
            writer.close()
            os.close(parent)

    def finish_dirs(self) -> None:
        # Deepest first, so setting a parent's mtime comes after its children changed it.
        for path, entry, owner_kept in reversed(self.dir_times):
            with contextlib.suppress(HvsockError, OSError):
                root_fd, parts = self.resolve(path)
                if parts:
                    parent = open_dir(root_fd, parts[:-1])
                    try:
                        set_dir_times(parent, parts[-1], entry, owner_kept)
                    finally:
                        os.close(parent)
        self.dir_times.clear()

    # -- pull -------------------------------------------------------------------
    def get(self, msg: fc.Get) -> None:
        root_fd, parts = self.resolve(msg.path)
        self.top = msg.path
        parent = open_dir(root_fd, parts[:-1], what=msg.path)
        try:
            name = parts[-1] if parts else b"."
            st = lstat_at(parent, name)
            if st is None:
                raise translate(
                    FileNotFoundError(errno.ENOENT, "No such file or directory"),
                    op="read",
                    family="file",
                    where=repr(show(msg.path)),
                )
            if stat.S_ISDIR(st.st_mode) and not msg.flags & fc.F_RECURSIVE:
                raise HvsockError(f"{show(msg.path)!r} is a directory; copy it with -r")
            self.send_entry(parent, name, b"", st, msg.flags)
        finally:
            os.close(parent)
        self.chan.send(fc.End(self.files))

    def send_entry(
        self, dir_fd: int, name: bytes, rel: bytes, st: os.stat_result, flags: int
    ) -> None:
        if stat.S_ISLNK(st.st_mode):
            self.count()
            self.chan.send(fc.EntryMsg(entry_of(st, rel, os.readlink(name, dir_fd=dir_fd))))
        elif stat.S_ISREG(st.st_mode):
            self.count()
            # O_NONBLOCK: a file swapped for a FIFO since the lstat must not park
            # this thread in open() (where no timeout reaches it); fstat decides.
            fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
            try:
                opened = os.fstat(fd)
                refusal = self.refusal(opened, self.shown(rel))
                if refusal is not None:
                    self.refuse(rel, refusal)
                    return
                os.set_blocking(fd, True)
                entry = entry_of(opened, rel)
                self.chan.send(fc.EntryMsg(entry))
                if fc.eager_entry(flags, entry):
                    send_file(self.chan, fd, entry.size, fc.Ready(), None)
                    return
                answer = self.chan.recv("READY or SKIPPED")
                if isinstance(answer, fc.Ready):
                    send_file(self.chan, fd, entry.size, answer, None)
                elif not isinstance(answer, fc.Skipped):
                    raise ProtocolError(
                        f"unexpected {type(answer).__name__} from the client after an ENTRY"
                    )
            finally:
                os.close(fd)
        elif stat.S_ISDIR(st.st_mode):
            self.count()
            sub = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
            try:
                self.chan.send(fc.EntryMsg(entry_of(os.fstat(sub), rel)))
                for child in sorted(os.fsencode(n) for n in os.listdir(sub)):
                    child_st = lstat_at(sub, child)
                    if child_st is not None:
                        self.send_entry(
                            sub, child, rel + b"/" + child if rel else child, child_st, flags
                        )
            finally:
                os.close(sub)
        else:
            self.refuse(rel, self.refusal(st, self.shown(rel)) or "not a regular file")

    def shown(self, rel: bytes) -> bytes:
        """The path of *rel* (inside the GET's tree) as the client named it."""
        top = self.top.rstrip(b"/")
        if not rel:
            return self.top
        return rel if top in (b"", b".") else top + b"/" + rel

    def refusal(self, st: os.stat_result, path: bytes) -> str | None:
        """Why the file *st* is not sent, or None to send it."""
        if not stat.S_ISREG(st.st_mode):
            return (
                f"{show(path)!r} is {kind_name(st.st_mode)}; hvsock cp copies only regular "
                "files, directories and symlinks"
            )
        if self.config.refuse_hardlinks and st.st_nlink > 1:
            return (
                f"{show(path)!r} has {st.st_nlink} hard links and the service refuses "
                "files with more than one (refuse_hardlinks)"
            )
        return None

    def refuse(self, rel: bytes, why: str) -> None:
        """The top of a GET fails with *why*; an entry inside a tree is skipped with it."""
        if not rel:
            raise HvsockError(why)
        self.conn.log.info("%s: skipped: %s", self.conn.peer, why)
        self.chan.send(fc.Skipped(why))
