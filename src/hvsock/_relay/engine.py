"""The relay: accept on one address, connect each client to a target, move bytes both ways.

One thread runs one level-triggered poll loop (see :mod:`._poll`) over every
socket; the bytes move in :mod:`.datapath` (splice on Linux, a copy loop
elsewhere). The rest follows :class:`hvsock.ServiceHost`: at the connection
limit the listener is left unwatched so new clients wait in the kernel's backlog
(back-pressure, nobody dropped); an allowlist checks each peer before anything is
dialled; a stop closes the listener, lets connections finish for a grace period,
then cuts them.

Half-close: EOF from one side, once everything before it is delivered, becomes
``shutdown(SHUT_WR)`` on the other; a connection ends when both directions have.
An error on either socket (a reset) ends the connection at once and resets the
other side too where it is TCP, so its peer does not mistake the cut for a
complete stream.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import signal
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

from .. import _endpoints as api
from .._core.addresses import Address, parse_address
from .._errors import HvsockError
from .._server.lifecycle import check_ready_file, sd_notify, write_ready_file
from .._server.peers import AllowRule, Peer, allow_rules, peer_of
from .._transports._common import DEFAULT_CONNECT_TIMEOUT, check_buffer_size
from .._transports.stream import DEFAULT_UNIX_MODE
from . import datapath
from ._poll import ERR, HUP, IN, OUT, Poller, Waker
from .datapath import Broken, Buffers, Flow, Pipes
from .dial import Dial, UseThread, dial, timed_out

LOG = logging.getLogger("hvsock.relay")

# How a connection ended (ConnectionRecord.end).
END_CLOSED = "closed"  # both directions reached EOF and were passed on
END_CLIENT_RESET = "client reset"
END_TARGET_RESET = "target reset"
END_IDLE = "idle timeout"
END_TARGET_DOWN = "target down"
END_DENIED = "denied"
END_STOPPED = "stopped"

DATA_PATHS = ("auto", "splice", "copy")
#: Seconds the loop keeps polling without sleeping after it handled events.
DEFAULT_BUSY_POLL = 200e-6
#: Worker threads for targets that cannot be dialled on the loop (names, AF_HYPERV).
DIAL_THREADS = 8
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_LINGER_RESET = struct.pack("ii", 1, 0)
_IP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


@dataclass(frozen=True)
class ConnectionRecord:
    """What the relay logs when a connection ends.

    *bytes_up* went from the client to the target, *bytes_down* back; *end* is
    one of "closed", "client reset", "target reset", "idle timeout",
    "target down", "denied", "stopped"; *error* says more where there is more.
    """

    id: int
    peer: str
    target: str
    bytes_up: int
    bytes_down: int
    duration: float
    end: str
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies, a cost paid per connection.
        return {"id": self.id, "peer": self.peer, "target": self.target,
                "bytes_up": self.bytes_up, "bytes_down": self.bytes_down,
                "duration": self.duration, "end": self.end, "error": self.error}

    def __str__(self) -> str:
        text = (f"#{self.id} {self.peer} -> {self.target}: {self.end}, up {self.bytes_up} B, "
                f"down {self.bytes_down} B, {self.duration:.3f} s")
        return f"{text} ({self.error})" if self.error else text


@dataclass(frozen=True)
class RelayStats:
    """Counters since the relay started (a snapshot)."""

    accepted: int
    active: int
    denied: int
    target_down: int
    ended: int
    bytes_up: int
    bytes_down: int


class _Conn:
    __slots__ = ("cfd", "client", "cmask", "deadline", "dial", "down", "ended", "id", "last",
                 "peer", "started", "target", "tfd", "tmask", "up")

    def __init__(self, cid: int, client: socket.socket, peer: Peer, now: float) -> None:
        self.id = cid
        self.client = client
        self.cfd = client.fileno()
        self.peer = peer
        self.started = now
        self.last = now
        self.target: socket.socket | None = None
        self.tfd = -1
        #: Poll masks; None while the socket is not in the poller.
        self.cmask: int | None = None
        self.tmask: int | None = None
        self.dial: Dial | None = None
        self.deadline: float | None = None
        self.up: Flow | None = None
        self.down: Flow | None = None
        self.ended = False


def _number(value: object, what: str, *, optional: bool, zero_ok: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and (value >= 0 if zero_ok else value > 0)
    ):
        raise ValueError(f"{what} must be a {'' if zero_ok else 'positive '}number of seconds"
                         f"{' or None' if optional else ''}, not {value!r}")


def _abort(sock: socket.socket) -> None:
    """Make the coming close() a reset where the transport has one (TCP)."""
    if sock.family in _IP_FAMILIES:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


class Relay:
    """Forward every connection made to *listen* to a new connection to *target*.

    Both are addresses of any kind (``tcp://``, ``unix://``, ``vsock://``,
    ``hvsock://``, ``hybrid://``), as text or :class:`Address` objects.

    - *max_connections*: relayed at once; at the limit the relay stops
      accepting and new clients wait in the listen *backlog*.
    - *idle_timeout*: seconds with no byte either way before a connection is
      closed (None: never). *connect_timeout*: for each target connect.
    - *allow*: if given, the peers let in (CIDs, VM ids, TCP hosts, ``"uid:N"``,
      as for :class:`hvsock.Service`); others are closed and logged.
    - *mode*: file mode of a Unix or hybrid listener (0o600 by default).
    - *buffer_size*: socket buffer sizes; *chunk_size*: bytes moved per call
      and the size of each pipe; *data_path*: "auto" (splice on Linux, else
      copy), "splice" or "copy".
    - *busy_poll*: seconds the loop keeps polling, without sleeping, after it
      handled something (0: never). Cuts round trips and connection set-up by
      sparing thread wake-ups; costs up to that much CPU per burst of activity.
    - *grace*: seconds a stop lets connections finish before cutting them.
    - *on_close*: called with a :class:`ConnectionRecord` as each connection
      ends (on the relay's thread; keep it quick). Every record is also logged
      on the ``hvsock.relay`` logger, with the record's fields in ``record.relay``.
    - *ready_file*, *on_ready*: told once the listener is bound, as for
      :class:`hvsock.ServiceHost` (systemd's ``NOTIFY_SOCKET`` gets READY=1 too).
    - *listener*: an already listening socket to use instead of binding *listen*.

    Run it with :meth:`run` (blocking, stops on SIGTERM / SIGINT), :meth:`serve`
    in a thread of your own, or as a context manager that serves in a
    background thread. Raises :class:`HvsockError` (bind failures) from
    :meth:`start` and ``ValueError`` for bad settings.
    """

    def __init__(self, listen: Address | str, target: Address | str, *,
                 max_connections: int = 1024,
                 idle_timeout: float | None = 3600.0,
                 connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
                 allow: Iterable[AllowRule] | None = None,
                 mode: int | None = DEFAULT_UNIX_MODE,
                 backlog: int = 1024,
                 buffer_size: int | None = None,
                 chunk_size: int = datapath.DEFAULT_CHUNK,
                 data_path: str = "auto",
                 busy_poll: float = DEFAULT_BUSY_POLL,
                 grace: float = 10.0,
                 ready_file: str | None = None,
                 on_ready: Callable[[Address], None] | None = None,
                 on_close: Callable[[ConnectionRecord], None] | None = None,
                 listener: socket.socket | None = None) -> None:
        self.listen_address = parse_address(listen)
        self.target = parse_address(target)
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or not (
                1 <= max_connections <= 1_000_000):
            raise ValueError(f"max_connections must be a whole number in 1..1000000, "
                             f"not {max_connections!r}")
        _number(idle_timeout, "idle_timeout", optional=True)
        _number(connect_timeout, "connect_timeout", optional=True)
        _number(grace, "grace", optional=False, zero_ok=True)
        _number(busy_poll, "busy_poll", optional=False, zero_ok=True)
        if busy_poll > 0.01:
            raise ValueError(f"busy_poll is seconds of spinning after activity; {busy_poll!r} "
                             "is more than the 0.01 s that could ever pay")
        if buffer_size is not None:
            check_buffer_size(buffer_size)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not (
                4096 <= chunk_size <= 64 * 2**20):
            raise ValueError(f"chunk_size must be a whole number of bytes in 4096..64 MiB, "
                             f"not {chunk_size!r}")
        if data_path not in DATA_PATHS:
            raise ValueError(f"data_path must be one of {', '.join(DATA_PATHS)}, "
                             f"not {data_path!r}")
        if data_path == "splice" and not datapath.SPLICE_WORKS:
            raise ValueError("data_path 'splice' needs Linux (os.splice); use 'auto' or 'copy'")
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.allow: frozenset[AllowRule] | None = allow_rules(allow)
        self.mode = mode
        self.backlog = backlog
        self.buffer_size = buffer_size
        self.chunk_size = chunk_size
        self.data_path = data_path
        self.busy_poll = float(busy_poll)
        self.grace = float(grace)
        self.ready_file = check_ready_file(ready_file)
        self.on_ready = on_ready
        self.on_close = on_close
        self._listener = listener
        self._owns_listener = listener is None
        self._address: Address = self.listen_address
        self._client_tcp = False
        self._splice_choice: list[bool | None] = [None, None]
        self._target_text = str(self.target)

        self._lock = threading.Lock()
        self._posted: deque[Callable[[], None]] = deque()
        self._started = False
        self._loop_done = False
        self._served = threading.Event()
        self._serving = False
        self._thread: threading.Thread | None = None
        self._stop_requested = False
        self._stop_grace: float | None = None
        self._stopping = False
        self._stop_deadline = math.inf

        self._poller: Poller | None = None
        self._waker: Waker | None = None
        self._pipes = Pipes(chunk_size)
        self._bufs = Buffers(chunk_size)
        self._executor: ThreadPoolExecutor | None = None
        self._conns: dict[int, _Conn] = {}
        self._by_fd: dict[int, _Conn] = {}
        self._next_id = 1
        self._accepting = False
        self._accept_resume = math.inf
        self._now = time.monotonic()
        # Counters (RelayStats).
        self._accepted = self._denied = self._target_down = self._ended = 0
        self._bytes_up = self._bytes_down = 0

    # -- public surface ---------------------------------------------------------------
    @property
    def address(self) -> Address:
        """The address really listened on (the chosen port when 0 / any was asked)."""
        return self._address

    @property
    def active_connections(self) -> int:
        return len(self._conns)

    def stats(self) -> RelayStats:
        return RelayStats(self._accepted, len(self._conns), self._denied, self._target_down,
                          self._ended, self._bytes_up, self._bytes_down)

    def start(self) -> None:
        """Bind the listener and report ready. Raises :class:`HvsockError`."""
        if self._started:
            raise RuntimeError("this relay was already started")
        if self._listener is None:
            self._listener = api.listen(self.listen_address, backlog=self.backlog,
                                        buffer_size=self.buffer_size, mode=self.mode)
        try:
            self._address = api.listener_address(self._listener, self.listen_address)
            self._client_tcp = self._listener.family in _IP_FAMILIES
            self._listener.setblocking(False)
            self._poller = Poller()
            self._waker = Waker()
            self._poller.add(self._waker.fileno(), IN)
            self._poller.add(self._listener.fileno(), IN)
            self._accepting = True
        except BaseException:
            self._close_listener()
            if self._poller is not None:
                self._poller.close()
            if self._waker is not None:
                self._waker.close()
            raise
        self._started = True
        if self.ready_file:
            write_ready_file(self.ready_file, {"pid": os.getpid(), "listen": str(self._address),
                                               "target": self._target_text})
        try:
            sd_notify(f"READY=1\nSTATUS=relaying {self._address} to {self._target_text}")
        except OSError as exc:
            LOG.warning("could not notify systemd: %s", exc)
        LOG.info("listening on %s, relaying to %s", self._address, self._target_text,
                 extra={"relay_event": {"event": "listening", "listen": str(self._address),
                                        "target": self._target_text}})
        if self.on_ready is not None:
            self.on_ready(self._address)

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
            self._loop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._served.set()

    def run(self) -> None:
        """Blocking :meth:`serve` that stops on SIGTERM / SIGINT (call from the main thread)."""
        self.serve(handle_signals=True)

    def request_stop(self, grace: float | None = None) -> None:
        """Ask the relay to stop: no new connections; in-flight ones get *grace* seconds
        (default: the relay's) before they are cut. Safe from any thread and from
        signal handlers; returns at once."""
        grace = self.grace if grace is None else grace
        _number(grace, "grace", optional=False, zero_ok=True)
        if self._stop_grace is None or grace < self._stop_grace:
            self._stop_grace = grace
        self._stop_requested = True
        if self._waker is not None:
            self._waker.wake()

    def stop(self, grace: float | None = None, timeout: float | None = None) -> None:
        """:meth:`request_stop`, then wait (up to *timeout* s) until the relay has stopped.

        A relay that was started but never served just closes its listener.
        """
        self.request_stop(grace)
        if self._serving:
            self._served.wait(timeout)
        elif self._started and not self._loop_done:
            self._shutdown()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> Relay:
        self.start()
        # Marked serving before the thread runs: a stop() right after __enter__
        # must wait for that thread, never shut its poller down under it.
        self._serving = True
        self._thread = threading.Thread(target=self.serve, name="hvsock-relay", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop(grace=0 if exc is not None else None)

    # -- the loop ---------------------------------------------------------------------
    def _loop(self) -> None:
        assert self._poller is not None
        assert self._waker is not None
        poll = self._poller.poll
        by_fd = self._by_fd
        on_conn = self._on_conn
        waker_fd = self._waker.fileno()
        listener_fd = self._listener.fileno() if self._listener is not None else -1
        monotonic = time.monotonic
        next_sweep = monotonic() + self._sweep_interval()
        spin = self.busy_poll
        busy = False
        try:
            while True:
                timeout = None
                if self._conns or self._stopping or self._accept_resume < math.inf:
                    timeout = max(0.0, next_sweep - monotonic())
                if busy and spin:
                    # Busy-poll briefly after activity: a reply that comes within
                    # microseconds is picked up without sleeping, and waking a
                    # sleeping thread (an inter-processor interrupt, a VM exit under a
                    # hypervisor) is what dominates small round trips.
                    until = monotonic() + spin
                    events = poll(0)
                    while not events and monotonic() < until:
                        events = poll(0)
                    if not events:
                        events = poll(timeout)
                else:
                    events = poll(timeout)
                busy = bool(events)
                self._now = now = monotonic()
                for fd, ev in events:
                    conn = by_fd.get(fd)
                    if conn is not None:
                        on_conn(conn, fd, ev)
                    elif fd == listener_fd and self._accepting:
                        self._on_accept()
                    elif fd == waker_fd:
                        self._on_wake()
                if self._stop_requested and not self._stopping:
                    self._begin_stop()
                    next_sweep = min(next_sweep, self._stop_deadline)
                elif self._stopping and self._stop_grace is not None and (
                        now + self._stop_grace < self._stop_deadline):
                    # A second, shorter request (a second SIGTERM, stop(grace=0)):
                    # bring the deadline forward and cut at once if it has passed.
                    self._stop_deadline = now + self._stop_grace
                    next_sweep = min(next_sweep, self._stop_deadline)
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + self._sweep_interval()
                if self._stopping and not self._conns:
                    return
        finally:
            self._shutdown()

    def _sweep_interval(self) -> float:
        intervals = [1.0]
        for t in (self.idle_timeout, self.connect_timeout):
            if t is not None:
                intervals.append(t / 4)
        if self._stopping:
            intervals.append(max(0.0, self._stop_deadline - time.monotonic()))
        return max(0.005, min(intervals))

    def _sweep(self, now: float) -> None:
        if self._accept_resume <= now:
            self._accept_resume = math.inf
            self._resume_accepting()
        if self._stopping and now >= self._stop_deadline:
            for conn in list(self._conns.values()):
                self._finish(conn, END_STOPPED, "cut at the end of the stop's grace period")
            return
        idle = self.idle_timeout
        for conn in list(self._conns.values()):
            if conn.dial is not None:
                if conn.deadline is not None and now >= conn.deadline:
                    self._dial_failed(conn, timed_out(conn.dial))
            elif conn.up is not None and idle is not None and now - conn.last >= idle:
                self._finish(conn, END_IDLE, f"no bytes either way for {idle:g} s")

    def _on_wake(self) -> None:
        assert self._waker is not None
        self._waker.drain()
        while self._posted:
            self._posted.popleft()()

    def _post(self, fn: Callable[[], None]) -> bool:
        """Run *fn* on the loop's thread; False once the loop has ended."""
        with self._lock:
            if self._loop_done:
                return False
            self._posted.append(fn)
        assert self._waker is not None
        self._waker.wake()
        return True

    # -- accepting --------------------------------------------------------------------
    def _on_accept(self) -> None:
        # One accept per wake-up: the poll is level-triggered, so more waiting
        # clients wake it again at once, and a lone client costs no failed call.
        listener = self._listener
        assert listener is not None
        if len(self._conns) >= self.max_connections:
            # Back-pressure: stop watching the listener; clients wait in its backlog.
            self._pause_accepting()
            return
        try:
            sock, raw = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno == errno.ECONNABORTED:
                return
            if exc.errno in _RESOURCE_ERRNOS:
                LOG.warning("accept failed: %s; pausing new connections for 0.1 s "
                            "(raise the open-files limit, or lower max_connections)", exc)
                self._pause_accepting()
                self._accept_resume = self._now + 0.1
                return
            LOG.warning("accept failed: %s", exc)
            return
        self._admit(sock, raw)
        if len(self._conns) >= self.max_connections:
            self._pause_accepting()

    def _pause_accepting(self) -> None:
        if self._accepting and self._listener is not None and self._poller is not None:
            self._poller.modify(self._listener.fileno(), 0)
            self._accepting = False

    def _resume_accepting(self) -> None:
        if (not self._accepting and not self._stopping and self._listener is not None
                and self._poller is not None and self._accept_resume == math.inf):
            self._poller.modify(self._listener.fileno(), IN)
            self._accepting = True

    def _admit(self, sock: socket.socket, raw: Any) -> None:
        now = self._now
        cid = self._next_id
        self._next_id += 1
        self._accepted += 1
        try:
            sock.setblocking(False)
            if self._client_tcp:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # peer_of's result, without re-validating an address the kernel gave.
                host = str(raw[0])
                peer = Peer(f"tcp://[{host}]:{raw[1]}" if ":" in host else
                            f"tcp://{host}:{raw[1]}", host=host)
            else:
                peer = peer_of(sock, raw, self._address)
        except OSError as exc:
            sock.close()
            LOG.info("#%d: the client left before it could be served: %s", cid, exc)
            return
        except ValueError as exc:  # a peer address that cannot be read (peer_of)
            sock.close()
            LOG.warning("#%d: closed, its peer could not be identified: %s", cid, exc)
            return
        if self.allow is not None and not any(peer.matches(rule) for rule in self.allow):
            sock.close()
            self._denied += 1
            self._record(ConnectionRecord(cid, str(peer), self._target_text, 0, 0, 0.0,
                                          END_DENIED, "not in the allowlist"), logging.WARNING)
            return
        conn = _Conn(cid, sock, peer, now)
        self._conns[cid] = conn
        self._start_dial(conn)

    # -- dialling the target ------------------------------------------------------------
    def _start_dial(self, conn: _Conn) -> None:
        assert self._poller is not None
        try:
            gen = dial(self.target, timeout=self.connect_timeout, buffer_size=self.buffer_size)
            sock, mask = next(gen)
        except StopIteration as done:
            self._connected(conn, done.value)
            return
        except UseThread:
            self._dial_in_thread(conn)
            return
        except OSError as exc:
            self._dial_failed(conn, exc)
            return
        conn.dial = gen
        conn.target = sock
        conn.tfd = sock.fileno()
        conn.tmask = mask
        self._poller.add(conn.tfd, mask)
        self._by_fd[conn.tfd] = conn
        if self.connect_timeout is not None:
            conn.deadline = self._now + self.connect_timeout

    def _advance_dial(self, conn: _Conn) -> None:
        assert conn.dial is not None
        assert self._poller is not None
        try:
            _sock, mask = conn.dial.send(None)
        except StopIteration as done:
            conn.dial = None
            self._connected(conn, done.value)
            return
        except OSError as exc:
            self._dial_failed(conn, exc)
            return
        if mask != conn.tmask:
            self._poller.modify(conn.tfd, mask)
            conn.tmask = mask

    def _dial_in_thread(self, conn: _Conn) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(DIAL_THREADS,
                                                thread_name_prefix="hvsock-relay-dial")
        self._executor.submit(self._thread_dial, conn)

    def _thread_dial(self, conn: _Conn) -> None:
        try:
            sock = api.connect(self.target, timeout=self.connect_timeout,
                               buffer_size=self.buffer_size)
        except OSError as exc:
            error = exc
            self._post(lambda: self._thread_dialled(conn, None, error))
            return
        if not self._post(lambda: self._thread_dialled(conn, sock, None)):
            sock.close()

    def _thread_dialled(self, conn: _Conn, sock: socket.socket | None,
                        exc: OSError | None) -> None:
        if conn.ended:
            if sock is not None:
                sock.close()
            return
        if sock is None:
            assert exc is not None
            self._dial_failed(conn, exc)
            return
        try:
            sock.setblocking(False)
        except OSError as error:
            sock.close()
            self._dial_failed(conn, error)
            return
        self._connected(conn, sock)

    def _dial_failed(self, conn: _Conn, exc: OSError) -> None:
        self._forget_target(conn)
        self._target_down += 1
        self._finish(conn, END_TARGET_DOWN, str(exc), level=logging.WARNING)

    def _forget_target(self, conn: _Conn) -> None:
        """Drop a half-dialled target socket (out of the poller first, then closed)."""
        if conn.tmask is not None and self._poller is not None:
            self._poller.remove(conn.tfd)
            self._by_fd.pop(conn.tfd, None)
            conn.tmask = None
        if conn.dial is not None:
            conn.dial.close()  # closes its socket
            conn.dial = None
        if conn.target is not None:
            conn.target.close()
            conn.target = None

    def _splice_into(self, dst: socket.socket, side: int) -> bool:
        """Splice into *dst*? Decided once per side (0: client, 1: target): every
        socket of a side has the same family, and asking a socket costs."""
        choice = self._splice_choice[side]
        if choice is None:
            choice = (datapath.splice_pays(dst) if self.data_path == "auto"
                      else self.data_path == "splice")
            self._splice_choice[side] = choice
        return choice

    def _connected(self, conn: _Conn, sock: socket.socket) -> None:
        assert self._poller is not None
        conn.target = sock
        conn.tfd = sock.fileno()
        conn.deadline = None
        conn.up = Flow(conn.client, sock, self._splice_into(sock, 1))
        conn.down = Flow(sock, conn.client, self._splice_into(conn.client, 0))
        if conn.tmask is None:
            self._poller.add(conn.tfd, IN)
            self._by_fd[conn.tfd] = conn
        elif conn.tmask != IN:
            self._poller.modify(conn.tfd, IN)
        conn.tmask = IN
        self._poller.add(conn.cfd, IN)
        conn.cmask = IN
        self._by_fd[conn.cfd] = conn
        conn.last = self._now
        # Clients often speak first: move what already waits rather than poll for it.
        self._on_conn(conn, conn.cfd, IN)

    # -- moving bytes ---------------------------------------------------------------------
    def _on_conn(self, conn: _Conn, fd: int, ev: int) -> None:
        if conn.dial is not None:
            self._advance_dial(conn)
            return
        up, down = conn.up, conn.down
        assert up is not None
        assert down is not None
        conn.last = self._now
        pipes, bufs = self._pipes, self._bufs
        try:
            if fd == conn.cfd:
                if down.pending and ev & (OUT | ERR | HUP):
                    down.push(pipes, bufs)
                if not up.eof and not up.pending and ev & (IN | ERR | HUP):
                    up.pull(pipes, bufs)
            else:
                if up.pending and ev & (OUT | ERR | HUP):
                    up.push(pipes, bufs)
                if not down.eof and not down.pending and ev & (IN | ERR | HUP):
                    down.pull(pipes, bufs)
            if up.eof and not up.pending and not up.done:
                up.finish(closing=down.done)
            if down.eof and not down.pending and not down.done:
                down.finish(closing=up.done)
        except Broken as broken:
            client = broken.sock is conn.client
            self._finish(conn, END_CLIENT_RESET if client else END_TARGET_RESET,
                         _describe(broken.error), abort=conn.target if client else conn.client)
            return
        if up.done and down.done:
            self._finish(conn, END_CLOSED)
            return
        self._rearm(conn, fd, ev, up, down)

    def _rearm(self, conn: _Conn, fd: int, ev: int, up: Flow, down: Flow) -> None:
        """Watch each socket for exactly what its two directions wait for now."""
        poller = self._poller
        assert poller is not None
        cmask = (IN if not up.eof and not up.pending else 0) | (OUT if down.pending else 0)
        tmask = (IN if not down.eof and not down.pending else 0) | (OUT if up.pending else 0)
        if ev & (ERR | HUP):
            # A hang-up or error on a socket we neither read nor write just now.
            # An error is a reset: end at once. A clean hang-up (a Unix peer that
            # closed) is left to the other direction, which finishes or fails on
            # its own; the socket leaves the poller meanwhile, or the level-
            # triggered hang-up would repeat endlessly.
            if fd == conn.cfd and not cmask:
                code = _pending_error(conn.client)
                if code:
                    self._finish(conn, END_CLIENT_RESET, _describe(_os_error(code)),
                                 abort=conn.target)
                    return
                cmask = -1
            elif fd == conn.tfd and not tmask and conn.target is not None:
                code = _pending_error(conn.target)
                if code:
                    self._finish(conn, END_TARGET_RESET, _describe(_os_error(code)),
                                 abort=conn.client)
                    return
                tmask = -1
        # (A socket out of the poller stays out while nothing is wanted from it.)
        if cmask != conn.cmask and (cmask or conn.cmask is not None):
            conn.cmask = self._set_mask(conn.cfd, conn.cmask, cmask, conn)
        if tmask != conn.tmask and (tmask or conn.tmask is not None):
            conn.tmask = self._set_mask(conn.tfd, conn.tmask, tmask, conn)

    def _set_mask(self, fd: int, old: int | None, new: int, conn: _Conn) -> int | None:
        poller = self._poller
        assert poller is not None
        if new == -1:  # out of the poller
            if old is not None:
                poller.remove(fd)
                self._by_fd.pop(fd, None)
            return None
        if old is None:
            poller.add(fd, new)
            self._by_fd[fd] = conn
        else:
            poller.modify(fd, new)
        return new

    # -- ending -----------------------------------------------------------------------------
    def _finish(self, conn: _Conn, end: str, error: str | None = None, *,
                abort: socket.socket | None = None, level: int | None = None) -> None:
        if conn.ended:
            return
        conn.ended = True
        poller = self._poller
        assert poller is not None
        if conn.dial is not None:
            self._forget_target(conn)
        for fd, mask in ((conn.cfd, conn.cmask), (conn.tfd, conn.tmask)):
            if mask is not None:
                poller.forget(fd)  # closing the socket below takes it out of epoll
                self._by_fd.pop(fd, None)
        conn.cmask = conn.tmask = None
        up, down = conn.up, conn.down
        for flow in (up, down):
            if flow is not None:
                flow.release(self._pipes, self._bufs)
        if abort is not None:
            _abort(abort)
        if end == END_TARGET_DOWN:
            _abort(conn.client)
        conn.client.close()
        if conn.target is not None:
            conn.target.close()
        del self._conns[conn.id]
        self._ended += 1
        sent = up.nbytes if up is not None else 0
        received = down.nbytes if down is not None else 0
        self._bytes_up += sent
        self._bytes_down += received
        if level is None:
            level = logging.INFO if end in (END_CLOSED, END_IDLE) else logging.WARNING
        if self.on_close is not None or LOG.isEnabledFor(level):
            self._record(ConnectionRecord(conn.id, str(conn.peer), self._target_text, sent,
                                          received, round(self._now - conn.started, 6), end,
                                          error), level)
        if not self._accepting and len(self._conns) < self.max_connections:
            self._resume_accepting()

    def _record(self, record: ConnectionRecord, level: int) -> None:
        if LOG.isEnabledFor(level):
            LOG.log(level, "%s", record, extra={"relay": record.as_dict()})
        if self.on_close is not None:
            try:
                self.on_close(record)
            except Exception:
                LOG.exception("on_close callback failed")

    # -- stopping ---------------------------------------------------------------------------
    def _begin_stop(self) -> None:
        self._stopping = True
        grace = self.grace if self._stop_grace is None else self._stop_grace
        self._stop_deadline = self._now + grace
        with contextlib.suppress(OSError):
            sd_notify("STOPPING=1")
        self._close_listener()
        if self._conns:
            LOG.info("stopping: waiting up to %g s for %d connection(s)", grace, len(self._conns))
            if grace == 0:
                self._sweep(self._now)
        else:
            LOG.info("stopped")

    def _close_listener(self) -> None:
        listener = self._listener
        if listener is None:
            return
        self._listener = None
        self._accepting = False
        if self._poller is not None:
            self._poller.remove(listener.fileno())
        if self._owns_listener:
            listener.close()
            api.remove_socket_file(self._address)

    def _shutdown(self) -> None:
        for conn in list(self._conns.values()):
            self._finish(conn, END_STOPPED, "the relay stopped")
        self._close_listener()
        with self._lock:
            self._loop_done = True
            posted = list(self._posted)
            self._posted.clear()
        # Results of thread dials: every connection has ended, so each one just
        # closes its socket. Dials still running close theirs when _post refuses.
        for fn in posted:
            fn()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._pipes.close()
        if self._poller is not None:
            self._poller.close()
        if self._waker is not None:
            self._waker.close()


def _pending_error(sock: socket.socket) -> int:
    """The socket's pending error number (a reset), 0 for none; reading it clears it."""
    try:
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
    except OSError as exc:
        return exc.errno or errno.EBADF


def _os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _describe(error: BaseException) -> str:
    if isinstance(error, HvsockError):
        return str(error)
    if isinstance(error, OSError) and error.errno is not None:
        name = errno.errorcode.get(error.errno, str(error.errno))
        return f"{name}: {error.strerror}"
    return str(error) or type(error).__name__


def relay(listen: Address | str, target: Address | str, **options: Any) -> None:
    """Relay *listen* to *target* until SIGTERM / SIGINT (blocking; main thread).

    *options* are :class:`Relay`'s. Raises :class:`HvsockError` if the listener
    cannot be bound.
    """
    Relay(listen, target, **options).run()
