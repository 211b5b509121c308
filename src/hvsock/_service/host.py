"""ServiceHost: one process serving several services, each on its own address.

For each service: a listener, an accept loop that stops accepting at the
connection limit (back-pressure, never dropping), an allowlist check before the
handler runs, idle and total timeouts, and a graceful stop that lets in-flight
handlers finish within a grace period and then cancels them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import _endpoints
from .._aio import hyperv as aio_hyperv
from .._aio.ready import wait_ready
from .._core.addresses import Address, parse_address
from .._core.framing import ErrorReply, encode_frame, encode_message
from .._errors import ArgumentError, HvsockError, IdleTimeoutError
from .._server.lifecycle import (
    DEFAULT_GRACE,
    StopRequest,
    announce_ready,
    announce_stopping,
    check_ready_file,
    loop_stop_signals,
)
from .._server.peers import Peer, check_reachable, peer_of, refused_by
from .._transports._common import close_on_error
from .._transports.features import has_hyperv, has_vsock
from .._validate import quote
from .connection import Connection, SyncConnection, drain
from .declaration import Service, SyncHandler
from .default_log import default_log_handler

LOG = logging.getLogger("hvsock.service")


def default_address(service: Service) -> Address:
    """Wildcard Hyper-V address on Windows, ``vsock://any:<port>`` on Linux."""
    if has_hyperv():
        return service.hyperv_address()
    if has_vsock():
        return service.vsock_address()
    raise HvsockError(
        f"no VM socket family here to serve {service.name!r}; pass an address "
        "(for example a hybrid:// or unix:// one)"
    )


async def _accept(
    loop: asyncio.AbstractEventLoop, listener: socket.socket
) -> tuple[socket.socket, Any]:
    """Accept in this task once *listener* is readable; returns a non-blocking socket.

    Not ``loop.sock_accept``: it accepts inside a loop callback, and a cancel
    landing between "readable" and that callback drops the accepted socket
    unclosed (CPython gh-153761), which :meth:`ServiceHost.stop` hits whenever a
    client connects as it stops. Here accept() and the return are one step of
    the task, so a cancel finds either no connection or a returned one.
    """
    fd = listener.fileno()
    while True:
        try:
            sock, raw = listener.accept()
        except (BlockingIOError, InterruptedError):
            pass
        else:
            with close_on_error(sock):
                sock.setblocking(False)
            return sock, raw
        try:
            await wait_ready(fd)
        except NotImplementedError:  # pragma: no cover - proactor loops (Windows)
            return await loop.sock_accept(listener)


#: Sync handler threads one host runs at once.
MAX_HANDLER_THREADS = 512
#: How long a cancelled sync handler gets to notice its socket was shut down before
#: it is abandoned (its thread is a daemon: it never holds the process open).
ABANDON_AFTER = 5.0


