"""The file-copy protocol core, sans I/O: messages, chunks, remote paths, policies."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hvsock import ArgumentError, HvsockError, ProtocolError
from hvsock._core import filecopy as fc

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=100)
names = st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b)
entries = st.builds(
    fc.Entry,
    path=names,
    kind=st.sampled_from(fc.KINDS[1:]),
    mode=st.integers(0, 0o7777),
    mtime_ns=st.integers(-(2**63), 2**63 - 1),
    size=st.integers(-1, 2**63 - 1),
    uid=st.integers(-1, 2**31),
    gid=st.integers(-1, 2**31),
    link=names,
)
messages = st.one_of(
    st.builds(fc.Hello, st.integers(0, 2**64 - 1), st.integers(0, 3)),
    st.builds(fc.Stat, names),
    st.builds(fc.StatReply, entries),
    st.builds(fc.Put, entries, st.integers(0, fc.ALL_FLAGS)),
    st.builds(fc.Get, names, st.integers(0, fc.ALL_FLAGS)),
    st.builds(fc.EntryMsg, entries),
    st.builds(fc.Ready, st.integers(0, 2**64 - 1), st.sampled_from([b"", bytes(range(32))])),
    st.builds(fc.Skipped, texts),
    st.builds(fc.Data, st.integers(0, 2**64 - 1), st.integers(-1, 2**63 - 1)),
    st.builds(fc.FileEnd, st.binary(min_size=32, max_size=32), st.booleans()),
    st.builds(fc.Done, st.integers(0, 2**63 - 1)),  # size: signed on the wire
    st.builds(fc.Error, texts, texts),
    st.builds(fc.End, st.integers(0, 2**64 - 1)),
)


@given(messages)
def test_every_message_round_trips(message: fc.Message) -> None:
    assert fc.decode(fc.encode(message)) == message


@given(messages, messages)
def test_messages_are_values(a: fc.Message, b: fc.Message) -> None:
    # Equal exactly when same type and same fields; hashable; immutable; a repr
    # that names the fields (plain classes now, not dataclasses: issue 11's start-up).
    same = type(a) is type(b) and fc.encode(a) == fc.encode(b)
    assert (a == b) == same
    if same:
        assert hash(a) == hash(b)
    assert repr(a).startswith(type(a).__name__ + "(")
    name = type(a)._fields[0]
    with pytest.raises(AttributeError, match="immutable"):
        setattr(a, name, None)
    with pytest.raises(AttributeError, match="immutable"):
        delattr(a, name)


def test_messages_match_by_position() -> None:
    match fc.Data(5, 7):
        case fc.Data(start, length):
            assert (start, length) == (5, 7)
        case _:
            pytest.fail("Data did not match its positional pattern")


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_any_bytes_give_a_message_or_protocol_error(body: bytes) -> None:
    try:
        message = fc.decode(body)
    except ProtocolError:
        return
    assert fc.decode(fc.encode(message)) == message


@given(messages, st.data())
def test_truncated_messages_are_protocol_errors(message: fc.Message, data: st.DataObject) -> None:
    body = fc.encode(message)
    cut = data.draw(st.integers(0, len(body) - 1))
    with pytest.raises(ProtocolError):
        fc.decode(body[:cut])


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "empty"),
        (b"\xff", "unknown"),
        (fc.encode(fc.Done(1)) + b"x", "stray"),
        (bytes([fc.FileEnd.TYPE]) + b"\0\0\0\x05abcde\x01", "digest"),
        (bytes([fc.Get.TYPE]) + b"\0\0\0\x01a" + (1 << 20).to_bytes(8, "big"), "flags"),
        (bytes([fc.Stat.TYPE]) + (10**6).to_bytes(4, "big"), "over the limit"),
    ],
)
def test_bad_bodies_say_what_is_wrong(body: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        fc.decode(body)


def test_unsafe_entries_are_refused_both_ways() -> None:
    bad = fc.Entry(b"a", fc.KIND_SYMLINK, link=b"")
    with pytest.raises(ProtocolError, match="symlink"):
        fc.encode(fc.Put(bad))
    with pytest.raises(ProtocolError, match="NUL"):
        fc.encode(fc.EntryMsg(fc.Entry(b"a\0b", fc.KIND_FILE)))
    with pytest.raises(ProtocolError, match="mode"):
        fc.encode(fc.EntryMsg(fc.Entry(b"a", fc.KIND_FILE, mode=0o10000)))


def test_chunks() -> None:
    assert fc.encode_chunk(b"abc") == b"\0\0\0\x03abc"
    assert fc.chunk_length(b"\0\0\0\x03") == 3
    assert fc.chunk_length(fc.encode_chunk(b"")) == 0
    with pytest.raises(ProtocolError, match="over"):
        fc.chunk_length((fc.MAX_CHUNK + 1).to_bytes(4, "big"))
    with pytest.raises(ProtocolError):
        fc.chunk_length(b"\0")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"a/b", (False, (b"a", b"b"))),
        (b"/srv//www/./x/", (True, (b"srv", b"www", b"x"))),
        (b".", (False, ())),
        (b"caf\xe9", (False, (b"caf\xe9",))),
    ],
)
def test_split_path(path: bytes, expected: tuple[bool, tuple[bytes, ...]]) -> None:
    assert fc.split_path(path) == expected


@pytest.mark.parametrize(
    "path", [b"..", b"a/../b", b"/srv/..", b"a\0b", b"x" * 5000, b"a/" + b"n" * 256]
)
def test_split_path_refuses(path: bytes) -> None:
    with pytest.raises(ArgumentError):
        fc.split_path(path)


def test_match_root_picks_the_longest_and_refuses_outside() -> None:
    roots = ((b"srv",), (b"srv", b"www"), (b"var", b"log"))
    assert fc.match_root(True, (b"srv", b"www", b"a"), roots) == (1, (b"a",))
    assert fc.match_root(True, (b"var", b"log"), roots) == (2, ())
    assert fc.match_root(False, (b"a",), roots) == (0, (b"a",))
    # A string prefix is not a component prefix.
    with pytest.raises(ArgumentError, match="outside the served roots"):
        fc.match_root(True, (b"srvx", b"a"), roots)
    with pytest.raises(ArgumentError, match="outside"):
        fc.match_root(True, (b"etc", b"passwd"), roots)
    with pytest.raises(ArgumentError, match="no roots"):
        fc.match_root(False, (), ())


@given(st.binary(max_size=100))
def test_paths_give_parts_or_argument_errors(path: bytes) -> None:
    try:
        absolute, parts = fc.split_path(path)
    except ArgumentError:
        return
    assert all(p not in (b"", b".", b"..") and b"/" not in p for p in parts)
    assert absolute == path.startswith(b"/")


@pytest.mark.parametrize("path", [b"/a", b"a/../b", b"..", b"", b"a/./b"])
def test_tree_paths_from_a_peer_must_be_plain(path: bytes) -> None:
    with pytest.raises(ProtocolError):
        fc.relative_parts(path)


def test_relative_parts() -> None:
    assert fc.relative_parts(b"a/b\xff") == (b"a", b"b\xff")


@pytest.mark.parametrize(
    ("flags", "exists", "src", "dst", "kept"),
    [
        (0, False, 1, 2, False),
        (0, True, 1, 2, False),
        (fc.F_NO_CLOBBER, True, 3, 2, True),
        (fc.F_NO_CLOBBER, False, 3, 2, False),
        (fc.F_UPDATE, True, 3, 2, False),
        (fc.F_UPDATE, True, 2, 2, True),
        (fc.F_FORCE, True, 1, 2, False),
    ],
)
def test_should_replace(flags: int, exists: bool, src: int, dst: int, kept: bool) -> None:
    assert (fc.should_replace(flags, exists, src, dst) is not None) == kept


def test_errors_are_hvsock_errors() -> None:
    assert issubclass(ProtocolError, HvsockError)
