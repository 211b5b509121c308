"""The one asyncio readiness wait (hvsock._aio.ready.wait_ready), on real sockets and pipes."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from hvsock._aio.ready import wait_ready

pytestmark = pytest.mark.usefixtures("fd_baseline")


def registered(loop: asyncio.AbstractEventLoop, fd: int) -> bool:
    selector = loop._selector  # type: ignore[attr-defined]
    return fd in selector.get_map()


def test_readable_once_the_peer_sends_and_the_callback_is_gone() -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        with a, b:
            loop = asyncio.get_running_loop()
            waiting = asyncio.ensure_future(wait_ready(a))
            await asyncio.sleep(0)
            assert registered(loop, a.fileno())
            assert not waiting.done()
            b.send(b"x")
            assert await asyncio.wait_for(waiting, 30) is True
            assert not registered(loop, a.fileno())

    asyncio.run(main())


def test_timeout_gives_false_and_unregisters() -> None:
    async def main() -> None:
        r, w = os.pipe()
        try:
            loop = asyncio.get_running_loop()
            assert await wait_ready(r, timeout=0.05) is False
            assert not registered(loop, r)
            assert await wait_ready(w, writable=True, timeout=30) is True
            assert not registered(loop, w)
        finally:
            os.close(r)
            os.close(w)

    asyncio.run(main())


def test_a_cancelled_wait_leaves_no_callback() -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        with a, b:
            loop = asyncio.get_running_loop()
            task = asyncio.ensure_future(wait_ready(a))
            await asyncio.sleep(0)
            assert registered(loop, a.fileno())
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not registered(loop, a.fileno())

    asyncio.run(main())
