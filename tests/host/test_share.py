"""The share service (9P2000.L) driven over a Unix socket by the codec's own small client:
plain file work, several tags in flight, and hostile clients that must not reach outside
the export nor stop the server."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hvsock
import hvsock.services
from hvsock._core import ninep as p

from .._ninep import Client, Rlerror, sharing, snapshot, unix_path

pytestmark = pytest.mark.skipif(not hasattr(os, "O_PATH"), reason="the share needs Linux")

RDWR, CREAT_MODE = os.O_RDWR, 0o644


@pytest.fixture(params=[False, True], ids=["linux", "portable"])
def portable(request: pytest.FixtureRequest) -> bool:
    """The protocol tests run against both backends: O_PATH, and the portable one
    (what a Windows host uses), forced here with portable=True."""
    return bool(request.param)


@pytest.fixture
def tree(short_tmp: Path) -> tuple[Path, Path, str]:
    export, outside = short_tmp / "export", short_tmp / "outside"
    export.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not touch")
    os.chmod(outside / "secret", 0o600)
    (export / "out").symlink_to(outside)
    (export / "out-file").symlink_to(outside / "secret")
    (export / "sub").mkdir()
    (export / "sub" / "f").write_bytes(b"hello")
    return export, outside, f"unix://{short_tmp}/s.sock"


def errno_of(call: object, *args: object) -> int:
    with pytest.raises(Rlerror) as info:
        call(*args)  # type: ignore[operator]
    return info.value.errno


def test_files_and_directories_round_trip(tree: tuple[Path, Path, str], portable: bool) -> None:
    export, _, address = tree
    with sharing([export], address, portable=portable, allow=["any"]) as real:
        c = Client(unix_path(real))
        root = c.attach(0)
        assert root.type == p.QTDIR
        c.walk(0, 1)
        c.rpc(p.TLCREATE, 1, b"new", RDWR, CREAT_MODE, 0)
        assert c.rpc(p.TWRITE, 1, 0, b"x" * 5000).args == (5000,)
        assert c.rpc(p.TREAD, 1, 4990, 100).args == (b"x" * 10,)
        assert (export / "new").read_bytes() == b"x" * 5000
        attr = c.rpc(p.TGETATTR, 1, 0x7FF).args
        assert attr[7] == 5000
        # Synthesized on the portable backend: 0644 for a file its owner may write.
        created = 0o644 if portable else CREAT_MODE & ~os.umask(0o22) & 0o777
        assert attr[2] & 0o777 == created
        assert attr[3] == (0 if portable else os.geteuid())  # portable: whoever attached
        c.rpc(p.TMKDIR, 0, b"d", 0o755, 0)
        assert (export / "d").is_dir()
        c.rpc(p.TRENAMEAT, 0, b"new", 0, b"d2")  # rename
        assert (export / "d2").read_bytes() == b"x" * 5000
        assert c.rpc(p.TREAD, 1, 0, 3).args == (b"xxx",)  # the open fid follows
        assert c.rpc(p.TGETATTR, 1, 0x7FF).args[7] == 5000
        c.rpc(p.TSYMLINK, 0, b"ln", b"d2", 0)
        c.walk(0, 2, b"ln")
        assert c.rpc(p.TREADLINK, 2).args == (b"d2",)
        c.rpc(p.TLINK, 0, 1, b"hard")
        assert os.path.samefile(export / "hard", export / "d2")
        c.walk(0, 3)
        c.rpc(p.TLOPEN, 3, os.O_RDONLY | os.O_DIRECTORY)
        names = [e[3] for e in p.decode_dirents(c.rpc(p.TREADDIR, 3, 0, 8192).args[0])]
        assert sorted(names) == sorted(
            [b".", b"..", b"d", b"d2", b"hard", b"ln", b"out", b"out-file", b"sub"]
        )
        # readdir in small pieces gives the same names, each once
        pieces: list[bytes] = []
        offset = 0
        while entries := p.decode_dirents(c.rpc(p.TREADDIR, 3, offset, 40).args[0]):
            pieces += [e[3] for e in entries]
            offset = entries[-1][1]
        assert pieces == names
        c.rpc(p.TUNLINKAT, 0, b"hard", 0)
        c.rpc(p.TUNLINKAT, 0, b"d", 0x200)
        assert not (export / "hard").exists()
        assert not (export / "d").exists()
        on_disk = (export / "d2").stat().st_mode & 0o777
        c.rpc(p.TSETATTR, 1, 1 | 8, 0o600 if not portable else 0o400, 0, 0, 10, 0, 0, 0, 0)
        assert (export / "d2").stat().st_size == 10
        # The portable backend takes only the owner's write bit (Windows' read-only).
        want = on_disk & ~0o200 if portable else 0o600
        assert (export / "d2").stat().st_mode & 0o777 == want
        assert c.rpc(p.TGETATTR, 1, 0x7FF).args[2] & 0o777 == (0o444 if portable else 0o600)
        c.rpc(p.TFSYNC, 1, 0)
        assert c.rpc(p.TSTATFS, 0).args[0] == 0x01021997
        c.close()


def test_locks_conflict_between_fids_and_clear_on_clunk(
    tree: tuple[Path, Path, str], portable: bool
) -> None:
    export, _, address = tree
    with sharing([export], address, portable=portable, allow=["any"]) as real:
        a, b = Client(unix_path(real)), Client(unix_path(real))
        for c in (a, b):
            c.attach(0)
            c.walk(0, 1, b"sub", b"f")
            c.rpc(p.TLOPEN, 1, RDWR)
        assert a.rpc(p.TLOCK, 1, 1, 0, 0, 0, 11, b"a").args == (0,)  # write lock: granted
        assert b.rpc(p.TLOCK, 1, 1, 0, 0, 0, 22, b"b").args == (1,)  # blocked
        held = b.rpc(p.TGETLOCK, 1, 1, 0, 0, 22, b"b").args
        assert held[0] == 1  # someone holds a write lock
        a.rpc(p.TCLUNK, 1)
        assert b.rpc(p.TLOCK, 1, 1, 0, 0, 0, 22, b"b").args == (0,)


def test_several_tags_in_flight_and_flush(tree: tuple[Path, Path, str], portable: bool) -> None:
    export, _, address = tree
    (export / "big").write_bytes(os.urandom(1 << 16))
    with sharing([export], address, portable=portable, allow=["any"]) as real:
        c = Client(unix_path(real))
        c.attach(0)
        c.walk(0, 1, b"big")
        c.rpc(p.TLOPEN, 1, os.O_RDONLY)
        for tag in range(1, 41):
            c.send(p.Message(p.TREAD, tag, (1, (tag - 1) * 1024, 1024)))
        c.send(p.Message(p.TFLUSH, 100, (40,)))
        replies = {}
        order = []
        for _ in range(41):
            msg = c.recv()
            assert msg is not None
            replies[msg.tag] = msg
            order.append(msg.tag)
        # The flushed request is answered (it was already running), then the Rflush.
        assert order.index(40) < order.index(100)
        data = (export / "big").read_bytes()
        for tag in range(1, 41):
            assert replies[tag].args == (data[(tag - 1) * 1024 : tag * 1024],)
        assert replies[100].type == p.RFLUSH


def test_escape_routes_are_closed(tree: tuple[Path, Path, str], portable: bool) -> None:
    export, outside, address = tree
    before = snapshot(outside)
    with sharing([export], address, portable=portable, allow=["any"]) as real:
        c = Client(unix_path(real))
        root = c.attach(0)
        assert c.walk(0, 1, b"..", b"..", b"..")[-1] == root  # .. stops at the root
        c.rpc(p.TCLUNK, 1)
        # A symlink is never walked through, nor opened, nor written through.
        assert len(c.walk(0, 1, b"out", b"secret")) == 1  # stops at the link
        assert errno_of(c.rpc, p.TCLUNK, 1) == errno.EBADF  # and made no fid
        c.walk(0, 1, b"out-file")
        assert errno_of(c.rpc, p.TLOPEN, 1, RDWR) == errno.ELOOP
        c.rpc(p.TSETATTR, 1, 1, 0o777, 0, 0, 0, 0, 0, 0, 0)  # a link has no mode of its own
        assert errno_of(c.rpc, p.TSETATTR, 1, 8, 0, 0, 0, 0, 0, 0, 0, 0) == errno.EINVAL
        assert errno_of(c.rpc, p.TLCREATE, 0, b"out-file", RDWR | os.O_CREAT, 0o644, 0) in (
            errno.ELOOP,
            errno.EEXIST,
        )
        assert errno_of(c.rpc, p.TLCREATE, 0, b"out/x", RDWR, 0o644, 0) == errno.EINVAL
        c.walk(0, 2, b"out")
        assert errno_of(c.rpc, p.TMKDIR, 2, b"x", 0o755, 0) == errno.ENOTDIR
        assert errno_of(c.rpc, p.TLCREATE, 2, b"x", RDWR, 0o644, 0) == errno.ENOTDIR
        assert errno_of(c.rpc, p.TRENAMEAT, 0, b"sub", 2, b"moved") == errno.ENOTDIR
        # Names with / or NUL, and . or .., are refused wherever a name is taken.
        for bad in (b"a/b", b"a\0b", b"..", b".", b"", b"../outside"):
            assert errno_of(c.rpc, p.TMKDIR, 0, bad, 0o755, 0) == errno.EINVAL
            assert errno_of(c.rpc, p.TRENAMEAT, 0, b"sub", 0, bad) == errno.EINVAL
            assert errno_of(c.rpc, p.TSYMLINK, 0, bad, b"x", 0) == errno.EINVAL
            assert errno_of(c.rpc, p.TUNLINKAT, 0, bad, 0) == errno.EINVAL
        for bad in (b"a/b", b"a\0b", b"", b"../../outside"):
            assert errno_of(c.walk, 0, 3, bad) == errno.EINVAL
        # A hard link to a file reached through a symlink cannot be made.
        c.walk(0, 4, b"out")
        assert errno_of(c.walk, 4, 5, b"secret") == errno.ENOTDIR
        # Device nodes are never made on the host.
        assert errno_of(c.rpc, p.TMKNOD, 0, b"dev", 0o20666, 8, 0, 0) == errno.EPERM
        c.close()
    assert snapshot(outside) == before
    assert os.stat(outside / "secret").st_mode & 0o777 == 0o600


def test_read_only_refuses_every_change(tree: tuple[Path, Path, str], portable: bool) -> None:
    export, _, address = tree
    before = snapshot(export)
    with sharing(
        {"data": export}, address, portable=portable, allow=["any"], read_only=True
    ) as real:
        c = Client(unix_path(real))
        c.attach(0, b"data")
        c.walk(0, 1, b"sub", b"f")
        assert errno_of(c.rpc, p.TLOPEN, 1, RDWR) == errno.EROFS
        assert errno_of(c.rpc, p.TLOPEN, 1, os.O_RDONLY | os.O_TRUNC) == errno.EROFS
        c.rpc(p.TLOPEN, 1, os.O_RDONLY)
        assert c.rpc(p.TREAD, 1, 0, 100).args == (b"hello",)
        assert errno_of(c.rpc, p.TWRITE, 1, 0, b"x") == errno.EROFS
        assert errno_of(c.rpc, p.TMKDIR, 0, b"d", 0o755, 0) == errno.EROFS
        assert errno_of(c.rpc, p.TLCREATE, 0, b"n", RDWR, 0o644, 0) == errno.EROFS
        assert errno_of(c.rpc, p.TUNLINKAT, 0, b"sub", 0x200) == errno.EROFS
        assert errno_of(c.rpc, p.TSETATTR, 1, 1, 0o777, 0, 0, 0, 0, 0, 0, 0) == errno.EROFS
        assert errno_of(c.rpc, p.TRENAMEAT, 0, b"sub", 0, b"x") == errno.EROFS
        c.walk(0, 2, b"sub")
        assert errno_of(c.rpc, p.TREMOVE, 2) == errno.EROFS
        assert errno_of(c.attach, 3, b"nope") == errno.ENOENT
        c.close()
    assert snapshot(export) == before


def test_fids_are_capped_and_walks_are_bounded(
    tree: tuple[Path, Path, str], portable: bool
) -> None:
    export, _, address = tree
    deep = export.joinpath(*[f"d{i}" for i in range(16)])
    deep.mkdir(parents=True)
    with sharing([export], address, portable=portable, allow=["any"], max_fids=1000) as real:
        c = Client(unix_path(real))
        c.attach(0)
        granted = refused = 0
        for fid in range(1, 10_001):  # never clunked
            try:
                c.walk(0, fid, b"sub")
                granted += 1
            except Rlerror as exc:
                refused += exc.errno == errno.EMFILE
        assert (granted, refused) == (999, 9001)
        c.rpc(p.TCLUNK, 5)
        c.walk(0, 5, b"sub")  # room again once one is clunked
        assert errno_of(c.walk, 0, 6, b"sub") == errno.EEXIST  # a fid in use is not reused
        other = Client(unix_path(real))  # the cap is per connection
        other.attach(0)
        assert len(other.walk(0, 1, *[f"d{i}".encode() for i in range(16)])) == 16
        assert errno_of(other.walk, 0, 2, *[b"sub"] * 17) == errno.EINVAL
        # A walk that fails part-way answers the qids it found and makes no fid.
        assert len(other.walk(0, 3, b"d0", b"d1", b"nope")) == 2
        assert errno_of(other.rpc, p.TCLUNK, 3) == errno.EBADF
        c.close()
        other.close()


def test_messages_before_version_and_garbage(tree: tuple[Path, Path, str], portable: bool) -> None:
    export, _, address = tree
    with sharing([export], address, portable=portable, allow=["any"]) as real:
        early = Client(unix_path(real), msize=0)
        assert errno_of(early.attach, 0) == errno.EPROTO
        for junk in (
            b"\xff" * 64,
            struct.pack("<IBH", 3, 100, 0),
            struct.pack("<IBH", 1 << 30, 100, 0),
            p.encode(p.Message(p.RREAD, 1, (b"x",))),
            struct.pack("<IBH", 7, 112, 1),
        ):
            bad = Client(unix_path(real))
            bad.sock.sendall(junk)
            assert bad.recv() is None  # closed, nothing answered
            bad.close()
        good = Client(unix_path(real))
        good.attach(0)
        assert good.walk(0, 1, b"sub", b"f")[-1].type == p.QTFILE


_ARGS = {
    "b": st.integers(0, 0xFF),
    "w": st.integers(0, 0xFFFF),
    "d": st.sampled_from([0, 1, 2, 3, 0xFFFFFFFF]) | st.integers(0, 0xFFFFFFFF),
    "q": st.integers(0, 2**64 - 1) | st.integers(0, 100),
    "s": st.sampled_from(
        [b"", b".", b"..", b"sub", b"f", b"out", b"a/b", b"a\0", b"out-file", b"x" * 300]
    ),
    "Q": st.builds(p.Qid, st.integers(0, 255), st.integers(0, 9), st.integers(0, 9)),
    "D": st.binary(max_size=64),
}
_ARGS["S"] = st.lists(_ARGS["s"], max_size=18).map(tuple)
_ARGS["R"] = st.lists(_ARGS["Q"], max_size=3).map(tuple)


@st.composite
def hostile(draw: st.DrawFn) -> p.Message:
    kind = draw(st.sampled_from(sorted(k for k in p.LAYOUTS if k % 2 == 0)))
    return p.Message(kind, 1, tuple(draw(_ARGS[c]) for c in p.LAYOUTS[kind]))


def fill_export(export: Path, outside: Path) -> None:
    """The fuzzed export as each example starts: what an example before it left there
    (a hostile client may remove, rename or create anything inside) goes first."""
    for entry in export.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (export / "out").symlink_to(outside)
    (export / "out-file").symlink_to(outside / "secret")
    (export / "sub").mkdir()
    (export / "sub" / "f").write_bytes(b"hello")


@pytest.fixture(scope="module", params=[False, True], ids=["linux", "portable"])
def fuzz_target(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[Path, Path, str]]:
    top = Path(tmp_path_factory.mktemp("fz"))
    sock_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    export, outside = top / "export", top / "outside"
    export.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    fill_export(export, outside)
    path = sock_dir / f"hvsock-fuzz-{os.getpid()}-{int(request.param)}.sock"
    with sharing([export], f"unix://{path}", allow=["any"], portable=request.param) as real:
        yield export, outside, unix_path(real)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(hostile(), min_size=1, max_size=12))
def test_hostile_sessions_never_reach_outside(
    fuzz_target: tuple[Path, Path, str], batch: list[p.Message]
) -> None:
    export, outside, path = fuzz_target
    fill_export(export, outside)
    before = snapshot(outside)
    c = Client(path)
    c.attach(0)
    c.walk(0, 1, b"sub")
    for msg in batch:
        c.send(msg)
        reply = c.recv()
        if reply is None:
            break
        assert reply.tag == 1
        assert reply.type in (msg.type + 1, p.RLERROR)
    c.close()
    assert snapshot(outside) == before
    probe = Client(path)  # the server keeps serving
    probe.attach(0)
    probe.close()


def test_vm_sockets_need_an_explicit_allowlist_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(hvsock.ArgumentError, match="not a directory"):
        hvsock.services.share_service([tmp_path / "missing"])
    with pytest.raises(hvsock.ArgumentError, match="ownership"):
        hvsock.services.share_service([tmp_path], ownership="mapped-xattr")
    with pytest.raises(hvsock.ArgumentError, match="two exports"):
        hvsock.services.share_service([tmp_path, tmp_path])
    service = hvsock.services.share_service({"a": tmp_path}, allow=["any"])
    assert service.allow is None
    assert service.port == 564
    assert hvsock.services.share_service([tmp_path], allow=[3]).allow == frozenset({3})


def test_unix_peers_without_allow_are_served(tree: tuple[Path, Path, str], portable: bool) -> None:
    export, _, address = tree
    with sharing([export], address, portable=portable) as real:
        c = Client(unix_path(real))
        assert c.attach(0).type == p.QTDIR
        sock = socket.socket(socket.AF_UNIX)
        sock.close()


def _user_xattrs_work(path: Path) -> bool:
    probe = path / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError:
        return False
    finally:
        probe.unlink()
    return True


def set_xattr(
    c: Client, fid: int, name: bytes, value: bytes, flags: int = 0, size: int | None = None
) -> None:
    """Txattrcreate on a copy of *fid*, the value in Twrites, Tclunk to set it."""
    c.walk(fid, 50)
    c.rpc(p.TXATTRCREATE, 50, name, len(value) if size is None else size, flags)
    for start in range(0, len(value), 1000):
        c.rpc(p.TWRITE, 50, start, value[start : start + 1000])
    c.rpc(p.TCLUNK, 50)


def get_xattr(c: Client, fid: int, name: bytes) -> bytes:
    size = c.rpc(p.TXATTRWALK, fid, 51, name).args[0]
    value: bytes = c.rpc(p.TREAD, 51, 0, size).args[0] if size else b""
    c.rpc(p.TCLUNK, 51)
    return value


def test_user_xattrs_set_read_list_remove(tree: tuple[Path, Path, str]) -> None:
    export, outside, address = tree
    if not _user_xattrs_work(export):
        pytest.skip(f"the file system of {export} takes no user.* attributes")
    before = snapshot(outside)
    with sharing([export], address, allow=["any"]) as real:
        c = Client(unix_path(real))
        c.attach(0)
        c.walk(0, 1, b"sub", b"f")
        big = os.urandom(2500)  # several Twrites (ext4 keeps ~4 KiB per inode)
        set_xattr(c, 1, b"user.color", b"green")
        set_xattr(c, 1, b"user.big", big)
        assert os.getxattr(export / "sub" / "f", "user.color") == b"green"
        assert os.getxattr(export / "sub" / "f", "user.big") == big
        assert get_xattr(c, 1, b"user.big") == big
        assert set(get_xattr(c, 1, b"").split(b"\0")) >= {b"user.color", b"user.big"}
        # XATTR_CREATE on an existing one fails at the clunk; XATTR_REPLACE works.
        assert errno_of(set_xattr, c, 1, b"user.color", b"red", os.XATTR_CREATE) == errno.EEXIST
        set_xattr(c, 1, b"user.color", b"blue", os.XATTR_REPLACE)
        assert os.getxattr(export / "sub" / "f", "user.color") == b"blue"
        set_xattr(c, 1, b"user.color", b"")  # size 0: removed
        assert "user.color" not in os.listxattr(export / "sub" / "f")
        assert errno_of(get_xattr, c, 1, b"user.color") == errno.ENODATA
        # A value cut short is not set; nor one longer than announced.
        assert errno_of(set_xattr, c, 1, b"user.part", b"abc", 0, 10) == errno.EINVAL
        c.walk(1, 52)
        c.rpc(p.TXATTRCREATE, 52, b"user.over", 2, 0)
        assert errno_of(c.rpc, p.TWRITE, 52, 0, b"abc") == errno.EINVAL
        # Nothing was written (2 bytes announced, 0 came): EINVAL, and the fid is gone.
        assert errno_of(c.rpc, p.TCLUNK, 52) == errno.EINVAL
        assert errno_of(c.rpc, p.TCLUNK, 52) == errno.EBADF
        assert "user.part" not in os.listxattr(export / "sub" / "f")
        assert "user.over" not in os.listxattr(export / "sub" / "f")
        # Only user.*: no capabilities, labels or ACLs from a guest; nothing past 64 KiB.
        for name in (b"trusted.x", b"security.capability", b"system.posix_acl_access"):
            c.walk(1, 53)
            assert errno_of(c.rpc, p.TXATTRCREATE, 53, name, 4, 0) == errno.EOPNOTSUPP
            c.rpc(p.TCLUNK, 53)
        c.walk(1, 53)
        assert errno_of(c.rpc, p.TXATTRCREATE, 53, b"user.huge", 65537, 0) == errno.E2BIG
        # A link of the export (to outside) takes no attribute, nor does its target.
        c.walk(0, 54, b"out-file")
        assert errno_of(set_xattr, c, 54, b"user.x", b"1") == errno.EPERM
        c.close()
    assert snapshot(outside) == before
    assert os.listxattr(outside / "secret") == []


def test_read_only_share_refuses_xattr_changes(
    tree: tuple[Path, Path, str], portable: bool
) -> None:
    export, _, address = tree
    with sharing([export], address, portable=portable, allow=["any"], read_only=True) as real:
        c = Client(unix_path(real))
        c.attach(0)
        c.walk(0, 1, b"sub", b"f")
        assert errno_of(c.rpc, p.TXATTRCREATE, 1, b"user.x", 1, 0) == errno.EROFS
        c.close()


def test_a_clunk_during_reads_never_hands_back_another_files_bytes(
    tree: tuple[Path, Path, str], portable: bool
) -> None:
    """Reads pipelined with a Tclunk of their fid, then opens that may take its
    descriptor number: each read answers the right bytes or EBADF, never B's."""
    export, _, address = tree
    (export / "a").write_bytes(b"A" * 65536)
    for i in range(20):
        (export / f"b{i}").write_bytes(b"B" * 65536)
    with sharing([export], address, portable=portable, allow=["any"]) as real:
        c = Client(unix_path(real), msize=1 << 17)
        c.attach(0)
        for round_ in range(20):
            c.walk(0, 1, b"a")
            c.rpc(p.TLOPEN, 1, os.O_RDONLY)
            batch = [p.Message(p.TREAD, t, (1, 0, 65536)) for t in range(1, 31)]
            batch.append(p.Message(p.TCLUNK, 31, (1,)))
            batch += [
                p.Message(p.TWALK, 40 + i, (0, 100 + i, (f"b{i}".encode(),))) for i in range(20)
            ]
            batch += [p.Message(p.TLOPEN, 60 + i, (100 + i, os.O_RDONLY)) for i in range(20)]
            c.sock.sendall(b"".join(p.encode(m) for m in batch))
            replies = {}
            for _ in range(len(batch)):
                msg = c.recv()
                assert msg is not None
                replies[msg.tag] = msg
            for tag in range(1, 31):
                reply = replies[tag]
                assert reply.args in ((b"A" * 65536,), (errno.EBADF,)), (
                    round_,
                    tag,
                    reply.name,
                    reply.args[0][:8],
                )
            assert replies[31].type == p.RCLUNK
            for i in range(20):
                c.rpc(p.TCLUNK, 100 + i)
        c.close()


