"""The life of a server: telling supervisors and tests it is ready (a ready file,
systemd's ``sd_notify``) without them sleeping, and stopping on SIGTERM / SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from .._errors import ArgumentError, HvsockError, PermissionDeniedError
from .._validate import quote

__all__ = ["STOP_SIGNALS", "check_ready_file", "loop_stop_signals", "sd_notify",
           "stop_signals", "write_ready_file"]

#: The signals that ask a server to stop gracefully.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def loop_stop_signals(loop: asyncio.AbstractEventLoop,
                      on_signal: Callable[[], None]) -> Iterator[None]:
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
        raise ArgumentError(f"cannot write the ready file {quote(path)}: directory "
                            f"{quote(directory)} does not exist; create it or choose another "
                            "path")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ArgumentError(f"cannot write the ready file {quote(path)}: directory "
                            f"{quote(directory)} is not writable by this user")
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
        cls = (PermissionDeniedError if exc.errno in (errno.EACCES, errno.EPERM)
               else HvsockError)
        raise cls(f"cannot write the ready file {quote(path)}: "
                  f"{exc.strerror or exc}", errno=exc.errno) from exc


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
