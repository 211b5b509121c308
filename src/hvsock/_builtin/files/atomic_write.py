"""Writing one entry all or nothing: a private temporary file, SHA-256 checked, fsync, rename.

Whichever side writes (the server on a push, the client on a pull) goes through
:class:`AtomicWriter`. Every copy writes into a file it creates itself
(:func:`create_temp`); a copy cut with ``--resume`` keeps its verified part under
:func:`partial_name` for the next run to claim.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
import threading
import time

from ..._core import filecopy as fc
from ..._errors import Cancelled, HvsockError, ProtocolError, translate
from .channel import ZERO_VIEW, Channel, Tick, remote_error
from .hashing import prefix_digest
from .paths import lstat_at
from .receiving import receive_blocks

__all__: list[str] = []


def partial_name(name: bytes) -> bytes:
    """Where a cut ``--resume`` copy of *name* keeps its verified partial file.

    Only a cut copy renames its own temporary file to this name, and a resume
    claims it back by renaming it away before writing (see :class:`AtomicWriter`),
    so no two writers ever hold the same file.
    """
    return b".hvsock-" + hashlib.sha256(name).hexdigest()[:16].encode() + b".part"


def _unique_name(name: bytes) -> bytes:
    # Random, so nobody can create it first; hidden and tied to *name* by the hash,
    # so a leftover shows which target it belonged to.
    return (
        b".hvsock-"
        + hashlib.sha256(name).hexdigest()[:16].encode()
        + b"-"
        + os.urandom(8).hex().encode()
        + b".tmp"
    )


#: How a temporary or partial file is opened: never through a symlink, never a
#: FIFO's blocking open, never as a controlling terminal.
_TEMP_FLAGS = (
    os.O_RDWR
    | os.O_NOFOLLOW
    | os.O_CLOEXEC
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_NONBLOCK", 0)
)


def create_temp(dir_fd: int, name: bytes) -> tuple[int, bytes]:
    """A new, empty, private (0600) file beside *name*, made by this call: (fd, its name).

    ``O_CREAT | O_EXCL`` with a random name: a file, FIFO or symlink someone put
    at a guessed name is never opened, followed or renamed into place.
    """
    for _ in range(16):
        tmp = _unique_name(name)
        try:
            fd = os.open(tmp, _TEMP_FLAGS | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            continue
        os.set_blocking(fd, True)
        return fd, tmp
    raise HvsockError(
        "could not create a temporary file with a fresh random name (16 "
        "tries); is something creating files in the directory?"
    )


def own_regular_file(st: os.stat_result) -> bool:
    """May this process reuse a file it finds at one of its own temporary names?

    Only a regular file with one link, owned by this process's user: anything
    else was put there by someone else (a user of a world-writable directory)
    and is left alone.
    """
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_nlink == 1
        and (not hasattr(os, "geteuid") or st.st_uid == os.geteuid())
    )


class _Writers:
    """The ``--resume`` writers of this process that are writing a target now.

    A resume that starts while the cut copy of the same target is still being
    torn down (its connection is gone but its thread has not noticed yet) waits
    for it, so it finds the partial file that copy is about to keep.
    """

    def __init__(self) -> None:
        self._busy: dict[tuple[int, int, bytes], int] = {}
        self._cv = threading.Condition()

    def enter(self, key: tuple[int, int, bytes], wait: float) -> None:
        deadline = time.monotonic() + wait
        with self._cv:
            while self._busy.get(key) and (left := deadline - time.monotonic()) > 0:
                self._cv.wait(left)
            self._busy[key] = self._busy.get(key, 0) + 1

    def leave(self, key: tuple[int, int, bytes]) -> None:
        with self._cv:
            self._busy[key] -= 1
            if not self._busy[key]:
                del self._busy[key]
            self._cv.notify_all()


_WRITERS = _Writers()
#: How long a resume waits for a copy of the same target still being written.
RESUME_WAIT = 10.0


class AtomicWriter:
    """Write one entry below *dir_fd* as *name*, all or nothing.

    ``prepare()`` applies the clobber policy and answers what to tell the sender
    (READY with the resumable offset, or SKIPPED); ``receive()`` takes DATA, the
    bytes and FILE_END, checks the SHA-256, fsyncs and renames into place;
    ``close()`` gives back what ``prepare()`` took when ``receive()`` never ran.

    Every copy writes into a file it creates itself (:func:`create_temp`: a
    random name, ``O_EXCL``), so two copies of one target never share a file.
    A copy cut with F_RESUME renames its verified part to :func:`partial_name`;
    a later F_RESUME copy claims that file by renaming it to a fresh random name
    (one rename wins), after checking it is a regular file of ours with one link.
    """

    def __init__(
        self,
        dir_fd: int,
        name: bytes,
        entry: fc.Entry,
        flags: int,
        *,
        shown: str,
        max_size: int | None = None,
        owner: bool = False,
    ) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.entry = entry
        self.flags = flags
        self.shown = shown
        self.max_size = max_size
        self.owner = owner
        self.partial = partial_name(name)
        self.written = 0
        self.failure: BaseException | None = None
        #: A partial file claimed by prepare() (descriptor, name, size), for receive().
        self._claimed: tuple[int, bytes, int] | None = None
        self._key: tuple[int, int, bytes] | None = None

    @property
    def keeps_owner(self) -> bool:
        """True when the entry's uid/gid are applied (asked for, and we are root)."""
        return self.owner and self.entry.uid >= 0

    def prepare(self) -> fc.Ready | fc.Skipped:
        """Check the policy and the target; raises HvsockError when it cannot be written."""
        current = lstat_at(self.dir_fd, self.name)
        if current is not None:
            if stat.S_ISDIR(current.st_mode):
                raise HvsockError(
                    f"{self.shown!r} is a directory; give a path for "
                    "the file, or copy into the directory"
                )
            # A symlink replaces a file or a symlink, as `cp -a` does (so a re-run of
            # a tree copy succeeds); a file never silently replaces a symlink.
            replaceable = stat.S_ISREG(current.st_mode) or (
                self.entry.kind == fc.KIND_SYMLINK and stat.S_ISLNK(current.st_mode)
            )
            if not replaceable and not self.flags & fc.F_FORCE:
                raise HvsockError(
                    f"{self.shown!r} exists and is not a regular file; --force replaces it"
                )
            why = fc.should_replace(self.flags, True, self.entry.mtime_ns, current.st_mtime_ns)
            if why is not None:
                return fc.Skipped(why)
        if self.max_size is not None and self.entry.size > self.max_size:
            raise HvsockError(
                f"{self.shown!r} is {self.entry.size} bytes, over the "
                f"service's limit of {self.max_size} bytes per file"
            )
        if self.entry.kind != fc.KIND_FILE:
            return fc.Ready()
        if self.flags & fc.F_RESUME and self.entry.size >= 0:
            st = os.fstat(self.dir_fd)
            self._key = (st.st_dev, st.st_ino, self.name)
            _WRITERS.enter(self._key, RESUME_WAIT)
            try:
                claimed = self._claim()
            except BaseException:
                self.close()
                raise
            if claimed is not None:
                self._claimed = claimed
                fd, _, size = claimed
                return fc.Ready(size, prefix_digest(fd, size)[0].digest())
        return fc.Ready()

    def _claim(self) -> tuple[int, bytes, int] | None:
        """Take the partial file for this copy alone: (fd, new name, size), or None."""
        try:
            fd = os.open(self.partial, _TEMP_FLAGS, dir_fd=self.dir_fd)
        except OSError:
            return None  # none, a symlink (ELOOP), not ours to open: start afresh
        try:
            st = os.fstat(fd)
            if not own_regular_file(st) or not 0 < st.st_size <= self.entry.size:
                return None
            tmp = _unique_name(self.name)
            try:
                os.rename(self.partial, tmp, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            except OSError:
                return None  # another resume took it first
            now = lstat_at(self.dir_fd, tmp)
            if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                # Swapped between our open and our rename: give the name back as found.
                with contextlib.suppress(OSError):
                    os.rename(tmp, self.partial, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
                return None
            os.set_blocking(fd, True)
            claimed = (fd, tmp, st.st_size)
            fd = -1
            return claimed
        finally:
            if fd >= 0:
                os.close(fd)

    def close(self) -> None:
        """Give back what prepare() took if receive() did not run: the partial, the slot."""
        if self._claimed is not None:
            fd, tmp, _ = self._claimed
            self._claimed = None
            os.close(fd)
            with contextlib.suppress(OSError):
                os.rename(tmp, self.partial, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        if self._key is not None:
            _WRITERS.leave(self._key)
            self._key = None

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def place_special(self) -> None:
        """Create a directory (kept if there) or a symlink (via a temp name, renamed)."""
        e = self.entry
        try:
            if e.kind == fc.KIND_DIR:
                current = lstat_at(self.dir_fd, self.name)
                if current is None:
                    os.mkdir(self.name, 0o700, dir_fd=self.dir_fd)
                elif not stat.S_ISDIR(current.st_mode):
                    raise HvsockError(f"{self.shown!r} exists and is not a directory")
                if self.keeps_owner:
                    os.chown(self.name, e.uid, e.gid, dir_fd=self.dir_fd, follow_symlinks=False)
                if current is None or self.flags & fc.F_PRESERVE:
                    os.chmod(
                        self.name,
                        safe_mode(e.mode, True, self.keeps_owner)
                        if self.flags & fc.F_PRESERVE
                        else 0o777 & ~_umask(),
                        dir_fd=self.dir_fd,
                        follow_symlinks=False,
                    )
            elif e.kind == fc.KIND_SYMLINK:
                current = lstat_at(self.dir_fd, self.name)
                if (
                    current is not None
                    and stat.S_ISLNK(current.st_mode)
                    and os.readlink(self.name, dir_fd=self.dir_fd) == e.link
                    and not self.flags & fc.F_PRESERVE
                    and not self.keeps_owner
                ):
                    return  # the same link is there already (a re-run)
                tmp = self._new_symlink(e.link)
                try:
                    if self.flags & fc.F_PRESERVE:
                        os.utime(
                            tmp,
                            ns=(e.mtime_ns, e.mtime_ns),
                            dir_fd=self.dir_fd,
                            follow_symlinks=False,
                        )
                    if self.keeps_owner:
                        os.chown(tmp, e.uid, e.gid, dir_fd=self.dir_fd, follow_symlinks=False)
                    os.rename(tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=self.dir_fd)
                    raise
        except OSError as exc:
            raise translate(exc, op="create", family="file", where=repr(self.shown)) from exc

    def _new_symlink(self, target: bytes) -> bytes:
        for _ in range(16):
            tmp = _unique_name(self.name)
            try:
                os.symlink(target, tmp, dir_fd=self.dir_fd)
            except FileExistsError:
                continue
            return tmp
        raise HvsockError("could not create a temporary symlink with a fresh random name")

    def receive(self, chan: Channel, tick: Tick | None = None) -> int:
        """DATA, bytes, FILE_END from *chan*; the file is in place on return (its size).

        Raises HvsockError for a checksum mismatch, an incomplete source, a full
        disk or a limit; ProtocolError for a broken stream. Nothing is left behind
        then (but a resumable partial when F_RESUME asked for one and the stream
        was cut).
        """
        try:
            return self._receive(chan, tick)
        finally:
            self.close()

    def _receive(self, chan: Channel, tick: Tick | None) -> int:
        msg = chan.recv("DATA")
        if not isinstance(msg, fc.Data):
            raise remote_error(msg, f"receiving {self.shown!r}")
        known = self.entry.size >= 0
        if msg.length < 0 if known else msg.length != fc.UNKNOWN_SIZE:
            raise ProtocolError("DATA length does not match the announced size")
        if known and msg.start + msg.length != self.entry.size:
            raise ProtocolError(
                f"DATA covers {msg.start}+{msg.length} bytes of a {self.entry.size}-byte file"
            )
        keep_partial = False
        digest = hashlib.sha256()
        fd = -1
        tmp = b""
        try:
            # From READY on, the sender streams the bytes whatever happens here, so
            # a failure only switches to dropping them (self.failure), keeping the
            # stream in step; the error is raised after FILE_END.
            if self._claimed is not None:
                fd, tmp, size = self._claimed
                self._claimed = None
                if msg.start > size:
                    raise ProtocolError(
                        f"DATA starts at {msg.start}, past the {size} bytes kept of {self.shown!r}"
                    )
            elif msg.start:
                raise ProtocolError(
                    f"DATA starts at {msg.start} but no partial file of {self.shown!r} was offered"
                )
            else:
                fd, tmp = create_temp(self.dir_fd, self.name)
            os.ftruncate(fd, msg.start)
            digest, got = prefix_digest(fd, msg.start)
            if got != msg.start:
                raise HvsockError(f"the partial file of {self.shown!r} is short; copy again")
        except ProtocolError:
            self._discard(fd, tmp, False)
            raise
        except OSError as exc:
            self.failure = translate(exc, op="write", family="file", where=repr(self.shown))
        try:
            try:
                end = (
                    self._recv_known(chan, fd, msg.start, self.entry.size, digest, tick)
                    if known
                    else self._recv_chunks(chan, fd, digest, tick)
                )
            except BaseException:
                # Cut mid-file: the bytes written so far are a verifiable prefix.
                # (A full disk or a bad digest is no reason to keep anything.)
                keep_partial = (
                    bool(self.flags & fc.F_RESUME)
                    and known
                    and self.failure is None
                    and isinstance(
                        sys.exc_info()[1], (ProtocolError, ConnectionError, TimeoutError, Cancelled)
                    )
                )
                raise
            trailer = chan.recv("FILE_END")
            if not isinstance(trailer, fc.FileEnd):
                raise remote_error(trailer, f"receiving {self.shown!r}")
            if self.failure is not None:
                raise self.failure
            if not trailer.complete:
                raise HvsockError(
                    f"the source of {self.shown!r} changed or could not "
                    "be read while it was copied; nothing was written"
                )
            if trailer.sha256 != digest.digest():
                raise HvsockError(
                    f"SHA-256 of {self.shown!r} differs from the "
                    "source's; nothing was written (copy again)"
                )
            self._finish(fd, tmp, end)
            fd = -1
        except BaseException as exc:
            self._discard(fd, tmp, keep_partial)
            if not isinstance(exc, OSError) or isinstance(
                exc, (HvsockError, TimeoutError, ConnectionError)
            ):
                raise
            raise translate(exc, op="write", family="file", where=repr(self.shown)) from exc
        return end

    def _discard(self, fd: int, tmp: bytes, keep_partial: bool) -> None:
        """After a failure: keep the verified part for a resume, else remove the file."""
        if fd < 0:
            return
        with contextlib.suppress(OSError):
            if keep_partial:
                os.fsync(fd)
        with contextlib.suppress(OSError):
            os.close(fd)
        if keep_partial:
            try:
                os.rename(tmp, self.partial, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
                return
            except OSError:
                pass  # e.g. someone else's file there in a sticky directory: not kept
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=self.dir_fd)

    def _write(self, fd: int, view: memoryview, pos: int) -> None:
        # After a write failed (full disk), the rest of the file is read and
        # dropped, so the stream stays in step and the error can be answered.
        if self.failure is not None:
            return
        # An all-zero block becomes a hole: sparse files stay sparse.
        if view == ZERO_VIEW[: len(view)]:
            return
        done = 0
        try:
            while done < len(view):
                done += os.pwrite(fd, view[done:], pos + done)
        except OSError as exc:
            self.failure = translate(exc, op="write", family="file", where=repr(self.shown))

    def _recv_known(
        self, chan: Channel, fd: int, start: int, end: int, digest: hashlib._Hash, tick: Tick | None
    ) -> int:
        receive_blocks(chan, start, end, digest, lambda view, pos: self._write(fd, view, pos), tick)
        return end

    def _recv_chunks(self, chan: Channel, fd: int, digest: hashlib._Hash, tick: Tick | None) -> int:
        buf = bytearray(fc.MAX_CHUNK)
        view = memoryview(buf)
        header = memoryview(bytearray(4))
        pos = 0
        while True:
            chan.check()
            chan.recv_into(header)
            n = fc.chunk_length(bytes(header))
            if n == 0:
                return pos
            if self.max_size is not None and pos + n > self.max_size and self.failure is None:
                self.failure = HvsockError(
                    f"{self.shown!r} grew over the service's limit of {self.max_size} bytes "
                    "per file; nothing was written"
                )
            chan.recv_into(view[:n])
            digest.update(view[:n])
            self._write(fd, view[:n], pos)
            pos += n
            if tick is not None:
                tick(n)

    def _finish(self, fd: int, tmp: bytes, size: int) -> None:
        """Metadata, fsync, rename into place: in that order (the order is the guarantee)."""
        e = self.entry
        try:
            os.ftruncate(fd, size)  # a trailing hole has no bytes written
            # chown before chmod: Linux clears setuid/setgid on a chown, even root's.
            if self.keeps_owner:
                os.fchown(fd, e.uid, e.gid)
            os.fchmod(
                fd,
                safe_mode(e.mode, False, self.keeps_owner)
                if self.flags & fc.F_PRESERVE
                else 0o666 & ~_umask(),
            )
            if self.flags & fc.F_PRESERVE:
                os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
            # The data must be on disk before the name points at it, or a crash
            # could leave the target renamed into place but empty.
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        os.rename(tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        self.written = size
        self._drop_stale_partial()

    def _drop_stale_partial(self) -> None:
        # The target now holds the whole file: a partial of it kept by an older cut
        # copy is stale (only ever one of ours; never someone else's file).
        part = lstat_at(self.dir_fd, self.partial)
        if part is not None and own_regular_file(part):
            with contextlib.suppress(OSError):
                os.unlink(self.partial, dir_fd=self.dir_fd)


#: Mode bits a copy never gives a file unless it keeps the owner too (GNU cp's rule).
_SPECIAL_FILE_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
_SPECIAL_DIR_BITS = stat.S_ISUID | stat.S_ISGID


def safe_mode(mode: int, is_dir: bool, owner_kept: bool) -> int:
    """*mode* as -p applies it: setuid/setgid (and a file's sticky bit) only with the owner.

    GNU ``cp -p`` clears them when it cannot keep the owner: otherwise a root-run
    copy would turn a peer's ``chmod u+s`` file into a setuid file owned by root.
    A directory keeps its sticky bit (it only protects the entries inside).
    """
    if owner_kept:
        return mode
    return mode & ~(_SPECIAL_DIR_BITS if is_dir else _SPECIAL_FILE_BITS)


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    # os.umask can only be read by setting it; the lock keeps two threads from
    # seeing each other's temporary value.
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def set_dir_times(dir_fd: int, name: bytes, entry: fc.Entry, owner_kept: bool) -> None:
    """A directory's mode and mtime, applied after its contents were written (-p)."""
    os.chmod(name, safe_mode(entry.mode, True, owner_kept), dir_fd=dir_fd, follow_symlinks=False)
    os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