class _Log:
    def info(self, *_: object) -> None: ...

    warning = exception = info


class _Conn:
    """What a _Session reads of its connection outside run(): a peer and a log."""

    peer = "test"
    log = _Log()


def test_a_clunked_file_stays_open_until_its_last_read_ends(tmp_path: Path, portable: bool) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from hvsock._builtin.share import server
    from hvsock._builtin.share.portable import PortableFs

    (tmp_path / "f").write_bytes(b"data")
    exports = server._exports([tmp_path])
    shared = PortableFs([e.path for e in exports])
    config = server._Config(
        exports,
        read_only=False,
        ownership="synthesized" if portable else "server",
        max_fids=10,
        max_inflight=4,
        vm_allow_given=True,
        pool=ThreadPoolExecutor(1),
        backend=(lambda: shared) if portable else None,
    )
    session = server._Session(config, _Conn())  # type: ignore[arg-type]
    session.msize = 8192
    try:
        session.t_attach(0, p.NOFID, b"u", b"", 0)
        session.t_walk(0, 1, (b"f",))
        session.t_lopen(1, os.O_RDONLY)
        fid = session.fids[1]
        with session.opened(fid) as handle:  # a read in flight
            session.t_clunk(1)
            fd = handle.fd if portable else handle
            assert os.pread(fd, 4, 0) == b"data"  # not closed under the read
            with pytest.raises(server._Errno) as gone:
                session.t_read(1, 0, 4)
            assert gone.value.code == errno.EBADF
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)  # closed once the last user let go
        with pytest.raises(server._Errno), session.opened(fid):
            pass
    finally:
        session.clunk_all()
        session.files.close()
        config.pool.shutdown()


