"""Worker processes: N event loops forked after bind, accepting from the same listeners.

Why processes: the relay's loop is Python, and Python threads share one
interpreter lock, so a second thread adds no throughput (measured: see
docs/port-forwarding.md); processes scale with cores, as socat's fork per
connection does, without its per-connection fork.

What the workers share:

- the listening sockets (inherited; each worker watches them with
  ``EPOLLEXCLUSIVE`` where epoll has it, so one client wakes one worker);
- the connection limit: a process-shared semaphore (:class:`SharedSlots`);
- the counters: a row of int64s per worker in shared memory (:class:`StatsTable`),
  summed by the relay;
- a pipe from each worker to the relay for readiness and (when an ``on_close``
  callback wants them) connection records; a control pipe from the relay to
  each worker carries stop requests (the grace, 8 bytes).

A worker never returns into its parent's code: it ends with ``os._exit``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import mmap
import os
import signal
import stat
import struct
import sys
import warnings
from collections.abc import Callable
from types import FrameType

from .conn import ConnectionRecord
from .loop import STAT_FIELDS, Listening, Loop

LOG = logging.getLogger("hvsock.relay")

#: Record lines longer than this are cut (a pipe write up to PIPE_BUF is atomic,
#: so lines from several workers never interleave).
MAX_RECORD_LINE = 4000


class StatsTable:
    """One row of counters per worker, in memory shared across fork."""

    def __init__(self, rows: int) -> None:
        self._map = mmap.mmap(-1, max(1, rows * STAT_FIELDS * 8))
        self._view = memoryview(self._map).cast("q")
        self.rows = rows

    def row(self, index: int) -> memoryview:
        return self._view[index * STAT_FIELDS:(index + 1) * STAT_FIELDS]

    def total(self) -> list[int]:
        sums = [0] * STAT_FIELDS
        view = self._view
        for r in range(self.rows):
            base = r * STAT_FIELDS
            for f in range(STAT_FIELDS):
                sums[f] += view[base + f]
        return sums


class SharedSlots:
    """The connection limit for every worker: a process-shared semaphore."""

    shared = True

    def __init__(self, limit: int) -> None:
        import multiprocessing

        # The fork context's semaphore is unnamed (unlinked at once): nothing to clean up.
        self._sem = multiprocessing.get_context("fork").Semaphore(limit)

    def take(self) -> bool:
        return bool(self._sem.acquire(False))

    def give(self) -> None:
        self._sem.release()


def encode_record(record: ConnectionRecord) -> bytes:
    line = json.dumps(record.as_dict()).encode() + b"\n"
    if len(line) > MAX_RECORD_LINE:
        fields = record.as_dict()
        fields["error"] = (fields["error"] or "")[:200]
        fields["peer"] = fields["peer"][:200]
        line = json.dumps(fields).encode() + b"\n"
    return line


def decode_records(buffer: bytearray) -> list[ConnectionRecord]:
    """Whole lines taken from *buffer* (a partial last line stays in it)."""
    end = buffer.rfind(b"\n")
    if end < 0:
        return []
    lines = bytes(buffer[:end]).split(b"\n")
    del buffer[:end + 1]
    return [ConnectionRecord(**json.loads(line)) for line in lines if line]


def _close_other_sockets(keep: set[int]) -> None:
    """Close inherited sockets this worker has no use for (its parent's clients,
    listeners of other servers): a worker holding a copy would keep them open."""
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd in keep or fd <= 2:
                continue
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    os.close(fd)


def fork_worker(index: int, make_loop: Callable[[], Loop], *, keep: set[int],
                close: list[int], ready_w: int) -> int:
    """Fork worker *index*; returns its pid in the parent. The child runs
    ``make_loop().run()`` and exits."""
    with warnings.catch_warnings():
        # Python 3.12 warns about fork in a threaded process; the child runs only
        # this loop (no lock of another thread is taken) and leaves with _exit.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        # Cyclic GC would finalize the parent's objects whose descriptors were
        # closed (or reused) here: keep them all alive and uncollected.
        gc.freeze()
        for fd in close:
            with contextlib.suppress(OSError):
                os.close(fd)
        _close_other_sockets(keep)
        loop = make_loop()
        # Ctrl-C reaches the whole process group: the relay process handles it
        # and tells the workers. A SIGTERM sent to a worker alone stops it too.
        signal.signal(signal.SIGINT, signal.SIG_IGN)

        def on_term(signum: int, frame: FrameType | None) -> None:
            loop.request_stop(0 if loop.stop_requested else None)

        signal.signal(signal.SIGTERM, on_term)
        os.write(ready_w, b"R")
        loop.run()
        code = 0
    except BaseException:
        with contextlib.suppress(BaseException):
            LOG.exception("relay worker %d failed", index)
    finally:
        with contextlib.suppress(BaseException):
            for handler in logging.getLogger("hvsock.relay").handlers:
                handler.flush()
            sys.stderr.flush()
        os._exit(code)


def record_writer(fd: int) -> Callable[[ConnectionRecord], None]:
    """An on_close for a worker: each record as one line to the relay process."""
    def send(record: ConnectionRecord) -> None:
        line = encode_record(record)
        view = memoryview(line)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    return send


def send_stop(fd: int, grace: float) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, struct.pack("d", grace))


def listeners_keep(listenings: list[Listening]) -> set[int]:
    return {li.fd for li in listenings}
