"""The QGA wire format: requests split anywhere parse the same; any bytes give items only."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvsock._core import qga

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=3),
    max_leaves=10)
commands = st.builds(
    qga.Command, st.text(max_size=20),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    json_values, st.booleans())


def _request(c: qga.Command) -> bytes:
    obj = {"execute": c.execute, "arguments": c.arguments}
    if c.has_id:
        obj["id"] = c.id
    return json.dumps(obj).encode()


@given(st.lists(commands, max_size=6), st.integers(1, 40), st.sampled_from([b"", b"\n", b" \r\n"]))
def test_requests_split_anywhere_parse_the_same(cmds: list[qga.Command], step: int,
                                                 sep: bytes) -> None:
    stream = b"".join(_request(c) + sep for c in cmds)
    parser = qga.Parser()
    got = [item for i in range(0, len(stream), step) for item in parser.feed(stream[i:i + step])]
    want = [qga.Command(c.execute, c.arguments, c.id if c.has_id else None, c.has_id)
            for c in cmds]
    assert got == want


@given(st.binary(max_size=300), st.integers(1, 50))
def test_any_bytes_give_only_items(data: bytes, step: int) -> None:
    parser = qga.Parser(max_request=200)
    for i in range(0, len(data), step):
        for item in parser.feed(data[i:i + step]):
            assert isinstance(item, (qga.Command, qga.BadInput))


def test_sentinel_drops_a_half_request_and_resyncs() -> None:
    parser = qga.Parser()
    items = parser.feed(b'{"execute": "guest-pi\xff{"execute":"guest-ping"}\n')
    assert items == [qga.BadInput("JSON parse error, stray '\ufffd'"),
                     qga.Command("guest-ping", {})]


@pytest.mark.parametrize(("data", "desc"), [
    (b"garbage\n", "JSON parse error, invalid keyword 'garbage'"),
    (b"[1]\n", "QMP input must be a JSON object"),
    (b"5\n", "QMP input must be a JSON object"),
    (b'{"foo": 1}', "QMP input member 'foo' is unexpected"),
    (b'{"execute": 5}', "QMP input member 'execute' must be a string"),
    (b'{"execute": "x", "arguments": []}', "QMP input member 'arguments' must be an object"),
    (b'{"arguments": {}}', "QMP input lacks member 'execute'"),
    (b'{"execute": "x",}', None),
])
def test_bad_requests_in_qemu_ga_words(data: bytes, desc: str | None) -> None:
    (item,) = qga.Parser().feed(data)
    assert isinstance(item, qga.BadInput)
    if desc is not None:
        assert item.desc == desc


def test_oversized_request_is_dropped() -> None:
    parser = qga.Parser(max_request=100)
    assert parser.feed(b'{"execute": "' + b"x" * 200) == [
        qga.BadInput("JSON parse error, token too large")]
    assert parser.feed(b'{"execute":"guest-ping"}') == [qga.Command("guest-ping", {})]


def test_answers_are_qemu_ga_lines() -> None:
    assert qga.format_return({}) == b'{"return": {}}\n'
    assert qga.format_return(7, 5, delimited=True) == b'\xff{"return": 7, "id": 5}\n'
    assert qga.format_error("CommandNotFound", "x", None) == \
        b'{"error": {"class": "CommandNotFound", "desc": "x"}, "id": null}\n'


@pytest.mark.parametrize(("args", "desc"), [
    ({}, "Parameter 'id' is missing"),
    ({"id": "x"}, "Invalid parameter type for 'id', expected: integer"),
    ({"id": True}, "Invalid parameter type for 'id', expected: integer"),
    ({"id": 1, "x": 2}, "Parameter 'x' is unexpected"),
])
def test_argument_checks(args: dict[str, object], desc: str) -> None:
    with pytest.raises(qga.QgaError) as info:
        qga.check_arguments(args, {"id": ("int", True)})
    assert info.value.desc == desc
