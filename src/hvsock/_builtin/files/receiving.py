"""The writing side's data path: a file's bytes from the channel, hashed as they arrive.

:func:`receive_blocks` hands the bytes to a sink (the atomic writer, or stdout
through :func:`receive_stream`); :func:`drain_file` reads and drops a file this
side skipped or refused, so the stream stays in step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from ..._core import filecopy as fc
from ..._errors import HvsockError, ProtocolError
from .channel import CHUNK, Channel, Tick, remote_error
from .hashing import Hasher, ring

__all__: list[str] = []


def receive_blocks(
    chan: Channel,
    start: int,
    end: int,
    digest: hashlib._Hash,
    sink: Callable[[memoryview, int], object],
    tick: Tick | None,
) -> None:
    """Bytes *start* to *end* of a file from *chan* into ``sink(block, offset)``, hashed.

    The blocks land in a ring of buffers; the helper thread hashes each while
    the next is received and *sink* stores this one. Returns once *digest* has
    them all.
    """
    bufs = ring(end - start)
    pos = start
    k = 0
    with Hasher(digest) as hasher:
        while pos < end:
            chan.check()
            view = bufs[k % len(bufs)][: min(CHUNK, end - pos)]
            k += 1
            hasher.wait_below(len(bufs))  # this buffer's last block is hashed
            chan.recv_into(view)
            hasher.update(view)
            sink(view, pos)
            pos += len(view)
            if tick is not None:
                tick(len(view))
        hasher.wait()


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


def receive_stream(
    chan: Channel, write: Callable[[memoryview], object], size: int, tick: Tick | None, shown: str
) -> int:
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
        raise HvsockError(
            f"{shown!r} arrived damaged or changed while it was read "
            "(SHA-256 differs); do not trust what was written"
        )
    return size
