"""The data path of a file copy over real sockets: sendfile and its fallbacks, the hasher.

One side runs :func:`send_file` over a real socket, the other
:class:`AtomicWriter.receive` into a real directory. ``os.sendfile`` is wrapped
(never faked) to give the cases a kernel gives rarely: short sends, a full
socket buffer, descriptors it cannot serve, a file that shrinks or fails to
read half way.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import hvsock
from hvsock import HvsockError
from hvsock._builtin.files.atomic_write import AtomicWriter
from hvsock._builtin.files.channel import Channel
from hvsock._builtin.files.hashing import Hasher
from hvsock._builtin.files.sending import send_file
from hvsock._core import filecopy as fc
from hvsock._core.framing import encode_frame

MB = 1024 * 1024
SendFile = Callable[[int, int, int, int], int]


@pytest.fixture(params=["unix", "tcp"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    if request.param == "unix":
        a, b = socket.socketpair()
    else:
        with socket.create_server(("127.0.0.1", 0)) as server:
            a = socket.create_connection(server.getsockname())
            b, _ = server.accept()
    for s in (a, b):
        s.settimeout(30)  # as the client and the service have: non-blocking underneath
    with a, b:
        yield a, b


def copy_over(
    pair: tuple[socket.socket, socket.socket], src: Path, dest: Path, ticks: list[int] | None = None
) -> tuple[int | None, BaseException | None]:
    """send_file *src* on one end, receive it as *dest* on the other: (size, error)."""
    a, b = pair
    size = src.stat().st_size
    result: list[int | BaseException] = []

    def receive() -> None:
        dir_fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            writer = AtomicWriter(
                dir_fd,
                os.fsencode(dest.name),
                fc.Entry(b"x", fc.KIND_FILE, size=size),
                0,
                shown="x",
            )
            result.append(writer.receive(Channel(b)))
        except BaseException as exc:
            result.append(exc)
        finally:
            os.close(dir_fd)

    thread = threading.Thread(target=receive)
    thread.start()
    fd = os.open(src, os.O_RDONLY)
    try:
        chan = Channel(a)
        send_file(chan, fd, size, fc.Ready(), ticks.append if ticks is not None else None)
        chan.flush()
    finally:
        os.close(fd)
        thread.join(60)
    (outcome,) = result
    if isinstance(outcome, BaseException):
        return None, outcome
    return outcome, None


@pytest.fixture
def big(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(9 * MB + 12345)  # over SENDFILE_MIN, not a whole number of steps
    path = tmp_path / "big"
    path.write_bytes(data)
    return path, data


#: A stand-in for os.sendfile, given the real one first.
Behave = Callable[[SendFile, int, int, int, int], int]


def wrap_sendfile(monkeypatch: pytest.MonkeyPatch, behave: Behave) -> list[int]:
    """os.sendfile becomes ``behave(real, out_fd, in_fd, offset, count)``; returns the
    list of counts asked."""
    real = os.sendfile
    asked: list[int] = []

    def sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        asked.append(count)
        return behave(real, out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", sendfile)
    return asked


def test_a_large_file_goes_by_sendfile_and_arrives_verified(
    pair: tuple[socket.socket, socket.socket],
    big: tuple[Path, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, data = big
    asked = wrap_sendfile(monkeypatch, lambda real, *args: real(*args))
    ticks: list[int] = []
    size, error = copy_over(pair, src, tmp_path / "out", ticks)
    assert error is None
    assert size == len(data)
    assert (tmp_path / "out").read_bytes() == data
    assert asked, "sendfile was not used"
    assert sum(ticks) == len(data)
    assert not list(tmp_path.glob(".hvsock-*"))


def test_short_sendfiles_and_a_full_socket_buffer(
    pair: tuple[socket.socket, socket.socket],
    big: tuple[Path, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, data = big
    calls = [0]

    def short(real: SendFile, out_fd: int, in_fd: int, offset: int, count: int) -> int:
        calls[0] += 1
        if calls[0] % 3 == 0:
            raise BlockingIOError(errno.EAGAIN, "try again")
        return real(out_fd, in_fd, offset, min(count, 100_003))

    wrap_sendfile(monkeypatch, short)
    size, error = copy_over(pair, src, tmp_path / "out")
    assert error is None
    assert (size, (tmp_path / "out").read_bytes()) == (len(data), data)


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP])
def test_descriptors_sendfile_cannot_serve_are_copied(
    pair: tuple[socket.socket, socket.socket],
    big: tuple[Path, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
) -> None:
    src, data = big

    def refuse(real: SendFile, out_fd: int, in_fd: int, offset: int, count: int) -> int:
        raise OSError(code, os.strerror(code))

    asked = wrap_sendfile(monkeypatch, refuse)
    size, error = copy_over(pair, src, tmp_path / "out")
    assert error is None
    assert (size, (tmp_path / "out").read_bytes()) == (len(data), data)
    assert len(asked) == 1  # tried once, then the copy path


def incomplete_sources(src: Path) -> dict[str, Behave]:
    """Ways a source fails half way, each as an os.sendfile stand-in."""
    calls = [0]

    def shrinks_while_sent(real: SendFile, out: int, inp: int, offset: int, count: int) -> int:
        sent = real(out, inp, offset, min(count, MB))
        os.truncate(src, 3 * MB)
        return sent

    def shrinks_then_copied(real: SendFile, out: int, inp: int, offset: int, count: int) -> int:
        os.truncate(src, 2 * MB)  # the copy path (preadv) then finds it short
        raise OSError(errno.EINVAL, "not here")

    def read_error_half_way(real: SendFile, out: int, inp: int, offset: int, count: int) -> int:
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real(out, inp, offset, count)

    return {f.__name__: f for f in (shrinks_while_sent, shrinks_then_copied, read_error_half_way)}


@pytest.mark.parametrize(
    "case", ["shrinks_while_sent", "shrinks_then_copied", "read_error_half_way"]
)
def test_a_source_not_read_whole_is_discarded(
    pair: tuple[socket.socket, socket.socket],
    big: tuple[Path, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    src, _ = big
    wrap_sendfile(monkeypatch, incomplete_sources(src)[case])
    size, error = copy_over(pair, src, tmp_path / "out")
    assert size is None
    assert isinstance(error, HvsockError)
    assert "changed or could not be read" in str(error)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big"]  # no target, no temp


def send_fails(sock: socket.socket, src: Path, error: type[BaseException]) -> None:
    """send_file *src* over *sock*, which must raise *error*."""
    fd = os.open(src, os.O_RDONLY)
    try:
        with pytest.raises(error):
            send_file(Channel(sock), fd, src.stat().st_size, fc.Ready(), None)
    finally:
        os.close(fd)


def test_a_peer_that_reads_nothing_times_out(big: tuple[Path, bytes]) -> None:
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(0.3)
        send_fails(a, big[0], TimeoutError)


def test_a_peer_gone_half_way_is_a_connection_error(big: tuple[Path, bytes]) -> None:
    a, b = socket.socketpair()
    read_some = threading.Event()

    def read_then_close() -> None:
        with b:
            got = 0
            while got < MB:
                got += len(b.recv(65536))
            read_some.set()

    thread = threading.Thread(target=read_then_close)
    thread.start()
    with a:
        a.settimeout(30)
        try:
            send_fails(a, big[0], ConnectionError)
        finally:
            thread.join(30)
    assert read_some.is_set()


# -- the hasher --------------------------------------------------------------------------


def test_hasher_keeps_the_order_of_blocks_and_file_ranges(tmp_path: Path) -> None:
    data = os.urandom(3 * MB + 17)
    path = tmp_path / "f"
    path.write_bytes(data)
    pieces = [data[:10], data[10 : MB + 10], data[MB + 10 : MB + 20]]  # small, large, small
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        with Hasher(digest) as hasher:
            for piece in pieces:
                hasher.update(memoryview(piece))
            hasher.update_from(fd, MB + 20, len(data))
            hasher.wait()
            assert not hasher.short
    finally:
        os.close(fd)
    assert digest.digest() == hashlib.sha256(data).digest()


def test_hasher_marks_a_range_it_cannot_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(MB))
    fd = os.open(path, os.O_RDONLY)
    try:
        with Hasher(hashlib.sha256()) as hasher:
            hasher.update_from(fd, 0, 2 * MB)  # the file has half of that
            hasher.wait()
            assert hasher.short
    finally:
        os.close(fd)


def test_hasher_close_drops_what_is_queued_and_ends_its_thread() -> None:
    block = memoryview(os.urandom(MB))
    hasher = Hasher(hashlib.sha256())
    for _ in range(50):
        hasher.update(block)
    hasher.close()  # returns after at most the running block, not all fifty
    hasher.wait()  # nothing left to wait for
    assert not [t for t in threading.enumerate() if t.name == "hvsock-sha256"]


@pytest.mark.parametrize(
    ("sent", "outcome"),
    [
        (b"", None),
        (b"\x00\x00", "in the middle of a message header"),
        (b"\x00\x00\x00\x10{}", "in the middle of a message"),
    ],
)
def test_channel_eof_between_or_inside_messages(
    pair: tuple[socket.socket, socket.socket], sent: bytes, outcome: str | None
) -> None:
    a, b = pair
    a.sendall(sent)
    a.shutdown(socket.SHUT_WR)
    chan = Channel(b)
    if outcome is None:
        assert chan.recv_or_eof() is None
        return
    with pytest.raises(hvsock.PeerClosedError, match=outcome):
        chan.recv_or_eof()


def test_channel_message_then_raw_bytes(pair: tuple[socket.socket, socket.socket]) -> None:
    """A message and the raw file bytes after it arrive in one read-ahead: the message
    takes only its own bytes, the block gets the rest (small and large blocks)."""
    a, b = pair
    big = os.urandom(300 * 1024)
    bigger = os.urandom(600 * 1024)

    def send() -> None:
        sender = Channel(a)
        sender.send(fc.Data(0, 3))
        sender.write(b"abc")
        sender.send(fc.Data(0, len(big)))
        sender.write(big)
        sender.flush()
        # One send: the read-ahead takes the message and the block's first part, the
        # rest of the block is read straight into the caller's buffer.
        a.sendall(encode_frame(fc.encode(fc.Data(0, len(bigger))), fc.MAX_MESSAGE) + bigger)
        a.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    chan = Channel(b)
    assert chan.recv() == fc.Data(0, 3)
    small = memoryview(bytearray(3))
    chan.recv_into(small)
    assert small == b"abc"
    assert chan.recv() == fc.Data(0, len(big))
    block = memoryview(bytearray(len(big)))
    chan.recv_into(block)
    assert block == big
    assert chan.recv() == fc.Data(0, len(bigger))
    block = memoryview(bytearray(len(bigger)))
    chan.recv_into(block)
    assert block == bigger
    assert chan.recv_or_eof() is None
    thread.join(30)
