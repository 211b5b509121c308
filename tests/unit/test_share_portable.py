"""The portable share backend's pure parts, including those that matter only on Windows
(reserved device names, ``:`` streams, ``\\``, reparse points, the read-only
attribute), run here on Linux: name rules, the link test, synthesized modes, qids and
the server's own lock table."""

from __future__ import annotations

import errno
import ntpath
import posixpath
import stat
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvsock._builtin.share import portable as pt
from hvsock._builtin.share.backend import (
    LOCK_BLOCKED,
    LOCK_READ,
    LOCK_SUCCESS,
    LOCK_UNLOCK,
    FsErrno,
)
from hvsock._builtin.share.backend import LOCK_WRITE as W

GOOD = [b"a", b"file.txt", b".hidden", b"CONSOLE", b"xCON", b"COM10", b"LPT", b"con-fig",
        b"caf\xc3\xa9", b"a b", b"..a", b"a..b", b"NULL.txt"]  # fmt: skip
BAD = [
    b"", b".", b"..", b"a/b", b"a\\b", b"a:b", b"file.txt:stream", b"C:", b"a\0b",
    b"CON", b"con", b"Con.txt", b"NUL", b"nul.tar.gz", b"AUX", b"PRN", b"COM1", b"com9",
    b"LPT1", b"lpt0.log", b"CON .txt", b"COM\xc2\xb9", b"CONIN$", b"conout$",
    b"trail.", b"trail ", b".. ", b"...", b"a<b", b"a>b", b'a"b', b"a|b", b"a?b", b"a*b",
    b"tab\tname", b"\x1f", b"\xff\xfe",
]  # fmt: skip


@pytest.mark.parametrize("name", GOOD)
def test_names_windows_can_hold_pass(name: bytes) -> None:
    assert pt.name_problem(name) is None
    pt.check_name(name)


@pytest.mark.parametrize("name", BAD)
def test_names_windows_cannot_hold_are_einval(name: bytes) -> None:
    assert pt.name_problem(name)
    with pytest.raises(FsErrno) as info:
        pt.check_name(name)
    assert info.value.code == errno.EINVAL


_CHARS = st.sampled_from(sorted(pt.FORBIDDEN) + list("aZ9.- _~$") + ["\u00e9", "\u00b9"])
names = st.lists(_CHARS, min_size=0, max_size=12).map(lambda cs: "".join(cs).encode()) | st.binary(
    max_size=12
)


@given(names)
def test_an_accepted_name_is_one_child_of_its_directory_on_both_systems(name: bytes) -> None:
    """Whatever passes stays a single, literal component below the directory, with
    Windows' path rules as well as POSIX's: no drive, no separator, no climbing, no
    name Windows would rewrite (trailing dots and spaces)."""
    if pt.name_problem(name) is not None:
        return
    text = name.decode("utf-8")
    for mod, root in ((ntpath, "C:\\export"), (posixpath, "/export")):
        joined = mod.normpath(mod.join(root, text))
        assert mod.dirname(joined) == root, (mod.__name__, name)
        assert mod.basename(joined) == text
    assert ntpath.splitdrive(text) == ("", text)
    assert text == text.rstrip(". ")


@given(names, st.sampled_from(sorted(pt.FORBIDDEN)), st.integers(0, 12))
def test_a_forbidden_character_anywhere_is_refused(name: bytes, bad: str, at: int) -> None:
    at = min(at, len(name))
    assert pt.name_problem(name[:at] + bad.encode() + name[at:]) is not None


@given(
    st.sampled_from(sorted(pt.RESERVED)),
    st.lists(st.booleans(), min_size=7, max_size=7),
    st.sampled_from(["", ".txt", ".tar.gz", " .log"]),
)
def test_reserved_device_names_are_refused_in_any_case_and_with_any_extension(
    device: str, upper: list[bool], ext: str
) -> None:
    spelled = "".join(
        c.upper() if u else c.lower() for c, u in zip(device, upper + [True] * 9, strict=False)
    )
    assert pt.name_problem((spelled + ext).encode()) is not None
    assert pt.name_problem(("my" + spelled + ext).encode()) is None


def _st(mode: int, attrs: int = 0, tag: int = 0) -> SimpleNamespace:
    return SimpleNamespace(st_mode=mode, st_file_attributes=attrs, st_reparse_tag=tag)


def test_links_junctions_and_mount_points_redirect_other_reparse_points_do_not() -> None:
    reparse = pt.FILE_ATTRIBUTE_REPARSE_POINT
    assert pt.redirects(_st(stat.S_IFLNK | 0o777))
    assert pt.redirects(_st(stat.S_IFDIR | 0o777, reparse, 0xA0000003))  # junction
    assert pt.redirects(_st(stat.S_IFREG | 0o666, reparse, 0xA000000C))  # symlink
    assert not pt.redirects(_st(stat.S_IFREG | 0o666, reparse, 0x9000001A))  # OneDrive file
    assert not pt.redirects(_st(stat.S_IFDIR | 0o777))
    assert not pt.redirects(SimpleNamespace(st_mode=stat.S_IFREG | 0o644))  # no such fields


