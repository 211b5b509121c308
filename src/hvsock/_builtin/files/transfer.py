"""What both sides of a file copy share: the channel, sending a file, writing one atomically.

Whichever side writes (the server on a push, the client on a pull) goes through
:class:`AtomicWriter`: data into a temporary file beside the target, SHA-256
checked, fsync, rename. Whichever side reads goes through :func:`send_file`.
Paths below a starting directory are opened one component at a time with
``O_NOFOLLOW`` (:func:`open_dir`), so a symlink is never followed on the way.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

from ..._core import filecopy as fc
from ..._core.framing import HEADER_SIZE, encode_frame, frame_length
from ..._errors import ArgumentError, HvsockError, PermissionDeniedError, ProtocolError, RemoteError
from ..._transports._common import wait_ready

__all__: list[str] = []

#: Bytes per read/write on the data path: big enough that Python's per-call cost
#: vanishes next to the copy itself.
CHUNK = 1024 * 1024
_ZEROS = bytes(CHUNK)
_ZERO_VIEW = memoryview(_ZEROS)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Opening a file to send: no symlink, no blocking on a FIFO, no controlling tty.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0) \
    | getattr(os, "O_NOCTTY", 0)


def kind_name(mode: int) -> str:
    """What a non-regular file is, for a message."""
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "not a regular file"

#: A progress hook on the data path: called with the bytes just moved.
Tick = Callable[[int], None]


class Cancelled(HvsockError):
    """The copy was cancelled (the asyncio twin's task was cancelled)."""


def fs_error(exc: OSError, what: str) -> HvsockError:
    """An OSError from the file system as an HvsockError that says what to do."""
    code = exc.errno
    hint = {
        errno.ENOSPC: "no space left on the device; free some and copy again",
        errno.EDQUOT: "over the disk quota; free some and copy again",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ELOOP: "a symlink is in the way (symlinks are never followed here)",
        errno.ENOTDIR: "a part of the path is not a directory (or is a symlink)",
        errno.ENOENT: "no such file or directory",
        errno.EEXIST: "it already exists",
        errno.EISDIR: "it is a directory",
        errno.EROFS: "read-only file system",
        errno.ENAMETOOLONG: "the name is too long",
    }.get(code or 0, exc.strerror or str(exc))
    cls: type[HvsockError] = (PermissionDeniedError
                                     if code in (errno.EACCES, errno.EPERM)
                                     else HvsockError)
    err = cls(f"{what}: {hint}")
    err.errno = code
    return err


def error_code(exc: BaseException) -> str:
    """The short code an ERROR message carries for *exc*."""
    code = getattr(exc, "errno", None)
    if isinstance(exc, ArgumentError):
        return "bad_path"
    return errno.errorcode.get(code, "failed").lower() if isinstance(code, int) else "failed"


def show(raw: bytes) -> str:
    """A path for a message: undecodable bytes shown as escapes."""
    return raw.decode("utf-8", "backslashreplace")


# -- the channel ----------------------------------------------------------------------


class Channel:
    """Frames of file-copy messages and raw data over one blocking socket, buffered.

    Small writes (messages, small files) are queued and sent together; the
    queue goes out before this side waits to read (so neither side can wait on
    the other) or once it holds FLUSH_AT bytes. Reads come through a buffer
    too, except large blocks, which land straight in the caller's memory. A
    tree of small files thus costs a few system calls per batch, not per file.
    """

    FLUSH_AT = 256 * 1024
    READ_AHEAD = 256 * 1024

    def __init__(self, sock: socket.socket, cancel: threading.Event | None = None) -> None:
        self.sock = sock
        self.cancel = cancel
        self._out: list[bytes] = []
        self._out_size = 0
        self._in = bytearray()

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("the copy was cancelled")

    # -- writing --------------------------------------------------------------
    def send(self, message: fc.Message) -> None:
        self._queue(encode_frame(fc.encode(message), fc.MAX_MESSAGE))

    def write(self, data: memoryview | bytes) -> None:
        """Raw bytes of a file: queued when small, else sent at once (after the queue)."""
        if len(data) < 64 * 1024:
            self._queue(bytes(data))
            return
        self.flush()
        self.sock.sendall(data)

    def _queue(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= self.FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self._out_size = 0
            self.sock.sendall(data)

    # -- reading --------------------------------------------------------------
    def _fill(self, need: int) -> bool:
        """At least *need* bytes buffered; False at EOF before that."""
        while len(self._in) < need:
            self.flush()
            data = self.sock.recv(max(self.READ_AHEAD, need - len(self._in)))
            if not data:
                return False
            self._in += data
        return True

    def recv_or_eof(self) -> fc.Message | None:
        """The next message, or None at a clean EOF (between messages)."""
        if not self._fill(HEADER_SIZE):
            if self._in:
                raise ProtocolError("the peer closed the connection in the middle of a "
                                    "message header")
            return None
        length = frame_length(bytes(self._in[:HEADER_SIZE]), fc.MAX_MESSAGE)
        if not self._fill(HEADER_SIZE + length):
            raise ProtocolError("the peer closed the connection in the middle of a message")
        body = bytes(self._in[HEADER_SIZE:HEADER_SIZE + length])
        del self._in[:HEADER_SIZE + length]
        return fc.decode(body)

    def recv(self, expect: str = "a message") -> fc.Message:
        """The next message; :class:`ProtocolError` at EOF."""
        message = self.recv_or_eof()
        if message is None:
            raise ProtocolError(f"the peer closed the connection while we waited for {expect}")
        return message

    def recv_into(self, view: memoryview) -> None:
        got = min(len(self._in), len(view))
        if got:
            view[:got] = self._in[:got]
            del self._in[:got]
        if got < len(view) and len(view) - got < 64 * 1024:
            if not self._fill(len(view) - got):
                raise ProtocolError("the peer closed the connection in the middle of a file")
            view[got:] = self._in[:len(view) - got]
            del self._in[:len(view) - got]
            return
        if got < len(view):
            self.flush()
        while got < len(view):
            n = self.sock.recv_into(view[got:])
            if n == 0:
                raise ProtocolError(f"the peer closed the connection in the middle of "
                                    f"a file ({got} of {len(view)} bytes of a block)")
            got += n


def remote_error(message: fc.Message, doing: str) -> HvsockError:
    """What to raise when the peer answered *message* instead of what we expected."""
    if isinstance(message, fc.Error):
        return RemoteError(message.code, message.message)
    return ProtocolError(f"unexpected {type(message).__name__} while {doing}")


# -- reading side ------------------------------------------------------------------------


def prefix_digest(fd: int, length: int) -> tuple[hashlib._Hash, int]:
    """SHA-256 state over the first *length* bytes of *fd*, and how many were there."""
    digest = hashlib.sha256()
    view = memoryview(bytearray(min(CHUNK, max(length, 1))))
    pos = 0
    while pos < length:
        n = os.preadv(fd, [view[:min(CHUNK, length - pos)]], pos)
        if n == 0:
            break
        digest.update(view[:n])
        pos += n
    return digest, pos


class Hasher:
    """SHA-256 in a helper thread, fed in order, while this thread moves the bytes.

    SHA-256 costs about as much CPU as the copy itself; hashlib drops the GIL
    for large updates, so hashing beside the I/O keeps a large file near socket
    speed on two cores. The helper takes jobs in order: a block of a buffer the
    I/O thread has filled (:meth:`update`; the caller must not refill it before
    :meth:`wait_below` says so), or a range of a file it reads itself
    (:meth:`update_from`, for bytes that leave by ``sendfile`` and so never
    pass through this process). Small blocks hash inline (a thread hand-off
    costs more than it saves). No thread is started until a job needs one.
    """

    MIN_BLOCK = 256 * 1024

    def __init__(self, digest: hashlib._Hash) -> None:
        self.digest = digest
        #: Set when a file range could not be read whole (it shrank, or an I/O
        #: error): the digest is then not the file's, and the copy is incomplete.
        self.short = False
        self._jobs: deque[memoryview | tuple[int, int, int]] = deque()
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    def update(self, view: memoryview) -> None:
        """Hash *view* after the blocks before it; it must stay unchanged until hashed."""
        if len(view) < self.MIN_BLOCK:
            self.wait()
            self.digest.update(view)
            return
        self._submit(view)

    def update_from(self, fd: int, start: int, end: int) -> None:
        """Hash bytes *start* to *end* of *fd*, read by the helper thread."""
        self._submit((fd, start, end))

    def wait_below(self, count: int) -> None:
        """Return once fewer than *count* jobs are queued or running."""
        if self._thread is None:
            # Nothing was ever handed over (every block hashed inline: a small file);
            # not even the lock is worth taking, at thousands of files a second.
            return
        with self._cv:
            while len(self._jobs) >= count:
                self._cv.wait()

    def wait(self) -> None:
        """Return once every job is done."""
        self.wait_below(1)

    def close(self) -> None:
        """Drop the jobs not started, let the running one end, stop the thread."""
        if self._thread is None:
            return
        with self._cv:
            self._stop = True
            while len(self._jobs) > 1:
                self._jobs.pop()
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Hasher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _submit(self, job: memoryview | tuple[int, int, int]) -> None:
        with self._cv:
            self._jobs.append(job)
            self._cv.notify_all()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hvsock-sha256",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        buf: memoryview | None = None
        while True:
            with self._cv:
                while not self._jobs and not self._stop:
                    self._cv.wait()
                if not self._jobs:
                    return
                job = self._jobs[0]
            try:
                if isinstance(job, memoryview):
                    self.digest.update(job)
                else:
                    if buf is None:
                        buf = memoryview(bytearray(CHUNK))
                    self._hash_range(buf, *job)
            except Exception:  # a digest short of bytes fails its check: no more to do
                self.short = True
            finally:
                with self._cv:
                    self._jobs.popleft()
                    self._cv.notify_all()

    def _hash_range(self, buf: memoryview, fd: int, pos: int, end: int) -> None:
        while pos < end and not self._stop:
            try:
                n = os.preadv(fd, [buf[:min(CHUNK, end - pos)]], pos)
            except OSError:
                n = 0
            if n == 0:
                self.short = True
                return
            self.digest.update(buf[:n])
            pos += n


def send_file(chan: Channel, fd: int, size: int, ready: fc.Ready, tick: Tick | None) -> None:
    """DATA, the bytes of *fd* from the agreed offset, FILE_END (whole-file SHA-256).

    The peer's partial file is kept only when its first *offset* bytes hash the
    same as ours; otherwise the copy starts again at 0. *size* is what the ENTRY
    or PUT announced: a file that shrank since is padded and marked incomplete,
    so the receiver discards it.
    """
    start = 0
    digest = hashlib.sha256()
    if ready.offset and ready.offset <= size:
        prefix, got = prefix_digest(fd, ready.offset)
        if got == ready.offset and prefix.digest() == ready.prefix_sha:
            start = ready.offset
            digest = prefix
    chan.send(fc.Data(start, size - start))
    with Hasher(digest) as hasher:
        complete = _send_range(chan, fd, start, size, hasher, tick)
        hasher.wait()
        complete = complete and not hasher.short
    chan.send(fc.FileEnd(digest.digest(), complete))


#: Files from this size on leave by ``sendfile`` (the kernel moves page-cache
#: pages to the socket; no copy through this process) where the platform has it.
SENDFILE_MIN = 4 * CHUNK
#: Bytes per ``sendfile`` call: between two calls come the cancel check and a tick.
SENDFILE_STEP = 4 * CHUNK
#: Errors of a first ``sendfile`` that mean "not for these descriptors": copy instead.
_NO_SENDFILE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSOCK,
                errno.EBADF, errno.ESPIPE, errno.EXDEV}


def _send_range(chan: Channel, fd: int, start: int, end: int, hasher: Hasher,
                tick: Tick | None) -> bool:
    """The bytes start..end of *fd* to *chan*; False when they could not all be read."""
    pos = start
    if end - start >= SENDFILE_MIN and hasattr(os, "sendfile"):
        chan.flush()
        _widen(chan.sock)
        pos = _sendfile(chan, fd, start, end, hasher, tick)
        if pos == end:
            return True
        if pos > start:
            # Cut short (the file shrank, or a read failed) after some bytes
            # went: keep the promised count with zeros, marked incomplete.
            _send_zeros(chan, end - pos, tick)
            return False
    return _copy_range(chan, fd, pos, end, hasher, tick)


def _sendfile(chan: Channel, fd: int, start: int, end: int, hasher: Hasher,
              tick: Tick | None) -> int:
    """Send start..end of *fd* with ``os.sendfile``; return where it stopped.

    *start* back means sendfile cannot serve these descriptors (nothing was
    sent; copy instead). Otherwise the helper thread hashes the same range from
    the file. A socket with a timeout is non-blocking underneath: a full socket
    buffer is waited for with ``poll``, up to that timeout.
    """
    sock = chan.sock
    out = sock.fileno()
    timeout = sock.gettimeout()
    pos = start
    while pos < end:
        chan.check()
        try:
            sent = os.sendfile(out, fd, pos, min(SENDFILE_STEP, end - pos))
        except BlockingIOError:
            if not wait_ready(out, True, timeout):
                raise TimeoutError("timed out while sending a file "
                                   "(the peer reads nothing)") from None
            continue
        except (ConnectionError, TimeoutError):
            raise
        except OSError as exc:
            if pos == start and exc.errno in _NO_SENDFILE:
                return start
            return pos  # the file could not be read: the caller sends it as incomplete
        if sent == 0:
            return pos  # the file shrank under us
        if pos == start:
            hasher.update_from(fd, start, end)
        pos += sent
        if tick is not None:
            tick(sent)
    return pos


#: Send buffer for a large file on a Unix socket (the default, about 200 KiB,
#: wakes the reader for every few hundred KiB).
UNIX_SNDBUF = 4 * 1024 * 1024


def _widen(sock: socket.socket) -> None:
    """A larger send buffer for a Unix socket (TCP tunes its own; vsock has its own knob)."""
    if sock.family == getattr(socket, "AF_UNIX", None) and \
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < UNIX_SNDBUF:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SNDBUF)


