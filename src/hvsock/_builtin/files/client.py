"""The file-copy client: ``hvsock.copy`` and its asyncio twin ``hvsock.copy_async``.

A path that starts with ``:`` is on the remote side; ``-`` is stdin (as a
source) or stdout (as the destination). Sources are all on one side and the
destination on the other, like ``scp``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from ..._core import filecopy as fc
from ..._core.addresses import Address
from ..._core.values import Record
from ..._endpoints import connect
from ..._errors import ArgumentError, HvsockError, IdleTimeoutError, ProtocolError, translate
from ..._transports._common import DEFAULT_CONNECT_TIMEOUT
from ..._validate import callable_, positive_number, quote
from .atomic_write import AtomicWriter, set_dir_times
from .channel import Channel, remote_error
from .paths import READ_FLAGS, entry_of, kind_name, open_dir, show
from .receiving import drain_file, receive_stream
from .sending import send_file, send_stream

# Not typing.TYPE_CHECKING: start-up (see CopyResult).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

__all__ = ["CopyResult", "copy", "copy_async"]

PathSpec = str | bytes | os.PathLike[str]
#: ``progress(copied, total)``: bytes copied so far, and the total when known.
Progress = Callable[[int, "int | None"], object]
#: ``on_entry(source, destination)``: one entry (file, directory, symlink) was copied.
OnEntry = Callable[[str, str], object]
#: Replies due at most before the client stops to read them (see _Copier.expect).
WINDOW = 64
POLICIES = {
    "overwrite": 0,
    "no-clobber": fc.F_NO_CLOBBER,
    "update": fc.F_UPDATE,
    "force": fc.F_FORCE,
}


class CopyResult(Record):
    """What one :func:`copy` did (counted as it goes, so not immutable)."""

    # A plain class, not a dataclass: `hvsock cp` imports this module on every run,
    # and dataclasses (with inspect, ast and dis) was a tenth of its start-up.
    _fields = ("direction", "files", "directories", "symlinks", "skipped", "bytes", "seconds")

    def __init__(
        self,
        direction: str = "push",
        files: int = 0,
        directories: int = 0,
        symlinks: int = 0,
        skipped: int = 0,
        bytes: int = 0,
        seconds: float = 0.0,
    ) -> None:
        self.direction = direction  # or "pull"
        self.files = files
        self.directories = directories
        self.symlinks = symlinks
        self.skipped = skipped
        self.bytes = bytes
        self.seconds = seconds
        #: Entries of a tree that were not copied, each with why (a FIFO, a device,
        #: a file with hard links the service refuses); counted in *skipped*.
        self.warnings: list[str] = []

    @property
    def throughput(self) -> float:
        """Bytes per second of file data."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **{name: getattr(self, name) for name in self._fields},
            "throughput": self.throughput,
            "warnings": list(self.warnings),
        }


