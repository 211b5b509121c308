"""Length-prefixed frames and the JSON RPC messages on top of them, sans I/O."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hvsock import FrameTooLargeError, HvsockError, ProtocolError, RemoteError
from hvsock._core.framing import (
    ABSOLUTE_MAX_FRAME,
    HEADER_SIZE,
    Message,
    check_max_size,
    frame_length,
)
from hvsock.framing import (
    DEFAULT_MAX_FRAME,
    ErrorReply,
    FrameDecoder,
    Request,
    Response,
    decode_message,
    encode_frame,
    encode_message,
)


def header(length: int) -> bytes:
    return length.to_bytes(HEADER_SIZE, "big")


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list[bytes]:
    frames: list[bytes] = []
    for chunk in chunks:
        frames += decoder.feed(chunk)
    return frames


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# -- frames --------------------------------------------------------------------

FRAME_TABLE = [
    (b"", b"\x00\x00\x00\x00"),
    (b"a", b"\x00\x00\x00\x01a"),
    (b"\x00\x00\x00\x00", b"\x00\x00\x00\x04\x00\x00\x00\x00"),
    (b"x" * 300, b"\x00\x00\x01\x2c" + b"x" * 300),
    (b"y" * 65536, b"\x00\x01\x00\x00" + b"y" * 65536),
]


@pytest.mark.parametrize(("payload", "wire"), FRAME_TABLE)
def test_frame_both_ways(payload: bytes, wire: bytes) -> None:
    assert encode_frame(payload) == wire
    decoder = FrameDecoder()
    assert decoder.feed(wire) == [payload]
    assert decoder.at_boundary()
    assert decoder.buffered == 0


def test_whole_table_in_one_feed_and_byte_by_byte() -> None:
    stream = b"".join(wire for _, wire in FRAME_TABLE)
    payloads = [payload for payload, _ in FRAME_TABLE]
    assert FrameDecoder().feed(stream) == payloads
    one_by_one = FrameDecoder()
    assert feed_all(one_by_one, [stream[i : i + 1] for i in range(len(stream))]) == payloads
    assert one_by_one.at_boundary()


@settings(max_examples=300, deadline=None)
@given(payloads=st.lists(st.binary(max_size=80), max_size=12), data=st.data())
def test_any_chunking_gives_back_the_payloads(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts")
    decoder = FrameDecoder()
    assert feed_all(decoder, split_at(stream, cuts)) == payloads
    assert decoder.at_boundary()
    assert decoder.buffered == 0


def test_zero_length_frames() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(header(0) * 3) == [b"", b"", b""]
    assert decoder.at_boundary()
    # A zero-length frame completes on its header alone, even mid-stream.
    assert decoder.feed(header(2) + b"ab" + header(0) + header(1)) == [b"ab", b""]
    assert not decoder.at_boundary()
    assert decoder.feed(b"z") == [b"z"]


def test_at_boundary_tracks_partial_frames() -> None:
    decoder = FrameDecoder()
    assert decoder.at_boundary()
    assert decoder.feed(b"") == []
    assert decoder.at_boundary()
    assert decoder.feed(header(3)[:2]) == []
    assert not decoder.at_boundary()
    assert decoder.buffered == 2
    # Header complete, no body yet: still mid-frame although nothing is buffered.
    assert decoder.feed(header(3)[2:]) == []
    assert not decoder.at_boundary()
    assert decoder.buffered == 0
    assert decoder.feed(b"ab") == []
    assert not decoder.at_boundary()
    assert decoder.buffered == 2
    assert decoder.feed(b"c") == [b"abc"]
    assert decoder.at_boundary()


@pytest.mark.parametrize("limit", [1, 10, 4096])
def test_max_size_is_inclusive_on_encode(limit: int) -> None:
    assert encode_frame(b"x" * limit, max_size=limit) == header(limit) + b"x" * limit
    with pytest.raises(FrameTooLargeError, match=rf"{limit + 1} bytes .* {limit}-byte frame limit"):
        encode_frame(b"x" * (limit + 1), max_size=limit)


def test_default_max_on_encode() -> None:
    assert len(encode_frame(bytes(DEFAULT_MAX_FRAME))) == HEADER_SIZE + DEFAULT_MAX_FRAME
    with pytest.raises(FrameTooLargeError, match="raise max_frame_size"):
        encode_frame(bytes(DEFAULT_MAX_FRAME + 1))


@pytest.mark.parametrize("limit", [1, 10, 4096])
def test_max_size_is_inclusive_on_decode(limit: int) -> None:
    assert FrameDecoder(limit).feed(header(limit) + b"x" * limit) == [b"x" * limit]
    decoder = FrameDecoder(limit)
    with pytest.raises(FrameTooLargeError, match=rf"{limit + 1}-byte frame, over the {limit}"):
        decoder.feed(header(limit + 1))


def test_frame_too_large_is_a_protocol_error_and_an_os_error() -> None:
    assert issubclass(FrameTooLargeError, ProtocolError)
    assert issubclass(ProtocolError, HvsockError)
    assert issubclass(ProtocolError, OSError)


def test_oversized_header_fails_before_any_body_is_buffered() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLargeError, match="4294967295-byte frame"):
        decoder.feed(header(ABSOLUTE_MAX_FRAME))
    assert decoder.buffered == 0


def test_oversized_header_with_body_bytes_in_the_same_chunk_keeps_nothing() -> None:
    decoder = FrameDecoder(max_size=16)
    assert decoder.feed(header(2**31)[:1]) == []
    with pytest.raises(FrameTooLargeError):
        decoder.feed(header(2**31)[1:] + b"b" * 1000)
    assert decoder.buffered == 0


def test_frames_before_an_oversized_header_are_delivered_first() -> None:
    decoder = FrameDecoder(max_size=16)
    assert decoder.feed(header(2) + b"ok" + header(1000) + b"x" * 10) == [b"ok"]
    assert decoder.buffered == 0
    assert not decoder.at_boundary()
    with pytest.raises(FrameTooLargeError, match="1000-byte frame"):
        decoder.feed(b"")
    with pytest.raises(ProtocolError, match="already broken"):
        decoder.feed(b"")


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": 1, "result": NaN}',
        b'{"id": 1, "result": Infinity}',
        b'{"id": 1, "result": 1e400}',
        '{"id": 1, "result": 1}'.encode("utf-16"),
        b"\xef\xbb\xbf" + b'{"id": 1, "result": 1}',
    ],
)
def test_decoding_is_as_strict_as_encoding(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_message(body)


@pytest.mark.parametrize(
    "message",
    [
        Request(-1, "m"),
        Request(True, "m"),
        Request(1, ""),
        Response(2**53, 1),
        ErrorReply(1, 5, "x"),
        ErrorReply(1, "code", None),  # type: ignore[arg-type]
    ],
)
def test_encoding_refuses_what_decoding_would(message: Message) -> None:
    with pytest.raises(ProtocolError):
        encode_message(message)


def test_decoder_refuses_input_after_frame_too_large() -> None:
    decoder = FrameDecoder(max_size=8)
    with pytest.raises(FrameTooLargeError):
        decoder.feed(header(9))
    for more in [b"", header(0), b"anything"]:
        with pytest.raises(ProtocolError, match="already broken") as info:
            decoder.feed(more)
        assert not isinstance(info.value, FrameTooLargeError)
    assert decoder.buffered == 0
    # A broken stream is not a clean place to stop.
    assert not decoder.at_boundary()


@pytest.mark.parametrize("bad", [0, -1, ABSOLUTE_MAX_FRAME + 1, True, 1.5, "10", None])
def test_decoder_max_size_is_checked(bad: object) -> None:
    with pytest.raises(ValueError, match=r"max frame size must be a whole number in 1\.\.") as info:
        FrameDecoder(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)
    with pytest.raises(ValueError, match="max frame size"):
        check_max_size(bad)  # type: ignore[arg-type]


def test_largest_max_size_is_accepted() -> None:
    assert check_max_size(ABSOLUTE_MAX_FRAME) == ABSOLUTE_MAX_FRAME
    assert FrameDecoder(ABSOLUTE_MAX_FRAME).max_size == ABSOLUTE_MAX_FRAME
    assert frame_length(header(ABSOLUTE_MAX_FRAME), ABSOLUTE_MAX_FRAME) == ABSOLUTE_MAX_FRAME


@settings(max_examples=500, deadline=None)
@given(max_size=st.integers(1, 64), data=st.data())
def test_arbitrary_bytes_give_frames_or_protocol_error(max_size: int, data: st.DataObject) -> None:
    chunks = data.draw(st.lists(st.binary(max_size=40), max_size=8), label="chunks")
    decoder = FrameDecoder(max_size)
    frames: list[bytes] = []
    consumed = b""
    for chunk in chunks:
        try:
            frames += decoder.feed(chunk)
        except ProtocolError:
            assert decoder.buffered == 0
            with pytest.raises(ProtocolError):
                decoder.feed(b"")
            return
        consumed += chunk
    # No error: the frames are exactly a prefix of the input, the rest is buffered.
    assert all(len(f) <= max_size for f in frames)
    decoded = b"".join(encode_frame(f, max_size) for f in frames)
    assert consumed.startswith(decoded)
    leftover = len(consumed) - len(decoded)
    assert decoder.buffered <= leftover
    assert decoder.at_boundary() == (leftover == 0)


# -- RPC messages --------------------------------------------------------------

MESSAGE_TABLE: list[tuple[Message, bytes]] = [
    (Request(7, "get", {"key": 1}), b'{"id":7,"method":"get","params":{"key":1}}'),
    (Request(0, "ping"), b'{"id":0,"method":"ping"}'),
    (
        Request(2**53 - 1, "m", [1, "two", None]),
        b'{"id":9007199254740991,"method":"m","params":[1,"two",null]}',
    ),
    (Response(7, {"ok": True}), b'{"id":7,"result":{"ok":true}}'),
    (Response(8), b'{"id":8,"result":null}'),
    (Response(9, "caf\u00e9"), b'{"id":9,"result":"caf\\u00e9"}'),
    (
        ErrorReply(7, "not_found", "no such key"),
        b'{"id":7,"error":{"code":"not_found","message":"no such key"}}',
    ),
    (
        ErrorReply(None, "bad_request", ""),
        b'{"id":null,"error":{"code":"bad_request","message":""}}',
    ),
]


@pytest.mark.parametrize(("message", "body"), MESSAGE_TABLE)
def test_message_both_ways(message: Message, body: bytes) -> None:
    assert encode_message(message) == body
    assert decode_message(body) == message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"id":1,"method":"m","params":null}', Request(1, "m")),
        (b' {"method":"m", "id":1, "extra":[1]} ', Request(1, "m")),
        (b'{"id":3,"error":{"code":"c","message":"m","data":1}}', ErrorReply(3, "c", "m")),
        (b'{"error":{"code":"c","message":"m"}}', ErrorReply(None, "c", "m")),
        (b'{"id":1,"result":2,"error":{"code":"c","message":"m"}}', ErrorReply(1, "c", "m")),
        (b'{"id":4,"result":"\xc3\xa9"}', Response(4, "\u00e9")),
    ],
)
def test_lenient_but_unambiguous_bodies(body: bytes, message: Message) -> None:
    assert decode_message(body) == message


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
ids = st.integers(0, 2**53 - 1)
messages = st.one_of(
    st.builds(Request, ids, st.text(min_size=1), json_values),
    st.builds(Response, ids, json_values),
    st.builds(ErrorReply, st.none() | ids, st.text(), st.text()),
)


@settings(max_examples=500, deadline=None)
@given(messages)
def test_any_message_round_trips(message: Message) -> None:
    body = encode_message(message)
    assert decode_message(body) == message
    # ... and through a frame.
    assert [decode_message(f) for f in FrameDecoder().feed(encode_frame(body))] == [message]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200) | st.builds(lambda v: json.dumps(v).encode(), json_values))
def test_arbitrary_bodies_decode_or_raise_protocol_error(body: bytes) -> None:
    outcome: Message | ProtocolError
    try:
        outcome = decode_message(body)
    except ProtocolError as exc:
        outcome = exc
    if isinstance(outcome, ProtocolError):
        assert str(outcome)  # says what is wrong
    else:
        assert isinstance(outcome, Request | Response | ErrorReply)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "not UTF-8 JSON"),
        (b"{", "not UTF-8 JSON"),
        (b"{'id': 1}", "not UTF-8 JSON"),
        (b'{"id":1,"result":1} trailing', "not UTF-8 JSON"),
        (b'{"id":1,"result":"\xff"}', "not UTF-8 JSON"),
        (b'{"id":1,"result":"\xc3"}', "not UTF-8 JSON"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"a":' * 100_000, "nested too deeply"),
        (b"[]", "must be a JSON object, not list"),
        (b"42", "must be a JSON object, not int"),
        (b'"text"', "must be a JSON object, not str"),
        (b"null", "must be a JSON object, not NoneType"),
        (b'{"method":"m"}', "request id must be an integer 0..2\\*\\*53, not None"),
        (b'{"id":true,"method":"m"}', "request id .* not True"),
        (b'{"id":false,"method":"m"}', "request id .* not False"),
        (b'{"id":-1,"method":"m"}', "request id .* not -1"),
        (b'{"id":1.0,"method":"m"}', "request id .* not 1.0"),
        (b'{"id":"1","method":"m"}', "request id .* not '1'"),
        (b'{"id":9007199254740992,"method":"m"}', "request id .* not 9007199254740992"),
        (b'{"id":1,"method":""}', "method must be a non-empty string, not ''"),
        (b'{"id":1,"method":null}', "method must be a non-empty string, not None"),
        (b'{"id":1,"method":["m"]}', "method must be a non-empty string"),
        (b'{"id":1,"error":{}}', "error reply needs"),
        (b'{"id":1,"error":{"code":"c"}}', "error reply needs"),
        (b'{"id":1,"error":{"message":"m"}}', "error reply needs"),
        (b'{"id":1,"error":{"code":1,"message":"m"}}', "error reply needs"),
        (b'{"id":1,"error":{"code":"c","message":null}}', "error reply needs"),
        (b'{"id":1,"error":"boom"}', "error reply needs"),
        (b'{"id":1,"error":null}', "error reply needs"),
        (
            b'{"id":"x","error":{"code":"c","message":"m"}}',
            "error reply id must be an integer or null",
        ),
        (b'{"id":true,"error":{"code":"c","message":"m"}}', "error reply id .* not True"),
        (b'{"id":-5,"result":1}', "response id must be an integer 0..2\\*\\*53, not -5"),
        (b'{"result":1}', "response id .* not None"),
        (b'{"id":2.5,"result":1}', "response id .* not 2.5"),
        (b'{"id":9007199254740992,"result":1}', "response id"),
        (b"{}", "none of 'method', 'result', 'error'"),
        (b'{"id":1}', "none of 'method', 'result', 'error'"),
        (b'{"id":1,"params":{}}', "none of"),
    ],
)
def test_malformed_bodies_raise_protocol_error(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_message(body)


@pytest.mark.parametrize(
    "params",
    [
        math.nan,
        math.inf,
        [1, -math.inf],
        {"nested": {"x": math.nan}},
        object(),
        {1, 2},
        b"bytes",
        {("tuple", "key"): 1},
    ],
)
def test_unencodable_params_raise_protocol_error(params: Any) -> None:
    with pytest.raises(ProtocolError, match="cannot be sent as JSON"):
        encode_message(Request(1, "m", params))
    with pytest.raises(ProtocolError, match="cannot be sent as JSON"):
        encode_message(Response(1, params))


def test_circular_result_raises_protocol_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ProtocolError, match="cannot be sent as JSON"):
        encode_message(Response(1, loop))


def test_remote_error_keeps_code_and_message() -> None:
    error = RemoteError("not_found", "no such key")
    assert error.code == "not_found"
    assert error.remote_message == "no such key"
    assert str(error) == "not_found: no such key"
    assert isinstance(error, HvsockError)