def _send_zeros(chan: Channel, count: int, tick: Tick | None) -> None:
    while count:
        chan.check()
        n = min(CHUNK, count)
        chan.write(_ZERO_VIEW[:n])
        count -= n
        if tick is not None:
            tick(n)


#: Buffers on the copy paths: the I/O fills one while the helper hashes others.
RING = 4


def _ring(nbytes: int) -> list[memoryview]:
    size = max(1, min(CHUNK, nbytes))
    return [memoryview(bytearray(size)) for _ in range(max(1, min(RING, -(-nbytes // size))))]


def _copy_range(chan: Channel, fd: int, start: int, end: int, hasher: Hasher,
                tick: Tick | None) -> bool:
    bufs = _ring(end - start)
    pos = start
    k = 0
    while pos < end:
        chan.check()
        view = bufs[k % len(bufs)]
        k += 1
        hasher.wait_below(len(bufs))  # this buffer's last block is hashed
        want = min(CHUNK, end - pos)
        try:
            n = os.preadv(fd, [view[:want]], pos)
        except OSError:
            n = 0  # unreadable now: sent as incomplete, like a file that shrank
        if n == 0:
            # The file shrank under us: keep the byte count we promised, then
            # say FILE_END(complete=False) so the receiver throws it away.
            _send_zeros(chan, end - pos, tick)
            return False
        hasher.update(view[:n])
        chan.write(view[:n])
        pos += n
        if tick is not None:
            tick(n)
    return True


def receive_blocks(chan: Channel, start: int, end: int, digest: hashlib._Hash,
                   sink: Callable[[memoryview, int], object], tick: Tick | None) -> None:
    """Bytes *start* to *end* of a file from *chan* into ``sink(block, offset)``, hashed.

    The blocks land in a ring of buffers; the helper thread hashes each while
    the next is received and *sink* stores this one. Returns once *digest* has
    them all.
    """
    bufs = _ring(end - start)
    pos = start
    k = 0
    with Hasher(digest) as hasher:
        while pos < end:
            chan.check()
            view = bufs[k % len(bufs)][:min(CHUNK, end - pos)]
            k += 1
            hasher.wait_below(len(bufs))  # this buffer's last block is hashed
            chan.recv_into(view)
            hasher.update(view)
            sink(view, pos)
            pos += len(view)
            if tick is not None:
                tick(len(view))
        hasher.wait()


def send_stream(chan: Channel, read: Callable[[int], bytes], tick: Tick | None) -> None:
    """An input of unknown length (stdin) as chunks, then FILE_END."""
    digest = hashlib.sha256()
    chan.send(fc.Data(0, fc.UNKNOWN_SIZE))
    while True:
        chan.check()
        data = read(CHUNK)
        if not data:
            break
        digest.update(data)
        chan.write(fc.encode_chunk(data))
        if tick is not None:
            tick(len(data))
    chan.write(fc.encode_chunk(b""))
    chan.send(fc.FileEnd(digest.digest(), True))


def drain_file(chan: Channel) -> None:
    """Read and drop one file's DATA, bytes and FILE_END (a skipped or refused eager file)."""
    msg = chan.recv("DATA")
    if not isinstance(msg, fc.Data):
        raise remote_error(msg, "skipping a file")
    view = memoryview(bytearray(max(1, min(CHUNK, msg.length))))
    if msg.length >= 0:
        left = msg.length
        while left:
            n = min(CHUNK, left)
            chan.recv_into(view[:n])
            left -= n
    else:
        header = memoryview(bytearray(4))
        big = memoryview(bytearray(fc.MAX_CHUNK))
        while True:
            chan.recv_into(header)
            n = fc.chunk_length(bytes(header))
            if n == 0:
                break
            chan.recv_into(big[:n])
    trailer = chan.recv("FILE_END")
    if not isinstance(trailer, fc.FileEnd):
        raise remote_error(trailer, "skipping a file")


# -- writing side --------------------------------------------------------------------------


def open_dir(start_fd: int, parts: tuple[bytes, ...], *, create: bool = False,
             what: bytes = b"", parents_hint: bool = False) -> int:
    """A new descriptor of the directory *parts* below *start_fd*, no symlink followed.

    *create* makes missing directories (mode 0777 less the umask). Raises
    :class:`HvsockError` naming the directory that is missing (and, with
    *parents_hint*, the ``--parents`` flag) or that is a symlink or a file.
    """
    fd = os.dup(start_fd)
    done = 0
    try:
        for part in parts:
            try:
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
            done += 1
        return fd
    except OSError as exc:
        os.close(fd)
        at = b"/".join(parts[:done + 1])
        if isinstance(exc, FileNotFoundError):
            err = HvsockError(
                f"directory {show(at)!r} does not exist" + (
                    f" (for {show(what)!r})" if what and what.strip(b"/") != at else "")
                + ("; --parents creates missing directories" if parents_hint else ""))
            err.errno = exc.errno
            raise err from exc
        raise fs_error(exc, f"cannot open directory {show(at)!r}") from exc


def lstat_at(dir_fd: int, name: bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def entry_of(st: os.stat_result, path: bytes, link: bytes = b"") -> fc.Entry:
    kind = (fc.KIND_DIR if stat.S_ISDIR(st.st_mode) else fc.KIND_SYMLINK
            if stat.S_ISLNK(st.st_mode) else fc.KIND_FILE)
    return fc.Entry(path, kind, stat.S_IMODE(st.st_mode), st.st_mtime_ns,
                    st.st_size if kind == fc.KIND_FILE else 0, st.st_uid, st.st_gid, link)


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
    return (b".hvsock-" + hashlib.sha256(name).hexdigest()[:16].encode() + b"-"
            + os.urandom(8).hex().encode() + b".tmp")


#: How a temporary or partial file is opened: never through a symlink, never a
#: FIFO's blocking open, never as a controlling terminal.
_TEMP_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0) \
    | getattr(os, "O_NONBLOCK", 0)


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
    raise HvsockError("could not create a temporary file with a fresh random name (16 "
                      "tries); is something creating files in the directory?")


def own_regular_file(st: os.stat_result) -> bool:
    """May this process reuse a file it finds at one of its own temporary names?

    Only a regular file with one link, owned by this process's user: anything
    else was put there by someone else (a user of a world-writable directory)
    and is left alone.
    """
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and (
        not hasattr(os, "geteuid") or st.st_uid == os.geteuid())


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

    def __init__(self, dir_fd: int, name: bytes, entry: fc.Entry, flags: int, *,
                 shown: str, max_size: int | None = None, owner: bool = False) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.entry = entry
        self.flags = flags
        self.shown = shown
        self.max_size = max_size
        self.owner = owner
        self.partial = partial_name(name)
        self.written = 0
        self.failure: HvsockError | None = None
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
                raise HvsockError(f"{self.shown!r} is a directory; give a path for "
                                         "the file, or copy into the directory")
            # A symlink replaces a file or a symlink, as `cp -a` does (so a re-run of
            # a tree copy succeeds); a file never silently replaces a symlink.
            replaceable = stat.S_ISREG(current.st_mode) or (
                self.entry.kind == fc.KIND_SYMLINK and stat.S_ISLNK(current.st_mode))
            if not replaceable and not self.flags & fc.F_FORCE:
                raise HvsockError(f"{self.shown!r} exists and is not a regular file; "
                                         "--force replaces it")
            why = fc.should_replace(self.flags, True, self.entry.mtime_ns,
                                    current.st_mtime_ns)
            if why is not None:
                return fc.Skipped(why)
        if self.max_size is not None and self.entry.size > self.max_size:
            raise HvsockError(f"{self.shown!r} is {self.entry.size} bytes, over the "
                                     f"service's limit of {self.max_size} bytes per file")
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
                    os.rename(tmp, self.partial, src_dir_fd=self.dir_fd,
                              dst_dir_fd=self.dir_fd)
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
                    os.chown(self.name, e.uid, e.gid, dir_fd=self.dir_fd,
                             follow_symlinks=False)
                if current is None or self.flags & fc.F_PRESERVE:
                    os.chmod(self.name, safe_mode(e.mode, True, self.keeps_owner)
                             if self.flags & fc.F_PRESERVE else 0o777 & ~_umask(),
                             dir_fd=self.dir_fd, follow_symlinks=False)
            elif e.kind == fc.KIND_SYMLINK:
                current = lstat_at(self.dir_fd, self.name)
                if current is not None and stat.S_ISLNK(current.st_mode) and \
                        os.readlink(self.name, dir_fd=self.dir_fd) == e.link and \
                        not self.flags & fc.F_PRESERVE and not self.keeps_owner:
                    return  # the same link is there already (a re-run)
                tmp = self._new_symlink(e.link)
                try:
                    if self.flags & fc.F_PRESERVE:
                        os.utime(tmp, ns=(e.mtime_ns, e.mtime_ns), dir_fd=self.dir_fd,
                                 follow_symlinks=False)
                    if self.keeps_owner:
                        os.chown(tmp, e.uid, e.gid, dir_fd=self.dir_fd,
                                 follow_symlinks=False)
                    os.rename(tmp, self.name, src_dir_fd=self.dir_fd,
                              dst_dir_fd=self.dir_fd)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=self.dir_fd)
                    raise
        except OSError as exc:
            if isinstance(exc, HvsockError):
                raise
            raise fs_error(exc, f"cannot create {self.shown!r}") from exc

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
            raise ProtocolError(f"DATA covers {msg.start}+{msg.length} bytes of a "
                                       f"{self.entry.size}-byte file")
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
                    raise ProtocolError(f"DATA starts at {msg.start}, past the {size} bytes "
                                        f"kept of {self.shown!r}")
            elif msg.start:
                raise ProtocolError(f"DATA starts at {msg.start} but no partial file of "
                                    f"{self.shown!r} was offered")
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
            self.failure = exc if isinstance(exc, HvsockError) else fs_error(
                exc, f"cannot write {self.shown!r}")
        try:
            try:
                end = (self._recv_known(chan, fd, msg.start, self.entry.size, digest, tick)
                       if known else self._recv_chunks(chan, fd, digest, tick))
            except BaseException:
                # Cut mid-file: the bytes written so far are a verifiable prefix.
                # (A full disk or a bad digest is no reason to keep anything.)
                keep_partial = bool(self.flags & fc.F_RESUME) and known and \
                    self.failure is None and isinstance(
                        sys.exc_info()[1], (ProtocolError, ConnectionError, TimeoutError,
                                            Cancelled))
                raise
            trailer = chan.recv("FILE_END")
            if not isinstance(trailer, fc.FileEnd):
                raise remote_error(trailer, f"receiving {self.shown!r}")
            if self.failure is not None:
                raise self.failure
            if not trailer.complete:
                raise HvsockError(f"the source of {self.shown!r} changed or could not "
                                         "be read while it was copied; nothing was written")
            if trailer.sha256 != digest.digest():
                raise HvsockError(f"SHA-256 of {self.shown!r} differs from the "
                                         "source's; nothing was written (copy again)")
            self._finish(fd, tmp, end)
            fd = -1
        except BaseException as exc:
            self._discard(fd, tmp, keep_partial)
            if not isinstance(exc, OSError) or isinstance(
                    exc, (HvsockError, TimeoutError, ConnectionError)):
                raise
            raise fs_error(exc, f"cannot write {self.shown!r}") from exc
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
        if view == _ZERO_VIEW[:len(view)]:
            return
        done = 0
        try:
            while done < len(view):
                done += os.pwrite(fd, view[done:], pos + done)
        except OSError as exc:
            self.failure = fs_error(exc, f"cannot write {self.shown!r}")

    def _recv_known(self, chan: Channel, fd: int, start: int, end: int,
                    digest: hashlib._Hash, tick: Tick | None) -> int:
        receive_blocks(chan, start, end, digest, lambda view, pos: self._write(fd, view, pos),
                       tick)
        return end

    def _recv_chunks(self, chan: Channel, fd: int, digest: hashlib._Hash,
                     tick: Tick | None) -> int:
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
                    "per file; nothing was written")
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
            os.fchmod(fd, safe_mode(e.mode, False, self.keeps_owner)
                      if self.flags & fc.F_PRESERVE else 0o666 & ~_umask())
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
    os.chmod(name, safe_mode(entry.mode, True, owner_kept), dir_fd=dir_fd,
             follow_symlinks=False)
    os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)


def receive_stream(chan: Channel, write: Callable[[memoryview], object], size: int,
                   tick: Tick | None, shown: str) -> int:
    """DATA, bytes, FILE_END into *write* (stdout); raises after the fact on a bad digest."""
    msg = chan.recv("DATA")
    if not isinstance(msg, fc.Data):
        raise remote_error(msg, f"receiving {shown!r}")
    if msg.start != 0 or msg.length != size:
        raise ProtocolError("DATA does not match the announced size")
    digest = hashlib.sha256()
    receive_blocks(chan, 0, size, digest, lambda view, pos: write(view), tick)
    trailer = chan.recv("FILE_END")
    if not isinstance(trailer, fc.FileEnd):
        raise remote_error(trailer, f"receiving {shown!r}")
    if not trailer.complete or trailer.sha256 != digest.digest():
        raise HvsockError(f"{shown!r} arrived damaged or changed while it was read "
                                 "(SHA-256 differs); do not trust what was written")
    return size
