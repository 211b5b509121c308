"""The 9P2000.L codec: round trips of every message, and hostile bytes give messages or
ProtocolError, nothing else."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hvsock import ProtocolError
from hvsock._core import ninep as p

_INT = {"b": 0xFF, "w": 0xFFFF, "d": 0xFFFFFFFF, "q": 2**64 - 1}
_names = st.binary(max_size=40)
_qids = st.builds(
    p.Qid, st.integers(0, 0xFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 2**64 - 1)
)


def _field(code: str) -> st.SearchStrategy[Any]:
    if code in _INT:
        return st.integers(0, _INT[code])
    if code == "s":
        return _names
    if code == "Q":
        return _qids
    if code == "S":
        return st.lists(_names, max_size=20).map(tuple)
    if code == "R":
        return st.lists(_qids, max_size=20).map(tuple)
    return st.binary(max_size=300)


@st.composite
def messages(draw: st.DrawFn) -> p.Message:
    kind = draw(st.sampled_from(sorted(p.LAYOUTS)))
    args = tuple(draw(_field(code)) for code in p.LAYOUTS[kind])
    return p.Message(kind, draw(st.integers(0, 0xFFFF)), args)


@settings(max_examples=400)
@given(messages())
def test_every_message_round_trips(message: p.Message) -> None:
    wire = p.encode(message)
    assert struct.unpack_from("<I", wire)[0] == len(wire)
    assert p.decode(wire) == message


@settings(max_examples=200)
@given(st.lists(messages(), min_size=1, max_size=8), st.data())
def test_decoder_reassembles_any_split(batch: list[p.Message], data: st.DataObject) -> None:
    wire = b"".join(p.encode(m) for m in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    decoder = p.Decoder(1 << 20)
    out: list[p.Message] = []
    last = 0
    for cut in [*cuts, len(wire)]:
        out.extend(decoder.feed(wire[last:cut]))
        last = cut
    assert out == batch
    assert decoder.pending == 0


@settings(max_examples=600)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_messages_or_protocol_error(data: bytes) -> None:
    decoder = p.Decoder(8192)
    try:
        for message in decoder.feed(data):
            assert message.type in p.LAYOUTS
            assert p.decode(p.encode(message)) == message
    except ProtocolError:
        pass


@settings(max_examples=300)
@given(messages(), st.integers(0, 40), st.binary(min_size=1, max_size=4))
def test_corrupted_messages_give_protocol_error_or_a_message(
    message: p.Message, at: int, junk: bytes
) -> None:
    wire = bytearray(p.encode(message))
    at = min(at, len(wire) - 1)
    wire[at : at + len(junk)] = junk
    try:
        decoded = p.decode(bytes(wire))
    except ProtocolError:
        return
    assert decoded.type in p.LAYOUTS


def test_oversized_frame_is_refused_before_it_is_buffered() -> None:
    decoder = p.Decoder(4096)
    with pytest.raises(ProtocolError, match="msize"):
        list(decoder.feed(struct.pack("<IBH", 4097, p.TREAD, 1)))


def test_known_layout_matches_the_wire() -> None:
    # Twalk fid=1 newfid=2 names ["a", "bc"], tag 5, spelt out by hand.
    wire = p.encode(p.Message(p.TWALK, 5, (1, 2, (b"a", b"bc"))))
    body = struct.pack("<IIH", 1, 2, 2) + b"\x01\x00a" + b"\x02\x00bc"
    assert wire == struct.pack("<IBH", 7 + len(body), 110, 5) + body
    # Tsetattr: fid valid mode uid gid (u32) then size and four times (u64).
    setattr_ = p.Message(p.TSETATTR, 1, (1, 2, 3, 4, 5, 6, 7, 8, 9, 10))
    assert len(p.encode(setattr_)) == 7 + 5 * 4 + 5 * 8
    # Rgetattr is 153 bytes on the wire for any values.
    qid = p.Qid(p.QTDIR, 0, 9)
    rgetattr = p.Message(p.RGETATTR, 1, (0x7FF, qid, *range(18)))
    assert len(p.encode(rgetattr)) == 7 + 8 + 13 + 3 * 4 + 15 * 8


def test_trailing_bytes_and_unknown_types_are_protocol_errors() -> None:
    wire = p.encode(p.Message(p.TCLUNK, 1, (3,)))
    with pytest.raises(ProtocolError, match="past its last field"):
        p.decode(struct.pack("<I", len(wire) + 1) + wire[4:] + b"x")
    with pytest.raises(ProtocolError, match="not part of 9P2000"):
        p.decode(struct.pack("<IBH", 7, 112, 1))  # Topen is 9P2000, not .L


def test_dirents_round_trip() -> None:
    qid = p.Qid(p.QTFILE, 1, 42)
    data = p.dirent(qid, 1, 8, b"f") + p.dirent(qid, 2, 4, b"dir\xff")
    assert p.decode_dirents(data) == [(qid, 1, 8, b"f"), (qid, 2, 4, b"dir\xff")]
    with pytest.raises(ProtocolError):
        p.decode_dirents(data[:-1])


def test_encode_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(ProtocolError):
        p.encode(p.Message(p.TCLUNK, 1, (2**32,)))
    with pytest.raises(ProtocolError):
        p.encode(p.Message(p.TCLUNK, 1, ()))


# -- Receiver: frames received in place (the share server's loop) -----------------------
_BIG = 16384  # Receiver's default borrow_over


def _deliver(receiver: p.Receiver, wire: bytes, cuts: list[int]) -> list[p.Message]:
    """What the server's recv_into loop does, the socket handing over *wire* in pieces
    that end at *cuts* (and wherever the lent buffer is shorter)."""
    out: list[p.Message] = []
    pos = 0
    for stop in [*sorted(set(cuts)), len(wire)]:
        while pos < stop:
            room = receiver.buffer()
            assert len(room) > 0
            n = min(len(room), stop - pos)
            room[:n] = wire[pos : pos + n]
            room.release()
            out.extend(receiver.received(n))
            pos += n
    return out


def _twrite(tag: int, offset: int, size: int, seed: int = 0) -> p.Message:
    data = bytes((seed + i * 7) % 251 for i in range(size))
    return p.Message(p.TWRITE, tag, (1, offset, data))


_big_writes = st.builds(
    _twrite,
    st.integers(0, 0xFFFF),
    st.integers(0, 2**40),
    st.integers(_BIG - 40, _BIG + 3000) | st.sampled_from([_BIG - 23, _BIG - 22, 70000]),
    st.integers(0, 250),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(messages() | _big_writes, min_size=1, max_size=6), st.data())
def test_receiver_reassembles_any_split(batch: list[p.Message], data: st.DataObject) -> None:
    wire = b"".join(p.encode(m) for m in batch)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=8))
    receiver = p.Receiver(1 << 17)
    out = _deliver(receiver, wire, cuts)
    assert out == batch  # a borrowed view compares equal to the bytes sent
    assert receiver.pending == 0
    for message in out:
        if message.args and isinstance(message.args[-1], memoryview):  # a big Twrite
            assert message.type == p.TWRITE
            assert len(p.encode(message)) > _BIG


def test_receiver_every_byte_boundary_and_all_in_one() -> None:
    batch = [
        p.Message(p.TCLUNK, 1, (5,)),
        _twrite(2, 0, 20000, seed=1),
        p.Message(p.TWALK, 3, (1, 2, (b"a", b"bc"))),
        _twrite(4, 20000, 100, seed=2),
        _twrite(5, 20100, 70000, seed=3),
        p.Message(p.TREAD, 6, (1, 0, 4096)),
    ]
    wire = b"".join(p.encode(m) for m in batch)
    assert _deliver(p.Receiver(1 << 17), wire, []) == batch  # several frames a recv
    borrowed = 0
    for cut in range(len(wire) + 1):
        receiver = p.Receiver(1 << 17)
        out = _deliver(receiver, wire, [cut])
        assert out == batch, cut
        assert receiver.pending == 0
        borrowed += sum(isinstance(m.args[-1], memoryview) for m in out if m.args)
    assert borrowed > len(wire) // 2  # most cuts leave a big Twrite to be read in place


def test_receiver_asks_for_exactly_the_rest_of_a_big_frame() -> None:
    message = _twrite(9, 0, 50000)
    wire = p.encode(message)
    receiver = p.Receiver(1 << 17)
    assert not receiver.in_frame
    room = receiver.buffer()
    room[:1000] = wire[:1000]
    assert receiver.received(1000) == []
    assert receiver.in_frame  # the server may wait for all of it (MSG_WAITALL)
    assert len(receiver.buffer()) == len(wire) - 1000  # not a byte of the next frame
    (got,) = _deliver(receiver, wire[1000:], [])
    assert got == message
    assert bytes(got.args[2]) == message.args[2]
    assert not receiver.in_frame
    # A small frame in pieces: the buffer stays open-ended, and no wait for all of it.
    small = p.encode(_twrite(1, 0, 3000))
    receiver.buffer()[:100] = small[:100]
    assert receiver.received(100) == []
    assert not receiver.in_frame
    assert len(receiver.buffer()) > len(small)


def test_receiver_refuses_a_frame_over_msize_from_its_size_field() -> None:
    receiver = p.Receiver(1 << 17)
    receiver.msize = 8192
    room = receiver.buffer()
    room[:4] = struct.pack("<I", 8193)
    with pytest.raises(ProtocolError, match="msize"):
        receiver.received(4)
    small = p.Receiver(1 << 17)
    small.buffer()[:4] = struct.pack("<I", 6)
    with pytest.raises(ProtocolError, match="7 to"):
        small.received(4)
    with pytest.raises(ValueError, match="takes 7 to"):
        receiver.msize = receiver.capacity + 1


def test_borrowed_data_stays_put_until_given_back() -> None:
    receiver = p.Receiver(1 << 17)
    sent = [_twrite(i, 0, 40000, seed=i) for i in range(4)]

    def one(message: p.Message) -> p.Message:
        (got,) = _deliver(receiver, p.encode(message), [100])  # as a socket hands it
        assert isinstance(got.args[2], memoryview)
        return got

    a, b, c = (one(m) for m in sent[:3])
    # Not given back: the next frames never land in a's buffer.
    assert (a, b, c) == tuple(sent[:3])
    assert len({id(m.args[2].obj) for m in (a, b, c)}) == 3
    owner = a.args[2].obj
    receiver.recycle(a.args[2])
    receiver.recycle(a.args[2])  # twice is harmless
    receiver.recycle(b"not borrowed")
    # The receiver is filling a fourth buffer now; the one after is a's.
    d = one(sent[3])
    e = one(sent[0])
    assert e.args[2].obj is owner  # given back: reused, no new buffer
    assert (b, c, d, e) == (sent[1], sent[2], sent[3], sent[0])
    # A run of writes given back as they are done goes round two buffers, small
    # Twrites among them (a write()'s tail past the last whole Twrite) included.
    owners = set()
    for message in sent * 3:
        got = one(message)
        owners.add(id(got.args[2].obj))
        receiver.recycle(got.args[2])
        tail = _twrite(7, 1, 48)
        assert _deliver(receiver, p.encode(tail), []) == [tail]
    assert len(owners) <= 2
    # A small message after the run: only the small buffer is kept.
    assert _deliver(receiver, p.encode(p.Message(p.TCLUNK, 1, (2,))), []) == [
        p.Message(p.TCLUNK, 1, (2,))
    ]
    assert receiver._spares == []
    assert receiver._buf is receiver._head


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=4))
def test_receiver_and_decoder_agree_on_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    def run(take: Any) -> tuple[str, list[p.Message]]:
        out: list[p.Message] = []
        try:
            take(out)
        except ProtocolError:
            return "error", out
        return "ok", out

    receiver = p.Receiver(8192, borrow_over=64)
    decoder = p.Decoder(8192)
    ours = run(
        lambda out: out.extend(_deliver(receiver, data, [c % (len(data) + 1) for c in cuts]))
    )
    theirs = run(lambda out: out.extend(decoder.feed(data)))
    assert ours[0] == theirs[0]
    if ours[0] == "ok":
        assert ours[1] == theirs[1]


@settings(max_examples=200)
@given(messages())
def test_encode_parts_join_to_encode(message: p.Message) -> None:
    parts = p.encode_parts(message)
    assert b"".join(parts) == p.encode(message)
    if message.type in (p.RREAD, p.TWRITE, p.RREADDIR) and message.args[-1]:
        assert parts[-1] is message.args[-1]  # the data itself, not a copy