def test_big_writes_of_every_kind_land_whole(tree: tuple[Path, Path, str], portable: bool) -> None:
    """Twrites around the size the server writes in place (16 KiB) and up to msize, one
    at a time (what v9fs sends) and several in flight in one burst."""
    export, _, address = tree
    sizes = [100, 16384 - 24, 16384 - 23, 16384 - 22, 16385, 65536, 200000, (1 << 19) - 24]
    blobs = [os.urandom(n) for n in sizes]
    with sharing([export], address, portable=portable, allow=["any"]) as real:
        c = Client(unix_path(real), msize=1 << 19)
        c.attach(0)
        c.walk(0, 1)
        c.rpc(p.TLCREATE, 1, b"f", RDWR, CREAT_MODE, 0)
        offset = 0
        for blob in blobs:
            assert c.rpc(p.TWRITE, 1, offset, blob).args == (len(blob),)
            offset += len(blob)
        assert (export / "f").read_bytes() == b"".join(blobs)
        # A burst: every Twrite sent before any reply is read.
        burst = b"".join(
            p.encode(p.Message(p.TWRITE, tag, (1, tag << 20, blob)))
            for tag, blob in enumerate(reversed(blobs), start=1)
        )
        c.sock.sendall(burst)
        replies = {m.tag: m for m in (c.recv() for _ in blobs) if m is not None}
        for tag, blob in enumerate(reversed(blobs), start=1):
            assert replies[tag].args == (len(blob),)
        on_disk = (export / "f").read_bytes()
        for tag, blob in enumerate(reversed(blobs), start=1):
            start = tag << 20
            assert on_disk[start : start + len(blob)] == blob


