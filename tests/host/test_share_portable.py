"""The portable share backend (what a Windows host uses) driven over a Unix socket, here
forced with ``portable=True``: its jail against links planted on the server's disk,
Windows' forbidden names through the protocol, synthesized modes and owners, and
what it refuses (extended attributes, device nodes, FIFOs)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest

import hvsock
import hvsock.services
from hvsock._builtin.share.backend import FsErrno
from hvsock._builtin.share.portable import PortableFs
from hvsock._core import ninep as p

from .._ninep import Client, Rlerror, sharing, snapshot, unix_path

RDWR = os.O_RDWR
CREATE = os.O_RDWR | os.O_CREAT


@pytest.fixture
def tree(short_tmp: Path) -> tuple[Path, Path, str]:
    """An export with links to its neighbour made on disk, behind the server's back."""
    export, outside = short_tmp / "export", short_tmp / "outside"
    export.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not touch")
    os.chmod(outside / "secret", 0o600)
    (export / "sub").mkdir()
    (export / "sub" / "f").write_bytes(b"hello")
    os.symlink("../outside", export / "out")
    os.symlink(str(outside / "secret"), export / "abs-file")
    os.symlink("../../outside", export / "sub" / "deeper")
    return export, outside, f"unix://{short_tmp}/s.sock"


def errno_of(call: object, *args: object) -> int:
    with pytest.raises(Rlerror) as info:
        call(*args)  # type: ignore[operator]
    return info.value.errno


def test_links_planted_on_disk_are_never_followed(tree: tuple[Path, Path, str]) -> None:
    export, outside, address = tree
    before = snapshot(outside)
    with sharing([export], address, allow=["any"], portable=True) as real:
        c = Client(unix_path(real))
        root = c.attach(0)
        assert c.walk(0, 1, b"sub", b"..", b"..", b"..")[-1] == root  # .. stops at the root
        assert len(c.walk(0, 2, b"out", b"secret")) == 1  # stops at the link
        assert len(c.walk(0, 2, b"sub", b"deeper", b"secret")) == 2
        assert errno_of(c.rpc, p.TCLUNK, 2) == errno.EBADF  # a partial walk makes no fid
        c.walk(0, 3, b"out")
        attr = c.rpc(p.TGETATTR, 3, 0x7FF).args
        assert (attr[1].type, attr[2]) == (p.QTSYMLINK, stat.S_IFLNK | 0o777)
        assert c.rpc(p.TREADLINK, 3).args == (b"../outside",)
        assert errno_of(c.walk, 3, 4, b"secret") == errno.ENOTDIR
        assert errno_of(c.rpc, p.TLCREATE, 3, b"x", CREATE, 0o644, 0) == errno.ENOTDIR
        assert errno_of(c.rpc, p.TMKDIR, 3, b"x", 0o755, 0) == errno.ENOTDIR
        assert errno_of(c.rpc, p.TSYMLINK, 3, b"x", b"y", 0) == errno.ENOTDIR
        assert errno_of(c.rpc, p.TMKNOD, 3, b"x", stat.S_IFREG | 0o644, 0, 0, 0) == errno.ENOTDIR
        assert errno_of(c.rpc, p.TUNLINKAT, 3, b"secret", 0) == errno.ENOTDIR
        assert errno_of(c.rpc, p.TRENAMEAT, 0, b"sub", 3, b"moved") == errno.ENOTDIR
        assert errno_of(c.rpc, p.TRENAMEAT, 3, b"secret", 0, b"stolen") == errno.ENOTDIR
        assert errno_of(c.rpc, p.TLOPEN, 3, os.O_RDONLY) == errno.ELOOP
        c.walk(0, 5, b"abs-file")
        assert errno_of(c.rpc, p.TLOPEN, 5, RDWR) == errno.ELOOP
        assert errno_of(c.rpc, p.TLOPEN, 5, os.O_RDONLY | os.O_TRUNC) == errno.ELOOP
        assert errno_of(c.rpc, p.TLCREATE, 0, b"abs-file", CREATE, 0o644, 0) == errno.ELOOP
        c.rpc(p.TSETATTR, 5, 1 | 16 | 32, 0o777, 0, 0, 0, 0, 0, 0, 0)  # a link has no mode
        assert errno_of(c.rpc, p.TSETATTR, 5, 8, 0, 0, 0, 0, 0, 0, 0, 0) == errno.EINVAL
        assert c.rpc(p.TSTATFS, 5).args[0] == 0x01021997
        # A hard link of a link is a link (to the same place), never of its target.
        c.rpc(p.TLINK, 0, 5, b"hard")
        assert os.readlink(export / "hard") == str(outside / "secret")
        assert os.stat(outside / "secret").st_nlink == 1
        # Removing or renaming a link acts on the link.
        c.rpc(p.TRENAMEAT, 0, b"out", 0, b"out2")
        c.rpc(p.TUNLINKAT, 0, b"out2", 0)
        assert errno_of(c.rpc, p.TUNLINKAT, 0, b"abs-file", 0x200) == errno.ENOTDIR
        c.rpc(p.TREMOVE, 5)
        assert sorted(os.listdir(export)) == ["hard", "sub"]
        c.close()
    assert snapshot(outside) == before
    assert os.stat(outside / "secret").st_mode & 0o777 == 0o600


