"""Gathered writes (a header and a payload as separate buffers) over real Unix sockets.

``sendall_parts`` (the exec client's stdin frames) must deliver exactly
``b"".join(parts)`` whatever the socket takes per call: here the socket buffers
are made small so that short writes really happen, and the test checks that they did.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

import pytest

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
    return [
        b"\x00\x01\x02\x03\x04",
        memoryview(big)[:700_000],
        b"",
        bytearray(b"mid"),
        memoryview(big)[700_000:],
        os.urandom(100_000),
    ]


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
