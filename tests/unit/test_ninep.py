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
