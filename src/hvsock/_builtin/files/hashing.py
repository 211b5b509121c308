"""SHA-256 of a file's bytes beside the copy: a prefix read back, or a helper thread."""

from __future__ import annotations

import hashlib
import os
import threading
from collections import deque

from .channel import CHUNK

__all__: list[str] = []


def prefix_digest(fd: int, length: int) -> tuple[hashlib._Hash, int]:
    """SHA-256 state over the first *length* bytes of *fd*, and how many were there."""
    digest = hashlib.sha256()
    view = memoryview(bytearray(min(CHUNK, max(length, 1))))
    pos = 0
    while pos < length:
        n = os.preadv(fd, [view[: min(CHUNK, length - pos)]], pos)
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
            self._thread = threading.Thread(target=self._run, name="hvsock-sha256", daemon=True)
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
                n = os.preadv(fd, [buf[: min(CHUNK, end - pos)]], pos)
            except OSError:
                n = 0
            if n == 0:
                self.short = True
                return
            self.digest.update(buf[:n])
            pos += n


#: Buffers on the copy paths: the I/O fills one while the helper hashes others.
RING = 4


def ring(nbytes: int) -> list[memoryview]:
    size = max(1, min(CHUNK, nbytes))
    return [memoryview(bytearray(size)) for _ in range(max(1, min(RING, -(-nbytes // size))))]
