"""netcat-style plumbing: stdio <-> socket, and socket <-> child process."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable

from .._pump import Direction, copy, peer_ends, shut_write, start_copy


def _write_all(fd: int) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    return write


def _closer(fd: int) -> Callable[[], None]:
    return lambda: os.close(fd)


def wait_all(*directions: Direction) -> None:
    """Wait for every direction, waking often so Ctrl-C reaches the main thread."""
    for d in directions:
        while not d.done.wait(0.2):
            pass


def stdio_session(
    sock: socket.socket, stdin_fd: int, stdout_fd: int, where: str = "the peer"
) -> tuple[Direction, Direction]:
    """stdin -> sock and sock -> stdout until both directions end.

    stdin's EOF shuts the socket's write side (the peer reads EOF, and can still
    answer); the socket's EOF closes stdout. Returns (upload, download); a reset
    by the peer (named *where*) is a direction's ``error``, a
    :class:`hvsock.ConnectionResetByPeerError`.
    """
    recv, send = peer_ends(sock, where)
    up = start_copy(lambda n: os.read(stdin_fd, n), send, shut_write(sock), "stdin->socket")
    down = start_copy(recv, _write_all(stdout_fd), _closer(stdout_fd), "socket->stdout")
    wait_all(up, down)
    return up, down


def exec_session(sock: socket.socket, command: str, env: dict[str, str]) -> int:
    """Run *command* with its stdin/stdout joined to *sock*; return its exit status.

    Pipes rather than the socket itself as the child's stdio, so the child
    closing its stdout is a half-close the peer sees even while it still reads.
    """
    import subprocess  # only --exec needs it; plain `hvsock connect` is start-up bound

    child = subprocess.Popen(
        command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    assert child.stdin is not None
    assert child.stdout is not None
    child_in, child_out = child.stdin.fileno(), child.stdout.fileno()

    def close_child_stdin() -> None:
        child.stdin.close()  # type: ignore[union-attr]

    down = Direction("socket->child")
    threading.Thread(
        target=copy, args=(sock.recv, _write_all(child_in), close_child_stdin, down), daemon=True
    ).start()
    up = start_copy(
        lambda n: os.read(child_out, n), sock.sendall, shut_write(sock), "child->socket"
    )
    try:
        wait_all(up)
        status = child.wait()
        # The child is gone: stop reading for it even if the peer never sends EOF.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)
        wait_all(down)
        return status
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
