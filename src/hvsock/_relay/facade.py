"""``hvsock.forwarding.Relay``: the public face of the relay (binding, workers, readiness,
stopping).

The settings are checked in :mod:`.config`; each worker's event loop is
:mod:`.loop`; with ``workers > 1`` the loops run in processes forked after bind
(:mod:`.workers`), and this object supervises them: it tells them to stop, sums
their counters, and hands their connection records to ``on_close``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType, TracebackType
from typing import Any

from .. import _endpoints as api
from .._core.addresses import Address
from .._errors import ArgumentError, HvsockError
from .._server.lifecycle import sd_notify, write_ready_file
from .._server.peers import AllowRule
from .._validate import non_negative_number
from ._poll import IN, Poller, Waker
from .config import DEFAULT_BUFFER_MEMORY, Forward, RelayConfig
from .conn import ConnectionRecord, RelayStats, hand_over
from .loop import ACTIVE, BUFFERED, PEAK, STAT_FIELDS, Listening, LocalSlots, Loop
from .workers import (
    SharedSlots,
    StatsTable,
    decode_records,
    fork_worker,
    record_writer,
    send_stop,
)

LOG = logging.getLogger("hvsock.relay")

_UNSET: Any = object()
#: Seconds start() waits for every worker to report ready.
WORKER_READY_TIMEOUT = 30.0


class Relay:
    """Forward every connection made to *listen* to a new connection to *target*.

    Both are addresses of any kind (``tcp://``, ``unix://``, ``vsock://``,
    ``hvsock://``, ``hybrid://``), as text or :class:`Address` objects. Or give
    *config* (a checked :class:`RelayConfig`, e.g. from a ``relay.toml``) to
    serve several listen -> target forwards at once.

    - *max_connections*: relayed at once, by the whole relay; at the limit it
      stops accepting and new clients wait in the listen *backlog*.
    - *idle_timeout*: seconds with no byte either way before a connection is
      closed (None: never). *connect_timeout*: for each target connect;
      *retries*: tries more for a target that is not up (yet).
    - *allow*: if given, the peers let in (CIDs, VM ids, TCP hosts, ``"uid:N"``,
      as for :class:`hvsock.Service`); others are closed and logged.
      *allow_targets*: address patterns the target must match (else
      :class:`ArgumentError`), e.g. ``["tcp://10.0.0.0/8:443", "vsock://3:*"]``.
    - *mode*: file mode of a Unix or hybrid listener (0o600 by default).
    - *buffer_size*: socket buffer sizes; *chunk_size*: bytes moved per call
      and the size of each pipe; *data_path*: "auto" (splice on Linux where it
      pays, else copy), "splice" or "copy".
    - *max_buffer_memory*: bytes the relay may hold in flight in its buffers
      and pipes (default 32 MiB); past it each direction moves small reads, so a
      client that stops reading costs little: its data waits in the kernel.
    - *workers*: event loops, each a process forked after bind (1: one loop on
      the serving thread, no fork; None: one per core). The limit, the
      statistics, ``on_close`` and the stop cover all of them.
    - *busy_poll*: seconds the loop keeps polling, without sleeping, after it
      handled something (0: never).
    - *grace*: seconds a stop lets connections finish before cutting them.
    - *on_close*: called with a :class:`ConnectionRecord` as each connection
      ends (on the relay's thread; keep it quick). Every record is also logged
      on the ``hvsock.relay`` logger (by the worker that served it), with the
      record's fields in ``record.relay``.
    - *ready_file*, *on_ready*: told once every worker is ready, as for
      :class:`hvsock.ServiceHost` (systemd's ``NOTIFY_SOCKET`` gets READY=1 too).
    - *listener*: an already listening socket to use instead of binding *listen*.

    Run it with :meth:`run` (blocking, stops on SIGTERM / SIGINT), :meth:`serve`
    in a thread of your own, or as a context manager that serves in a
    background thread. Raises :class:`ArgumentError` for bad settings and
    :class:`HvsockError` (bind failures) from :meth:`start`.
    """

    def __init__(self, listen: Address | str | None = None,
                 target: Address | str | None = None, *,
                 config: RelayConfig | None = None,
                 allow: Iterable[AllowRule] | None = None,
                 allow_targets: Iterable[str] | None = None,
                 on_ready: Callable[[Address], None] | None = None,
                 on_close: Callable[[ConnectionRecord], None] | None = None,
                 listener: socket.socket | None = None,
                 workers: int | None = 1,
                 **settings: Any) -> None:
        if config is None:
            if listen is None or target is None:
                raise ArgumentError("Relay needs listen and target addresses, or config=")
            config = RelayConfig.build([Forward.build(listen, target, allow)],
                                       allow_targets=allow_targets, workers=workers,
                                       **settings)
        elif listen is not None or target is not None or settings or allow is not None:
            raise ArgumentError("give either config= or listen, target and settings, not both")
        if listener is not None and len(config.forwards) != 1:
            raise ArgumentError("listener= serves one forward; this config has "
                                f"{len(config.forwards)}")
        self.config = config
        self.on_ready = on_ready
        self.on_close = on_close
        self._given_listener = listener
        self._listeners: list[tuple[socket.socket, Forward, Address, bool]] = []
        self._addresses = [f.listen for f in config.forwards]

        self._lock = threading.Lock()
        self._started = False
        self._finished = False
        self._served = threading.Event()
        self._serving = False
        self._thread: threading.Thread | None = None
        self._stop_requested = False
        self._stop_grace: float | None = None
        self._loop: Loop | None = None
        self._row: list[int] = [0] * STAT_FIELDS
        # Worker processes (workers > 1).
        self._table: StatsTable | None = None
        self._pids: list[int] = []
        self._controls: list[int] = []
        self._ready_r = -1
        self._records_r = -1
        self._waker: Waker | None = None

    # -- what users read ----------------------------------------------------------------------
    @property
    def listen_address(self) -> Address:
        return self.config.forwards[0].listen

    @property
    def target(self) -> Address:
        return self.config.forwards[0].target

    @property
    def allow(self) -> frozenset[AllowRule] | None:
        return self.config.forwards[0].allow

    @property
    def workers(self) -> int:
        return self.config.workers

    @property
    def address(self) -> Address:
        """The address really listened on (the chosen port when 0 / any was asked)."""
        return self._addresses[0]

    @property
    def addresses(self) -> list[Address]:
        """Every forward's listening address, in the configuration's order."""
        return list(self._addresses)

    @property
    def active_connections(self) -> int:
        return self.stats().active

    def stats(self) -> RelayStats:
        """The counters, summed over the workers."""
        totals = self._table.total() if self._table is not None else list(self._row)
        if self._loop is not None:
            loop = self._loop
            totals[ACTIVE], totals[BUFFERED], totals[PEAK] = loop.active, loop.held, loop.peak
        return RelayStats(*totals[:PEAK + 1])

    # -- starting ----------------------------------------------------------------------------
    def start(self) -> None:
        """Bind the listeners, start the workers, and report ready once all are.

        Raises :class:`HvsockError` (bind failures, a worker that did not start).
        """
        if self._started:
            raise RuntimeError("this relay was already started")
        self._started = True
        config = self.config
        try:
            self._bind()
            listenings = [Listening(sock, forward, address)
                          for sock, forward, address, _owned in self._listeners]
            if config.workers == 1:
                self._loop = Loop(config, listenings, slots=LocalSlots(config.max_connections),
                                  stats=self._row, on_close=self.on_close,
                                  on_stop=self._close_listeners)
            else:
                self._start_workers(listenings)
        except BaseException:
            self._abandon()
            raise
        self._announce_ready()

    def _bind(self) -> None:
        config = self.config
        for forward in config.forwards:
            given = self._given_listener
            sock = given if given is not None else api.listen(
                forward.listen, backlog=config.backlog, buffer_size=config.buffer_size,
                mode=config.mode)
            owned = given is None
            try:
                address = api.listener_address(sock, forward.listen)
                sock.setblocking(False)
            except BaseException:
                if owned:
                    sock.close()
                raise
            self._listeners.append((sock, forward, address, owned))
        self._addresses = [address for _s, _f, address, _o in self._listeners]

    def _start_workers(self, listenings: list[Listening]) -> None:
        config = self.config
        n = config.workers
        self._table = StatsTable(n)
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
                    loop = Loop(config, listenings, slots=slots, stats=self._row_of(i),
                                on_close=record_writer(records_w) if records_w >= 0 else None,
                                control=control_r, announce=False, exclusive=True,
                                budget=budget, on_stop=lambda: _close_all(listenings))
                    loop.set_ids(i + 1, n)
                    return loop

                self._pids.append(fork_worker(i, make_loop, keep=keep, close=close,
                                              ready_w=ready_w))
        finally:
            os.close(ready_w)
            if records_w >= 0:
                os.close(records_w)
            for r, _w in controls:
                os.close(r)
        self._wait_ready(n)

    def _row_of(self, index: int) -> memoryview:
        assert self._table is not None
        return self._table.row(index)

    def _wait_ready(self, n: int) -> None:
        deadline = time.monotonic() + WORKER_READY_TIMEOUT
        seen = 0
        poller = Poller()
        try:
            poller.add(self._ready_r, IN)
            while seen < n:
                left = deadline - time.monotonic()
                if left <= 0 or not poller.poll(min(left, 0.2)):
                    if left <= 0 or any(_exited(pid) for pid in self._pids):
                        raise HvsockError(f"{n - seen} of {n} relay workers did not start "
                                          "(see the log above)", errno=errno.ECHILD)
                    continue
                data = os.read(self._ready_r, 4096)
                if not data:
                    raise HvsockError("the relay's workers exited while starting "
                                      "(see the log above)", errno=errno.ECHILD)
                seen += len(data)
        finally:
            poller.close()

    def _announce_ready(self) -> None:
        config = self.config
        listen = ", ".join(str(a) for a in self._addresses)
        targets = ", ".join(str(f.target) for f in config.forwards)
        if config.ready_file:
            info: dict[str, Any] = {"pid": os.getpid(), "listen": str(self._addresses[0]),
                                    "target": str(config.forwards[0].target),
                                    "workers": config.workers}
            if self._pids:
                info["worker_pids"] = list(self._pids)
            if len(config.forwards) > 1:
                info["forwards"] = [{"listen": str(a), "target": str(f.target)}
                                    for a, f in zip(self._addresses, config.forwards, strict=True)]
            try:
                write_ready_file(config.ready_file, info)
            except BaseException:
                self._abandon()
                raise
        try:
            sd_notify(f"READY=1\nSTATUS=relaying {listen} to {targets}")
        except OSError as exc:
            LOG.warning("could not notify systemd: %s", exc)
        for address, forward in zip(self._addresses, config.forwards, strict=True):
            LOG.info("listening on %s, relaying to %s%s", address, forward.target,
                     f" ({config.workers} workers)" if config.workers > 1 else "",
                     extra={"relay_event": {"event": "listening", "listen": str(address),
                                            "target": str(forward.target),
                                            "workers": config.workers}})
        if self.on_ready is not None:
            self.on_ready(self._addresses[0])

    def _abandon(self) -> None:
        """Undo a start that failed part way: workers, listeners, pipes."""
        for fd in self._controls:
            send_stop(fd, 0.0)
        for pid in self._pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
        self._pids = []
        if self._loop is not None:
            self._loop.request_stop(0)
            self._loop.run()  # nothing to serve: closes its poller and the listeners
            self._loop = None
        self._close_listeners()
        self._close_pipes()
        self._finished = True

    # -- serving and stopping -------------------------------------------------------------------
    def serve(self, *, handle_signals: bool = False) -> None:
        """Start (if not yet) and relay until :meth:`request_stop`; then stop gracefully.

        With *handle_signals* (main thread only), SIGTERM and SIGINT ask for a
        graceful stop; a second one cuts the remaining connections at once.
        The handlers go in before the listener is bound.
        """
        previous: dict[signal.Signals, Any] = {}
        if handle_signals:
            def on_signal(signum: int, frame: FrameType | None) -> None:
                self.request_stop(0 if self._stop_requested else None)

            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            if not self._started:
                self.start()
            self._serving = True
            self._run_to_end()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._served.set()

    def _run_to_end(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
        if self._loop is not None:
            self._loop.run()
        else:
            self._supervise()

    def run(self) -> None:
        """Blocking :meth:`serve` that stops on SIGTERM / SIGINT (call from the main thread)."""
        self.serve(handle_signals=True)

    def request_stop(self, grace: float | None = None) -> None:
        """Ask the relay to stop: no new connections; in-flight ones get *grace* seconds
        (default: the relay's) before they are cut. Safe from any thread and from
        signal handlers; returns at once."""
        grace = self.config.grace if grace is None else grace
        non_negative_number(grace, "grace")
        if self._stop_grace is None or grace < self._stop_grace:
            self._stop_grace = grace
        self._stop_requested = True
        if self._loop is not None:
            self._loop.request_stop(grace)
        if self._waker is not None:
            self._waker.wake()

    def stop(self, grace: float | None = None, timeout: float | None = None) -> None:
        """:meth:`request_stop`, then wait (up to *timeout* s) until the relay has stopped.

        A relay that was started but never served stops here.
        """
        self.request_stop(grace)
        if self._serving:
            self._served.wait(timeout)
        elif self._started:
            self._run_to_end()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> Relay:
        self.start()
        # Marked serving before the thread runs: a stop() right after __enter__
        # must wait for that thread, never run the loop beside it.
        self._serving = True
        self._thread = threading.Thread(target=self.serve, name="hvsock-relay", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop(grace=0 if exc is not None else None)

    # -- the supervisor (workers > 1) ---------------------------------------------------------
    def _supervise(self) -> None:
        self._waker = Waker()
        poller = Poller()
        records = bytearray()
        sent: float | None = None
        try:
            poller.add(self._waker.fileno(), IN)
            poller.add(self._ready_r, IN)  # EOF once every worker has exited
            if self._records_r >= 0:
                poller.add(self._records_r, IN)
            if self._stop_requested:
                self._waker.wake()
            alive = True
            while alive:
                for fd, _ev in poller.poll(1.0):
                    if fd == self._waker.fileno():
                        self._waker.drain()
                    elif fd == self._records_r:
                        data = os.read(fd, 65536)
                        if not data:
                            poller.remove(fd)
                        records += data
                        for record in decode_records(records):
                            hand_over(self.on_close, record)
                    elif fd == self._ready_r and not os.read(fd, 4096):
                        alive = False
                grace = self._stop_grace
                if self._stop_requested and grace is not None and (sent is None or grace < sent):
                    if sent is None:
                        self._begin_stop(grace)
                    sent = grace
                    for control in self._controls:
                        send_stop(control, grace)
                if alive and sent is None and all(_exited(pid) for pid in self._pids):
                    LOG.error("every relay worker has exited; stopping")
                    alive = False
            if self._records_r >= 0:
                while data := _read_some(self._records_r):
                    records += data
                for record in decode_records(records):
                    hand_over(self.on_close, record)
        finally:
            for pid in self._pids:
                with contextlib.suppress(OSError):
                    os.waitpid(pid, 0)
            poller.close()
            self._waker.close()
            self._close_listeners()
            self._close_pipes()
            LOG.info("stopped")

    def _begin_stop(self, grace: float) -> None:
        with contextlib.suppress(OSError):
            sd_notify("STOPPING=1")
        self._close_listeners()
        active = self.stats().active
        if active:
            LOG.info("stopping: waiting up to %g s for %d connection(s)", grace, active)

    def _close_listeners(self) -> None:
        listeners, self._listeners = self._listeners, []
        for sock, _forward, address, owned in listeners:
            if owned:
                sock.close()
                api.remove_socket_file(address)

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


def relay(listen: Address | str, target: Address | str, **options: Any) -> None:
    """Relay *listen* to *target* until SIGTERM / SIGINT (blocking; main thread).

    *options* are :class:`Relay`'s. Raises :class:`HvsockError` if the listener
    cannot be bound.
    """
    Relay(listen, target, **options).run()


__all__ = ["DEFAULT_BUFFER_MEMORY", "Relay", "relay"]