def _spec(value: object, what: str) -> tuple[bool, bytes]:
    """(remote, path bytes) of a source or destination."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        value = os.fsencode(value)
    if not isinstance(value, bytes) or not value:
        raise ArgumentError(f"{what} must be a non-empty path, not {quote(value)}")
    if value.startswith(b":"):
        return True, value[1:] or b"."
    return False, value


class _Copier:
    def __init__(
        self,
        chan: Channel,
        flags: int,
        progress: Progress | None,
        stdin: IO[bytes] | None,
        stdout: IO[bytes] | None,
        on_entry: OnEntry | None = None,
    ) -> None:
        self.chan = chan
        self.on_entry = on_entry
        self.flags = flags
        self.progress = progress
        self.stdin = stdin
        self.stdout = stdout
        self.copied = 0
        self.total: int | None = None
        self.result = CopyResult()
        #: Small files go without a round trip each (F_EAGER) unless resuming,
        #: which needs the peer's READY; this queue holds the kinds whose
        #: replies are still to be read, in order.
        self.eager = not flags & fc.F_RESUME
        self.pending: deque[tuple[int, bytes, bytes]] = deque()
        self.owner_ok = hasattr(os, "geteuid") and os.geteuid() == 0

    def tick(self, n: int) -> None:
        self.copied += n
        self.result.bytes += n
        if self.progress is not None:
            self.progress(self.copied, self.total)

    def request(self, message: fc.Message, doing: str) -> fc.Message:
        self.chan.send(message)
        return self.chan.recv(doing)

    # -- push ---------------------------------------------------------------------
    def push(self, sources: list[bytes], dest: bytes) -> None:
        self.result.direction = "push"
        reply = self.request(fc.Stat(dest), "the destination's status")
        if not isinstance(reply, fc.StatReply):
            raise remote_error(reply, "asking about the destination")
        into = reply.entry.kind == fc.KIND_DIR or dest.endswith(b"/")
        if len(sources) > 1 and not into:
            raise ArgumentError(
                f"copying {len(sources)} sources needs a destination "
                f"directory; {show(dest)!r} is not one"
            )
        plan: list[tuple[bytes, bytes, os.stat_result | None]] = []
        for src in sources:
            st: os.stat_result | None
            if src == b"-":
                if into:
                    raise ArgumentError(
                        "stdin has no name: give a file path as the destination, not a directory"
                    )
                plan.append((src, dest, None))
                continue
            try:
                st = os.lstat(src) if self.flags & fc.F_RECURSIVE else os.stat(src)
            except OSError as exc:
                raise translate(exc, op="read", family="file", where=repr(show(src))) from exc
            if stat.S_ISDIR(st.st_mode) and not self.flags & fc.F_RECURSIVE:
                raise ArgumentError(f"{show(src)!r} is a directory; copy it with -r")
            if not (
                stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)
            ):
                raise ArgumentError(
                    f"{show(src)!r} is {kind_name(st.st_mode)}; hvsock cp copies regular "
                    "files, directories and symlinks (to send what a FIFO gives, use '-' "
                    "as the source and redirect it: hvsock cp ... - :DEST < FIFO)"
                )
            base = os.path.basename(os.path.normpath(src))
            target = _join(dest, base) if into else dest
            plan.extend(_walk(src, target, st))
        self.total = sum(
            st.st_size for _, _, st in plan if st is not None and stat.S_ISREG(st.st_mode)
        )
        for local, remote, st in plan:
            self.chan.check()
            self.push_one(local, remote, st)
        self.flush()
        reply = self.request(fc.End(), "the end of the copy")
        if not isinstance(reply, fc.Done):
            raise remote_error(reply, "finishing the copy")

    def push_one(self, local: bytes, remote: bytes, st: os.stat_result | None) -> None:
        if st is None:  # stdin
            self.flush()
            entry = fc.Entry(remote, fc.KIND_FILE, 0o644, time.time_ns(), fc.UNKNOWN_SIZE)
            reply = self.request(fc.Put(entry, self.flags & ~fc.F_RESUME), "READY")
            if isinstance(reply, fc.Ready):
                assert self.stdin is not None
                send_stream(self.chan, self.stdin.read, self.tick)
                self.done_or_raise(self.chan.recv("DONE"), (fc.KIND_FILE, local, remote))
            else:
                self.skip_or_raise(reply)
            return
        what = (local, remote)
        if stat.S_ISLNK(st.st_mode):
            self.chan.send(fc.Put(entry_of(st, remote, os.readlink(local)), self.flags))
            self.expect((fc.KIND_SYMLINK, *what))
        elif stat.S_ISDIR(st.st_mode):
            self.chan.send(fc.Put(entry_of(st, remote), self.flags))
            self.expect((fc.KIND_DIR, *what))
        elif stat.S_ISREG(st.st_mode):
            try:
                # O_NONBLOCK: a file swapped for a FIFO since the lstat must not hang us.
                fd = os.open(local, READ_FLAGS)
            except OSError as exc:
                raise translate(exc, op="read", family="file", where=repr(show(local))) from exc
            try:
                opened = os.fstat(fd)
                if not stat.S_ISREG(opened.st_mode):
                    self.warn(f"{show(local)!r} is {kind_name(opened.st_mode)}; not copied")
                    return
                os.set_blocking(fd, True)
                entry = entry_of(opened, remote)
                if self.eager and entry.size <= fc.EAGER_MAX:
                    self.chan.send(fc.Put(entry, self.flags | fc.F_EAGER))
                    send_file(self.chan, fd, entry.size, fc.Ready(), self.tick)
                    self.expect((fc.KIND_FILE, *what))
                    return
                self.flush()
                reply = self.request(fc.Put(entry, self.flags), "READY")
                if isinstance(reply, fc.Ready):
                    self.copied += reply.offset  # resumed bytes count as copied
                    send_file(self.chan, fd, entry.size, reply, self.tick)
                    self.done_or_raise(self.chan.recv("DONE"), (fc.KIND_FILE, *what))
                else:
                    self.skip_or_raise(reply)
            finally:
                os.close(fd)
        else:
            self.warn(
                f"{show(local)!r} is {kind_name(st.st_mode)}; not copied (only "
                "regular files, directories and symlinks are)"
            )

    def warn(self, why: str) -> None:
        self.result.skipped += 1
        self.result.warnings.append(why)

    def expect(self, what: tuple[int, bytes, bytes]) -> None:
        """A reply for *what* (kind, source, destination) is due; read the oldest
        ones once WINDOW are due.

        The window keeps the replies the service has sent but we have not read
        far below a socket buffer, so neither side can block the other.
        """
        self.pending.append(what)
        while len(self.pending) > WINDOW:
            self.collect()

    def collect(self) -> None:
        what = self.pending.popleft()
        self.done_or_raise(self.chan.recv("DONE"), what)

    def flush(self) -> None:
        while self.pending:
            self.collect()

    def done_or_raise(self, reply: fc.Message, what: tuple[int, bytes, bytes]) -> None:
        if isinstance(reply, fc.Skipped):
            self.result.skipped += 1
            return
        if not isinstance(reply, fc.Done):
            raise remote_error(reply, "copying")
        kind, source, dest = what
        self.count(kind, source, dest)

    def count(self, kind: int, source: bytes = b"", dest: bytes = b"") -> None:
        if self.on_entry is not None:
            # Shown as on the command line: the remote side with its ':'.
            if self.result.direction == "push":
                dest = b":" + dest
            else:
                source = b":" + source
            self.on_entry(show(source), show(dest))
        if kind == fc.KIND_FILE:
            self.result.files += 1
        elif kind == fc.KIND_DIR:
            self.result.directories += 1
        else:
            self.result.symlinks += 1

    def skip_or_raise(self, reply: fc.Message) -> None:
        if not isinstance(reply, fc.Skipped):
            raise remote_error(reply, "starting a file")
        self.result.skipped += 1

    # -- pull ------------------------------------------------------------------------
    def pull(self, sources: list[bytes], dest: bytes) -> None:
        self.result.direction = "pull"
        if dest == b"-":
            if len(sources) != 1 or self.flags & fc.F_RECURSIVE:
                raise ArgumentError("stdout takes one remote file (no -r)")
            self.pull_to_stdout(sources[0])
            return
        into = os.path.isdir(dest) or dest.endswith(b"/")
        if len(sources) > 1 and not into:
            raise ArgumentError(
                f"copying {len(sources)} sources needs a destination "
                f"directory; {show(dest)!r} is not one"
            )
        for src in sources:
            parts = fc.split_path(src)[1]
            if into:
                if not parts:
                    raise ArgumentError(
                        f"{show(src)!r} has no name to copy into "
                        f"{show(dest)!r}; give the target path"
                    )
                parent, name = dest, parts[-1]
            else:
                parent, name = (
                    os.path.dirname(dest.rstrip(b"/")) or b".",
                    os.path.basename(dest.rstrip(b"/")),
                )
            if self.flags & fc.F_PARENTS:
                with contextlib.suppress(FileExistsError):
                    os.makedirs(parent)
            try:
                parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError as exc:
                raise HvsockError(
                    f"directory {show(parent)!r} does not exist (for "
                    f"{show(dest)!r}); --parents creates missing "
                    "directories",
                    errno=exc.errno,
                ) from exc
            except OSError as exc:
                raise translate(
                    exc, op="open directory", family="file", where=repr(show(parent))
                ) from exc
            try:
                self.pull_tree(src, parent_fd, name)
            finally:
                os.close(parent_fd)

    def pull_tree(self, src: bytes, parent_fd: int, name: bytes) -> None:
        get_flags = self.flags & (fc.F_RECURSIVE | fc.F_PRESERVE) | (
            fc.F_EAGER if self.eager else 0
        )
        self.chan.send(fc.Get(src, get_flags))
        dir_times: list[tuple[tuple[bytes, ...], fc.Entry, bool]] = []
        first = True
        while True:
            msg = self.chan.recv("the next entry")
            if isinstance(msg, fc.End):
                break
            if isinstance(msg, fc.Skipped) and not first:
                self.warn(msg.reason)  # a FIFO, a device, a refused hard link in the tree
                continue
            if not isinstance(msg, fc.EntryMsg):
                raise remote_error(msg, f"reading {show(src)!r}")
            entry = msg.entry
            rel = (name,) + (fc.relative_parts(entry.path) if entry.path else ())
            if first != (not entry.path):
                raise ProtocolError("the service sent the entries out of order")
            first = False
            if self.total is None and entry.kind == fc.KIND_FILE and len(rel) == 1:
                self.total = entry.size
            dir_fd = open_dir(parent_fd, rel[:-1])
            writer = AtomicWriter(
                dir_fd,
                rel[-1],
                entry,
                self.flags,
                shown=show(b"/".join(rel)),
                owner=bool(self.flags & fc.F_OWNER) and self.owner_ok,
            )
            try:
                if fc.eager_entry(get_flags, entry):
                    # The bytes follow the ENTRY at once: take them or drop them.
                    answer = writer.prepare()
                    if isinstance(answer, fc.Skipped):
                        drain_file(self.chan)
                        self.result.skipped += 1
                        continue
                    writer.receive(self.chan, self.tick)
                elif entry.kind == fc.KIND_FILE:
                    try:
                        answer = writer.prepare()
                    except BaseException:
                        self.chan.send(fc.Skipped("the target cannot be written"))
                        raise
                    self.chan.send(answer)
                    if isinstance(answer, fc.Skipped):
                        self.result.skipped += 1
                        continue
                    self.copied += answer.offset
                    writer.receive(self.chan, self.tick)
                else:
                    writer.place_special()
                    if entry.kind == fc.KIND_DIR and self.flags & fc.F_PRESERVE:
                        dir_times.append((rel, entry, writer.keeps_owner))
                self.count(
                    entry.kind,
                    src.rstrip(b"/") + b"/" + entry.path if entry.path else src,
                    b"/".join(rel),
                )
            finally:
                writer.close()
                os.close(dir_fd)
        for rel, entry, owner_kept in reversed(dir_times):
            dir_fd = open_dir(parent_fd, rel[:-1])
            try:
                set_dir_times(dir_fd, rel[-1], entry, owner_kept)
            finally:
                os.close(dir_fd)

    def pull_to_stdout(self, src: bytes) -> None:
        assert self.stdout is not None
        self.chan.send(fc.Get(src, 0))
        msg = self.chan.recv("the file")
        if not isinstance(msg, fc.EntryMsg):
            raise remote_error(msg, f"reading {show(src)!r}")
        if msg.entry.kind != fc.KIND_FILE:
            raise HvsockError(f"{show(src)!r} is not a regular file; stdout takes only a file")
        self.total = msg.entry.size
        self.chan.send(fc.Ready())
        out = self.stdout
        receive_stream(self.chan, out.write, msg.entry.size, self.tick, show(src))
        out.flush()
        self.count(fc.KIND_FILE, src, b"-")
        end = self.chan.recv("END")
        if not isinstance(end, fc.End):
            raise remote_error(end, "finishing the copy")


def _join(base: bytes, name: bytes) -> bytes:
    return base.rstrip(b"/") + b"/" + name if base.rstrip(b"/") else b"/" + name


def _walk(
    local: bytes, remote: bytes, st: os.stat_result
) -> Iterator[tuple[bytes, bytes, os.stat_result | None]]:
    """Each entry of a local tree, parents first: (local path, remote path, lstat)."""
    yield local, remote, st
    if not stat.S_ISDIR(st.st_mode):
        return
    try:
        names = sorted(os.listdir(local))
    except OSError as exc:
        raise translate(exc, op="list", family="file", where=repr(show(local))) from exc
    for name in names:
        path = os.path.join(local, name)
        yield from _walk(path, _join(remote, name), os.lstat(path))


def _flags(
    recursive: bool, preserve: bool, owner: bool, resume: bool, policy: str, parents: bool
) -> int:
    if policy not in POLICIES:
        raise ArgumentError(f"policy must be one of {', '.join(POLICIES)}, not {quote(policy)}")
    return (
        POLICIES[policy]
        | (fc.F_RECURSIVE if recursive else 0)
        | (fc.F_PRESERVE if preserve else 0)
        | (fc.F_OWNER if owner else 0)
        | (fc.F_RESUME if resume else 0)
        | (fc.F_PARENTS if parents else 0)
    )


def copy(
    address: Address | str,
    sources: PathSpec | Sequence[PathSpec],
    dest: PathSpec,
    *,
    recursive: bool = False,
    preserve: bool = False,
    owner: bool = False,
    resume: bool = False,
    policy: str = "overwrite",
    parents: bool = False,
    progress: Progress | None = None,
    on_entry: OnEntry | None = None,
    timeout: float = DEFAULT_CONNECT_TIMEOUT,
    retries: int = 0,
    io_timeout: float = 120.0,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
    _cancel: threading.Event | None = None,
    _sockets: list[socket.socket] | None = None,
) -> CopyResult:
    """Copy *sources* to *dest* through the file service at *address*; returns a CopyResult.

    Paths that start with ``:`` are remote (``":/var/log/app.log"``); all sources
    are on one side and *dest* on the other. ``-`` is *stdin* (a source) or
    *stdout* (the destination), default the process's. *recursive* copies
    directories; *preserve* keeps mode and mtime, *owner* uid/gid (the writing
    side must be root); *resume* keeps a verified partial file when a copy is cut
    and continues one; *policy* is ``"overwrite"``, ``"no-clobber"``, ``"update"``
    (only when the source is newer) or ``"force"`` (also replace a symlink or
    special file); *parents* creates missing directories. *progress* is called
    as ``progress(copied, total)`` (total None when unknown); *on_entry* as
    ``on_entry(source, destination)`` for each file, directory and symlink
    copied (``hvsock cp -v``).

    Raises :class:`ArgumentError` for bad arguments, a remote path outside the
    served roots or with ``..``; :class:`RemoteError` when the service refuses
    (read-only, limits, a full disk there: its message says why); HvsockError
    for a local failure (a full disk, a checksum mismatch); the connect errors of
    :func:`connect`. A file is never left half written.
    """
    if isinstance(sources, (str, bytes, os.PathLike)):
        sources = [sources]
    specs = [_spec(s, "source") for s in sources]
    if not specs:
        raise ArgumentError("give at least one source")
    remote_dest, dest_path = _spec(dest, "destination")
    if any(remote == remote_dest for remote, _ in specs):
        raise ArgumentError(
            "sources and destination must be on different sides: "
            "mark the remote side's paths with a leading ':'"
        )
    if progress is not None:
        callable_(progress, "progress")
    if on_entry is not None:
        callable_(on_entry, "on_entry")
    positive_number(io_timeout, "io_timeout")
    flags = _flags(recursive, preserve, owner, resume, policy, parents)
    started = time.perf_counter()
    sock = connect(address, timeout=timeout, retries=retries)
    if _sockets is not None:
        _sockets.append(sock)
    with sock:
        sock.settimeout(io_timeout)
        copier = _Copier(
            Channel(sock, _cancel),
            flags,
            progress,
            stdin if stdin is not None else sys.stdin.buffer,
            stdout if stdout is not None else sys.stdout.buffer,
            on_entry,
        )
        reply = copier.request(fc.Hello(fc.VERSION), "the service's HELLO")
        if not isinstance(reply, fc.Hello):
            raise remote_error(reply, "greeting the service")
        paths = [p for _, p in specs]
        try:
            if remote_dest:
                copier.push(paths, dest_path)
            else:
                copier.pull(paths, dest_path)
        except TimeoutError as exc:
            if isinstance(exc, HvsockError):
                raise
            raise IdleTimeoutError(
                f"the file service at {address} sent nothing for "
                f"{io_timeout:g} s; is it stuck? (--resume continues a "
                "resumable copy)"
            ) from exc
        except ConnectionError as exc:
            raise HvsockError(
                f"the connection to {address} was cut during the copy "
                f"({exc.strerror or exc}); with --resume a new run continues "
                "where it stopped",
                errno=exc.errno,
            ) from exc
    copier.result.seconds = time.perf_counter() - started
    return copier.result


async def copy_async(
    address: Address | str,
    sources: PathSpec | Sequence[PathSpec],
    dest: PathSpec,
    *,
    progress: Progress | None = None,
    **options: Any,
) -> CopyResult:
    """The asyncio twin of :func:`copy` (same arguments, same errors).

    The copy runs in a worker thread; *progress* and *on_entry* are called in
    the event loop's thread. Cancelling the task stops the copy and leaves no partial file (but a
    resumable one with ``resume=True``).
    """
    # Imported here: the CLI's copy (``copy``) runs without asyncio, and loading it
    # is a good part of a Python start-up.
    import asyncio
    import functools

    loop = asyncio.get_running_loop()
    cancel = threading.Event()
    sockets: list[socket.socket] = []
    relay: Progress | None = None
    if progress is not None:
        callable_(progress, "progress")
        report = progress

        def relay(copied: int, total: int | None) -> None:
            loop.call_soon_threadsafe(report, copied, total)

    each = options.pop("on_entry", None)
    if each is not None:
        callable_(each, "on_entry")
        listed = each

        def relay_entry(source: str, dest: str) -> None:
            loop.call_soon_threadsafe(listed, source, dest)

        options["on_entry"] = relay_entry
    future = loop.run_in_executor(
        None,
        functools.partial(
            copy,
            address,
            sources,
            dest,
            progress=relay,
            _cancel=cancel,
            _sockets=sockets,
            **options,
        ),
    )
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel.set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(future, 30)
        raise
