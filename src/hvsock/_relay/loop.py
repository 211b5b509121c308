"""One worker of the relay: a level-triggered poll loop over its listeners and connections.

Each worker (the relay's only one, or one of several processes) owns the
connections it accepted. The rest follows :class:`hvsock.ServiceHost`: at the
connection limit (counted for the whole relay, see :class:`Slots`) the listeners
are left unwatched so new clients wait in the kernel's backlog (back-pressure,
nobody dropped); an allowlist checks each peer before anything is dialled; a stop
closes the listeners, lets connections finish for a grace period, then cuts them.

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
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from .. import _endpoints
from .._core.addresses import Address
from .._server.lifecycle import StopRequest, announce_stopping
from .._server.peers import peer_of, refused_by
from . import datapath
from ._poll import ERR, HUP, IN, OUT, Poller, SpareCpu, Waker
from .config import Forward, RelayConfig
from .conn import (
    ACCEPTED,
    ACTIVE,
    BUFFERED,
    BYTES_DOWN,
    BYTES_UP,
    DENIED,
    END_CLIENT_RESET,
    END_CLOSED,
    END_DENIED,
    END_IDLE,
    END_STOPPED,
    END_TARGET_DOWN,
    END_TARGET_RESET,
    ENDED,
    IP_FAMILIES,
    PEAK,
    TARGET_DOWN,
    Conn,
    ConnectionRecord,
    abort,
    describe,
    hand_over,
    os_error,
    pending_error,
)
from .datapath import Broken, Buffers, Flow, Pipes
from .dial import UseThread, dial, timed_out
from .dial import on_loop as dial_on_loop

LOG = logging.getLogger("hvsock.relay")

#: Worker threads for targets that cannot be dialled on the loop (names, AF_HYPERV).
DIAL_THREADS = 8
#: Most clients accepted per wake-up of a listener.
ACCEPT_BATCH = 16
#: Seconds between tries for a free slot when another worker holds them all.
SHARED_SLOT_RETRY = 0.02
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Listeners shared by several workers wake one of them per client, not all.
EXCLUSIVE: int = getattr(select, "EPOLLEXCLUSIVE", 0)


class Slots(Protocol):
    """The relay-wide connection limit: ``take`` a slot (False at the limit), ``give`` it back."""

    shared: bool

    def take(self) -> bool: ...
    def give(self) -> None: ...


class LocalSlots:
    """The limit when there is one worker: a plain count."""

    shared = False

    def __init__(self, limit: int) -> None:
        self.free = limit

    def take(self) -> bool:
        if self.free <= 0:
            return False
        self.free -= 1
        return True

    def give(self) -> None:
        self.free += 1


class Listening:
    """One bound listener of a worker and the forward it serves."""

    __slots__ = (
        "accept",
        "address",
        "client_tcp",
        "dial_on_loop",
        "family",
        "fd",
        "forward",
        "nodelay_inherited",
        "proto",
        "sock",
        "splice",
        "target_text",
        "type",
        "widen",
    )

    def __init__(self, sock: socket.socket, forward: Forward, address: Address) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.forward = forward
        self.address = address
        self.client_tcp = sock.family in IP_FAMILIES
        self.target_text = str(forward.target)
        #: accept() without the socket module's wrapper (it asks the listener for its
        #: family and type on every call): (fd, address); see Loop._on_accept.
        self.accept: Callable[[], tuple[int, Any]] = sock._accept  # type: ignore[attr-defined]
        self.family, self.type, self.proto = int(sock.family), int(sock.type), sock.proto
        #: Splice into the client / target side? Decided once per side (see _splice_into).
        self.splice: list[bool | None] = [None, None]
        #: Give that side's sockets a chunk-sized send buffer (see _splice_into)?
        self.widen = [False, False]
        #: Can the target be dialled on the loop (no retries, no name to look up)?
        #: Decided at the first connection (see Loop._start_dial).
        self.dial_on_loop: bool | None = None
        #: Do accepted TCP sockets inherit TCP_NODELAY from the listener (Linux does)?
        #: None until the first client tells; then a system call per client is spared.
        self.nodelay_inherited: bool | None = None
        if self.client_tcp:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Loop:
    """Runs one worker: call :meth:`run` on the thread that owns it."""

    def __init__(
        self,
        config: RelayConfig,
        listeners: list[Listening],
        *,
        slots: Slots,
        stats: Any,
        on_close: Callable[[ConnectionRecord], None] | None,
        control: int | None = None,
        announce: bool = True,
        exclusive: bool = False,
        budget: int | None = None,
        on_stop: Callable[[], None] | None = None,
        stop: StopRequest | None = None,
    ) -> None:
        self.config = config
        self._on_stop = on_stop
        self.on_close = on_close
        self._listeners = {li.fd: li for li in listeners}
        self._slots = slots
        self._stats = stats  # a writable sequence of STAT_FIELDS ints (this worker's row)
        self._control = control
        self._announce = announce
        self._listen_mask = IN | (EXCLUSIVE if exclusive else 0)
        self._budget = config.max_buffer_memory if budget is None else budget
        self._held = 0
        self._peak = 0

        self._lock = threading.Lock()
        self._posted: deque[Callable[[], None]] = deque()
        self.done = False
        #: The relay's stop when this loop is its only one (else the worker's own).
        self.stop = stop if stop is not None else StopRequest(config.grace)
        self._stopping = False

        self._poller = Poller()
        self._spare_cpu = SpareCpu()
        self._waker = Waker()
        self._pipes = Pipes(config.chunk_size)
        self._bufs = Buffers(config.chunk_size)
        self._executor: ThreadPoolExecutor | None = None
        self._conns: dict[int, Conn] = {}
        self._by_fd: dict[int, Conn] = {}
        self._next_id = 1
        self._accepting = False
        self._accept_resume = math.inf
        #: Paused at the connection limit (not for a resource error): a slot this
        #: worker frees resumes accepting at once.
        self._at_limit = False
        self._now = time.monotonic()
        try:
            self._poller.add(self._waker.fileno(), IN)
            if control is not None:
                self._poller.add(control, IN)
            for fd in self._listeners:
                self._poller.add(fd, self._listen_mask)
            self._accepting = True
            self.stop.wake = self._waker.wake
            if self.stop.requested:  # asked before this loop was made
                self._waker.wake()
        except BaseException:
            self._poller.close()
            self._spare_cpu.close()
            self._waker.close()
            raise

    @property
    def active(self) -> int:
        return len(self._conns)

    @property
    def held(self) -> int:
        """Bytes this worker holds in flight now (buffers and pipes)."""
        return self._held

    @property
    def peak(self) -> int:
        return self._peak

    def set_ids(self, first: int, step: int) -> None:
        """Number connections first, first + step, ... (unique across workers)."""
        self._next_id = first
        self._id_step = step

    _id_step = 1

    def request_stop(self, grace: float | None = None) -> None:
        """No new connections; in-flight ones get *grace* seconds (default: the
        relay's). Safe from any thread and from signal handlers."""
        self.stop.request(grace)

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> None:
        poll = self._poller.poll
        by_fd = self._by_fd
        on_conn = self._on_conn
        listeners = self._listeners
        stats = self._stats
        waker_fd = self._waker.fileno()
        control_fd = -1 if self._control is None else self._control
        monotonic = time.monotonic
        next_sweep = monotonic() + self._sweep_interval()
        spin = self.config.busy_poll
        spare_cpu = self._spare_cpu
        stop = self.stop
        busy = False
        try:
            while True:
                timeout = None
                if self._conns or self._stopping or self._accept_resume < math.inf:
                    timeout = max(0.0, next_sweep - monotonic())
                if busy and spin and spare_cpu(self._now):
                    # Busy-poll briefly after activity: a reply that comes within
                    # microseconds is picked up without sleeping, and waking a
                    # sleeping thread (an inter-processor interrupt, a VM exit under a
                    # hypervisor) is what dominates small round trips. Only with a
                    # CPU to spare: on a machine whose every CPU has work (the
                    # peers, other workers) the spin would take their time.
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
                    elif fd in listeners:
                        if self._accepting:
                            self._on_accept(listeners[fd])
                    elif fd == waker_fd:
                        self._on_wake()
                    elif fd == control_fd:
                        self._on_control()
                if busy:
                    stats[BUFFERED] = self._held
                if self._accept_resume < next_sweep:
                    next_sweep = self._accept_resume
                if stop.requested:
                    if not self._stopping:
                        self._begin_stop()
                    # A second, shorter request (a second SIGTERM, stop(grace=0))
                    # brought the deadline forward: cut at once if it has passed.
                    next_sweep = min(next_sweep, stop.deadline)
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + self._sweep_interval()
                if self._stopping and not self._conns:
                    return
        finally:
            self._shutdown()

    def _sweep_interval(self) -> float:
        intervals = [1.0]
        for t in (self.config.idle_timeout, self.config.connect_timeout):
            if t is not None:
                intervals.append(t / 4)
        if self._stopping:
            intervals.append(self.stop.left())
        if self._accept_resume < math.inf:
            intervals.append(max(0.0, self._accept_resume - time.monotonic()))
        return max(0.005, min(intervals))

    def _sweep(self, now: float) -> None:
        self._stats[BUFFERED] = self._held
        self._stats[PEAK] = self._peak
        if self._accept_resume <= now:
            self._accept_resume = math.inf
            self._at_limit = False
            self._resume_accepting()
        if self._stopping and now >= self.stop.deadline:
            for conn in list(self._conns.values()):
                self._finish(conn, END_STOPPED, "cut at the end of the stop's grace period")
            return
        idle = self.config.idle_timeout
        for conn in list(self._conns.values()):
            if conn.dial is not None:
                if conn.deadline is not None and now >= conn.deadline:
                    self._dial_failed(conn, timed_out(conn.dial))
            elif conn.up is not None and idle is not None and now - conn.last >= idle:
                self._finish(conn, END_IDLE, f"no bytes either way for {idle:g} s")

    def _on_wake(self) -> None:
        self._waker.drain()
        while self._posted:
            self._posted.popleft()()

    def _on_control(self) -> None:
        """The relay's stop messages to a worker process: 8-byte grace seconds each."""
        assert self._control is not None
        try:
            data = os.read(self._control, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            # The relay process is gone: stop with the default grace.
            self._poller.remove(self._control)
            self._control = None
            self.request_stop()
            return
        for i in range(0, len(data) - 7, 8):
            (grace,) = struct.unpack_from("d", data, i)
            self.request_stop(grace)

    def _post(self, fn: Callable[[], None]) -> bool:
        """Run *fn* on the loop's thread; False once the loop has ended."""
        with self._lock:
            if self.done:
                return False
            self._posted.append(fn)
        self._waker.wake()
        return True

    # -- accepting --------------------------------------------------------------------
    def _on_accept(self, listening: Listening) -> None:
        # Accept what waits, up to a batch: each further client spares a trip round
        # the poll (under load clients queue up). A batch ends at the first "none
        # waiting", the one failed call it costs.
        slots = self._slots
        for _ in range(ACCEPT_BATCH):
            if not slots.take():
                # Back-pressure: stop watching the listeners; clients wait in their
                # backlogs. A slot freed by another worker is looked for shortly.
                self._pause_accepting()
                self._at_limit = True
                if slots.shared:
                    self._accept_resume = self._now + SHARED_SLOT_RETRY
                return
            try:
                fd, raw = listening.accept()
            except (BlockingIOError, InterruptedError):
                slots.give()
                return
            except OSError as exc:
                slots.give()
                if exc.errno == errno.ECONNABORTED:
                    continue
                if exc.errno in _RESOURCE_ERRNOS:
                    LOG.warning(
                        "accept failed: %s; pausing new connections for 0.1 s "
                        "(raise the open-files limit, or lower max_connections)",
                        exc,
                    )
                    self._pause_accepting()
                    self._accept_resume = self._now + 0.1
                    return
                LOG.warning("accept failed: %s", exc)
                return
            self._admit(
                listening, socket.socket(listening.family, listening.type, listening.proto, fd), raw
            )

    def _pause_accepting(self) -> None:
        if self._accepting:
            # Out of the poller rather than a mask of 0: an EPOLLEXCLUSIVE
            # registration cannot be modified.
            for fd in self._listeners:
                self._poller.remove(fd)
            self._accepting = False

    def _resume_accepting(self) -> None:
        if not self._accepting and not self._stopping and self._accept_resume == math.inf:
            for fd in self._listeners:
                self._poller.add(fd, self._listen_mask)
            self._accepting = True

    def _admit(self, listening: Listening, sock: socket.socket, raw: Any) -> None:
        now = self._now
        conn_id = self._next_id
        self._next_id += self._id_step
        self._stats[ACCEPTED] += 1
        forward = listening.forward
        try:
            sock.setblocking(False)
            if listening.client_tcp and not listening.nodelay_inherited:
                _nodelay(listening, sock)
            peer = peer_of(sock, raw, listening.address)
        except OSError as exc:
            sock.close()
            self._slots.give()
            LOG.info("#%d: the client left before it could be served: %s", conn_id, exc)
            return
        except ValueError as exc:  # a peer address that cannot be read (peer_of)
            sock.close()
            self._slots.give()
            LOG.warning("#%d: closed, its peer could not be identified: %s", conn_id, exc)
            return
        if forward.allow is not None and refused_by(forward.allow, peer) is not None:
            sock.close()
            self._slots.give()
            self._stats[DENIED] += 1
            self._record(
                ConnectionRecord(
                    conn_id,
                    str(peer),
                    listening.target_text,
                    0,
                    0,
                    0.0,
                    END_DENIED,
                    "not in the allowlist",
                ),
                logging.WARNING,
            )
            return
        conn = Conn(conn_id, sock, peer, forward, now)
        conn.listening = listening
        self._conns[conn_id] = conn
        self._stats[ACTIVE] = len(self._conns)
        self._start_dial(conn)

    # -- dialling the target ------------------------------------------------------------
    def _start_dial(self, conn: Conn) -> None:
        config = self.config
        listening: Listening = conn.listening
        try:
            on_loop = listening.dial_on_loop
            if on_loop is None:
                on_loop = listening.dial_on_loop = dial_on_loop(
                    conn.forward.target, timeout=config.connect_timeout, retries=config.retries
                )
            if not on_loop:
                raise UseThread
            # A dial whose first step blocks (a name to resolve) raises UseThread too.
            dialled = dial(
                conn.forward.target,
                timeout=config.connect_timeout,
                buffer_size=config.buffer_size,
                checked=True,
            )
            if isinstance(dialled, socket.socket):
                # Connected at once (loopback TCP, Unix): no wait, no driver.
                self._connected(conn, dialled)
                return
            gen = dialled
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
        if config.connect_timeout is not None and not config.retries:
            conn.deadline = self._now + config.connect_timeout

    def _advance_dial(self, conn: Conn) -> None:
        assert conn.dial is not None
        try:
            sock, mask = conn.dial.send(None)
        except StopIteration as done:
            conn.dial = None
            self._connected(conn, done.value)
            return
        except OSError as exc:
            self._dial_failed(conn, exc)
            return
        if sock.fileno() != conn.tfd:
            # A retry: the dial moved on to a new socket.
            self._by_fd.pop(conn.tfd, None)
            if conn.tmask is not None:
                self._poller.remove(conn.tfd)
            conn.target, conn.tfd, conn.tmask = sock, sock.fileno(), mask
            self._poller.add(conn.tfd, mask)
            self._by_fd[conn.tfd] = conn
        elif mask != conn.tmask:
            self._poller.modify(conn.tfd, mask)
            conn.tmask = mask

    def _dial_in_thread(self, conn: Conn) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                DIAL_THREADS, thread_name_prefix="hvsock-relay-dial"
            )
        self._executor.submit(self._thread_dial, conn)

    def _thread_dial(self, conn: Conn) -> None:
        config = self.config
        try:
            sock = _endpoints.connect(
                conn.forward.target,
                timeout=config.connect_timeout,
                retries=config.retries,
                buffer_size=config.buffer_size,
            )
        except OSError as exc:
            error = exc
            self._post(lambda: self._thread_dialled(conn, None, error))
            return
        if not self._post(lambda: self._thread_dialled(conn, sock, None)):
            sock.close()

    def _thread_dialled(self, conn: Conn, sock: socket.socket | None, exc: OSError | None) -> None:
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

    def _dial_failed(self, conn: Conn, exc: OSError) -> None:
        self._forget_target(conn)
        self._stats[TARGET_DOWN] += 1
        self._finish(conn, END_TARGET_DOWN, str(exc), level=logging.WARNING)

    def _forget_target(self, conn: Conn) -> None:
        """Drop a half-dialled target socket (out of the poller first, then closed)."""
        if conn.tmask is not None:
            self._poller.remove(conn.tfd)
            self._by_fd.pop(conn.tfd, None)
            conn.tmask = None
        if conn.dial is not None:
            conn.dial.close()  # closes its socket
            conn.dial = None
        if conn.target is not None:
            conn.target.close()
            conn.target = None

    def _splice_into(self, listening: Listening, dst: socket.socket, side: int) -> bool:
        """Splice into *dst*? Decided once per side (0: client, 1: target) of a
        listener: every socket of a side has the same family, and asking costs.

        A Unix socket spliced into also gets a send buffer of a chunk (unless
        ``buffer_size`` is set): see :func:`datapath.widen`.
        """
        choice = listening.splice[side]
        if choice is None:
            data_path = self.config.data_path
            choice = datapath.splice_pays(dst) if data_path == "auto" else data_path == "splice"
            listening.splice[side] = choice
            listening.widen[side] = (
                choice and self.config.buffer_size is None and datapath.widen_pays(dst)
            )
        if listening.widen[side]:
            datapath.widen(dst, self.config.chunk_size)
        return choice

    def _connected(self, conn: Conn, sock: socket.socket) -> None:
        listening: Listening = conn.listening
        conn.target = sock
        conn.tfd = sock.fileno()
        conn.deadline = None
        conn.up = Flow(conn.client, sock, self._splice_into(listening, sock, 1))
        conn.down = Flow(sock, conn.client, self._splice_into(listening, conn.client, 0))
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
    def _on_conn(self, conn: Conn, fd: int, ev: int) -> None:
        if conn.dial is not None:
            self._advance_dial(conn)
            return
        up, down = conn.up, conn.down
        assert up is not None
        assert down is not None
        conn.last = self._now
        pipes, bufs = self._pipes, self._bufs
        held = up.cost + down.cost
        room = self._budget - self._held
        try:
            if fd == conn.cfd:
                if down.pending and ev & (OUT | ERR | HUP):
                    down.push(pipes, bufs)
                if not up.eof and not up.pending and ev & (IN | ERR | HUP):
                    up.pull(pipes, bufs, room)
            else:
                if up.pending and ev & (OUT | ERR | HUP):
                    up.push(pipes, bufs)
                if not down.eof and not down.pending and ev & (IN | ERR | HUP):
                    down.pull(pipes, bufs, room)
            if up.eof and not up.pending and not up.done:
                up.finish(closing=down.done)
            if down.eof and not down.pending and not down.done:
                down.finish(closing=up.done)
        except Broken as broken:
            self._account(up.cost + down.cost - held)
            client = broken.sock is conn.client
            self._finish(
                conn,
                END_CLIENT_RESET if client else END_TARGET_RESET,
                describe(broken.error),
                abort=conn.target if client else conn.client,
            )
            return
        self._account(up.cost + down.cost - held)
        if up.done and down.done:
            self._finish(conn, END_CLOSED)
            return
        self._rearm(conn, fd, ev, up, down)

    def _account(self, delta: int) -> None:
        if delta:
            self._held += delta
            if self._held > self._peak:
                self._peak = self._held

    def _rearm(self, conn: Conn, fd: int, ev: int, up: Flow, down: Flow) -> None:
        """Watch each socket for exactly what its two directions wait for now."""
        cmask = (IN if not up.eof and not up.pending else 0) | (OUT if down.pending else 0)
        tmask = (IN if not down.eof and not down.pending else 0) | (OUT if up.pending else 0)
        if ev & (ERR | HUP):
            # A hang-up or error on a socket we neither read nor write just now.
            # An error is a reset: end at once. A clean hang-up (a Unix peer that
            # closed) is left to the other direction, which finishes or fails on
            # its own; the socket leaves the poller meanwhile, or the level-
            # triggered hang-up would repeat endlessly.
            if fd == conn.cfd and not cmask:
                if self._reset(conn, conn.client, END_CLIENT_RESET, conn.target):
                    return
                cmask = -1
            elif fd == conn.tfd and not tmask and conn.target is not None:
                if self._reset(conn, conn.target, END_TARGET_RESET, conn.client):
                    return
                tmask = -1
        # (A socket out of the poller stays out while nothing is wanted from it.)
        if cmask != conn.cmask and (cmask or conn.cmask is not None):
            conn.cmask = self._set_mask(conn.cfd, conn.cmask, cmask, conn)
        if tmask != conn.tmask and (tmask or conn.tmask is not None):
            conn.tmask = self._set_mask(conn.tfd, conn.tmask, tmask, conn)

    def _reset(
        self, conn: Conn, sock: socket.socket, end: str, other: socket.socket | None
    ) -> bool:
        """End *conn* if *sock* has a pending error (a reset), resetting *other*."""
        code = pending_error(sock)
        if code:
            self._finish(conn, end, describe(os_error(code)), abort=other)
        return bool(code)

    def _set_mask(self, fd: int, old: int | None, new: int, conn: Conn) -> int | None:
        poller = self._poller
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
    def _finish(
        self,
        conn: Conn,
        end: str,
        error: str | None = None,
        *,
        abort: socket.socket | None = None,
        level: int | None = None,
    ) -> None:
        if conn.ended:
            return
        conn.ended = True
        poller = self._poller
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
                self._held -= flow.cost
                flow.release(self._pipes, self._bufs)
        if abort is not None:
            _abort(abort)
        if end == END_TARGET_DOWN:
            _abort(conn.client)
        conn.client.close()
        if conn.target is not None:
            conn.target.close()
        del self._conns[conn.id]
        self._slots.give()
        stats = self._stats
        stats[ACTIVE] = len(self._conns)
        stats[ENDED] += 1
        sent = up.nbytes if up is not None else 0
        received = down.nbytes if down is not None else 0
        stats[BYTES_UP] += sent
        stats[BYTES_DOWN] += received
        if level is None:
            level = logging.INFO if end in (END_CLOSED, END_IDLE) else logging.WARNING
        if self.on_close is not None or LOG.isEnabledFor(level):
            self._record(
                ConnectionRecord(
                    conn.id,
                    str(conn.peer),
                    str(conn.forward.target),
                    sent,
                    received,
                    round(self._now - conn.started, 6),
                    end,
                    error,
                ),
                level,
            )
        if not self._accepting and self._at_limit:
            self._at_limit = False
            self._accept_resume = math.inf
            self._resume_accepting()

    def _record(self, record: ConnectionRecord, level: int) -> None:
        if LOG.isEnabledFor(level):
            LOG.log(level, "%s", record, extra={"relay": record.as_dict()})
        hand_over(self.on_close, record)

    # -- stopping ---------------------------------------------------------------------------
    def _begin_stop(self) -> None:
        self._stopping = True
        self._close_listeners()
        if self._announce:  # the relay's only loop: it speaks for the relay
            announce_stopping()
            if self._conns:
                LOG.info(
                    "stopping: waiting up to %g s for %d connection(s)",
                    round(self.stop.left(), 1),
                    len(self._conns),
                )
            else:
                LOG.info("stopped")
        if self._conns and self._now >= self.stop.deadline:
            self._sweep(self._now)

    def _close_listeners(self) -> None:
        """Stop watching the listeners, and have them closed (*on_stop*) once."""
        if self._accepting:
            for fd in self._listeners:
                self._poller.remove(fd)
        self._accepting = False
        self._listeners = {}
        on_stop, self._on_stop = self._on_stop, None
        if on_stop is not None:
            on_stop()

    def _shutdown(self) -> None:
        for conn in list(self._conns.values()):
            self._finish(conn, END_STOPPED, "the relay stopped")
        self._close_listeners()
        self._stats[BUFFERED] = self._held
        self._stats[PEAK] = self._peak
        with self._lock:
            self.done = True
            posted = list(self._posted)
            self._posted.clear()
        # Results of thread dials: every connection has ended, so each one just
        # closes its socket. Dials still running close theirs when _post refuses.
        for fn in posted:
            fn()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._pipes.close()
        self._spare_cpu.close()
        self._poller.close()
        self._waker.close()


def _abort(sock: socket.socket) -> None:
    abort(sock)


def _nodelay(listening: Listening, sock: socket.socket) -> None:
    """TCP_NODELAY on an accepted socket, unless it came with it from the listener
    (learnt from the first client: a system call fewer per connection after it)."""
    if listening.nodelay_inherited is None:
        inherited = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        listening.nodelay_inherited = inherited
        if inherited:
            return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
