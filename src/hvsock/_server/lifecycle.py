"""Telling supervisors and tests that a service is ready, without them sleeping."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile


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


def write_ready_file(path: str, payload: dict[str, object]) -> None:
    """Write *payload* as JSON to *path* atomically: readers never see half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".ready-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