BAD_NAMES = (b"a\\b", b"a:b", b"f:stream", b"CON", b"nul.txt", b"Com1", b"lpt9.log",
             b"end.", b"end ", b".. ", b"...", b"a*b", b"a?b", b"\x01")  # fmt: skip


def test_names_windows_cannot_hold_are_einval_everywhere(tree: tuple[Path, Path, str]) -> None:
    export, _, address = tree
    # On this Linux host such names can exist; a portable share neither reaches nor lists them.
    for name in ("on:disk", "CON", "back\\slash"):
        (export / name).write_bytes(b"x")
    before = snapshot(export)
    with sharing([export], address, allow=["any"], portable=True) as real:
        c = Client(unix_path(real))
        c.attach(0)
        c.walk(0, 1, b"sub", b"f")
        for bad in BAD_NAMES:
            assert errno_of(c.walk, 0, 2, bad) == errno.EINVAL, bad
            assert len(c.walk(0, 2, b"sub", bad)) == 1  # stops before it, no fid made
            assert errno_of(c.rpc, p.TMKDIR, 0, bad, 0o755, 0) == errno.EINVAL, bad
            assert errno_of(c.rpc, p.TSYMLINK, 0, bad, b"sub", 0) == errno.EINVAL, bad
            assert errno_of(c.rpc, p.TMKNOD, 0, bad, stat.S_IFREG, 0, 0, 0) == errno.EINVAL
            assert errno_of(c.rpc, p.TLINK, 0, 1, bad) == errno.EINVAL, bad
            assert errno_of(c.rpc, p.TRENAMEAT, 0, b"sub", 0, bad) == errno.EINVAL, bad
            assert errno_of(c.rpc, p.TRENAMEAT, 0, bad, 0, b"x") == errno.EINVAL, bad
            assert errno_of(c.rpc, p.TUNLINKAT, 0, bad, 0) == errno.EINVAL, bad
            c.walk(0, 3)
            assert errno_of(c.rpc, p.TLCREATE, 3, bad, CREATE, 0o644, 0) == errno.EINVAL, bad
            c.rpc(p.TCLUNK, 3)
        # A walk stops at the first such name, answering the qids before it.
        assert len(c.walk(0, 2, b"sub", b"a:b")) == 1
        c.walk(0, 4)
        c.rpc(p.TLOPEN, 4, os.O_RDONLY)
        listed = {e[3] for e in p.decode_dirents(c.rpc(p.TREADDIR, 4, 0, 8192).args[0])}
        assert listed == {b".", b"..", b"sub", b"out", b"abs-file"}
        c.close()
    assert snapshot(export) == before


