"""``hvsock.forwarding.Relay``: the public face of the relay (binding, readiness, stopping).

The settings are checked in :mod:`.config`; each worker's event loop is
:mod:`.loop`; with ``workers > 1`` the loops run in processes forked after bind,
supervised by :class:`.workers.Supervisor`. The lifecycle (ready file, systemd,
the grace a second signal cuts short) is :mod:`hvsock._server.lifecycle`'s, as for
``ServiceHost`` and the bench server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from .. import _endpoints
from .._core.addresses import Address
from .._errors import ArgumentError
from .._server.lifecycle import DEFAULT_GRACE, StopRequest, announce_ready, stop_signals
from .._server.peers import AllowRule
from .._transports._common import DEFAULT_CONNECT_TIMEOUT
from .._transports.stream import DEFAULT_UNIX_MODE
from .config import (
    DEFAULT_BUFFER_MEMORY,
    DEFAULT_BUSY_POLL,
    SETTING_DEFAULTS,
    Forward,
    RelayConfig,
)
from .conn import ACTIVE, BUFFERED, PEAK, STAT_FIELDS, ConnectionRecord, RelayStats
from .datapath import DEFAULT_CHUNK
from .loop import Listening, LocalSlots, Loop
from .workers import Supervisor

LOG = logging.getLogger("hvsock.relay")


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

    def __init__(
        self,
        listen: Address | str | None = None,
        target: Address | str | None = None,
        *,
        config: RelayConfig | None = None,
        allow: Iterable[AllowRule] | None = None,
        allow_targets: Iterable[str] | None = None,
        max_connections: int = 1024,
        idle_timeout: float | None = 3600.0,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        retries: int = 0,
        mode: int | None = DEFAULT_UNIX_MODE,
        backlog: int = 1024,
        buffer_size: int | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        data_path: str = "auto",
        busy_poll: float = DEFAULT_BUSY_POLL,
        grace: float = DEFAULT_GRACE,
        workers: int | None = 1,
        max_buffer_memory: int = DEFAULT_BUFFER_MEMORY,
        ready_file: str | None = None,
        on_ready: Callable[[Address], None] | None = None,
        on_close: Callable[[ConnectionRecord], None] | None = None,
        listener: socket.socket | None = None,
    ) -> None:
        settings: dict[str, object] = {
            "max_connections": max_connections,
            "idle_timeout": idle_timeout,
            "connect_timeout": connect_timeout,
            "retries": retries,
            "mode": mode,
            "backlog": backlog,
            "buffer_size": buffer_size,
            "chunk_size": chunk_size,
            "data_path": data_path,
            "busy_poll": busy_poll,
            "grace": grace,
            "workers": workers,
            "max_buffer_memory": max_buffer_memory,
            "ready_file": ready_file,
        }
        if config is None:
            if listen is None or target is None:
                raise ArgumentError("Relay needs listen and target addresses, or config=")
            config = RelayConfig.build(
                [Forward.build(listen, target, allow)], allow_targets=allow_targets, **settings
            )
        elif (
            listen is not None
            or target is not None
            or allow is not None
            or any(value != SETTING_DEFAULTS[name] for name, value in settings.items())
        ):
            raise ArgumentError("give either config= or listen, target and settings, not both")
        if listener is not None and len(config.forwards) != 1:
            raise ArgumentError(
                f"listener= serves one forward; this config has {len(config.forwards)}"
            )
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
        self._stop_request = StopRequest(config.grace)
        #: The one loop (workers == 1), on the serving thread.
        self._loop: Loop | None = None
        self._row: list[int] = [0] * STAT_FIELDS
        #: The worker processes (workers > 1).
        self._workers: Supervisor | None = None

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
        totals = self._workers.totals() if self._workers is not None else list(self._row)
        if self._loop is not None:
            loop = self._loop
            totals[ACTIVE], totals[BUFFERED], totals[PEAK] = loop.active, loop.held, loop.peak
        return RelayStats.of(totals)

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
            listenings = [
                Listening(sock, forward, address)
                for sock, forward, address, _owned in self._listeners
            ]
            if config.workers == 1:
                self._loop = Loop(
                    config,
                    listenings,
                    slots=LocalSlots(config.max_connections),
                    stats=self._row,
                    on_close=self.on_close,
                    on_stop=self._close_listeners,
                    stop=self._stop_request,
                )
            else:
                self._workers = Supervisor(
                    config,
                    listenings,
                    on_close=self.on_close,
                    stop=self._stop_request,
                    close_listeners=self._close_listeners,
                )
                self._workers.start()
        except BaseException:
            self._abandon()
            raise
        self._announce_ready()

    def _bind(self) -> None:
        config = self.config
        for forward in config.forwards:
            given = self._given_listener
            sock = (
                given
                if given is not None
                else _endpoints.listen(
                    forward.listen,
                    backlog=config.backlog,
                    buffer_size=config.buffer_size,
                    mode=config.mode,
                )
            )
            owned = given is None
            try:
                address = _endpoints.listener_address(sock, forward.listen)
                sock.setblocking(False)
            except BaseException:
                if owned:
                    sock.close()
                raise
            self._listeners.append((sock, forward, address, owned))
        self._addresses = [address for _s, _f, address, _o in self._listeners]

    def _announce_ready(self) -> None:
        config = self.config
        listen = ", ".join(str(a) for a in self._addresses)
        targets = ", ".join(str(f.target) for f in config.forwards)
        info: dict[str, Any] = {
            "pid": os.getpid(),
            "listen": str(self._addresses[0]),
            "target": str(config.forwards[0].target),
            "workers": config.workers,
        }
        if self._workers is not None:
            info["worker_pids"] = list(self._workers.pids)
        if len(config.forwards) > 1:
            info["forwards"] = [
                {"listen": str(a), "target": str(f.target)}
                for a, f in zip(self._addresses, config.forwards, strict=True)
            ]
        try:
            announce_ready(config.ready_file, info, f"relaying {listen} to {targets}", LOG)
        except BaseException:
            self._abandon()
            raise
        for address, forward in zip(self._addresses, config.forwards, strict=True):
            LOG.info(
                "listening on %s, relaying to %s%s",
                address,
                forward.target,
                f" ({config.workers} workers)" if config.workers > 1 else "",
                extra={
                    "relay_event": {
                        "event": "listening",
                        "listen": str(address),
                        "target": str(forward.target),
                        "workers": config.workers,
                    }
                },
            )
        if self.on_ready is not None:
            self.on_ready(self._addresses[0])

    def _abandon(self) -> None:
        """Undo a start that failed part way: workers, listeners, pipes."""
        if self._workers is not None:
            self._workers.abandon()
        if self._loop is not None:
            self._loop.request_stop(0)
            self._loop.run()  # nothing to serve: closes its poller and the listeners
            self._loop = None
        self._close_listeners()
        self._finished = True

    # -- serving and stopping -------------------------------------------------------------------
    def serve(self, *, handle_signals: bool = True) -> None:
        """Start (if not yet) and relay until :meth:`request_stop`; then stop gracefully.

        With *handle_signals* (in the main thread; elsewhere none are installed),
        SIGTERM and SIGINT ask for a graceful stop; a second one cuts the remaining
        connections at once. The handlers go in before the listener is bound.
        """
        signals = (
            stop_signals(self._stop_request.signal) if handle_signals else contextlib.nullcontext()
        )
        try:
            with signals:
                if not self._started:
                    self.start()
                self._serving = True
                self._run_to_end()
        finally:
            self._served.set()

    def _run_to_end(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
        if self._loop is not None:
            self._loop.run()
        elif self._workers is not None:
            self._workers.run()

    def run(self) -> None:
        """Blocking :meth:`serve` that stops on SIGTERM / SIGINT (call from the main thread)."""
        self.serve(handle_signals=True)

    def request_stop(self, grace: float | None = None) -> None:
        """Ask the relay to stop: no new connections; in-flight ones get *grace* seconds
        (default: the relay's) before they are cut; a shorter grace than one asked
        before brings the cut forward. Safe from any thread and from signal handlers;
        returns at once."""
        self._stop_request.request(grace)

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

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(grace=0 if exc is not None else None)

    def _close_listeners(self) -> None:
        listeners, self._listeners = self._listeners, []
        for sock, _forward, address, owned in listeners:
            if owned:
                sock.close()
                _endpoints.remove_socket_file(address)


def relay(listen: Address | str, target: Address | str, **options: Any) -> None:
    """Relay *listen* to *target* until SIGTERM / SIGINT (blocking; main thread).

    *options* are :class:`Relay`'s. Raises :class:`HvsockError` if the listener
    cannot be bound.
    """
    Relay(listen, target, **options).run()


__all__ = ["DEFAULT_BUFFER_MEMORY", "Relay", "relay"]
