"""The asyncio driver: runs a dial generator (:mod:`hvsock._transports.dial`) on the loop.

Waits are ``add_reader`` / ``add_writer`` callbacks, so cancelling the task closes the
socket at once; a step that must block (DNS, AF_HYPERV, a full Unix backlog) runs in
the loop's default executor. Loops without ``add_reader`` (Windows' proactor) run the
whole dial with the blocking driver in a thread instead.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from typing import TYPE_CHECKING, Any

from .._transports import sync
from .._transports._common import Deadline
from .._transports.dial import InThread, Pause, Readable, resume
from .ready import wait_ready

if TYPE_CHECKING:
    from .._transports.dial import Dial

__all__: list[str] = []  # internal


async def run(dial: Dial, timeout: float | None) -> socket.socket:
    """Drive *gen* to its end on the running loop; return its (non-blocking) socket.

    *timeout* bounds each attempt, as in the blocking driver. Raises what the dial
    raises; a cancel closes the socket being connected.
    """
    loop = asyncio.get_running_loop()
    if not _has_readiness(loop):  # pragma: no cover - Windows proactor
        sock = await asyncio.to_thread(sync.run, dial, timeout)
        sock.setblocking(False)
        return sock
    gen: Dial | None = dial
    deadline = Deadline(timeout)
    value: object = None
    error: BaseException | None = None
    try:
        while True:
            assert gen is not None
            step = resume(gen, value, error)
            if isinstance(step, socket.socket):
                step.setblocking(False)
                return step
            value, error = None, None
            if isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
                deadline = Deadline(timeout)
            elif isinstance(step, InThread):
                future = loop.run_in_executor(None, step.call, deadline.remaining())
                try:
                    # The step bounds itself by its remaining time. Shielded: a thread
                    # cannot be stopped, so a cancel waits for it before closing.
                    value = await asyncio.shield(future)
                except OSError as exc:
                    error = exc
                except asyncio.CancelledError:
                    future.add_done_callback(functools.partial(_abandon, gen, step))
                    gen = None
                    raise
            elif not await wait_ready(
                step.sock, not isinstance(step, Readable), deadline.remaining()
            ):
                error = step.stalled()
    finally:
        if gen is not None:
            gen.close()


def _abandon(gen: Dial, step: InThread, future: asyncio.Future[Any]) -> None:
    """After a cancel: dispose of what the thread made, then close the dial (its socket)."""
    if step.discard is not None and not future.cancelled() and future.exception() is None:
        step.discard(future.result())
    gen.close()


def _has_readiness(loop: asyncio.AbstractEventLoop) -> bool:
    """True for loops with add_reader (selector loops, uvloop); False for the proactor."""
    proactor = getattr(asyncio, "ProactorEventLoop", None)
    return proactor is None or not isinstance(loop, proactor)
