"""Telling supervisors and tests that a service is ready, without them sleeping."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import tempfile

from .._errors import ArgumentError, HvsockError, PermissionDeniedError
from .._validate import quote

__all__ = ["check_ready_file", "sd_notify", "write_ready_file"]


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
