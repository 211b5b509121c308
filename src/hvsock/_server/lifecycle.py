"""The life of a server, the same for ``ServiceHost`` (and so the agent), ``Relay`` and
the bench server: telling supervisors and tests it is ready (a ready file, systemd's
``sd_notify``) without them sleeping, and stopping on SIGTERM / SIGINT with a grace
period that a second signal cuts short.

- :func:`check_ready_file` when the server is made, :func:`announce_ready` once it
  listens, :func:`announce_stopping` when its stop begins;
- :class:`StopRequest`: ``request_stop(grace)`` and the signals land here; the
  shortest grace asked for wins, and the server's loop reads the deadline;
- :func:`loop_stop_signals` (an asyncio server) or :func:`stop_signals` (a blocking
  one) route SIGTERM / SIGINT to :meth:`StopRequest.signal` while it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any

from .._errors import ArgumentError, HvsockError, PermissionDeniedError
from .._validate import non_negative_number, quote

__all__ = [
    "DEFAULT_GRACE",
    "STOP_SIGNALS",
    "StopRequest",
    "announce_ready",
    "announce_stopping",
    "check_grace",
    "check_ready_file",
    "loop_stop_signals",
    "sd_notify",
    "stop_signals",
    "write_ready_file",
]

#: The signals that ask a server to stop gracefully.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Seconds a stopping server lets connections finish before cutting them, unless told.
DEFAULT_GRACE = 10.0


def check_grace(value: object) -> float:
    """*value* as a grace period: seconds >= 0. Raises :class:`ArgumentError`."""
    seconds = non_negative_number(value, "grace")
    assert seconds is not None
    return seconds


class StopRequest:
    """A server's stop: asked for from any thread or a signal handler; its grace is
    only ever shortened.

    :meth:`request` sets the deadline to now + *grace* (None: the server's grace)
    unless an earlier one is set, then calls *wake* so the server's loop looks at
    it again. :meth:`signal` is what SIGTERM / SIGINT do: the first asks for the
    server's grace, every later one for 0, so a second Ctrl-C cuts what is left
    at once. An asyncio server attaches its loop (:meth:`attach`) and waits with
    :meth:`wait_requested` and :meth:`wait_out`.
    """

    def __init__(
        self, grace: float = DEFAULT_GRACE, wake: Callable[[], None] | None = None
    ) -> None:
        self.grace = check_grace(grace)
        self.wake = wake
        self.requested = False
        #: When the connections still open are cut (time.monotonic); inf until asked.
        self.deadline = math.inf
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def request(self, grace: float | None = None) -> None:
        """Stop accepting; cut what is left *grace* seconds from now (or earlier, if a
        shorter stop was asked for already). Raises :class:`ArgumentError` for a bad
        *grace*."""
        seconds = self.grace if grace is None else check_grace(grace)
        deadline = time.monotonic() + seconds
        if deadline < self.deadline:
            self.deadline = deadline
        self.requested = True
        if self.wake is not None:
            self.wake()

    def signal(self) -> None:
        """A stop signal arrived: the server's grace the first time, none after."""
        self.request(0 if self.requested else None)

    def left(self) -> float:
        """Seconds until the deadline (0 once passed, inf before any request)."""
        return max(0.0, self.deadline - time.monotonic())

    # -- for asyncio servers --------------------------------------------------------------
    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake *loop*'s waiters at every request, from any thread (a request made
        before is not lost: they see it at once)."""
        if self._event is not None and self._loop is loop:
            return
        self._loop = loop
        event = self._event = asyncio.Event()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has ended: nobody waits
                loop.call_soon_threadsafe(event.set)

        self.wake = wake
        if self.requested:
            event.set()

    async def wait_requested(self) -> None:
        """Return once a stop is requested (after :meth:`attach`)."""
        assert self._event is not None, "attach() the loop first"
        while not self.requested:
            self._event.clear()
            if not self.requested:
                await self._event.wait()

    async def wait_out(self, futures: Iterable[asyncio.Future[Any]]) -> set[asyncio.Future[Any]]:
        """Wait for *futures* until the deadline, which a later, shorter request
        brings forward; returns those still not done (the caller cancels them)."""
        assert self._event is not None, "attach() the loop first"
        pending: set[asyncio.Future[Any]] = set(futures)
        while pending:
            self._event.clear()
            left = self.left()
            if left <= 0:
                break
            woken = asyncio.ensure_future(self._event.wait())
            try:
                _done, pending = await asyncio.wait(
                    pending | {woken}, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                woken.cancel()
            pending.discard(woken)
        return pending


@contextlib.contextmanager
def loop_stop_signals(
    loop: asyncio.AbstractEventLoop, on_signal: Callable[[], None]
) -> Iterator[None]:
    """While inside, SIGTERM and SIGINT call *on_signal* in *loop* (an asyncio server).

    Where the loop cannot take signal handlers (Windows, not the main thread)
    nothing is installed. The previous handlers are back on exit.
    """
    installed: list[signal.Signals] = []
    for sig in STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


@contextlib.contextmanager
def stop_signals(on_signal: Callable[[], None]) -> Iterator[None]:
    """While inside, SIGTERM and SIGINT call *on_signal* (a blocking server's loop, main
    thread only; elsewhere nothing is installed). The previous handlers are back on exit."""
    previous: dict[signal.Signals, object] = {}
    if threading.current_thread() is threading.main_thread():

        def handler(signum: int, frame: FrameType | None) -> None:
            on_signal()

        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)  # type: ignore[arg-type]


def announce_ready(
    ready_file: str | None, payload: dict[str, object], status: str, log: logging.Logger
) -> None:
    """Tell whoever waits that the server listens: *payload* to the ready file (if
    any), then systemd ``READY=1`` with *status*. Raises :class:`HvsockError` when
    the ready file cannot be written (the caller undoes its start); a systemd that
    cannot be told is only logged."""
    if ready_file is not None:
        write_ready_file(ready_file, payload)
    try:
        sd_notify(f"READY=1\nSTATUS={status}")
    except OSError as exc:
        log.warning("could not notify systemd: %s", exc)


def announce_stopping() -> None:
    """systemd ``STOPPING=1`` (where ``NOTIFY_SOCKET`` is set) as a stop begins."""
    with contextlib.suppress(OSError):
        sd_notify("STOPPING=1")


def sd_notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send *state* ("READY=1", ...) to systemd's NOTIFY_SOCKET; False when none is set."""
    env = os.environ if environ is None else environ
    target = env.get("NOTIFY_SOCKET")
    if not target:
        return False
    address: str | bytes = "\0" + target[1:] if target.startswith("@") else target
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True