def test_modes_and_owners_are_synthesized(tree: tuple[Path, Path, str]) -> None:
    export, _, address = tree
    for name, mode in (("rw", 0o600), ("ro", 0o400), ("x", 0o700), ("open", 0o666)):
        (export / name).write_bytes(b"data")
        os.chmod(export / name, mode)
    os.mkdir(export / "closed", 0o700)
    with sharing([export], address, allow=["any"], portable=True) as real:
        c = Client(unix_path(real))
        c.attach(0, uid=1234)
        seen = {}
        for fid, name in enumerate((b"rw", b"ro", b"x", b"open", b"closed", b"sub"), 1):
            c.walk(0, fid, name)
            attr = c.rpc(p.TGETATTR, fid, 0x7FF).args
            seen[name] = (stat.S_IMODE(attr[2]), attr[3], attr[4])
        assert seen == {
            b"rw": (0o644, 1234, 1234),
            b"ro": (0o444, 1234, 1234),
            b"x": (0o755, 1234, 1234),
            b"open": (0o644, 1234, 1234),
            b"closed": (0o755, 1234, 1234),
            b"sub": (0o755, 1234, 1234),
        }
        # chmod: only the owner's write bit reaches the disk; chown is accepted, ignored.
        c.rpc(p.TSETATTR, 1, 1, 0o400, 0, 0, 0, 0, 0, 0, 0)
        assert os.stat(export / "rw").st_mode & 0o777 == 0o400
        c.rpc(p.TSETATTR, 2, 1, 0o777, 0, 0, 0, 0, 0, 0, 0)
        assert os.stat(export / "ro").st_mode & 0o777 == 0o600
        c.rpc(p.TSETATTR, 5, 1, 0o777, 0, 0, 0, 0, 0, 0, 0)  # directories keep theirs
        assert os.stat(export / "closed").st_mode & 0o777 == 0o700
        c.rpc(p.TSETATTR, 1, 2 | 4, 0, 0, 0, 0, 0, 0, 0, 0)
        assert c.rpc(p.TGETATTR, 1, 0x7FF).args[2:5] == (stat.S_IFREG | 0o444, 1234, 1234)
        # New files: 0644 (0444 without the owner's write bit), directories 0755.
        c.walk(0, 10)
        assert c.rpc(p.TLCREATE, 10, b"new", CREATE, 0o600, 0).args[0].type == p.QTFILE
        assert c.rpc(p.TGETATTR, 10, 0x7FF).args[2] == stat.S_IFREG | 0o644
        c.rpc(p.TMKDIR, 0, b"dir", 0o700, 0)
        c.walk(0, 11, b"dir")
        assert c.rpc(p.TGETATTR, 11, 0x7FF).args[2] == stat.S_IFDIR | 0o755
        c.close()


def test_times_sizes_and_an_unlinked_open_file(tree: tuple[Path, Path, str]) -> None:
    export, _, address = tree
    with sharing([export], address, allow=["any"], portable=True) as real:
        c = Client(unix_path(real))
        c.attach(0)
        c.walk(0, 1, b"sub", b"f")
        c.rpc(p.TSETATTR, 1, 8 | 16 | 32 | 128 | 256, 0, 0, 0, 3, 5, 6, 7, 8)
        st = os.stat(export / "sub" / "f")
        assert (st.st_size, st.st_atime_ns, st.st_mtime_ns) == (3, 5 * 10**9 + 6, 7 * 10**9 + 8)
        c.rpc(p.TLOPEN, 1, RDWR)
        os.unlink(export / "sub" / "f")  # gone on the server's side, still open here
        assert c.rpc(p.TWRITE, 1, 0, b"abcdef").args == (6,)
        assert c.rpc(p.TGETATTR, 1, 0x7FF).args[7] == 6
        c.rpc(p.TSETATTR, 1, 8, 0, 0, 0, 2, 0, 0, 0, 0)  # ftruncate through the handle
        assert c.rpc(p.TREAD, 1, 0, 100).args == (b"ab",)
        c.close()


