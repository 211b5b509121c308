"""The hybrid-vsock handshake: CONNECT <port>\\n and OK <port>\\n, sans I/O."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hvsock import AddressError, HandshakeError
from hvsock._core import handshake
from hvsock._core.handshake import encode_connect, encode_ok, parse_connect, parse_ok

U32 = 0xFFFFFFFF
Parser = Callable[[bytes], tuple[int, int] | None]


@pytest.mark.parametrize(
    ("port", "line"),
    [
        (0, b"CONNECT 0\n"),
        (52, b"CONNECT 52\n"),
        (2761, b"CONNECT 2761\n"),
        (0x7FFFFFFF, b"CONNECT 2147483647\n"),
        (U32, b"CONNECT 4294967295\n"),
    ],
)
def test_connect_line_both_ways(port: int, line: bytes) -> None:
    assert encode_connect(port) == line
    assert parse_connect(line) == (port, len(line))


@pytest.mark.parametrize(
    ("port", "line"),
    [
        (0, b"OK 0\n"),
        (1073741824, b"OK 1073741824\n"),
        (0x80000000, b"OK 2147483648\n"),
        (U32, b"OK 4294967295\n"),
    ],
)
def test_ok_line_both_ways(port: int, line: bytes) -> None:
    assert encode_ok(port) == line
    assert parse_ok(line) == (port, len(line))


def test_longest_line_fits_max_line() -> None:
    assert len(encode_connect(U32)) == 19 <= handshake.MAX_LINE
    assert len(encode_ok(U32)) <= handshake.MAX_LINE


@pytest.mark.parametrize("encode", [encode_connect, encode_ok])
@pytest.mark.parametrize("port", [-1, U32 + 1, True, 5.0, "5", None])
def test_encode_refuses_bad_ports(encode: Callable[[int], bytes], port: object) -> None:
    with pytest.raises(AddressError, match="out of range") as info:
        encode(port)  # type: ignore[arg-type]
    assert repr(port) in str(info.value)


def test_bytes_after_the_line_are_not_used() -> None:
    # The first bytes of the guest's stream may arrive in the same read as the reply.
    assert parse_ok(b"OK 1073741824\nhello guest") == (1073741824, 14)
    assert parse_ok(b"OK 5\nOK 6\n") == (5, 5)
    assert parse_connect(b"CONNECT 52\n\x00\x01binary") == (52, 11)


def test_bytearray_buffers_work() -> None:
    assert parse_ok(bytearray(b"OK 7\nrest")) == (7, 5)
    assert parse_connect(bytearray(b"CONNECT 7\n")) == (7, 10)


@pytest.mark.parametrize(
    ("parse", "line"),
    [
        (parse_ok, b"OK 1073741824\n"),
        (parse_connect, b"CONNECT 4294967295\n"),
    ],
)
def test_byte_by_byte(parse: Parser, line: bytes) -> None:
    stream = line + b"stream data"
    for i in range(len(line)):
        assert parse(stream[:i]) is None, i
    for i in range(len(line), len(stream) + 1):
        assert parse(stream[:i]) == (int(line.split()[1]), len(line))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["ok", "connect"]), st.integers(0, U32), st.binary(max_size=40))
def test_incremental_parse_property(which: str, port: int, tail: bytes) -> None:
    encode, parse = (encode_ok, parse_ok) if which == "ok" else (encode_connect, parse_connect)
    line = encode(port)
    data = line + tail
    for i in range(len(line)):
        assert parse(data[:i]) is None
    assert parse(data) == (port, len(line))
    assert data[len(line) :] == tail


OK_MALFORMED = [
    b"ok 5\n",
    b"OK\n",
    b"OK \n",
    b"OK 5 \n",
    b" OK 5\n",
    b"OK  5\n",
    b"OK -5\n",
    b"OK +5\n",
    b"OK 0x10\n",
    b"OK 5\r\n",
    b"OK 5.0\n",
    b"OK 4294967296\n",
    b"OK 99999999999\n",
    b"OK 12345678901\n",
    b"CONNECT 5\n",
    b"\n",
    b"OK 5\x00\n",
    b"OK \xef\xbc\x95\n",
    b"ERR no listener\n",
]
CONNECT_MALFORMED = [
    b"connect 5\n",
    b"CONNECT\n",
    b"CONNECT \n",
    b"CONNECT  5\n",
    b"CONNECT 5 \n",
    b"CONNECT -1\n",
    b"CONNECT 0x34\n",
    b"CONNECT 52\r\n",
    b"CONNECT 4294967296\n",
    b"CONNECT 12345678901\n",
    b"OK 5\n",
    b"\n",
    b"CONNECT\t5\n",
    b"GET / HTTP/1.1\r\n",
]


@pytest.mark.parametrize("line", OK_MALFORMED, ids=repr)
def test_malformed_ok(line: bytes) -> None:
    with pytest.raises(HandshakeError) as info:
        parse_ok(line + b"trailing")
    message = str(info.value)
    if b"4294967296" in line:
        assert "over 4294967295" in message
    else:
        assert repr(line) in message
        assert "OK <port>" in message


@pytest.mark.parametrize("line", CONNECT_MALFORMED, ids=repr)
def test_malformed_connect(line: bytes) -> None:
    with pytest.raises(HandshakeError) as info:
        parse_connect(line)
    message = str(info.value)
    if b"4294967296" in line:
        assert "over 4294967295" in message
    else:
        assert repr(line) in message
        assert "CONNECT <port>" in message


@pytest.mark.parametrize("parse", [parse_ok, parse_connect])
def test_over_long_line_without_newline(parse: Parser) -> None:
    limit = handshake.MAX_LINE
    # one byte short of the limit: still waiting for the newline
    assert parse(b"x" * (limit - 1)) is None
    for data in (b"x" * limit, b"OK " + b"1" * 100, b"CONNECT " + b"9" * 40 + b"\n"):
        with pytest.raises(HandshakeError) as info:
            parse(data)
        assert f"longer than {limit} bytes without a newline" in str(info.value)
        assert "does not speak the hybrid vsock protocol" in str(info.value)
    # the whole buffer is not echoed back
    with pytest.raises(HandshakeError) as info:
        parse(b"y" * 10_000)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("parse", [parse_ok, parse_connect])
def test_a_line_within_the_limit_is_judged_by_its_content(parse: Parser) -> None:
    with pytest.raises(HandshakeError) as info:
        parse(b"x" * (handshake.MAX_LINE - 1) + b"\n")
    assert "longer than" not in str(info.value)


def check_parse_result(parse: Parser, prefix: bytes, data: bytes) -> None:
    """None, a valid (port, used), or HandshakeError: nothing else."""
    try:
        result = parse(data)
    except HandshakeError as exc:
        message = str(exc)
    else:
        check_result(result, prefix, data)
        return
    assert message  # refused, with something to say


def check_result(result: tuple[int, int] | None, prefix: bytes, data: bytes) -> None:
    """None only while no line can be complete yet; else exactly one well-formed line."""
    if result is None:
        assert b"\n" not in data[: handshake.MAX_LINE]
        assert len(data) < handshake.MAX_LINE
        return
    port, used = result
    assert 0 <= port <= U32
    assert 1 <= used <= len(data)
    digits = data[len(prefix) : used - 1]
    assert data[:used] == prefix + digits + b"\n"
    assert 1 <= len(digits) <= 10
    assert all(48 <= b <= 57 for b in digits)  # ASCII digits only
    assert int(digits) == port


PIECES = [
    b"OK",
    b"CONNECT",
    b" ",
    b"\n",
    b"\r",
    b"0",
    b"5",
    b"9",
    b"4294967295",
    b"4294967296",
    b"-",
    b"x",
    b"\x00",
    b"\xff",
]
buffers = st.one_of(st.binary(max_size=64), st.lists(st.sampled_from(PIECES)).map(b"".join))


@settings(max_examples=500, deadline=None)
@given(buffers)
def test_parse_ok_arbitrary_bytes(data: bytes) -> None:
    check_parse_result(parse_ok, b"OK ", data)


@settings(max_examples=500, deadline=None)
@given(buffers)
def test_parse_connect_arbitrary_bytes(data: bytes) -> None:
    check_parse_result(parse_connect, b"CONNECT ", data)
