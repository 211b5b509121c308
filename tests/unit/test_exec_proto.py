"""The exec protocol: every event round-trips; any bytes decode or raise ProtocolError only."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

import hvsock
from hvsock._core import exec_proto as ep
from hvsock._core import mux
from hvsock._core.framing import FrameDecoder

text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=20)
names = st.text(
    st.characters(blacklist_characters="\0=", blacklist_categories=("Cs",)), min_size=1, max_size=10
)

starts = st.builds(
    ep.Start,
    argv=st.lists(text, min_size=1, max_size=4).filter(lambda a: a[0] != "").map(tuple),
    env=st.dictionaries(names, text, max_size=3),
    unset=st.lists(text, max_size=3).map(tuple),
    cwd=st.none() | text,
    user=st.none() | text.filter(bool),
    tty=st.none() | st.builds(ep.Tty, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), text),
    timeout=st.none() | st.floats(0.001, 1e6),
    max_output=st.none() | st.integers(1, 2**40),
)
events = st.one_of(
    starts,
    st.builds(ep.Stdin, st.binary(max_size=64)),
    st.just(ep.StdinEof()),
    st.builds(ep.Resize, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
    st.builds(ep.Signal, st.integers(1, ep.MAX_SIGNAL)),
    st.builds(ep.Started, st.integers(0, 2**31)),
    st.builds(ep.Output, st.sampled_from([1, 2]), st.binary(max_size=64)),
    st.builds(ep.Exit, st.integers(0, 255), st.none(), st.booleans(), st.booleans()),
    st.builds(ep.Exit, st.none(), st.integers(1, ep.MAX_SIGNAL), st.booleans(), st.booleans()),
    st.builds(ep.Error, text, text),
)


@given(events)
def test_every_event_round_trips(event: ep.Event) -> None:
    assert ep.decode(ep.encode(event)) == event


@given(st.lists(events, max_size=8), st.integers(1, 50))
def test_frames_split_anywhere_decode_in_order(evs: list[ep.Event], step: int) -> None:
    stream = b"".join(ep.frame(e) for e in evs)
    decoder = FrameDecoder(ep.MAX_FRAME)
    got = [
        ep.decode(body)
        for i in range(0, len(stream), step)
        for body in decoder.feed(stream[i : i + step])
    ]
    assert got == evs


@given(st.binary(max_size=200))
def test_any_bytes_give_an_event_or_protocol_error(body: bytes) -> None:
    try:
        event = ep.decode(body)
    except hvsock.ProtocolError:
        return
    assert ep.decode(ep.encode(event)) == event  # whatever decodes also encodes again


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x03x",
        b"\x04\x00",
        b"\x05",
        b"\x05\x00",
        b"\x05\xff",
        b"\x99",
        b"\x01{}",
        b"\x01[]",
        b'\x01{"argv": []}',
        b'\x01{"argv": [""]}',
        b'\x01{"argv": ["a\\u0000"]}',
        b'\x01{"argv": ["a"], "timeout": -1}',
        b'\x01{"argv": ["a"], "env": {"A=B": "c"}}',
        b'\x01{"argv": ["a"], "tty": {"rows": 70000}}',
        b'\x01{"argv": ["a"], "max_output": 0}',
        b'\x01{"argv": ["a"], "timeout": NaN}',
        b"\x13{}",
        b'\x13{"code": 1, "signal": 2}',
        b'\x13{"code": 300}',
        b'\x13{"code": 1, "timed_out": 1}',
        b"\x14{}",
        b"\x10\xff",
    ],
)
def test_bad_frames_raise_protocol_error(body: bytes) -> None:
    with pytest.raises(hvsock.ProtocolError):
        ep.decode(body)


@pytest.mark.parametrize(
    "event",
    [
        ep.Start(()),
        ep.Start(("",)),
        ep.Signal(0),
        ep.Output(3, b""),
        ep.Exit(),
        ep.Exit(1, 2),
        ep.Resize(-1, 0),
        ep.Start(("a",), timeout=0),
    ],
)
def test_unsendable_events_raise_protocol_error(event: ep.Event) -> None:
    with pytest.raises(hvsock.ProtocolError):
        ep.encode(event)


@given(events)
def test_events_are_values(event: ep.Event) -> None:
    # Equal to a copy built from the same fields (positionally, as __match_args__ says),
    # unequal to another kind, shown by their fields, and immutable.
    fields = type(event).__match_args__
    values = [getattr(event, name) for name in fields]
    assert type(event)(*values) == event
    assert type(event)(**dict(zip(fields, values, strict=True))) == event
    assert event != ep.StdinEof() or isinstance(event, ep.StdinEof)
    assert repr(event).startswith(f"{type(event).__name__}(")
    with pytest.raises(AttributeError, match="immutable"):
        event.extra = 1  # type: ignore[union-attr]
    if fields:
        with pytest.raises(AttributeError, match="immutable"):
            setattr(event, fields[0], values[0])
    if not isinstance(event, ep.Start):  # holds a dict, like a frozen dataclass would
        assert hash(event) == hash(type(event)(*values))


def test_events_take_their_defaults_and_share_no_mutable_one() -> None:
    one, two = ep.Start(("true",)), ep.Start(("true",))
    assert one.env == {}
    assert one.env is not two.env
    assert (one.unset, one.cwd, one.user, one.tty, one.timeout, one.max_output) == (
        (),
        None,
        None,
        None,
        None,
        None,
    )
    assert ep.Tty() == ep.Tty(24, 80, "xterm")
    assert ep.Exit() == ep.Exit(None, None, False, False)
    match ep.Output(2, b"x"):
        case ep.Output(fd, data):
            assert (fd, data) == (2, b"x")
        case _:
            pytest.fail("Output does not match by position")


def test_the_protocol_module_generates_no_dataclasses() -> None:
    # Every Ansible task's worker imports it afresh (and hvsock exec on each run).
    probe = "import sys, hvsock._core.exec_proto; print('dataclasses' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "False", done


def test_exit_status_is_the_shells() -> None:
    assert ep.Exit(code=3).status == 3
    assert ep.Exit(signal=9).status == 137


@given(st.from_regex(mux.NAME, fullmatch=True))
def test_hello_round_trips(name: str) -> None:
    assert mux.decode_hello(mux.encode_hello(name)) == name


@given(st.binary(max_size=100))
def test_any_hello_bytes_give_a_name_or_protocol_error(body: bytes) -> None:
    try:
        name = mux.decode_hello(body)
    except hvsock.ProtocolError:
        name = None
    assert name is None or mux.decode_hello(mux.encode_hello(name)) == name
    try:
        mux.decode_answer(body)
    except (hvsock.ProtocolError, hvsock.RemoteError):
        return
    assert json.loads(body)["ok"] is True


def test_hello_answers() -> None:
    mux.decode_answer(mux.encode_answer())
    with pytest.raises(hvsock.RemoteError) as info:
        mux.decode_answer(mux.encode_answer(("unknown_service", "no such")))
    assert info.value.code == "unknown_service"
    for bad in (
        b'{"hvsock": 2, "service": "exec"}',
        b'{"hvsock": 1, "service": "Exec!"}',
        b"[]",
        b"\xff",
    ):
        with pytest.raises(hvsock.ProtocolError):
            mux.decode_hello(bad)
    with pytest.raises(hvsock.ProtocolError):
        mux.encode_hello("no spaces")


# -- the gathered data path: head + payload as two buffers, head read with the kind byte


@given(st.sampled_from([ep.STDIN, ep.STDOUT, ep.STDERR]), st.binary(max_size=300))
def test_a_data_head_and_its_bytes_are_the_frame_of_the_event(kind: int, data: bytes) -> None:
    event = ep.Stdin(data) if kind == ep.STDIN else ep.Output(1 if kind == ep.STDOUT else 2, data)
    head = ep.data_head(kind, len(data))
    assert head + data == ep.frame(event)
    assert ep.parse_head(head) == (kind, len(data))
    assert ep.decode_kind(kind, data) == event


def test_data_output_keeps_the_very_bytes_object() -> None:
    data = bytes(range(256)) * 4
    event = ep.decode_kind(ep.STDOUT, data)
    assert isinstance(event, ep.Output)
    assert event.data is data


@pytest.mark.parametrize(
    ("kind", "size"),
    [(ep.START, 1), (ep.EXIT, 0), (0x99, 3), (ep.STDIN, ep.CHUNK + 1), (ep.STDOUT, -1)],
)
def test_data_head_refuses_non_data_kinds_and_oversized_chunks(kind: int, size: int) -> None:
    with pytest.raises(hvsock.ProtocolError):
        ep.data_head(kind, size)


@given(st.binary(min_size=1, max_size=200))
def test_decode_kind_is_decode_of_the_split_body(body: bytes) -> None:
    try:
        expected: ep.Event | type[hvsock.ProtocolError] = ep.decode(body)
    except hvsock.ProtocolError:
        expected = hvsock.ProtocolError
    try:
        got: ep.Event | type[hvsock.ProtocolError] = ep.decode_kind(body[0], body[1:])
    except hvsock.ProtocolError:
        got = hvsock.ProtocolError
    assert got == expected


@given(st.binary(max_size=8))
def test_any_head_bytes_give_a_kind_and_size_or_protocol_error(head: bytes) -> None:
    try:
        kind, size = ep.parse_head(head)
    except hvsock.ProtocolError:
        return
    assert len(head) == ep.HEAD.size
    assert 0 <= size < ep.MAX_FRAME
    assert ep.HEAD.pack(size + 1, kind) == head


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"\x00\x00\x00\x01",
        b"\x00\x00\x00\x00\x11",
        b"\x00\x10\x00\x01\x11",
        b"\xff\xff\xff\xff\x02",
        b"\x00\x00\x00\x02\x11\x00",
    ],
)
def test_bad_heads_raise_protocol_error(head: bytes) -> None:
    with pytest.raises(hvsock.ProtocolError):
        ep.parse_head(head)


# -- the client's state machine --------------------------------------------------------

START = ep.Start(("cat",))


def _agent(*events: ep.Event) -> bytes:
    return b"".join(ep.frame(e) for e in events)


def _started_client() -> ep.ClientSession:
    client = ep.ClientSession()
    client.start(START)
    return client


LEGAL = [
    # what the agent sends, the events the client reports, the state it ends in
    ([ep.Started(7), ep.Exit(0)], ep.DONE),
    ([ep.Started(7), ep.Output(1, b"a"), ep.Output(2, b""), ep.Exit(None, 9, True)], ep.DONE),
    ([ep.Error("not_found", "x: command not found")], ep.DONE),  # it never ran
    ([ep.Started(7), ep.Output(1, b"x"), ep.Error("spawn_failed", "late")], ep.DONE),
    ([ep.Started(7), ep.Output(1, b"x" * 1000)], ep.RUNNING),
    ([], ep.STARTING),
]


@pytest.mark.parametrize(("events", "state"), LEGAL)
def test_legal_agent_sequences(events: list[ep.Event], state: str) -> None:
    client = _started_client()
    if events:
        assert client.receive(_agent(*events)) == events
    assert client.state == state
    if state == ep.DONE:
        assert client.outcome == events[-1]
        assert client.receive(b"") == []  # EOF after the end is the normal close


ILLEGAL = [
    ([ep.Output(1, b"x")], "output before STARTED"),
    ([ep.Exit(0)], "EXIT before STARTED"),
    ([ep.Started(1), ep.Started(2)], "STARTED twice"),
    ([ep.Started(1), ep.Exit(0), ep.Output(1, b"x")], "after the command's EXIT"),
    ([ep.Error("a", "b"), ep.Exit(0)], "after the command's EXIT/ERROR"),
    ([ep.Started(1), ep.Stdin(b"x")], "only clients send"),
    ([ep.Started(1), ep.Signal(2)], "only clients send"),
    ([ep.Started(1), START], "only clients send"),
]


@pytest.mark.parametrize(("events", "message"), ILLEGAL)
def test_illegal_agent_sequences_raise_and_break_the_session(
    events: list[ep.Event], message: str
) -> None:
    client = _started_client()
    with pytest.raises(hvsock.ProtocolError, match=message):
        client.receive(_agent(*events))
    assert client.state == ep.BROKEN
    with pytest.raises(hvsock.ProtocolError, match="already broke"):
        client.receive(_agent(ep.Exit(0)))


@pytest.mark.parametrize(
    ("sent", "message"),
    [
        (b"", "before the command's exit was reported"),
        (_agent(ep.Started(1)), "before the command's exit was reported"),
        (_agent(ep.Started(1))[:3], "in the middle of a frame"),
        (_agent(ep.Started(1), ep.Output(1, b"abc"))[:-1], "in the middle of a frame"),
    ],
)
def test_eof_before_the_end_is_a_protocol_error(sent: bytes, message: str) -> None:
    client = _started_client()
    client.receive(sent) if sent else None
    with pytest.raises(hvsock.ProtocolError, match=message):
        client.receive(b"")
    assert client.state == ep.BROKEN


def test_the_agent_speaking_before_start_is_refused() -> None:
    with pytest.raises(hvsock.ProtocolError, match="before START"):
        ep.ClientSession().receive(_agent(ep.Started(1)))


def test_client_sending_rules() -> None:
    client = ep.ClientSession()
    with pytest.raises(hvsock.ProtocolError, match="idle"):
        client.send(ep.Stdin(b"early"))
    with pytest.raises(hvsock.ProtocolError, match="idle"):
        client.stdin_head(3)
    assert ep.decode(client.start(START)[4:]) == START
    with pytest.raises(hvsock.ProtocolError, match="START is sent once"):
        client.start(START)
    # Input may go before STARTED: the agent queues it for the command.
    assert client.send(ep.Stdin(b"abc")) == ep.frame(ep.Stdin(b"abc"))
    assert client.stdin_head(3) + b"abc" == ep.frame(ep.Stdin(b"abc"))
    assert client.send(ep.Resize(3, 4)) == ep.frame(ep.Resize(3, 4))
    with pytest.raises(hvsock.ProtocolError, match="a client does not send"):
        client.send(ep.Output(1, b"x"))
    with pytest.raises(hvsock.ProtocolError, match=r"0\.\.262144 bytes"):
        client.send(ep.Stdin(b"x" * (ep.CHUNK + 1)))
    assert client.send(ep.StdinEof()) == ep.frame(ep.StdinEof())
    for late in (
        lambda: client.send(ep.Stdin(b"x")),
        lambda: client.send(ep.StdinEof()),
        lambda: client.stdin_head(1),
    ):
        with pytest.raises(hvsock.ProtocolError, match="STDIN_EOF sent"):
            late()
    assert client.send(ep.Signal(2)) == ep.frame(ep.Signal(2))  # signals still go
    client.receive(_agent(ep.Started(1), ep.Exit(0)))
    for after in (ep.Signal(2), ep.Resize(1, 1)):
        with pytest.raises(hvsock.ProtocolError, match="done"):
            client.send(after)


@given(st.lists(events, max_size=8), st.lists(st.integers(1, 60), min_size=1, max_size=20))
def test_agent_bytes_in_any_chunks_give_the_same_events(
    evs: list[ep.Event], cuts: list[int]
) -> None:
    """Agent bytes cut anywhere give the events they give whole, or fail as they do whole."""
    stream = _agent(*evs)
    whole = _started_client()
    try:
        expected: list[ep.Event] | None = whole.receive(stream) if stream else []
    except hvsock.ProtocolError:
        expected = None
    client = _started_client()
    got: list[ep.Event] = []
    pos, i = 0, 0
    try:
        while pos < len(stream):
            step = cuts[i % len(cuts)]
            got += client.receive(stream[pos : pos + step])
            pos, i = pos + step, i + 1
    except hvsock.ProtocolError:
        assert expected is None  # it fails in pieces only where it fails whole
        return
    assert got == expected


@given(
    st.binary(max_size=300), st.lists(st.integers(1, 40), min_size=1, max_size=10), st.booleans()
)
def test_arbitrary_agent_bytes_give_events_or_protocol_error_only(
    data: bytes, cuts: list[int], then_eof: bool
) -> None:
    client = _started_client()
    pos, i = 0, 0
    try:
        while pos < len(data):
            step = cuts[i % len(cuts)]
            for event in client.receive(data[pos : pos + step]):
                assert isinstance(event, (ep.Started, ep.Output, ep.Exit, ep.Error))
            pos, i = pos + step, i + 1
        if then_eof:
            client.receive(b"")
    except hvsock.ProtocolError:
        assert client.state == ep.BROKEN


def test_a_whole_piece_read_exactly_is_handed_on_without_a_copy() -> None:
    reader = ep.FrameReader()
    body = b"x" * 1000
    assert reader.wanted() == ep.HEAD.size
    assert reader.feed(ep.data_head(ep.STDOUT, len(body))) == []
    assert reader.wanted() == len(body)
    [(kind, rest)] = reader.feed(body)
    assert kind == ep.STDOUT
    assert rest is body
    assert reader.at_boundary()


def test_a_bad_header_after_good_frames_breaks_the_session_at_once() -> None:
    # The reader would hand out the STARTED first; the session stops at the bad header
    # in the same call (a driver must not wait on the socket for an error it has).
    client = _started_client()
    with pytest.raises(hvsock.FrameTooLargeError):
        client.receive(_agent(ep.Started(1)) + (ep.MAX_FRAME + 1).to_bytes(4, "big") + b"\x11")
    assert client.state == ep.BROKEN
