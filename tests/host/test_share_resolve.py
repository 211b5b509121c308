"""The Linux share backend's two resolutions of a path below an export: one
``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` and the component loop it replaces
where the kernel lacks it. Both must reach the same inode or fail the same way, on
trees holding every kind of link, and neither may leave the export."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hvsock._builtin.share.backend import FsErrno
from hvsock._builtin.share.linuxfs import LinuxFs, openat2

from ..tiers import skip_or_fail

pytestmark = pytest.mark.skipif(not hasattr(os, "O_PATH"), reason="the share needs Linux")

#: Entries of the export (relative path -> what it is) every case starts from.
NAMES = (b"d", b"e", b"f", b"in", b"up", b"out", b"abs", b"loop", b"gone", b"x")


def make_tree(root: Path) -> tuple[Path, Path]:
    export, outside = root / "export", root / "outside"
    (export / "d" / "e").mkdir(parents=True)
    (outside / "d").mkdir(parents=True)
    (outside / "d" / "f").write_bytes(b"outside")
    (export / "d" / "f").write_bytes(b"inside")
    (export / "d" / "e" / "f").write_bytes(b"deeper")
    (export / "f").write_bytes(b"top")
    (export / "d" / "in").symlink_to("e")  # a link that stays inside
    (export / "d" / "up").symlink_to("..")  # up, still inside
    (export / "out").symlink_to("../outside")  # relative, out of the export
    (export / "d" / "abs").symlink_to(outside)  # absolute, out of the export
    (export / "loop").symlink_to("loop")
    (export / "d" / "gone").symlink_to("nowhere")
    return export, outside


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LinuxFs, LinuxFs, Path]]:
    if openat2() is None:
        skip_or_fail("this kernel (or its seccomp filter) has no openat2: only the loop runs")
    export, _ = make_tree(tmp_path_factory.mktemp("resolve"))
    fast = LinuxFs([os.fsencode(export)], "owner")
    loop = LinuxFs([os.fsencode(export)], "owner", use_openat2=False)
    assert fast.openat2 is not None
    assert loop.openat2 is None
    yield fast, loop, export
    fast.close()
    loop.close()


def outcome(fs: LinuxFs, parts: tuple[bytes, ...]) -> tuple[str, int, int]:
    """("ok", dev, ino) of what *parts* reaches, or ("errno", code, 0)."""
    try:
        fd = fs.resolve(0, parts)
    except FsErrno as exc:
        return ("errno", exc.code, 0)
    except OSError as exc:
        return ("errno", exc.errno or 0, 0)
    try:
        st_ = os.fstat(fd)
    finally:
        os.close(fd)
    return ("ok", st_.st_dev, st_.st_ino)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(NAMES), min_size=1, max_size=6).map(tuple))
def test_both_resolutions_agree(
    trees: tuple[LinuxFs, LinuxFs, Path], parts: tuple[bytes, ...]
) -> None:
    fast, loop, export = trees
    got = outcome(fast, parts)
    assert got == outcome(loop, parts), parts
    if got[0] == "ok":
        # Whatever was reached is the export's own entry, never outside it: the
        # same inode as the path read with no link followed (lstat of the last).
        expected = os.lstat(export.joinpath(*map(os.fsdecode, parts)))
        assert (got[1], got[2]) == (expected.st_dev, expected.st_ino)


@pytest.mark.parametrize(
    ("parts", "want"),
    [
        ((b"d", b"e", b"f"), "file"),
        ((b"d", b"in"), "link"),  # the last name a link: the link itself
        ((b"out",), "link"),
        ((b"d", b"abs"), "link"),
        ((b"loop",), "link"),
        ((b"d", b"in", b"f"), errno.ENOTDIR),  # through a link, even one inside
        ((b"d", b"up", b"f"), errno.ENOTDIR),
        ((b"out", b"d", b"f"), errno.ENOTDIR),
        ((b"d", b"abs", b"d"), errno.ENOTDIR),
        ((b"loop", b"x"), errno.ENOTDIR),
        ((b"f", b"x"), errno.ENOTDIR),  # a file where a directory must be
        ((b"d", b"x"), errno.ENOENT),
        ((b"d", b"gone"), "link"),
    ],
)
def test_each_route(
    trees: tuple[LinuxFs, LinuxFs, Path], parts: tuple[bytes, ...], want: str | int
) -> None:
    for fs in trees[:2]:
        got = outcome(fs, parts)
        if got[0] == "errno":
            assert got[1] == want, (fs.openat2, parts, os.strerror(got[1]))
            continue
        seen = os.lstat(trees[2].joinpath(*map(os.fsdecode, parts)))
        assert got[1:] == (seen.st_dev, seen.st_ino)
        mode = seen.st_mode
        kind = "link" if stat.S_ISLNK(mode) else "file" if stat.S_ISREG(mode) else "dir"
        assert kind == want, (fs.openat2, parts)


def test_a_deep_tree_resolves_in_one_call(tmp_path: Path) -> None:
    """30 names deep (CPython's walk tests build this), and the root itself."""
    if openat2() is None:
        skip_or_fail("this kernel (or its seccomp filter) has no openat2")
    deep = tmp_path.joinpath(*["d"] * 30)
    deep.mkdir(parents=True)
    (deep / "leaf").write_bytes(b"x")
    fs = LinuxFs([os.fsencode(tmp_path)], "owner")
    try:
        for parts, path in (((b"d",) * 30 + (b"leaf",), deep / "leaf"), ((), tmp_path)):
            fd = fs.resolve(0, parts)
            try:
                assert os.fstat(fd).st_ino == os.lstat(path).st_ino
            finally:
                os.close(fd)
    finally:
        fs.close()