def check_ready_file(path: str | None) -> str | None:
    """*path* itself, once its directory is known to exist and be writable.

    Servers call this when they are made, before they bind anything, so a bad
    ``--ready-file`` fails at once and leaves no socket file behind. Raises
    :class:`ArgumentError` naming the path given.
    """
    if path is None:
        return None
    if not isinstance(path, str) or not path:
        raise ArgumentError(f"ready_file must be a file path, not {quote(path)}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ArgumentError(
            f"cannot write the ready file {quote(path)}: directory "
            f"{quote(directory)} does not exist; create it or choose another "
            "path"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ArgumentError(
            f"cannot write the ready file {quote(path)}: directory "
            f"{quote(directory)} is not writable by this user"
        )
    if os.path.isdir(path):
        raise ArgumentError(f"the ready file {quote(path)} is a directory; name a file")
    return path


def write_ready_file(path: str, payload: dict[str, object]) -> None:
    """Write *payload* as JSON to *path* atomically: readers never see half a file.

    Raises :class:`HvsockError` (:class:`PermissionDeniedError` when refused) naming
    *path*, never the hidden temporary file it writes first.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        _write_atomically(path, directory, payload)
    except OSError as exc:
        cls = PermissionDeniedError if exc.errno in (errno.EACCES, errno.EPERM) else HvsockError
        raise cls(
            f"cannot write the ready file {quote(path)}: {exc.strerror or exc}", errno=exc.errno
        ) from exc


def _write_atomically(path: str, directory: str, payload: dict[str, object]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".ready-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
