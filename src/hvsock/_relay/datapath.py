"""Moving bytes one way between two non-blocking sockets: splice where it pays, else copy.

Zero-copy path (Linux): ``splice(src -> pipe)`` then ``splice(pipe -> dst)``. The
pipe holds page references, not copies, so the bytes never enter this process.
Pipes come from a shared pool: a direction takes one only while bytes are in
flight and gives it back empty, so 1000 idle connections hold no pipes at all.

Copy path (elsewhere, into TCP sockets, or where a socket type cannot splice):
``recv_into`` one buffer shared by the whole relay (it is single-threaded), and
``send`` from it; a direction whose destination takes only part keeps the tail in
that buffer (it takes the buffer over, see :class:`Buffers`) rather than copying
it. Either way a direction holds at most one chunk of unsent bytes.

Memory budget: ``pull`` is told the *room* left in the relay's budget. A read
is a whole chunk while the room allows, else only the room (never less than
:data:`MIN_READ`, so every direction keeps moving); and a partial send keeps its
tail by taking the whole buffer only while the room allows, else copies just the
tail out. So a direction whose receiver stalls holds at most its last read, and
the relay's total stays within the budget plus ``MIN_READ`` per direction; the
rest waits in the kernel (the sender's socket buffer and TCP's flow control).
``Flow.cost`` is what a direction holds now, for the relay's accounting.

Which path "auto" takes is decided per direction by :func:`splice_pays`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys

from .._pump import grow_pipe
from .._transports._common import close_write

#: Bytes moved per splice or recv, and the pipe size asked for (Linux's default
#: pipe-max-size). Measured against 256 KiB: fewer calls and wake-ups per byte.
DEFAULT_CHUNK = 1024 * 1024
#: The smallest read: what a direction may hold past an exhausted budget.
MIN_READ = 16 * 1024
#: Largest unsent tail parked in a pipe (what an empty pipe takes whole).
PARK_MAX = 64 * 1024
#: Chunks one direction moves per readiness event before letting others run.
BURST = 4
#: Empty pipes kept for reuse; more are closed when given back.
MAX_IDLE_PIPES = 64
#: Spare copy-path buffers kept for reuse.
MAX_IDLE_BUFFERS = 8

SPLICE_WORKS = sys.platform.startswith("linux") and hasattr(os, "splice")
_IP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def splice_pays(dst: socket.socket) -> bool:
    """Whether "auto" splices into *dst*: into Unix and vsock sockets, not into TCP.

    Measured on Linux 6.x: splicing into a TCP socket builds its segments from
    the pipe's pages one 4 KiB fragment at a time, and the receiver's recv then
    costs more than the copy saved (TCP->TCP: ~2.5 GB/s splice vs ~3.1 GB/s copy
    with 1 MiB buffers); into a Unix socket splice wins clearly (~4-7 vs ~3.4 GB/s).
    """
    return SPLICE_WORKS and dst.family not in _IP_FAMILIES


def widen_pays(dst: socket.socket) -> bool:
    """Whether a socket spliced into gets a send buffer of a chunk (:func:`widen`):
    Unix sockets, whose default (``net.core.wmem_default``, ~208 KiB) caps each
    splice, and so each wake-up of the reader, at that much."""
    return dst.family == getattr(socket, "AF_UNIX", None)


def widen(dst: socket.socket, chunk: int) -> None:
    """SO_SNDBUF of a chunk on *dst* (capped by ``net.core.wmem_max``): a splice
    of a whole pipe then goes in one call, and the reader wakes once for it."""
    with contextlib.suppress(OSError):
        dst.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, chunk)


_SPLICE_FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if SPLICE_WORKS else 0
_AGAIN = (BlockingIOError, InterruptedError)


class Broken(Exception):
    """A socket of a direction failed: ``sock`` is the one, ``error`` the OS error."""

    def __init__(self, sock: socket.socket, error: OSError) -> None:
        super().__init__(sock, error)
        self.sock = sock
        self.error = error


class Pipes:
    """A pool of non-blocking pipes of one size (Linux only)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: list[tuple[int, int]] = []
        self.created = 0

    def get(self) -> tuple[int, int] | None:
        """An empty pipe, or None when none can be made (out of descriptors)."""
        if self._idle:
            return self._idle.pop()
        try:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        grow_pipe(w, self.size)  # fewer system calls per byte
        self.created += 1
        return r, w

    def put(self, pipe: tuple[int, int]) -> None:
        """Give back an *empty* pipe."""
        if len(self._idle) < MAX_IDLE_PIPES:
            self._idle.append(pipe)
        else:
            self.discard(pipe)

    @staticmethod
    def discard(pipe: tuple[int, int]) -> None:
        """Close a pipe (one that may still hold bytes)."""
        for fd in pipe:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        while self._idle:
            self.discard(self._idle.pop())