def test_no_xattrs_devices_or_fifos(tree: tuple[Path, Path, str]) -> None:
    export, _, address = tree
    with sharing([export], address, allow=["any"], portable=True) as real:
        c = Client(unix_path(real))
        c.attach(0)
        c.walk(0, 1, b"sub", b"f")
        assert errno_of(c.rpc, p.TXATTRWALK, 1, 2, b"user.x") == errno.EOPNOTSUPP
        assert errno_of(c.rpc, p.TXATTRWALK, 1, 2, b"") == errno.EOPNOTSUPP
        assert errno_of(c.rpc, p.TXATTRCREATE, 1, b"user.x", 1, 0) == errno.EOPNOTSUPP
        for kind in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            assert errno_of(c.rpc, p.TMKNOD, 0, b"node", kind | 0o644, 1, 3, 0) == errno.EPERM
        c.rpc(p.TMKNOD, 0, b"plain", stat.S_IFREG | 0o644, 0, 0, 0)
        assert (export / "plain").read_bytes() == b""
        total = shutil.disk_usage(export).total
        _, bsize, blocks, *_ = c.rpc(p.TSTATFS, 0).args
        assert abs(bsize * blocks - total) < bsize
        c.close()
    assert not (export / "node").exists()


def test_a_client_racing_its_own_renames_never_reaches_outside(
    tree: tuple[Path, Path, str],
) -> None:
    """One connection keeps swapping sub for a link to the outside and back; another
    keeps making new names below sub (pipelined, so several run at once) and opening
    sub/f for truncation: everything lands in the export, every refusal is one a
    swapped directory explains. (A swap takes two requests, so a missing lock is
    rarely caught here: the next test checks the lock itself.)"""
    export, outside, address = tree
    (outside / "f").write_bytes(b"outside f")
    before = snapshot(outside)
    with sharing([export], address, allow=["any"], portable=True) as real:
        swapper, writer = Client(unix_path(real)), Client(unix_path(real))
        swapper.attach(0)
        writer.attach(0)
        writer.walk(0, 1, b"sub")  # resolved again by every request that uses it
        errors: list[BaseException] = []

        def swap() -> None:
            try:
                for _ in range(300):
                    swapper.rpc(p.TRENAMEAT, 0, b"sub", 0, b"real")
                    swapper.rpc(p.TSYMLINK, 0, b"sub", b"../outside", 0)
                    swapper.rpc(p.TUNLINKAT, 0, b"sub", 0)
                    swapper.rpc(p.TRENAMEAT, 0, b"real", 0, b"sub")
            except BaseException as exc:  # reported below
                errors.append(exc)

        thread = threading.Thread(target=swap)
        thread.start()
        refused: set[int] = set()
        made = 0
        for round_ in range(1000):  # bounded; ends with the swapper
            if not thread.is_alive():
                break
            batch = []
            for k in range(8):
                made += 1
                name = b"n%d" % made
                batch.append(p.Message(p.TMKDIR, 1 + k * 3, (1, name + b"d", 0o755, 0)))
                batch.append(p.Message(p.TMKNOD, 2 + k * 3, (1, name + b"f", 0o100644, 0, 0, 0)))
                batch.append(p.Message(p.TSYMLINK, 3 + k * 3, (1, name + b"l", b"x", 0)))
            fid = 100 + round_
            batch.append(p.Message(p.TWALK, 30, (0, fid, (b"sub", b"f"))))
            writer.sock.sendall(b"".join(p.encode(m) for m in batch))
            for _ in batch:
                reply = writer.recv()
                assert reply is not None
                if reply.type == p.RLERROR:
                    refused.add(reply.args[0])
            try:
                writer.rpc(p.TLOPEN, fid, RDWR | os.O_TRUNC)
                writer.rpc(p.TWRITE, fid, 0, b"written")
            except Rlerror as exc:
                refused.add(exc.errno)
        thread.join(120)
        assert not thread.is_alive()
        assert not errors, errors
        # What a swapped directory gives: gone, not a directory, a changed file, no fid.
        assert refused <= {errno.ENOENT, errno.ENOTDIR, errno.ESTALE, errno.EBADF}, refused
        assert made > 100
        probe = Client(unix_path(real))  # still serving
        probe.attach(0)
        probe.close()
    assert snapshot(outside) == before