@pytest.mark.parametrize(
    ("mode", "attrs", "tag", "shown"),
    [
        (stat.S_IFREG | 0o666, 0, 0, stat.S_IFREG | 0o644),  # Windows, writable
        (stat.S_IFREG | 0o444, 1, 0, stat.S_IFREG | 0o444),  # FILE_ATTRIBUTE_READONLY
        (stat.S_IFREG | 0o777, 0, 0, stat.S_IFREG | 0o755),  # .exe as CPython reports it
        (stat.S_IFREG | 0o555, 1, 0, stat.S_IFREG | 0o555),
        (stat.S_IFREG | 0o600, 0, 0, stat.S_IFREG | 0o644),  # Linux, --portable
        (stat.S_IFREG | 0o400, 0, 0, stat.S_IFREG | 0o444),
        (stat.S_IFREG | 0o070, 0, 0, stat.S_IFREG | 0o444),  # group bits do not count
        (stat.S_IFDIR | 0o555, 1, 0, stat.S_IFDIR | 0o755),  # read-only means nothing here
        (stat.S_IFDIR | 0o700, 0, 0, stat.S_IFDIR | 0o755),
        (stat.S_IFDIR | 0o777, 0x400, 0xA0000003, stat.S_IFLNK | 0o777),  # junction
        (stat.S_IFLNK | 0o777, 0, 0, stat.S_IFLNK | 0o777),
        (stat.S_IFIFO | 0o600, 0, 0, stat.S_IFIFO | 0o644),
    ],
)
def test_synthesized_modes(mode: int, attrs: int, tag: int, shown: int) -> None:
    assert pt.synth_mode(_st(mode, attrs, tag)) == shown


def test_qid_paths_from_inodes_mixed_across_devices_and_hashed_without() -> None:
    assert pt.qid_path(1234, 7, 7, (0, (b"a",))) == 1234
    other = pt.qid_path(1234, 8, 7, (0, (b"a",)))
    assert other != 1234
    assert other == pt.qid_path(1234, 8, 7, (0, (b"b",)))  # the path does not matter
    no_ino = pt.qid_path(0, 7, 7, (0, (b"a", b"b")))
    assert no_ino >> 63 == 1  # never meets an inode number below 2**63
    assert no_ino == pt.qid_path(0, 7, 7, (0, (b"a", b"b")))  # stable
    assert no_ino != pt.qid_path(0, 7, 7, (0, (b"a", b"c")))
    assert no_ino != pt.qid_path(0, 7, 7, (1, (b"a", b"b")))  # per export


def _open(ino: int = 5) -> pt._Open:
    return pt._Open(None, (1, ino), True)


def test_lock_table_conflicts_splits_and_releases() -> None:
    table = pt.LockTable()
    a, b, elsewhere = _open(), _open(), _open(6)
    assert table.set(a, W, 0, 100) == LOCK_SUCCESS
    assert table.set(b, LOCK_READ, 50, 10) == LOCK_BLOCKED
    assert table.set(b, W, 100, 0) == LOCK_SUCCESS  # 100 to the end: no overlap
    assert table.set(elsewhere, W, 0, 0) == LOCK_SUCCESS  # another file
    assert table.get(b, LOCK_READ, 10, 1) == (W, 0, 100)
    assert table.set(a, LOCK_UNLOCK, 20, 10) == LOCK_SUCCESS  # a hole in a's lock
    assert table.set(b, W, 20, 10) == LOCK_SUCCESS
    assert table.set(b, W, 19, 2) == LOCK_BLOCKED
    assert table.get(a, LOCK_READ, 200, 1) == (W, 100, 0)  # b's lock runs to the end
    table.release(a)
    assert table.set(b, W, 0, 0) == LOCK_SUCCESS  # a's pieces are gone
    assert table.set(b, LOCK_UNLOCK, 0, 0) == LOCK_SUCCESS
    assert table.files == {(1, 6): table.files[(1, 6)]}  # only the other file is left
    assert table.set(a, 9, 0, 0) == pt.LOCK_ERROR


def test_read_locks_share_write_locks_do_not() -> None:
    table = pt.LockTable()
    a, b = _open(), _open()
    assert table.set(a, LOCK_READ, 0, 0) == LOCK_SUCCESS
    assert table.set(b, LOCK_READ, 0, 0) == LOCK_SUCCESS
    assert table.set(b, W, 0, 0) == LOCK_BLOCKED
    assert table.get(b, W, 0, 0) == (LOCK_READ, 0, 0)
    assert table.get(b, LOCK_READ, 0, 0) is None
    assert table.set(a, W, 0, 0) == LOCK_BLOCKED  # upgrading waits for b


@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),
            st.sampled_from([LOCK_READ, W, LOCK_UNLOCK]),
            st.integers(0, 20),
            st.integers(0, 8),
        ),
        max_size=25,
    )
)
def test_lock_table_matches_a_byte_by_byte_model(ops: list[tuple[int, int, int, int]]) -> None:
    """Against a model that keeps each byte's holders (bytes 0-39; length 0 = to 40)."""
    table = pt.LockTable()
    owners = [_open(), _open(), _open()]
    model: list[dict[int, int]] = [{} for _ in range(40)]
    for who, kind, start, length in ops:
        span = range(start, start + length if length else 40)
        blocked = kind != LOCK_UNLOCK and any(
            other != who and (kind == W or held == W)
            for byte in span
            for other, held in model[byte].items()
        )
        assert table.set(owners[who], kind, start, length) == (
            LOCK_BLOCKED if blocked else LOCK_SUCCESS
        )
        if not blocked:
            for byte in span:
                model[byte].pop(who, None)
                if kind != LOCK_UNLOCK:
                    model[byte][who] = kind
    for byte in range(40):
        for who, owner in enumerate(owners):
            for kind in (LOCK_READ, W):
                clash = any(o != who and (kind == W or k == W) for o, k in model[byte].items())
                assert (table.get(owner, kind, byte, 1) is not None) == clash
