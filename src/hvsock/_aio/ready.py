"""Waiting on the event loop until a descriptor is readable or writable.

The one ``add_reader`` / ``add_writer`` wait: the asyncio dial driver, the service
host's accept loop and the exec agent's pipes all wait through :func:`wait_ready`
(the blocking twin is ``hvsock._transports._common.wait_ready``). The callback is
removed whatever happens, a cancel included, so no registration outlives its wait.
"""

from __future__ import annotations

import asyncio
import socket

__all__: list[str] = []


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def wait_ready(
    fd: socket.socket | int, writable: bool = False, timeout: float | None = None
) -> bool:
    """True once *fd* is readable (or *writable*); False when *timeout* seconds passed first.

    Raises ``NotImplementedError`` on loops that cannot watch descriptors (Windows'
    proactor), before waiting.
    """
    loop = asyncio.get_running_loop()
    if isinstance(fd, socket.socket):
        fd = fd.fileno()
    future: asyncio.Future[None] = loop.create_future()
    if writable:
        loop.add_writer(fd, _wake, future)
    else:
        loop.add_reader(fd, _wake, future)
    try:
        if timeout is None:
            await future
        else:
            await asyncio.wait_for(future, timeout)
    except asyncio.TimeoutError:
        return False
    finally:
        if writable:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)
    return True
