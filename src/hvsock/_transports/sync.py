"""The blocking driver: runs a dial generator (:mod:`.dial`) with poll/select and a deadline."""

from __future__ import annotations

import socket
import time

from ._common import Deadline, wait_ready
from .dial import InThread, Pause, Writable, resume

TYPE_CHECKING = False  # not typing's: docs/architecture.md, "Start-up rules"
if TYPE_CHECKING:
    from .dial import Dial

__all__: list[str] = []  # internal


def run(gen: Dial, timeout: float | None) -> socket.socket:
    """Drive *gen* to its end; return its socket, made blocking.

    *timeout* bounds each attempt (the deadline restarts after a retry's pause).
    Raises what the dial raises: :class:`HvsockError` subclasses.
    """
    deadline = Deadline(timeout)
    value: object = None
    error: BaseException | None = None
    try:
        while True:
            step = resume(gen, value, error)
            if isinstance(step, socket.socket):
                step.setblocking(True)
                return step
            value, error = None, None
            if isinstance(step, Pause):
                time.sleep(step.seconds)
                deadline = Deadline(timeout)
            elif isinstance(step, InThread):
                try:
                    value = step.call(deadline.remaining())
                except OSError as exc:
                    error = exc
            elif not wait_ready(step.sock, isinstance(step, Writable), deadline.remaining()):
                error = step.stalled()
    finally:
        gen.close()  # a no-op once it returned; else closes its socket (Ctrl-C, ...)
