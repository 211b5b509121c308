"""The relay's driver of the one dial (:mod:`hvsock._transports.dial`), for its poll loop.

:func:`dial` steps the transport's dial generator once. Where the connect completed
at once (TCP over loopback, Unix: the usual case) it returns the connected socket, and
the loop wires it up with no wait and no driver in between. Otherwise it returns a
generator that yields ``(socket, IN or OUT)`` to wait for and returns the connected
socket, turning each "wait until readable / writable" step into a poll registration.
The errors and messages are the dial's own, the same as :func:`hvsock.connect`'s.

Two kinds of dial do not run on the loop, and raise :class:`UseThread` before the
first yield, so the relay runs the blocking driver (:func:`hvsock.connect`, the same
algorithm) in a worker thread: a dial whose first step must block (a host name to
resolve, AF_HYPERV, a Unix listener whose backlog is full), and a dial with
*retries*, whose pauses the loop has no timer for.

When the relay's deadline passes, :func:`timed_out` gives the error of the stage the
dial stalled in (the connect, or the hybrid reply).
"""

from __future__ import annotations

import socket
from collections.abc import Generator

from .._core.addresses import NAMED_ADDRESS_TYPES, Address
from .._errors import ConnectTimeoutError
from .._transports import dial as transport_dial
from .._transports._common import check_timeout, retry_waits
from ._poll import IN, OUT

__all__: list[str] = []  # internal

Dial = Generator[tuple[socket.socket, int], None, socket.socket]


class UseThread(Exception):
    """This target is dialled with the blocking driver, in a thread."""


def on_loop(
    address: Address, *, timeout: float | None, retries: int = 0, retry_wait: float = 0.25
) -> bool:
    """Whether dials of *address* with these settings can run on the loop at all
    (the same answer for every connection of a forward: ask once).

    False for a dial with retries (its pauses) or a VM name to look up; raises
    :class:`hvsock.ArgumentError` for bad settings.
    """
    check_timeout(timeout)
    return not retry_waits(retries, retry_wait) and type(address) in transport_dial.TRANSPORTS


def dial(
    address: Address,
    *,
    timeout: float | None,
    buffer_size: int | None,
    retries: int = 0,
    retry_wait: float = 0.25,
    checked: bool = False,
) -> socket.socket | Dial:
    """A poll-loop dial of *address* (a resolved socket address; see the module notes):
    the connected socket if the connect completed at once, else a generator to step.

    *checked*: :func:`on_loop` already said yes for these settings (spares asking
    again per connection). Raises :class:`UseThread` (before any yield) when the
    dial must run in a thread, and the dial's :class:`hvsock.HvsockError` subclasses.
    """
    if not checked and not on_loop(
        address, timeout=timeout, retries=retries, retry_wait=retry_wait
    ):
        raise UseThread  # pauses to sleep, or a VM name to look up
    assert not isinstance(address, NAMED_ADDRESS_TYPES)
    gen = transport_dial.attempt(address, timeout=timeout, buffer_size=buffer_size)
    try:
        step = next(gen)
    except StopIteration as done:
        sock: socket.socket = done.value
        return sock
    if isinstance(step, (transport_dial.InThread, transport_dial.Pause)):
        gen.close()
        raise UseThread
    return _drive(gen, step)


def _drive(gen: transport_dial.Dial, step: transport_dial.Step) -> Dial:
    error: BaseException | None = None
    try:
        while True:
            if not isinstance(step, (transport_dial.Readable, transport_dial.Writable)):
                # Thread steps come first in every transport's dial, so they were
                # handed to a thread above; one later would be a new transport's bug.
                raise RuntimeError(f"a relay dial cannot run {step!r} on its loop")
            try:
                yield step.sock, IN if isinstance(step, transport_dial.Readable) else OUT
            except TimeoutError:
                error = step.stalled()
            next_step = transport_dial.resume(gen, None, error)
            if isinstance(next_step, socket.socket):
                return next_step
            step, error = next_step, None
    finally:
        gen.close()  # a no-op once it returned; else closes its socket


def timed_out(gen: Dial) -> OSError:
    """The error for *gen* whose deadline passed (its stage's message); closes *gen*."""
    try:
        gen.throw(TimeoutError())
    except OSError as exc:
        return exc
    except StopIteration as done:  # pragma: no cover - connected at the last moment
        done.value.close()
    finally:
        gen.close()
    return ConnectTimeoutError("connect timed out")  # pragma: no cover