def test_every_resolve_then_act_waits_for_the_one_in_progress(tmp_path: Path) -> None:
    """The server-wide lock: while one request is between its check and its act (the
    test holds the lock as that request), another's change does not happen; it does
    as soon as the lock is let go."""
    (tmp_path / "sub").mkdir()
    fs = PortableFs([os.fsencode(tmp_path)])
    done = threading.Event()

    def other_client() -> None:
        fs.mkdir(0, (b"sub",), b"new", 0o755, 0, 0)
        fs.rename(0, (), b"sub", (), b"moved")
        done.set()

    with fs.meta:
        thread = threading.Thread(target=other_client)
        thread.start()
        # Bounded, and can only pass wrongly (late), never fail wrongly.
        assert not done.wait(0.5)
        assert sorted(os.listdir(tmp_path)) == ["sub"]
        assert os.listdir(tmp_path / "sub") == []
    assert done.wait(60)
    thread.join(60)
    assert sorted(os.listdir(tmp_path)) == ["moved"]
    assert os.listdir(tmp_path / "moved") == ["new"]


def test_a_file_swapped_between_the_check_and_the_open_is_refused(tmp_path: Path) -> None:
    """The open is compared with what lstat saw: a different file is ESTALE, closed."""
    (tmp_path / "checked").write_bytes(b"a")
    (tmp_path / "other").write_bytes(b"b")
    checked = os.lstat(tmp_path / "checked")
    fd = os.open(tmp_path / "other", os.O_RDONLY)
    with pytest.raises(FsErrno) as info:
        PortableFs.opened_is(fd, checked)
    assert info.value.code == errno.ESTALE
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)
    same = os.open(tmp_path / "checked", os.O_RDONLY)
    PortableFs.opened_is(same, checked)
    os.close(same)


class _LocalSwap(PortableFs):
    """The real backend, with a local process on the server staged in the one window
    it cannot close: right after the check of sub/f, sub is swapped for a link."""

    def __init__(self, export: Path, outside: Path) -> None:
        super().__init__([os.fsencode(export)])
        self.export, self.outside = export, outside

    def walk(self, export: int, parts: tuple[bytes, ...]) -> tuple[str, os.stat_result]:
        found = super().walk(export, parts)
        if parts == (b"sub", b"f"):
            os.rename(self.export / "sub", self.export / "real")
            os.symlink(self.outside, self.export / "sub")
        return found


def test_a_local_swap_after_the_check_opens_nothing_outside(tmp_path: Path) -> None:
    export, outside = tmp_path / "export", tmp_path / "outside"
    (export / "sub").mkdir(parents=True)
    outside.mkdir()
    (export / "sub" / "f").write_bytes(b"inside")
    (outside / "f").write_bytes(b"outside")
    fs = _LocalSwap(export, outside)
    with pytest.raises(FsErrno) as info:
        fs.lopen(0, (b"sub", b"f"), os.O_RDWR | os.O_TRUNC, 0)
    assert info.value.code == errno.ESTALE  # opened, found to be another file, closed
    assert (outside / "f").read_bytes() == b"outside"  # not truncated
    assert (export / "real" / "f").read_bytes() == b"inside"


def test_portable_arguments(tmp_path: Path) -> None:
    share = hvsock.services.share_service
    with pytest.raises(hvsock.ArgumentError, match="portable backend's"):
        share([tmp_path], portable=True, ownership="server")
    with pytest.raises(hvsock.ArgumentError, match="needs the portable backend"):
        share([tmp_path], ownership="synthesized")
    assert share([tmp_path], portable=True, allow=["any"]).port == 564
