"""Worker processes: N event loops forked after bind, accepting from the same listeners,
and :class:`Supervisor`, the relay process's side of them.

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
import errno
import gc
import json
import logging
import math
import mmap
import os
import signal
import stat
import struct
import sys
import time
import warnings
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from .._errors import HvsockError
from .._server.lifecycle import StopRequest, announce_stopping
from ._poll import IN, Poller, Waker
from .conn import ACTIVE, STAT_FIELDS, ConnectionRecord, hand_over
from .loop import Listening, Loop

if TYPE_CHECKING:
    from .config import RelayConfig

LOG = logging.getLogger("hvsock.relay")

#: Record lines longer than this are cut (a pipe write up to PIPE_BUF is atomic,
#: so lines from several workers never interleave).
MAX_RECORD_LINE = 4000
#: Seconds start() waits for every worker to report ready.
WORKER_READY_TIMEOUT = 30.0


class StatsTable:
    """One row of counters per worker, in memory shared across fork."""

    def __init__(self, rows: int) -> None:
        self._map = mmap.mmap(-1, max(1, rows * STAT_FIELDS * 8))
        self._view = memoryview(self._map).cast("q")
        self.rows = rows

    def row(self, index: int) -> memoryview:
        return self._view[index * STAT_FIELDS : (index + 1) * STAT_FIELDS]

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
    del buffer[: end + 1]
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


def fork_worker(
    index: int, make_loop: Callable[[], Loop], *, keep: set[int], close: list[int], ready_w: int
) -> int:
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
            loop.stop.signal()

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


class Supervisor:
    """The relay's worker processes, from the relay's process: forks them after bind,
    waits until each is ready, passes the relay's stop requests on (a shorter one
    too), sums their counters and hands their connection records to *on_close*.

    *close_listeners* closes the relay's listeners (and removes their socket files)
    as the stop begins.
    """

    def __init__(
        self,
        config: RelayConfig,
        listenings: list[Listening],
        *,
        on_close: Callable[[ConnectionRecord], None] | None,
        stop: StopRequest,
        close_listeners: Callable[[], None],
    ) -> None:
        self.config = config
        self.on_close = on_close
        self.stop = stop
        self.pids: list[int] = []
        self._listenings = listenings
        self._close_listeners = close_listeners
        self._table = StatsTable(config.workers)
        self._controls: list[int] = []
        self._ready_r = -1
        self._records_r = -1

    def totals(self) -> list[int]:
        """The counters, summed over the workers (indexed as :class:`StatsTable` rows)."""
        return self._table.total()

    # -- starting ------------------------------------------------------------------------
    def start(self) -> None:
        """Fork the workers and wait until each is ready. Raises :class:`HvsockError`
        when one did not start (the caller then calls :meth:`abandon`)."""
        config, listenings = self.config, self._listenings
        n = config.workers
        slots = SharedSlots(config.max_connections)
        ready_r, ready_w = os.pipe()
        self._ready_r = ready_r
        records_w = -1
        if self.on_close is not None:
            self._records_r, records_w = os.pipe()
        controls = [os.pipe() for _ in range(n)]
        self._controls = [w for _r, w in controls]
        budget = max(config.max_buffer_memory // n, 64 << 10)
        try:
            for i in range(n):
                control_r = controls[i][0]
                keep = {li.fd for li in listenings} | {ready_w, control_r}
                if records_w >= 0:
                    keep.add(records_w)
                others = [fd for r, w in controls for fd in (r, w) if fd != control_r]
                close = [*others, ready_r] + ([self._records_r] if records_w >= 0 else [])

                def make_loop(i: int = i, control_r: int = control_r) -> Loop:
                    loop = Loop(
                        config,
                        listenings,
                        slots=slots,
                        stats=self._table.row(i),
                        on_close=record_writer(records_w) if records_w >= 0 else None,
                        control=control_r,
                        announce=False,
                        exclusive=True,
                        budget=budget,
                        on_stop=lambda: _close_all(listenings),
                    )
                    loop.set_ids(i + 1, n)
                    return loop

                self.pids.append(fork_worker(i, make_loop, keep=keep, close=close, ready_w=ready_w))
        finally:
            os.close(ready_w)
            if records_w >= 0:
                os.close(records_w)
            for r, _w in controls:
                os.close(r)
        self._wait_ready(n)

    def _wait_ready(self, n: int) -> None:
        deadline = time.monotonic() + WORKER_READY_TIMEOUT
        seen = 0
        poller = Poller()
        try:
            poller.add(self._ready_r, IN)
            while seen < n:
                left = deadline - time.monotonic()
                if left <= 0 or not poller.poll(min(left, 0.2)):
                    if left <= 0 or any(_exited(pid) for pid in self.pids):
                        raise HvsockError(
                            f"{n - seen} of {n} relay workers did not start (see the log above)",
                            errno=errno.ECHILD,
                        )
                    continue
                data = os.read(self._ready_r, 4096)
                if not data:
                    raise HvsockError(
                        "the relay's workers exited while starting (see the log above)",
                        errno=errno.ECHILD,
                    )
                seen += len(data)
        finally:
            poller.close()

    def abandon(self) -> None:
        """Undo a start that failed part way: stop and reap the workers, close the pipes."""
        for fd in self._controls:
            send_stop(fd, 0.0)
        for pid in self.pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
        self.pids = []
        self._close_pipes()

    # -- serving and stopping ----------------------------------------------------------------
    def run(self) -> None:
        """Supervise until every worker has exited (after a stop, or on its own)."""
        waker = Waker()
        self.stop.wake = waker.wake
        poller = Poller()
        records = bytearray()
        #: The deadline the workers were last told (inf: no stop sent yet).
        sent = math.inf
        try:
            poller.add(waker.fileno(), IN)
            poller.add(self._ready_r, IN)  # EOF once every worker has exited
            if self._records_r >= 0:
                poller.add(self._records_r, IN)
            if self.stop.requested:
                waker.wake()
            alive = True
            while alive:
                for fd, _ev in poller.poll(1.0):
                    if fd == waker.fileno():
                        waker.drain()
                    elif fd == self._records_r:
                        data = os.read(fd, 65536)
                        if not data:
                            poller.remove(fd)
                        records += data
                        for record in decode_records(records):
                            hand_over(self.on_close, record)
                    elif fd == self._ready_r and not os.read(fd, 4096):
                        alive = False
                if self.stop.requested and self.stop.deadline < sent:
                    if sent == math.inf:
                        self._begin_stop()
                    sent = self.stop.deadline
                    grace = self.stop.left()
                    for control in self._controls:
                        send_stop(control, grace)
                if alive and sent == math.inf and all(_exited(pid) for pid in self.pids):
                    LOG.error("every relay worker has exited; stopping")
                    alive = False
            if self._records_r >= 0:
                while data := _read_some(self._records_r):
                    records += data
                for record in decode_records(records):
                    hand_over(self.on_close, record)
        finally:
            self.stop.wake = None
            for pid in self.pids:
                with contextlib.suppress(OSError):
                    os.waitpid(pid, 0)
            poller.close()
            waker.close()
            self._close_listeners()
            self._close_pipes()
            LOG.info("stopped")

    def _begin_stop(self) -> None:
        announce_stopping()
        self._close_listeners()
        active = self.totals()[ACTIVE]
        if active:
            LOG.info(
                "stopping: waiting up to %g s for %d connection(s)",
                round(self.stop.left(), 1),
                active,
            )

    def _close_pipes(self) -> None:
        for fd in (*self._controls, self._ready_r, self._records_r):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._controls = []
        self._ready_r = self._records_r = -1


def _close_all(listenings: list[Listening]) -> None:
    """A worker's stop: its copies of the listeners close (the relay removes socket files)."""
    for li in listenings:
        li.sock.close()


def _exited(pid: int) -> bool:
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done != 0


def _read_some(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""
