"""Gathered writes (a header and a payload as separate buffers) over real Unix sockets.

``sendall_parts`` (blocking sockets, the exec client) and ``write_parts`` (asyncio
streams, the exec agent) must deliver exactly ``b"".join(parts)`` whatever the
socket takes per call: here the socket buffers are made small so that short
writes really happen, and the tests check that they did.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from typing import Any

import pytest

from hvsock._aio.streams import write_parts
from hvsock._transports._common import sendall_parts

pytestmark = pytest.mark.timeout(60)

SMALL = 16 * 1024


def _small_pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL)
    return a, b


def _read_all(sock: socket.socket, size: int, into: bytearray) -> None:
    while len(into) < size:
        data = sock.recv(65536)
        if not data:
            return
        into += data


class RecordingSocket(socket.socket):
    """A real socket that notes what each ``sendmsg`` was offered and what it took."""

    calls: list[tuple[int, int]]

    def sendmsg(self, buffers: Any, *args: Any) -> int:
        buffers = list(buffers)
        sent = super().sendmsg(buffers, *args)
        self.calls.append((sum(len(b) for b in buffers), sent))
        return sent


class SendallOnly:
    """A socket with no ``sendmsg`` (as on Windows): the parts must go joined."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent: list[int] = []

    def sendall(self, data: bytes) -> None:
        self.sent.append(len(data))
        self.sock.sendall(data)


def _parts() -> list[bytes | bytearray | memoryview]:
    big = os.urandom(1 << 20)
    return [b"\x00\x01\x02\x03\x04", memoryview(big)[: 700_000], b"", bytearray(b"mid"),
            memoryview(big)[700_000:], os.urandom(100_000)]


def _send_and_read(sender: Any, receiver: socket.socket) -> None:
    """``sendall_parts(sender, parts)`` while a thread reads; the bytes must match."""
    parts = _parts()
    expected = b"".join(parts)
    got = bytearray()
    reader = threading.Thread(target=_read_all, args=(receiver, len(expected), got))
    reader.start()
    try:
        sendall_parts(sender, parts)
    finally:
        reader.join(20)
        receiver.close()
    assert bytes(got) == expected


def test_sendall_parts_resumes_after_short_sendmsg_calls() -> None:
    a, b = _small_pair()
    sock = RecordingSocket(fileno=a.detach())
    sock.calls = []
    # A timeout makes Python send non-blocking: each call takes only what fits.
    sock.settimeout(20)
    with sock:
        _send_and_read(sock, b)
    assert any(sent < offered for offered, sent in sock.calls), sock.calls  # short writes
    assert all(offered > 0 for offered, _ in sock.calls)  # the empty part never goes


def test_sendall_parts_without_sendmsg_sends_the_joined_bytes() -> None:
    a, b = socket.socketpair()
    fake = SendallOnly(a)
    with a:
        _send_and_read(fake, b)
    assert fake.sent == [len(b"".join(_parts()))]


def test_write_parts_short_writev_then_the_transport_keeps_the_order() -> None:
    frames = [[os.urandom(5), os.urandom(256 * 1024)] for _ in range(16)]
    expected = b"".join(b"".join(f) for f in frames)
    a, b = _small_pair()
    got = bytearray()
    go = threading.Event()

    def read_later() -> None:
        go.wait(20)
        _read_all(b, len(expected), got)

    reader = threading.Thread(target=read_later)
    reader.start()

    async def main() -> list[int]:
        _, writer = await asyncio.open_connection(sock=a)
        # Room for everything in the transport, so nothing waits for the reader yet.
        writer.transport.set_write_buffer_limits(high=len(expected) * 2)
        queued = []
        for parts in frames:
            await write_parts(writer, list(parts))
            queued.append(writer.transport.get_write_buffer_size())
        go.set()
        # Limits of zero: drain() returns once the transport has sent everything.
        writer.transport.set_write_buffer_limits(high=0)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        return queued

    try:
        queued = asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        go.set()
        reader.join(20)
        b.close()
    assert bytes(got) == expected
    # The socket took the first frame only in part; the rest queued in the transport.
    assert queued[0] > 0
    assert queued == sorted(queued)


def test_write_parts_to_a_closed_peer_raises_connection_error() -> None:
    a, b = socket.socketpair()
    b.close()

    async def main() -> None:
        _, writer = await asyncio.open_connection(sock=a)

        async def flood() -> None:
            for _ in range(100):
                await write_parts(writer, [b"head!", os.urandom(65536)])

        try:
            with pytest.raises(ConnectionError):
                await flood()
        finally:
            writer.close()

    asyncio.run(asyncio.wait_for(main(), 30))
