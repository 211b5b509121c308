"""The reading side of a file copy: a file's bytes to the channel (sendfile where it can).

:func:`send_file` sends DATA, the bytes from the offset the receiver agreed to
(its partial file's prefix is checked by SHA-256 first), and FILE_END with the
whole file's digest; :func:`send_stream` sends an input of unknown length
(stdin) as chunks.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
from collections.abc import Callable

from ..._core import filecopy as fc
from ..._transports._common import wait_ready
from .channel import CHUNK, ZERO_VIEW, Channel, Tick
from .hashing import Hasher, prefix_digest, ring

__all__: list[str] = []


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
_NO_SENDFILE = {
    errno.EINVAL,
    errno.ENOSYS,
    errno.EOPNOTSUPP,
    errno.ENOTSOCK,
    errno.EBADF,
    errno.ESPIPE,
    errno.EXDEV,
}


def _send_range(
    chan: Channel, fd: int, start: int, end: int, hasher: Hasher, tick: Tick | None
) -> bool:
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


def _sendfile(
    chan: Channel, fd: int, start: int, end: int, hasher: Hasher, tick: Tick | None
) -> int:
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
                raise TimeoutError(
                    "timed out while sending a file (the peer reads nothing)"
                ) from None
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
    if (
        sock.family == getattr(socket, "AF_UNIX", None)
        and sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < UNIX_SNDBUF
    ):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SNDBUF)


def _send_zeros(chan: Channel, count: int, tick: Tick | None) -> None:
    while count:
        chan.check()
        n = min(CHUNK, count)
        chan.write(ZERO_VIEW[:n])
        count -= n
        if tick is not None:
            tick(n)


def _copy_range(
    chan: Channel, fd: int, start: int, end: int, hasher: Hasher, tick: Tick | None
) -> bool:
    bufs = ring(end - start)
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
