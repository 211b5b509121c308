"""AF_HYPERV under asyncio. Isolated here because it is the one unverified part.

What CPython's source says (read, not run): the proactor loop's ``sock_connect``
first calls ``_overlapped.BindLocal``, which raises ValueError for any family but
AF_INET / AF_INET6; its ``accept`` makes the AcceptEx socket with
``socket.socket(listener.family)``, protocol 0, which CPython refuses for
AF_HYPERV ("unsupported AF_HYPERV protocol"). So on the proactor loop (the
Windows default) connect and accept run in a worker thread here, and the
connected socket is handed to the loop (``asyncio.open_connection(sock=...)``):
the data path, overlapped WSARecv / WSASend, stays on the loop. The selector
loop (``asyncio.WindowsSelectorEventLoopPolicy``) uses plain non-blocking calls
and needs no thread. This module has never run on Windows in hvsock's CI.
"""

from __future__ import annotations

import asyncio
import select
import socket


async def accept(listener: socket.socket) -> tuple[socket.socket, object]:  # pragma: no cover
    """Accept one connection in a worker thread (see the module notes)."""
    loop = asyncio.get_running_loop()
    conn, peer = await loop.run_in_executor(None, _blocking_accept, listener)
    return conn, peer


def _blocking_accept(listener: socket.socket) -> tuple[socket.socket, object]:
    # The listener is non-blocking (the host sets it so), so wait for a
    # connection first; a short select timeout lets a closed listener end this.
    while True:
        if listener.fileno() < 0:
            raise OSError("listener closed")
        readable, _, _ = select.select([listener], [], [], 0.5)
        if not readable:
            continue
        try:
            return listener.accept()
        except BlockingIOError:
            continue  # another accept took it first


def needs_thread(sock: socket.socket) -> bool:
    """True for an AF_HYPERV socket on a loop that is not a selector loop."""
    family = getattr(socket, "AF_HYPERV", None)
    if family is None or sock.family != family:
        return False
    loop = asyncio.get_running_loop()
    return not isinstance(loop, asyncio.SelectorEventLoop)
