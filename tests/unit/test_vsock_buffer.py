"""ensure_buffer_size leaves sockets of other families alone (no AF_VSOCK socket is made
here: the kernel tier checks the vsock side)."""

from __future__ import annotations

import socket

from hvsock._transports.vsock import ensure_buffer_size


def test_ensure_buffer_size_leaves_other_families_alone() -> None:
    a, b = socket.socketpair()
    with a, b:
        before = (
            a.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        )
        ensure_buffer_size(a, 1 << 22)
        after = (
            a.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        )
        assert after == before
