"""L1-side helpers of the hypervisor tier: ports, an echo listener, bounded reads."""

from __future__ import annotations

import hashlib
import itertools
import socket
from typing import Any

import hvsock

from ..kernel import _support as kernel_support
from ..kernel._support import Worker, started
from .guest import GUEST_CID, payload, sha256

__all__ = [
    "GUEST_CID",
    "Worker",
    "echo_once",
    "guest_address",
    "next_port",
    "payload",
    "recv_until_eof",
    "sha256",
    "started",
]

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
    """The kernel tier's bounded read, with this tier's longer default (nested emulation)."""
    return kernel_support.recv_until_eof(sock, limit, timeout)


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
    return listener, started(echo_once, listener)