class _HeldWrites:
    """A LinuxFs whose writes wait until *expected* of them are under way at once:
    each worker holds its Twrite's data (a view of the buffer it arrived in) while the
    connection goes on receiving the next ones."""

    def __init__(self, inner: object, expected: int) -> None:
        self.inner = inner
        self.expected = expected
        self.started = 0
        self.cond = threading.Condition()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def write(self, handle: object, offset: int, data: bytes | memoryview) -> int:
        with self.cond:
            self.started += 1
            self.cond.notify_all()
            assert self.cond.wait_for(lambda: self.started >= self.expected, timeout=60)
        return self.inner.write(handle, offset, data)  # type: ignore[attr-defined, no-any-return]


class _SockConn(_Conn):
    def __init__(self, sock: object) -> None:
        self.sock = sock


class _Wire:
    """A _Session's run() on one end of a socketpair (its socket wrapped by *wrap*),
    this test on the other: raw 9P messages, replies as they come."""

    def __init__(self, tmp_path: Path, backend: Any = None, wrap: Any = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from hvsock._builtin.share import server

        exports = server._exports([tmp_path])
        self.config = server._Config(
            exports,
            read_only=False,
            ownership="server",
            max_fids=10,
            max_inflight=16,
            vm_allow_given=True,
            pool=ThreadPoolExecutor(16),
            backend=backend,
        )
        self.ours, self.theirs = socket.socketpair()
        self.ours.settimeout(120)
        conn = _SockConn(wrap(self.theirs) if wrap else self.theirs)
        self.session = server._Session(self.config, conn)  # type: ignore[arg-type]
        self.runner = threading.Thread(target=self.serve, daemon=True)
        self.runner.start()
        self.decoder = p.Decoder(1 << 20)
        self.pending: list[p.Message] = []

    def serve(self) -> None:
        """What the service host does: run the session, then hang up."""
        try:
            self.session.run()
        finally:
            with contextlib.suppress(OSError):
                self.theirs.shutdown(socket.SHUT_RDWR)

    def send(self, *messages: p.Message) -> None:
        self.ours.sendall(b"".join(p.encode(m) for m in messages))

    def reply(self) -> p.Message:
        while not self.pending:
            data = self.ours.recv(1 << 20)
            assert data, "the server closed the connection"
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    def rpc(self, kind: int, *args: object) -> p.Message:
        self.send(p.Message(kind, 1, args))
        answer = self.reply()
        assert answer.type == kind + 1, answer
        return answer

    def open_file(self) -> None:
        self.rpc(p.TVERSION, 1 << 17, p.VERSION)
        self.rpc(p.TATTACH, 0, p.NOFID, b"u", b"", 0)
        self.rpc(p.TWALK, 0, 1, ())
        self.rpc(p.TLCREATE, 1, b"f", RDWR, CREAT_MODE, 0)

    def close(self) -> None:
        self.ours.close()
        self.runner.join(60)
        self.theirs.close()
        self.config.pool.shutdown()
        assert not self.runner.is_alive()


def test_a_buffer_is_never_refilled_under_a_write_in_flight(tmp_path: Path) -> None:
    from hvsock._builtin.share.linuxfs import LinuxFs

    blobs = [os.urandom(70000) for _ in range(6)]
    held = _HeldWrites(LinuxFs([os.fsencode(tmp_path.resolve())], "server"), 1 + len(blobs))
    wire = _Wire(tmp_path, backend=lambda: held)
    try:
        wire.open_file()
        # Two requests in one segment go to the pool; the small Twrite among them is
        # held, so each big one after it goes to the pool too, not served inline.
        wire.send(p.Message(p.TCLUNK, 2, (99,)), p.Message(p.TWRITE, 3, (1, 0, b"head")))
        for tag, blob in enumerate(blobs, start=10):
            wire.send(p.Message(p.TWRITE, tag, (1, (tag - 9) * 100000, blob)))
        answers = {m.tag: m for m in (wire.reply() for _ in range(2 + len(blobs)))}
        assert answers[2].type == p.RLERROR
        assert answers[3].args == (4,)
        on_disk = (tmp_path / "f").read_bytes()
        assert on_disk[:4] == b"head"
        for tag, blob in enumerate(blobs, start=10):
            assert answers[tag].args == (len(blob),)
            start = (tag - 9) * 100000
            assert on_disk[start : start + len(blob)] == blob, f"Twrite {tag} was overwritten"
        assert held.started == 1 + len(blobs)
    finally:
        wire.close()


class _RefusesWaitall:
    """A socket that refuses MSG_WAITALL before reading a byte, as vsock does (ENOMEM)
    when the rest of a frame is more than its receive buffer (hv_sock's is 4 KiB), and
    hands out at most 1000 bytes a read (so a big frame always comes in pieces)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.refused = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)

    def recv_into(self, buffer: memoryview, nbytes: int = 0, flags: int = 0) -> int:
        if flags & socket.MSG_WAITALL:
            self.refused += 1
            raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))
        return self.sock.recv_into(buffer, min(nbytes or len(buffer), 1000), flags)


def test_big_writes_go_on_where_the_socket_refuses_to_wait_for_all(tmp_path: Path) -> None:
    wrapped: list[_RefusesWaitall] = []
    wire = _Wire(tmp_path, wrap=lambda sock: wrapped.append(_RefusesWaitall(sock)) or wrapped[0])
    blobs = [os.urandom(n) for n in (100000, 50000, 131000)]
    try:
        wire.open_file()
        offset = 0
        for blob in blobs:
            assert wire.rpc(p.TWRITE, 1, offset, blob).args == (len(blob),)
            offset += len(blob)
        assert (tmp_path / "f").read_bytes() == b"".join(blobs)
        assert wrapped[0].refused == 1  # tried once, then plain reads
    finally:
        wire.close()