def _in_daemon_thread(fn: SyncHandler, conn: SyncConnection, name: str) -> asyncio.Future[None]:
    """Run ``fn(conn)`` in a new daemon thread; a future of the running loop for its end.

    Not a ThreadPoolExecutor: its threads are joined at interpreter exit, so one
    handler stuck in a sleep would keep the process alive after SIGTERM forever.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            fn(conn)
        except BaseException as exc:  # handed to the loop, which logs it
            error = exc
        # The loop may be gone (the process is stopping): nobody waits any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


#: How long a refused peer has to take its error frame and hang up before it is cut.
REFUSAL_LINGER = 2.0
#: What a refused peer may send meanwhile (read and dropped, so the close is clean).
REFUSAL_DRAIN = 1 << 16


async def _refuse(sock: socket.socket, peer: Peer, why: str, *, framed: bool) -> None:
    """Refuse *peer*: an error frame ``not_allowed`` first for a framed service, then a
    clean close (EOF, not a reset: what the peer sent is read and dropped)."""
    loop = asyncio.get_running_loop()
    try:
        if framed:
            reply = ErrorReply(None, "not_allowed", why)
            await asyncio.wait_for(
                loop.sock_sendall(sock, encode_frame(encode_message(reply))), REFUSAL_LINGER
            )
        sock.shutdown(socket.SHUT_WR)
        await drain(lambda n: loop.sock_recv(sock, n), REFUSAL_LINGER, REFUSAL_DRAIN)
    except (OSError, asyncio.TimeoutError):
        pass
    finally:
        sock.close()


@dataclass
class _Entry:
    service: Service
    address: Address
    listener: socket.socket | None = None
    owns_listener: bool = True
    slots: asyncio.Semaphore | None = None
    accept_task: asyncio.Task[None] | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    log: logging.Logger = LOG


class ServiceHost:
    """Host services: ``host.add(service, address)``, then ``await host.serve()``.

    *grace* is how long a stop lets in-flight handlers run before cancelling
    them; a second SIGTERM / SIGINT (or a stop with a shorter grace) cuts it
    short. *ready_file*, when given, is written (JSON: pid and each service's
    address) once every listener is bound; systemd's ``NOTIFY_SOCKET`` gets
    ``READY=1`` then too. The lifecycle is :class:`hvsock.Relay`'s and the bench
    server's: ``start``, ``serve(handle_signals=True)``, ``run``,
    ``request_stop(grace)``, ``stop(grace)``.
    """

    def __init__(
        self,
        *,
        grace: float = DEFAULT_GRACE,
        ready_file: str | None = None,
        on_ready: Callable[[dict[str, Address]], None] | None = None,
    ) -> None:
        self._stop_request = StopRequest(grace)
        self.ready_file = check_ready_file(ready_file)
        self.on_ready = on_ready
        self._entries: list[_Entry] = []
        self._started = False
        self._stop_started = False
        self._stopped: asyncio.Event | None = None
        #: Sync handler threads running at once, host-wide (more wait for one to end).
        self._threads: asyncio.Semaphore | None = None
        #: Sockets of sync handlers that outlived their cancellation; closed by them.
        self._thread_owned: set[socket.socket] = set()
        #: Refused connections being told so and closed (see _refuse).
        self._refusals: set[asyncio.Task[None]] = set()

    # -- set-up -------------------------------------------------------------
    def add(
        self,
        service: Service,
        address: Address | str | None = None,
        *,
        listener: socket.socket | None = None,
    ) -> None:
        """Serve *service* on *address* (default: see :func:`default_address`).

        *listener*, an already listening socket, is used instead of binding one
        (e.g. a test double's); *address* then only names it in logs and peers.
        """
        if self._started:
            raise RuntimeError("add() services before start()")
        if any(e.service.name == service.name for e in self._entries):
            raise ArgumentError(f"a service named {quote(service.name)} is already added")
        addr = parse_address(address) if address is not None else default_address(service)
        check_reachable(service.allow, addr, f"{quote(service.name)}'s")
        self._entries.append(
            _Entry(
                service,
                addr,
                listener=listener,
                owns_listener=listener is None,
                log=logging.getLogger(f"hvsock.service.{service.name}"),
            )
        )

    @property
    def grace(self) -> float:
        """Seconds a stop lets handlers finish (unless a stop asks for less)."""
        return self._stop_request.grace

    @property
    def addresses(self) -> dict[str, Address]:
        """Each service's address, with real ports once started."""
        return {e.service.name: e.address for e in self._entries}

    def active_connections(self, name: str) -> int:
        """Connections service *name* is serving now; KeyError for an unknown name."""
        for entry in self._entries:
            if entry.service.name == name:
                return len(entry.tasks)
        raise KeyError(f"no service named {name!r} in this host")

    # -- running --------------------------------------------------------------
    async def start(self) -> None:
        """Bind every listener and start accepting; report ready. Raises HvsockError."""
        if self._started:
            raise RuntimeError("already started")
        if not self._entries:
            raise ArgumentError("no services added: add() one before start()")
        self._started = True
        self._stop_request.attach(asyncio.get_running_loop())
        self._stopped = asyncio.Event()
        self._threads = asyncio.Semaphore(MAX_HANDLER_THREADS)
        try:
            for entry in self._entries:
                if entry.listener is None:
                    entry.listener = _endpoints.listen(entry.address)
                    entry.address = _endpoints.listener_address(entry.listener, entry.address)
                entry.listener.setblocking(False)
                entry.slots = asyncio.Semaphore(entry.service.limits.max_connections)
        except BaseException:
            # Leave the host as it was, so start() can be tried again.
            self._close_listeners()
            for entry in self._entries:
                if entry.owns_listener:
                    entry.listener = None
            self._started = False
            raise
        for entry in self._entries:
            entry.accept_task = asyncio.create_task(self._accept_loop(entry))
            entry.log.info("listening on %s", entry.address)
        try:
            self._report_ready()
        except BaseException:
            # e.g. the ready file cannot be written: undo, so no socket file stays behind.
            await self.stop(0)
            raise

    def _report_ready(self) -> None:
        names = {e.service.name: str(e.address) for e in self._entries}
        announce_ready(
            self.ready_file,
            {"pid": os.getpid(), "services": names},
            "serving " + ", ".join(names),
            LOG,
        )
        LOG.info("ready: %s", ", ".join(f"{k} on {v}" for k, v in names.items()))
        if self.on_ready is not None:
            self.on_ready(self.addresses)

    async def _accept_loop(self, entry: _Entry) -> None:
        assert entry.listener is not None
        assert entry.slots is not None
        loop = asyncio.get_running_loop()
        listener = entry.listener
        threaded = aio_hyperv.needs_thread(listener)
        while True:
            # Back-pressure: at the limit, wait here; new clients queue in the
            # kernel's backlog instead of being accepted and dropped.
            await entry.slots.acquire()
            try:
                if threaded:  # pragma: no cover - Windows proactor only
                    sock, raw = await aio_hyperv.accept(listener)
                else:
                    sock, raw = await _accept(loop, listener)
            except (asyncio.CancelledError, OSError) as exc:
                entry.slots.release()
                if isinstance(exc, asyncio.CancelledError):
                    raise
                if listener.fileno() < 0:
                    return
                entry.log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.05)
                continue
            try:
                peer = peer_of(sock, raw, entry.address)
                why = refused_by(entry.service.allow, peer)
            except Exception:
                # A peer address we cannot read must cost one connection, not the
                # accept loop (and must not keep its slot).
                entry.log.exception("closed a connection whose peer could not be identified")
                sock.close()
                entry.slots.release()
                continue
            if why is not None:
                entry.log.warning("denied %s: not in the allowlist (%s)", peer, why)
                entry.slots.release()
                self._refuse(entry, sock, peer, why)
                continue
            task = asyncio.create_task(self._serve_one(entry, sock, peer))
            entry.tasks.add(task)

            def done(t: asyncio.Task[None]) -> None:
                entry.tasks.discard(t)
                assert entry.slots is not None
                entry.slots.release()

            task.add_done_callback(done)

    def _refuse(self, entry: _Entry, sock: socket.socket, peer: Peer, why: str) -> None:
        """Tell a refused peer why where the protocol allows it, then close cleanly."""
        task = asyncio.create_task(_refuse(sock, peer, why, framed=entry.service.framed))
        self._refusals.add(task)
        task.add_done_callback(self._refusals.discard)

    async def _serve_one(self, entry: _Entry, sock: socket.socket, peer: Peer) -> None:
        service, log = entry.service, entry.log
        limits = service.limits
        log.debug("connection from %s", peer)
        try:
            if service.is_async:
                await self._run_async(entry, sock, peer)
            else:
                await self._run_sync(entry, sock, peer)
        except asyncio.CancelledError:
            log.info("cancelled connection from %s (stopping)", peer)
            raise
        except IdleTimeoutError as exc:
            log.info("closed %s: %s", peer, exc)
        except asyncio.TimeoutError:
            # On 3.11+ this also catches a TimeoutError the handler raised itself;
            # only an async handler with a total timeout can be over it (a sync
            # handler's total timeout shuts its socket down instead).
            if not service.is_async and limits.idle_timeout is not None:
                # A sync handler reading conn.sock itself gets the socket's own
                # timeout, which is the idle timeout.
                log.info(
                    "closed %s: idle for %g s (the service's idle timeout)",
                    peer,
                    limits.idle_timeout,
                )
            elif not (service.is_async and limits.total_timeout is not None):
                log.exception("handler failed for peer %s", peer)
            else:
                log.info("closed %s: over the total timeout of %s s", peer, limits.total_timeout)
        except HvsockError as exc:
            log.warning("closed %s: %s", peer, exc)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("connection from %s ended: %s", peer, exc)
        except Exception:
            log.exception("handler failed for peer %s", peer)
        finally:
            if sock not in self._thread_owned:
                sock.close()

    async def _run_async(self, entry: _Entry, sock: socket.socket, peer: Peer) -> None:
        limits = entry.service.limits
        reader, writer = await asyncio.open_connection(
            sock=sock, limit=max(2**16, min(limits.max_message_size + 4, 2**24))
        )
        conn = Connection(reader, writer, peer, entry.service, entry.log)
        try:
            handler = entry.service.handler(conn)  # type: ignore[arg-type]
            if limits.total_timeout is None:
                await handler  # type: ignore[misc]
            else:
                await asyncio.wait_for(handler, limits.total_timeout)  # type: ignore[arg-type]
            if not writer.is_closing():
                with contextlib.suppress(OSError):
                    await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _run_sync(self, entry: _Entry, sock: socket.socket, peer: Peer) -> None:
        limits = entry.service.limits
        loop = asyncio.get_running_loop()
        sock.setblocking(True)
        sock.settimeout(limits.idle_timeout)
        conn = SyncConnection(sock, peer, entry.service, entry.log)

        # A thread cannot be cancelled; shutting its socket down makes its next
        # (or current) recv/send fail, so the handler ends on its own.
        def cut() -> None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

        timer = (
            loop.call_later(limits.total_timeout, cut) if limits.total_timeout is not None else None
        )
        handler: SyncHandler = entry.service.handler  # type: ignore[assignment]
        assert self._threads is not None
        async with self._threads:
            await self._run_thread(entry, sock, peer, handler, conn, cut, timer)

    async def _run_thread(
        self,
        entry: _Entry,
        sock: socket.socket,
        peer: Peer,
        handler: SyncHandler,
        conn: SyncConnection,
        cut: Callable[[], None],
        timer: asyncio.TimerHandle | None,
    ) -> None:
        future = _in_daemon_thread(handler, conn, f"hvsock-handler-{entry.service.name}")
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cut()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(future), ABANDON_AFTER)
            if not future.done():
                # The thread still runs (stuck outside socket I/O): closing the
                # socket now would let its number be reused under it. It is
                # closed when the thread finishes instead. The thread is a daemon,
                # so it does not keep the process alive once serving is over.
                entry.log.warning(
                    "abandoned the handler for %s: it did not stop within %g s of being "
                    "cancelled (stuck outside socket I/O); the process can exit without it",
                    peer,
                    ABANDON_AFTER,
                )
                self._thread_owned.add(sock)

                def release(_: object) -> None:
                    self._thread_owned.discard(sock)
                    sock.close()

                future.add_done_callback(release)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let handlers finish for *grace* s (default: the host's), cancel.

        A stop already under way is brought forward when *grace* ends sooner than
        its own, then waited for.
        """
        if self._stopped is None:
            return
        self._stop_request.request(grace)
        if self._stop_started:
            await self._stopped.wait()
            return
        self._stop_started = True
        announce_stopping()
        for entry in self._entries:
            if entry.accept_task is not None:
                entry.accept_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await entry.accept_task
        self._close_listeners()
        tasks = {t for e in self._entries for t in e.tasks}
        if tasks:
            LOG.info(
                "stopping: waiting up to %g s for %d connection(s)",
                round(self._stop_request.left(), 1),
                len(tasks),
            )
            pending = await self._stop_request.wait_out(tasks)
            for task in pending:
                task.cancel()
            if pending:
                LOG.warning(
                    "stopping: cancelled %d connection(s) after the grace period", len(pending)
                )
                await asyncio.wait(pending, timeout=10)
        for task in list(self._refusals):
            task.cancel()
        if self._refusals:
            await asyncio.wait(set(self._refusals), timeout=5)
        self._stopped.set()

    def _close_listeners(self) -> None:
        for entry in self._entries:
            if entry.listener is not None and entry.owns_listener:
                entry.listener.close()
                _endpoints.remove_socket_file(entry.address)

    async def wait_stopped(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()

    async def serve(self, *, handle_signals: bool = True) -> None:
        """Start, serve until :meth:`stop` / :meth:`request_stop` or SIGTERM / SIGINT,
        then stop gracefully; a second signal cuts the handlers still running.

        The signal handlers go in before anything is bound, so a SIGTERM that
        arrives as soon as the host reports ready still stops it gracefully, and
        stay until the stop is over (elsewhere than the main thread there are none).
        """
        loop = asyncio.get_running_loop()
        self._stop_request.attach(loop)
        signals = (
            loop_stop_signals(loop, self._stop_request.signal)
            if handle_signals
            else contextlib.nullcontext()
        )
        with signals:
            try:
                await self.start()
                await self._stop_request.wait_requested()
            finally:
                await self.stop()

    def run(self) -> None:
        """Blocking :meth:`serve` in a fresh event loop (``asyncio.run``).

        Where the program configured no logging, hvsock's INFO lines (where each
        service listens, "ready") go to stderr meanwhile.
        """
        with default_log_handler():
            asyncio.run(self.serve())

    def request_stop(self, grace: float | None = None) -> None:
        """Ask :meth:`serve` to stop, letting handlers finish for *grace* s (default:
        the host's). From any thread (inside a handler too); returns at once."""
        self._stop_request.request(grace)

    async def __aenter__(self) -> ServiceHost:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
