"""The one frame reader (FrameReader, sans I/O) and its blocking driver on real sockets.

Every frame hvsock reads goes through ``hvsock._core.framing.FrameReader``: streams fed
in any cut, a caller's read-ahead buffer (``take``), and the drivers that read exactly
``wanted()`` bytes (``hvsock._transports.recv``), short reads included.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hvsock import FrameTooLargeError, PeerClosedError, ProtocolError
from hvsock._core.framing import HEADER_SIZE, NO_TAG, FrameReader, encode_frame
from hvsock._transports.recv import recv_frame, recv_into_exactly

pytestmark = pytest.mark.usefixtures("fd_baseline")

bodies = st.lists(st.binary(max_size=300), max_size=10)
tagged_frames = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=300)), max_size=10)


def header(length: int) -> bytes:
    return length.to_bytes(HEADER_SIZE, "big")


def wire(frames: list[tuple[int, bytes]], tagged: bool) -> bytes:
    return b"".join(encode_frame(bytes([tag]) + body if tagged else body) for tag, body in frames)


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# -- sans I/O: feed -----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(frames=tagged_frames, tagged=st.booleans(), cuts=st.lists(st.integers(0, 4000), max_size=25))
def test_any_cut_gives_back_the_frames(
    frames: list[tuple[int, bytes]], tagged: bool, cuts: list[int]
) -> None:
    expected = [(tag if tagged else NO_TAG, body) for tag, body in frames]
    reader = FrameReader(1000, tagged=tagged)
    got = [f for piece in cut(wire(frames, tagged), cuts) for f in reader.feed(piece)]
    assert got == expected
    assert reader.at_boundary()
    assert reader.buffered == 0


@settings(max_examples=300, deadline=None)
@given(
    frames=tagged_frames,
    tagged=st.booleans(),
    shorts=st.lists(st.integers(0, 400), min_size=1, max_size=25),
)
def test_reading_at_most_wanted_never_reads_past_a_frame(
    frames: list[tuple[int, bytes]], tagged: bool, shorts: list[int]
) -> None:
    """A driver asks for wanted() and may get less (a short read): each frame comes
    whole, and when one does, not a byte of the next was consumed."""
    stream = wire(frames, tagged)
    reader = FrameReader(1000, tagged=tagged)
    pos, got = 0, []
    for i in itertools.count():
        if pos >= len(stream):
            break
        want = reader.wanted()
        assert 1 <= want <= len(stream) - pos  # never more than the frame still needs
        n = max(1, min(want, shorts[i % len(shorts)] or want))
        out = reader.feed(stream[pos : pos + n])
        pos += n
        if out:
            [frame] = out
            got.append(frame)
            assert reader.at_boundary()  # nothing of the next frame was taken
    assert [body for _, body in got] == [body for _, body in frames]
    if tagged:
        assert [tag for tag, _ in got] == [tag for tag, _ in frames]


def test_a_body_read_exactly_is_the_object_read() -> None:
    for tagged in (False, True):
        reader = FrameReader(tagged=tagged)
        body = bytes(5000)
        head = header(len(body) + tagged) + (b"\x07" if tagged else b"")
        assert reader.wanted() == len(head)
        assert reader.feed(head) == []
        assert reader.wanted() == len(body)
        [(_, got)] = reader.feed(body)
        assert got is body


@pytest.mark.parametrize("tagged", [False, True])
def test_eof_mid_frame_is_not_a_boundary_and_says_where(tagged: bool) -> None:
    reader = FrameReader(100, tagged=tagged)
    head = HEADER_SIZE + tagged
    reader.feed(header(10)[:2])
    assert not reader.at_boundary()
    assert reader.progress() == (True, 2, head)
    reader.feed(header(10)[2:] + (b"\x01" if tagged else b""))
    assert reader.progress() == (False, 0, 10 - tagged)
    reader.feed(b"abc")
    assert reader.progress() == (False, 3, 10 - tagged)
    assert not reader.at_boundary()


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 64),
    over=st.integers(1, 2**31),
    tagged=st.booleans(),
    before=st.lists(st.binary(max_size=8), max_size=3),
    split=st.integers(0, 3),
)
def test_an_oversized_claim_fails_before_any_body_is_buffered(
    limit: int, over: int, tagged: bool, before: list[bytes], split: int
) -> None:
    before = (
        [b for b in before if 1 <= len(b) <= limit]
        if tagged
        else [b for b in before if len(b) <= limit]
    )
    good = b"".join(encode_frame(b) for b in before)
    bad = header(limit + over) + b"\x05" + b"x" * 50
    reader = FrameReader(limit, tagged=tagged)
    # The length's 4 bytes may arrive in two pieces: the check still comes before the body.
    stream = good + bad
    first, rest = stream[: len(good) + split], stream[len(good) + split :]
    delivered: list[tuple[int, bytes]] = []

    def feed_until_it_fails() -> None:
        delivered.extend(reader.feed(first))
        delivered.extend(reader.feed(rest))
        reader.feed(b"")  # frames came first: the error is due on the next call

    with pytest.raises(FrameTooLargeError, match=f"{limit + over}-byte frame"):
        feed_until_it_fails()
    assert [body if not tagged else bytes([tag]) + body for tag, body in delivered] == before
    assert reader.buffered == 0
    assert reader.broken
    assert not reader.at_boundary()
    with pytest.raises(ProtocolError, match="already broken"):
        reader.feed(header(0))


def test_a_tagged_frame_needs_its_tag() -> None:
    with pytest.raises(ProtocolError, match="empty frame"):
        FrameReader(tagged=True).feed(header(0))
    assert FrameReader().feed(header(0)) == [(NO_TAG, b"")]
    assert FrameReader(tagged=True).feed(header(1) + b"\x09") == [(9, b"")]


# -- sans I/O: take (a caller's read-ahead buffer) ----------------------------------------


@settings(max_examples=200, deadline=None)
@given(frames=bodies, raw=st.binary(max_size=50), upto=st.integers(0, 4000))
def test_take_leaves_what_follows_the_frame(frames: list[bytes], raw: bytes, upto: int) -> None:
    stream = b"".join(encode_frame(b) for b in frames) + raw
    pos = upto % (len(stream) + 1)
    buffer = bytearray(stream[:pos])  # what a read-ahead happened to get
    reader = FrameReader(1000)
    got: list[bytes] = []
    while len(got) < len(frames):
        taken = reader.take(buffer)
        if isinstance(taken, int):
            # Not whole yet: nothing was taken, and it says how much it needs.
            assert taken > len(buffer)
            more = stream[pos : pos + taken - len(buffer)]
            assert len(more) == taken - len(buffer)
            buffer += more
            pos += len(more)
            continue
        got.append(taken[1])
    assert got == frames
    # Whatever followed the frames is still there, untouched.
    assert bytes(buffer) + stream[pos:] == raw


def test_take_refuses_an_oversized_claim_at_once() -> None:
    buffer = bytearray(header(17) + b"y" * 17)
    reader = FrameReader(16)
    with pytest.raises(FrameTooLargeError):
        reader.take(buffer)
    with pytest.raises(ProtocolError, match="already broken"):
        reader.take(bytearray(header(1) + b"z"))


# -- the blocking driver, on real sockets ------------------------------------------------


@contextlib.contextmanager
def sender(pieces: list[bytes], then_close: bool = True) -> Iterator[socket.socket]:
    """A socket pair; the other end sends *pieces* one send each (pausing so that they
    arrive as separate reads), then half-closes."""
    a, b = socket.socketpair()
    a.settimeout(10)

    def send() -> None:
        for piece in pieces:
            b.sendall(piece)
            time.sleep(0.001)
        if then_close:
            b.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=send, daemon=True)
    with a, b:
        thread.start()
        try:
            yield a
        finally:
            thread.join(10)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=tagged_frames, tagged=st.booleans(), cuts=st.lists(st.integers(0, 4000), max_size=8))
def test_recv_frame_over_short_reads(
    frames: list[tuple[int, bytes]], tagged: bool, cuts: list[int]
) -> None:
    stream = wire(frames, tagged)
    with sender(cut(stream, cuts)) as sock:
        reader = FrameReader(1000, tagged=tagged)
        got = []
        while (frame := recv_frame(sock, reader)) is not None:
            got.append(frame[1])
    assert got == [body for _, body in frames]


@pytest.mark.parametrize(
    ("sent", "match"),
    [
        (header(10)[:3], r"middle of a frame \(3 of 4 bytes\)"),
        (header(10), "before a 10-byte frame body"),
        (header(10) + b"abcd", r"middle of a frame \(4 of 10 bytes\)"),
    ],
)
def test_recv_frame_eof_inside_a_frame(sent: bytes, match: str) -> None:
    with sender([sent]) as sock, pytest.raises(PeerClosedError, match=match):
        recv_frame(sock, FrameReader(100))


def test_recv_frame_oversized_leaves_the_body_unread() -> None:
    with sender([header(101) + b"body"]) as sock:
        with pytest.raises(FrameTooLargeError, match="101-byte frame"):
            recv_frame(sock, FrameReader(100))
        assert sock.recv(100) == b"body"


def test_recv_frame_deadline_covers_the_whole_frame() -> None:
    with sender([header(10) + b"abc"], then_close=False) as sock:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            recv_frame(sock, FrameReader(100), time.monotonic() + 0.3)
        assert time.monotonic() - start < 30


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(min_size=1, max_size=3000),
    cuts=st.lists(st.integers(0, 3000), max_size=8),
    short=st.integers(0, 50),
)
def test_recv_into_exactly_over_short_reads(data: bytes, cuts: list[int], short: int) -> None:
    with sender(cut(data, cuts)) as sock:
        buf = bytearray(len(data) + short)
        got = recv_into_exactly(sock, buf)
    # Whole, or short only because the peer closed after sending all it had.
    assert got == len(data)
    assert bytes(buf[:got]) == data


def test_a_tagged_reader_checks_the_length_before_the_tag() -> None:
    # The 4 length bytes are enough to refuse a claim: the tag byte is not waited for.
    with pytest.raises(FrameTooLargeError):
        FrameReader(16, tagged=True).feed(header(17))
    with pytest.raises(ProtocolError, match="empty frame"):
        FrameReader(16, tagged=True).feed(header(0))


@pytest.mark.parametrize("tagged", [False, True])
def test_wanted_counts_what_is_already_buffered(tagged: bool) -> None:
    reader = FrameReader(100, tagged=tagged)
    head = HEADER_SIZE + tagged
    for got in range(head):
        assert reader.wanted() == head - got
        reader.feed((header(4) + b"\x02")[got : got + 1])
    for got in range(4 - tagged):
        assert reader.wanted() == 4 - tagged - got
        out = reader.feed(b"b")
    assert out == [(2 if tagged else NO_TAG, b"b" * (4 - tagged))]
    assert reader.wanted() == head