class Buffers:
    """The copy path's receive buffers: one current buffer shared by every direction.

    A direction whose destination takes only part of a chunk keeps the rest *in
    place*: it takes the buffer (``take``) and the relay moves on to another one,
    so no byte is copied twice; the buffer comes back (``give``) once sent.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.current = bytearray(size)
        self.view = memoryview(self.current)
        self._idle: list[bytearray] = []

    def take(self) -> bytearray:
        buf = self.current
        self.current = self._idle.pop() if self._idle else bytearray(self.size)
        self.view = memoryview(self.current)
        return buf

    def give(self, buf: bytearray) -> None:
        if len(self._idle) < MAX_IDLE_BUFFERS:
            self._idle.append(buf)


class Flow:
    """One direction, ``src`` -> ``dst``: what is in flight, how many bytes went, how it ended.

    ``pull`` runs when ``src`` is readable and nothing is pending; ``push`` when
    ``dst`` is writable and something is. Both raise :class:`Broken` on a socket
    error. ``eof`` is set at the source's EOF; ``finish`` then half-closes ``dst``.
    """

    __slots__ = (
        "backlog",
        "cost",
        "done",
        "dst",
        "dstfd",
        "eof",
        "held",
        "nbytes",
        "pending",
        "pipe",
        "splice",
        "src",
        "srcfd",
    )

    def __init__(self, src: socket.socket, dst: socket.socket, splice: bool) -> None:
        self.src = src
        self.dst = dst
        self.srcfd = src.fileno()
        self.dstfd = dst.fileno()
        self.splice = splice
        self.pipe: tuple[int, int] | None = None
        #: Copy path: the unsent bytes (a view into *held*, the buffer they sit in).
        self.backlog = memoryview(b"")
        self.held: bytearray | None = None
        self.pending = 0
        #: Bytes of memory this direction holds (its pipe's bytes or its buffer).
        self.cost = 0
        self.nbytes = 0
        self.eof = False
        self.done = False

    # -- splice ------------------------------------------------------------------------
    def pull(self, pipes: Pipes, bufs: Buffers, room: int) -> None:
        """Move what ``src`` has (up to a burst); *room* is the budget left, in bytes."""
        if not self.splice:
            self._pull_copy(pipes, bufs, room)
            return
        chunk = pipes.size
        if room < chunk:
            chunk = max(MIN_READ, room)
        splice = os.splice
        for _ in range(BURST):
            pipe = pipes.get()
            if pipe is None:
                self._pull_copy(pipes, bufs, room)
                return
            try:
                n = splice(self.srcfd, pipe[1], chunk, flags=_SPLICE_FLAGS)
            except _AGAIN:
                pipes.put(pipe)
                return
            except OSError as exc:
                pipes.put(pipe)
                if exc.errno == errno.EINVAL:
                    # This socket type cannot splice: copy from now on.
                    self.splice = False
                    self._pull_copy(pipes, bufs, room)
                    return
                raise Broken(self.src, exc) from exc
            if n == 0:
                pipes.put(pipe)
                self.eof = True
                return
            try:
                m = splice(pipe[0], self.dstfd, n, flags=_SPLICE_FLAGS)
            except _AGAIN:
                m = 0
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    self.splice = False
                    self.pipe = pipe
                    self.pending = self.cost = n
                    self._unpipe(pipes)
                    return
                pipes.discard(pipe)
                raise Broken(self.dst, exc) from exc
            self.nbytes += m
            if m < n:
                self.pipe = pipe
                self.pending = self.cost = n - m
                return
            pipes.put(pipe)
            if n < chunk:
                return  # the socket is most likely drained: spare a call that would fail

    def push(self, pipes: Pipes, bufs: Buffers) -> None:
        if self.pipe is None:
            self._push_copy(bufs)
            return
        try:
            m = os.splice(self.pipe[0], self.dstfd, self.pending, flags=_SPLICE_FLAGS)
        except _AGAIN:
            return
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                self.splice = False
                self._unpipe(pipes)
                self._push_copy(bufs)
                return
            raise Broken(self.dst, exc) from exc
        self.nbytes += m
        self.pending -= m
        self.cost = self.pending
        if not self.pending:
            pipes.put(self.pipe)
            self.pipe = None

    def _unpipe(self, pipes: Pipes) -> None:
        """Move what sits in the pipe to the copy path's backlog (splice out not possible)."""
        assert self.pipe is not None
        parts = []
        left = self.pending
        while left:
            data = os.read(self.pipe[0], left)
            parts.append(data)
            left -= len(data)
        pipes.put(self.pipe)
        self.pipe = None
        self.backlog = memoryview(b"".join(parts))

    # -- copy --------------------------------------------------------------------------
    def _pull_copy(self, pipes: Pipes, bufs: Buffers, room: int) -> None:
        size = bufs.size
        try:
            n = self.src.recv_into(bufs.current, size if room >= size else max(MIN_READ, room))
        except _AGAIN:
            return
        except OSError as exc:
            raise Broken(self.src, exc) from exc
        if n == 0:
            self.eof = True
            return
        try:
            m = self.dst.send(bufs.view[:n])
        except _AGAIN:
            m = 0
        except OSError as exc:
            raise Broken(self.dst, exc) from exc
        self.nbytes += m
        if m < n:
            self.pending = n - m
            if room >= size:
                # Keep the tail where it is: this direction takes the buffer.
                view = bufs.view
                self.held = bufs.take()
                self.backlog = view[m:n]
                self.cost = size
            else:
                # Short of budget: hold only the tail, not a whole chunk, and
                # where a pipe can take it, in the kernel rather than in this
                # process (a stalled receiver's bytes then cost no RSS).
                self.cost = n - m
                if not self._park(pipes, bufs.view[m:n]):
                    self.backlog = memoryview(bytes(bufs.view[m:n]))

    def _park(self, pipes: Pipes, tail: memoryview) -> bool:
        """Move *tail* into a pipe (``push`` splices it out later); False if not possible.

        Only tails that an empty pipe of the default size takes whole (64 KiB).
        """
        if not SPLICE_WORKS or len(tail) > PARK_MAX:
            return False
        pipe = pipes.get()
        if pipe is None:
            return False
        try:
            written = os.write(pipe[1], tail)
        except OSError:
            written = -1
        if written != len(tail):
            pipes.discard(pipe)  # the tail is still in the buffer: copied out instead
            return False
        self.pipe = pipe
        return True

    def _push_copy(self, bufs: Buffers) -> None:
        try:
            m = self.dst.send(self.backlog)
        except _AGAIN:
            return
        except OSError as exc:
            raise Broken(self.dst, exc) from exc
        self.nbytes += m
        self.pending -= m
        self.backlog = self.backlog[m:]
        if not self.pending:
            self._drop_backlog(bufs)
        elif self.held is None:
            self.cost = self.pending

    def _drop_backlog(self, bufs: Buffers | None) -> None:
        self.backlog = memoryview(b"")
        self.cost = 0
        if self.held is not None:
            if bufs is not None:
                bufs.give(self.held)
            self.held = None

    # -- end ---------------------------------------------------------------------------
    def finish(self, closing: bool = False) -> None:
        """After EOF with nothing pending: half-close ``dst`` (its peer reads EOF).

        With *closing* (the other direction is done too, so ``dst`` is about to
        be closed, which sends the same EOF) the call is spared.
        """
        self.done = True
        if closing:
            return
        try:
            close_write(self.dst)
        except OSError as exc:
            raise Broken(self.dst, exc) from exc

    def release(self, pipes: Pipes, bufs: Buffers) -> None:
        """Drop whatever is in flight (the connection is being torn down)."""
        if self.pipe is not None:
            pipes.discard(self.pipe)
            self.pipe = None
        self._drop_backlog(bufs)
        self.pending = self.cost = 0
