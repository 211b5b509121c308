"""L1-side helpers of the hypervisor tier: ports, an echo listener, bounded reads."""

from __future__ import annotations

import hashlib
import itertools
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import hvsock

from .guest import GUEST_CID, payload, sha256

__all__ = ["GUEST_CID", "Worker", "echo_once", "guest_address", "next_port", "payload",
           "recv_until_eof", "sha256"]

IO_TIMEOUT = 120.0
CHUNK = 64 * 1024
MIB = 1 << 20
_ports = itertools.count(20000)


def next_port() -> int:
    """A port no other test of this session uses (on L1 and in L2 alike)."""
    return next(_ports)


def guest_address(port: int) -> str:
    """The address L1 connects to: always L2's CID, through vhost."""
    return f"vsock://{GUEST_CID}:{port}"


def recv_until_eof(sock: socket.socket, limit: int, timeout: float = IO_TIMEOUT) -> bytes:
    """Everything *sock* sends until EOF; fails past *limit* bytes or *timeout* seconds."""
    sock.settimeout(timeout)
    parts: list[bytes] = []
    total = 0
    deadline = time.monotonic() + timeout
    while total <= limit:
        if time.monotonic() > deadline:
            raise AssertionError(f"no EOF within {timeout} s ({total} bytes read)")
        data = sock.recv(CHUNK)
        if not data:
            return b"".join(parts)
        parts.append(data)
        total += len(data)
    raise AssertionError(f"peer sent more than {limit} bytes")


class Worker(threading.Thread):
    """A thread that keeps its result or exception for :meth:`finish` to hand back."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        super().__init__(name=getattr(func, "__name__", "worker"), daemon=True)
        self._func = func
        self._args = args
        self.result: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self._func(*self._args)
        except BaseException as exc:  # handed to the test thread by finish()
            self.error = exc

    def finish(self, timeout: float) -> Any:
        self.join(timeout)
        if self.is_alive():
            raise AssertionError(f"thread {self.name} still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


def echo_once(listener: socket.socket, timeout: float = 300.0) -> dict[str, Any]:
    """Accept one connection on *listener*, read it to EOF, send it all back, close.

    Reading to EOF before answering proves the peer's half-close arrived while its
    read side stayed open. Returns the peer's address and what was received.
    """
    listener.settimeout(timeout)
    conn, peer = listener.accept()
    with conn:
        data = recv_until_eof(conn, 64 * MIB)
        conn.sendall(data)
    return {"peer": peer, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def listening_echo(port: int) -> tuple[socket.socket, Worker]:
    """An L1 listener on vsock://any:*port* and the thread that echoes one connection."""
    listener = hvsock.listen(f"vsock://any:{port}")
    return listener, Worker(echo_once, listener)
