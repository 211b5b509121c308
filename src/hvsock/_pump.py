"""Copy bytes between two streams, both ways, with half-close carried across.

EOF on one side becomes a write shutdown on the other; the copy ends when both
directions have ended. Used by the CLI (stdio <-> socket) and the emulated muxer.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Callable

from ._errors import reset_by_peer

CHUNK = 256 * 1024

#: fcntl's F_SETPIPE_SZ (Linux only; CPython names it from 3.10, on Linux builds).
_F_SETPIPE_SZ = 1031

Read = Callable[[int], bytes]
Write = Callable[[bytes], object]
Finish = Callable[[], None]


class Direction:
    """One direction of a copy: how many bytes it moved and how it ended."""

    # A plain class, not a dataclass: `hvsock connect` imports this module, and
    # dataclasses' import alone costs a quarter of Python's start-up.
    def __init__(self, name: str) -> None:
        self.name = name
        self.nbytes = 0
        self.error: BaseException | None = None
        self.done = threading.Event()

    def __repr__(self) -> str:
        return (
            f"Direction(name={self.name!r}, nbytes={self.nbytes}, error={self.error!r}, "
            f"done={self.done.is_set()})"
        )


def copy(
    read: Read, write: Write, finish: Finish, direction: Direction, chunk: int = CHUNK
) -> None:
    """Copy until *read* returns b"" (or fails), then call *finish* once."""
    try:
        while True:
            data = read(chunk)
            if not data:
                break
            write(data)
            direction.nbytes += len(data)
    except OSError as exc:
        direction.error = exc
    finally:
        try:
            finish()
        except OSError as exc:
            direction.error = direction.error or exc
        direction.done.set()


def peer_ends(sock: socket.socket, where: str) -> tuple[Read, Write]:
    """*sock*'s recv and sendall, with a reset (or a peer gone mid-write) raised as
    :class:`hvsock.ConnectionResetByPeerError`, so a cut stream is never taken for a
    complete one."""

    def read(n: int) -> bytes:
        try:
            return sock.recv(n)
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise reset_by_peer(where, exc) from exc

    def write(data: bytes) -> None:
        try:
            sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise reset_by_peer(where, exc) from exc

    return read, write


def shut_write(sock: socket.socket) -> Finish:
    def finish() -> None:
        # Already gone (reset, or closed by the other direction): nothing to tell.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    return finish


def start_copy(read: Read, write: Write, finish: Finish, name: str) -> Direction:
    """Run :func:`copy` in a daemon thread; the returned Direction's ``done`` says when it ends."""
    direction = Direction(name)
    threading.Thread(
        target=copy, args=(read, write, finish, direction), name=f"hvsock-{name}", daemon=True
    ).start()
    return direction


def splice_sockets(
    a: socket.socket, b: socket.socket, on_close: Callable[[], None] | None = None
) -> tuple[Direction, Direction]:
    """Copy a -> b and b -> a in two threads; close both once both directions end.

    *on_close* runs after both are closed.
    """
    ab = start_copy(a.recv, b.sendall, shut_write(b), "a->b")
    ba = start_copy(b.recv, a.sendall, shut_write(a), "b->a")

    def closer() -> None:
        ab.done.wait()
        ba.done.wait()
        a.close()
        b.close()
        if on_close is not None:
            on_close()

    threading.Thread(target=closer, name="hvsock-splice-close", daemon=True).start()
    return ab, ba


def grow_pipe(fd: int, size: int) -> None:
    """Ask for a pipe of *size* bytes (*fd* is either end): a streaming reader and
    writer then wake each other far less often than with Linux's 64 KiB default.

    Linux only. Elsewhere, or past the per-user pipe quota
    (``/proc/sys/fs/pipe-user-pages-soft``), the pipe keeps a smaller size: slower,
    just as correct.
    """
    if not sys.platform.startswith("linux"):
        return
    import fcntl  # not at the top: `hvsock connect` imports this module, and Windows

    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, size)
