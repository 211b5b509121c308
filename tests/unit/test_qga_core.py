"""The QGA wire format: requests split anywhere parse the same; any bytes give items only."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvsock._core import qga

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
commands = st.builds(
    qga.Command,
    st.text(max_size=20),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    json_values,
    st.booleans(),
)


def _request(c: qga.Command) -> bytes:
    obj = {"execute": c.execute, "arguments": c.arguments}
    if c.has_id:
        obj["id"] = c.id
    return json.dumps(obj).encode()


@given(st.lists(commands, max_size=6), st.integers(1, 40), st.sampled_from([b"", b"\n", b" \r\n"]))
def test_requests_split_anywhere_parse_the_same(
    cmds: list[qga.Command], step: int, sep: bytes
) -> None:
    stream = b"".join(_request(c) + sep for c in cmds)
    parser = qga.Parser()
    got = [item for i in range(0, len(stream), step) for item in parser.feed(stream[i : i + step])]
    want = [qga.Command(c.execute, c.arguments, c.id if c.has_id else None, c.has_id) for c in cmds]
    assert got == want


@given(st.binary(max_size=300), st.integers(1, 50))
def test_any_bytes_give_only_items(data: bytes, step: int) -> None:
    parser = qga.Parser(max_request=200)
    for i in range(0, len(data), step):
        for item in parser.feed(data[i : i + step]):
            assert isinstance(item, (qga.Command, qga.BadInput))


def test_sentinel_drops_a_half_request_and_resyncs() -> None:
    parser = qga.Parser()
    items = parser.feed(b'{"execute": "guest-pi\xff{"execute":"guest-ping"}\n')
    assert items == [
        qga.BadInput("JSON parse error, stray '\ufffd'"),
        qga.Command("guest-ping", {}),
    ]


@pytest.mark.parametrize(
    ("data", "desc"),
    [
        (b"garbage\n", "JSON parse error, invalid keyword 'garbage'"),
        (b"[1]\n", "QMP input must be a JSON object"),
        (b"5\n", "QMP input must be a JSON object"),
        (b'{"foo": 1}', "QMP input member 'foo' is unexpected"),
        (b'{"execute": 5}', "QMP input member 'execute' must be a string"),
        (b'{"execute": "x", "arguments": []}', "QMP input member 'arguments' must be an object"),
        (b'{"arguments": {}}', "QMP input lacks member 'execute'"),
        (b'{"execute": "x",}', None),
    ],
)
def test_bad_requests_in_qemu_ga_words(data: bytes, desc: str | None) -> None:
    (item,) = qga.Parser().feed(data)
    assert isinstance(item, qga.BadInput)
    if desc is not None:
        assert item.desc == desc


@pytest.mark.parametrize("start", [b'{"execute": "', b"x", b"[1, 2, 3, 4"])
def test_a_request_past_the_cap_is_fatal_in_qemu_ga_words(start: bytes) -> None:
    parser = qga.Parser(max_request=100)
    assert parser.feed(start) == []
    assert parser.feed(b"x" * 200) == [qga.BadInput("JSON token size limit exceeded", fatal=True)]
    assert parser.closed
    assert parser.feed(b'{"execute":"guest-ping"}') == []  # the connection is done
    assert len(parser._buf) == 0  # nothing more is held


def test_requests_before_the_cap_in_the_same_read_are_answered() -> None:
    parser = qga.Parser(max_request=100)
    items = parser.feed(b'{"execute":"guest-ping"}\n' * 10 + b"y" * 150)
    assert items == [qga.Command("guest-ping", {})] * 10 + [qga.BadInput(qga.TOO_LARGE, fatal=True)]


@pytest.mark.parametrize("start", [b"", b'{"execute": "guest-ping", "arguments": {"x": "'])
def test_a_long_request_in_many_reads_is_scanned_once(start: bytes) -> None:
    # The scan state survives between reads: 16 MiB in 16 KiB reads costs about what one
    # read costs. A scan from the token's start on each read is quadratic: 20 times one
    # read's cost here (the bound is CPU time, so other load on the machine counts little).
    body = start + b"a" * (16 << 20)
    chunk = 16 << 10

    def cpu(step: int) -> float:
        parser = qga.Parser()
        began = time.process_time()
        for i in range(0, len(body), step):
            assert parser.feed(body[i : i + step]) == []
        return time.process_time() - began

    whole = cpu(len(body))
    assert cpu(chunk) < 0.5 + 4 * whole


@pytest.mark.parametrize("escape", [r"\ud800", r"\udc80", r"\udfff"])
def test_a_lone_surrogate_is_refused_as_qemu_ga_does(escape: str) -> None:
    data = ('{"execute": "guest-file-open", "arguments": {"path": "/x' + escape + '"}}').encode()
    (item,) = qga.Parser().feed(data)
    assert item == qga.BadInput(f"JSON parse error, {escape} is not a valid Unicode character")


def test_a_surrogate_pair_and_a_nul_are_text() -> None:
    data = b'{"execute": "x", "arguments": {"p": "\\ud83d\\ude00\\u0000"}}'
    assert qga.Parser().feed(data) == [qga.Command("x", {"p": "\U0001f600\x00"})]


def test_answers_are_qemu_ga_lines() -> None:
    assert qga.format_return({}) == b'{"return": {}}\n'
    assert qga.format_return(7, 5, delimited=True) == b'\xff{"return": 7, "id": 5}\n'
    assert (
        qga.format_error("CommandNotFound", "x", None)
        == b'{"error": {"class": "CommandNotFound", "desc": "x"}, "id": null}\n'
    )


@pytest.mark.parametrize(
    ("args", "desc"),
    [
        ({}, "Parameter 'id' is missing"),
        ({"id": "x"}, "Invalid parameter type for 'id', expected: integer"),
        ({"id": True}, "Invalid parameter type for 'id', expected: integer"),
        ({"id": 1, "x": 2}, "Parameter 'x' is unexpected"),
    ],
)
def test_argument_checks(args: dict[str, object], desc: str) -> None:
    with pytest.raises(qga.QgaError) as info:
        qga.check_arguments(args, {"id": ("int", True)})
    assert info.value.desc == desc
