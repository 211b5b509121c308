"""The share with the Linux kernel's own 9p client: `hvsock share` on vsock (CID 1,
vsock_loopback) and `hvsock mount` in the test VM, then ordinary POSIX work on the mount.

The conformance peer is v9fs (fs/9p, net/9p): nobody here wrote it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ._support import Proc, target, unused_port

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(600)]

MB = 1024 * 1024
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="mount(2) needs root")


@dataclass
class Share:
    export: Path
    outside: Path
    mnt: Path
    address: str


def wait_ready(proc: Proc, ready: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        assert proc.popen.poll() is None, f"hvsock share exited: {proc.stderr}"
        assert time.monotonic() < deadline, "hvsock share did not get ready"
        time.sleep(0.05)
    json.loads(ready.read_text())


def umount(mnt: Path) -> None:
    subprocess.run(
        ["umount", "-l", str(mnt)],
        check=False,
        timeout=60,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def shared(
    hvsock_cmd: list[str], base: Path, *server_args: str, mount_opts: str = ""
) -> Iterator[Share]:
    """`hvsock share` of base/export on a fresh port, mounted (by `hvsock mount`) on
    base/m/mnt: a mount point elsewhere than the export's neighbours, so a relative
    link out of the export points at nothing from the guest's side."""
    export, outside, mnt = base / "a" / "export", base / "a" / "outside", base / "m" / "mnt"
    for d in (export, outside, mnt):
        d.mkdir(parents=True, exist_ok=True)
    port = unused_port()
    ready = base / f"ready-{port}.json"
    argv = [
        *hvsock_cmd,
        "share",
        str(export),
        "--listen",
        f"vsock://any:{port}",
        "--allow",
        "1",
        "--ready-file",
        str(ready),
        *server_args,
    ]
    with Proc(argv) as server:
        wait_ready(server, ready)
        cmd = [*hvsock_cmd, "mount", target(port), str(mnt), "--timeout", "30"]
        if mount_opts:
            cmd += ["-o", mount_opts]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        try:
            yield Share(export, outside, mnt, target(port))
        finally:
            umount(mnt)


@pytest.fixture
def share(hvsock_cmd: list[str], tmp_path: Path) -> Iterator[Share]:
    with shared(hvsock_cmd, tmp_path) as s:
        yield s


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_hashes(top: Path) -> dict[str, str]:
    out = {}
    for path in sorted(top.rglob("*")):
        rel = str(path.relative_to(top))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            out[rel] = sha(path)
        elif path.is_dir():
            out[rel] = "dir"
    return out


@NEEDS_ROOT
def test_files_directories_and_hashes(share: Share) -> None:
    mnt, export = share.mnt, share.export
    assert any(
        line.split()[1] == str(mnt) and line.split()[2] == "9p"
        for line in Path("/proc/mounts").read_text().splitlines()
    )
    for size in (0, 1, 4095, 4096, 65537, MB + 7):
        data = os.urandom(size)
        (mnt / f"f{size}").write_bytes(data)
        assert (
            hashlib.sha256((export / f"f{size}").read_bytes()).digest()
            == hashlib.sha256(data).digest()
        )
        assert (mnt / f"f{size}").read_bytes() == data
    (export / "made-on-host").write_bytes(b"seen")
    (mnt / "d" / "e").mkdir(parents=True)
    assert (export / "d" / "e").is_dir()
    names = sorted(os.listdir(mnt))
    assert names == sorted(
        ["d", "made-on-host", *(f"f{s}" for s in (0, 1, 4095, 4096, 65537, MB + 7))]
    )
    many = mnt / "many"
    many.mkdir()
    for i in range(120):
        (many / f"n{i:03}").write_bytes(b"%d" % i)
    assert sorted(os.listdir(many)) == [f"n{i:03}" for i in range(120)]
    os.chmod(mnt / "f1", 0o640)
    assert (export / "f1").stat().st_mode & 0o777 == 0o640
    os.truncate(mnt / "f4096", 10)
    assert (export / "f4096").stat().st_size == 10
    # Whole seconds: the 6.1 client's time granularity (it truncates what it sends).
    os.utime(mnt / "f1", ns=(1_000_000_000, 2_000_000_000))
    assert (export / "f1").stat().st_mtime_ns == 2_000_000_000
    assert os.stat(mnt / "f1").st_mtime_ns == 2_000_000_000
    st = os.statvfs(mnt)
    assert st.f_blocks > 0
    shutil.rmtree(many)
    assert not (export / "many").exists()


@NEEDS_ROOT
def test_rename_over_unlink_open_links(share: Share) -> None:
    mnt, export = share.mnt, share.export
    (mnt / "a").write_bytes(b"new")
    (mnt / "b").write_bytes(b"old")
    os.rename(mnt / "a", mnt / "b")  # rename over an existing file
    assert (export / "b").read_bytes() == b"new"
    assert not (export / "a").exists()
    (mnt / "dir1").mkdir()
    (mnt / "dir1" / "inner").write_bytes(b"inner")
    os.rename(mnt / "dir1", mnt / "dir2")
    assert (mnt / "dir2" / "inner").read_bytes() == b"inner"
    # An open file outlives its name.
    with (mnt / "gone").open("w+b") as f:
        f.write(b"still here")
        f.flush()
        os.unlink(mnt / "gone")
        assert not (export / "gone").exists()
        f.seek(0)
        assert f.read() == b"still here"
        f.write(b" and more")
        f.seek(0)
        assert f.read() == b"still here and more"
    # Hard links: one inode, two names.
    os.link(mnt / "b", mnt / "b2")
    assert (export / "b2").stat().st_ino == (export / "b").stat().st_ino
    assert os.stat(mnt / "b").st_nlink == 2
    # Symlinks: made, read and followed inside the mount.
    os.symlink("dir2/inner", mnt / "ln")
    assert os.readlink(export / "ln") == "dir2/inner"
    assert os.readlink(mnt / "ln") == "dir2/inner"
    assert (mnt / "ln").read_bytes() == b"inner"


LOCKER = """
import fcntl, sys
f = open(sys.argv[1], "r+b")
try:
    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError as exc:
    print("busy", exc.errno)
else:
    print("locked")
"""


@NEEDS_ROOT
def test_fcntl_locks_between_two_processes(share: Share) -> None:
    path = share.mnt / "lockfile"
    path.write_bytes(b"x" * 100)

    def other() -> str:
        done = subprocess.run(
            [sys.executable, "-c", LOCKER, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.split()[0]

    with path.open("r+b") as f:
        fcntl.lockf(f, fcntl.LOCK_EX)
        assert other() == "busy"
        fcntl.lockf(f, fcntl.LOCK_UN)
        assert other() == "locked"  # and its lock goes when it exits
        fcntl.lockf(f, fcntl.LOCK_SH)
    assert other() == "locked"


@NEEDS_ROOT
def test_tar_round_trip_and_git(share: Share, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(40):
        d = src / f"d{i % 5}" / f"e{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(os.urandom(i * 997))
    os.symlink("d0/e0", src / "link")
    os.symlink("/nowhere/at/all", src / "dangling")
    (src / "empty").mkdir()
    os.chmod(src / "d1", 0o750)
    (share.mnt / "t").mkdir()
    subprocess.run(
        f"tar -C {src} -cf - . | tar -C {share.mnt / 't'} -xf -",
        shell=True,
        check=True,
        timeout=120,
    )
    back = tmp_path / "back"
    back.mkdir()
    subprocess.run(
        f"tar -C {share.mnt / 't'} -cf - . | tar -C {back} -xf -",
        shell=True,
        check=True,
        timeout=120,
    )
    assert tree_hashes(back) == tree_hashes(src)
    assert tree_hashes(share.export / "t") == tree_hashes(src)
    assert (back / "d1").stat().st_mode & 0o777 == 0o750
    if shutil.which("git") is None:
        pytest.skip("no git in the guest; the tar round trip passed")
    repo = share.mnt / "repo"
    repo.mkdir()
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "HOME": str(tmp_path),
    }

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout

    git("init", "-q")
    (repo / "a.txt").write_text("one\n")
    (repo / "sub").mkdir()
    (repo / "sub" / "b.txt").write_text("two\n")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    assert git("status", "--porcelain") == ""
    (repo / "a.txt").write_text("changed\n")
    assert git("status", "--porcelain").strip() == "M a.txt"
    git("commit", "-q", "-am", "second")
    git("gc", "-q")
    assert git("log", "--format=%s").split() == ["second", "first"]
    assert git("fsck", "--no-progress") == ""


@NEEDS_ROOT
def test_read_only_mount_and_read_only_share(hvsock_cmd: list[str], tmp_path: Path) -> None:
    with shared(hvsock_cmd, tmp_path / "one", mount_opts="ro") as s:
        (s.export / "f").write_bytes(b"host")
        assert (s.mnt / "f").read_bytes() == b"host"
        with pytest.raises(OSError, match="Read-only file system") as info:
            (s.mnt / "g").write_bytes(b"x")
        assert info.value.errno == errno.EROFS
    with shared(hvsock_cmd, tmp_path / "two", "--read-only") as s:
        (s.export / "f").write_bytes(b"host")
        assert (s.mnt / "f").read_bytes() == b"host"
        for attempt in (
            lambda: (s.mnt / "g").write_bytes(b"x"),
            lambda: (s.mnt / "f").write_bytes(b"x"),
            lambda: os.mkdir(s.mnt / "d"),
            lambda: os.unlink(s.mnt / "f"),
        ):
            with pytest.raises(OSError, match="Read-only file system") as info:
                attempt()
            assert info.value.errno == errno.EROFS
        assert (s.export / "f").read_bytes() == b"host"
        assert sorted(os.listdir(s.export)) == ["f"]


@NEEDS_ROOT
def test_links_out_of_the_export_lead_nowhere(share: Share) -> None:
    mnt, export, outside = share.mnt, share.export, share.outside
    (outside / "secret").write_bytes(b"secret")
    os.symlink("../outside", export / "out")
    os.symlink(str(outside / "secret"), export / "abs")
    # The guest resolves links itself: ../outside from the mount is not the export's
    # neighbour, and the server never follows a link on the guest's behalf.
    with pytest.raises(FileNotFoundError):
        (mnt / "out" / "secret").write_bytes(b"overwritten")
    with pytest.raises(FileNotFoundError):
        (mnt / "out" / "new").write_bytes(b"x")
    os.symlink("../../../../../../../..", mnt / "up")
    assert os.readlink(export / "up") == "../../../../../../../.."
    assert sorted(os.listdir(outside)) == ["secret"]
    assert (outside / "secret").read_bytes() == b"secret"


@NEEDS_ROOT
def test_a_peer_off_the_allowlist_is_refused_clearly(hvsock_cmd: list[str], tmp_path: Path) -> None:
    export, mnt = tmp_path / "export", tmp_path / "mnt"
    export.mkdir()
    mnt.mkdir()
    port = unused_port()
    ready = tmp_path / "ready.json"
    with Proc(
        [
            *hvsock_cmd,
            "share",
            str(export),
            "--listen",
            f"vsock://any:{port}",
            "--allow",
            "7",
            "--ready-file",
            str(ready),
        ]
    ) as server:
        wait_ready(server, ready)
        done = subprocess.run(
            [*hvsock_cmd, "mount", target(port), str(mnt)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 6, done.stderr
    assert "allowlist" in done.stderr
    assert not os.path.ismount(mnt)
    refused = subprocess.run(
        [*hvsock_cmd, "share", str(export), "--listen", f"vsock://any:{port}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert "--allow" in refused.stderr


@NEEDS_ROOT
def test_mount_hvsock_helper_for_fstab(hvsock_cmd: list[str], tmp_path: Path) -> None:
    helper = Path(hvsock_cmd[0]).with_name("mount.hvsock")
    if not helper.exists():
        pytest.skip("mount.hvsock is not installed next to hvsock")
    export, mnt = tmp_path / "export", tmp_path / "mnt"
    export.mkdir()
    mnt.mkdir()
    (export / "f").write_bytes(b"via fstab helper")
    port = unused_port()
    ready = tmp_path / "ready.json"
    with Proc(
        [
            *hvsock_cmd,
            "share",
            str(export),
            "--listen",
            f"vsock://any:{port}",
            "--allow",
            "1",
            "--ready-file",
            str(ready),
        ]
    ) as server:
        wait_ready(server, ready)
        done = subprocess.run(
            [
                str(helper),
                target(port),
                str(mnt),
                "-o",
                "defaults,nofail,_netdev,x-systemd.automount,cache=none",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        try:
            assert (mnt / "f").read_bytes() == b"via fstab helper"
        finally:
            umount(mnt)


@NEEDS_ROOT
def test_portable_backend_under_the_kernel_client(hvsock_cmd: list[str], tmp_path: Path) -> None:
    """`hvsock share --portable` (the backend a Windows host uses) mounted by v9fs: files
    round-trip, names change, links planted outside the server lead nowhere, Windows'
    forbidden names are refused, modes and owners are the synthesized ones, and fcntl
    locks conflict between two processes."""
    with shared(hvsock_cmd, tmp_path, "--portable") as s:
        mnt, export, outside = s.mnt, s.export, s.outside
        for size in (0, 1, 4097, MB + 3):
            data = os.urandom(size)
            (mnt / f"f{size}").write_bytes(data)
            assert sha(export / f"f{size}") == hashlib.sha256(data).hexdigest()
            assert (mnt / f"f{size}").read_bytes() == data
        (mnt / "d" / "e").mkdir(parents=True)
        (mnt / "d" / "e" / "x").write_bytes(b"x")
        os.rename(mnt / "d", mnt / "d2")
        assert (export / "d2" / "e" / "x").read_bytes() == b"x"
        os.rename(mnt / "f1", mnt / "f0")  # over an existing file
        assert (export / "f0").stat().st_size == 1
        os.unlink(mnt / "f0")
        os.unlink(mnt / "d2" / "e" / "x")
        os.rmdir(mnt / "d2" / "e")
        assert sorted(os.listdir(export)) == sorted(["d2", "f4097", f"f{MB + 3}"])
        assert sorted(os.listdir(mnt)) == sorted(os.listdir(export))

        # Links planted on the server's disk, not through the share.
        (outside / "secret").write_bytes(b"secret")
        os.symlink("../outside", export / "out")
        os.symlink("../outside/secret", export / "out-file")
        with pytest.raises(FileNotFoundError):
            (mnt / "out" / "secret").write_bytes(b"overwritten")
        with pytest.raises(FileNotFoundError):
            (mnt / "out-file").write_bytes(b"overwritten")
        assert os.readlink(mnt / "out") == "../outside"
        os.symlink("../../../../../..", mnt / "up")  # stored, never followed by the server
        assert os.readlink(export / "up") == "../../../../../.."
        assert sorted(os.listdir(outside)) == ["secret"]
        assert (outside / "secret").read_bytes() == b"secret"

        # Names Windows cannot hold (streams, separators, devices) are EINVAL.
        for bad in ("a:b", "a\\b", "CON", "nul.txt", "com1", "trail."):
            with pytest.raises(OSError, match="Invalid argument") as info:
                (mnt / bad).write_bytes(b"x")
            assert info.value.errno == errno.EINVAL, bad
            assert not os.path.lexists(export / bad)

        # Synthesized modes and owners (whoever attached: root here).
        (export / "private").write_bytes(b"p")
        os.chmod(export / "private", 0o600)
        (export / "ro").write_bytes(b"r")
        os.chmod(export / "ro", 0o400)
        (export / "tool").write_bytes(b"#!/bin/sh\n")
        os.chmod(export / "tool", 0o700)
        os.mkdir(export / "closed", 0o700)
        seen = {n: os.stat(mnt / n) for n in ("private", "ro", "tool", "closed")}
        assert {n: stat.S_IMODE(st.st_mode) for n, st in seen.items()} == {
            "private": 0o644,
            "ro": 0o444,
            "tool": 0o755,
            "closed": 0o755,
        }
        assert {(st.st_uid, st.st_gid) for st in seen.values()} == {(0, 0)}
        fd = os.open(mnt / "made", os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
        assert stat.S_IMODE(os.stat(mnt / "made").st_mode) == 0o644
        os.chmod(mnt / "made", 0o400)  # only the owner's write bit reaches the server
        assert stat.S_IMODE(os.stat(mnt / "made").st_mode) == 0o444
        assert not (export / "made").stat().st_mode & stat.S_IWUSR
        os.chmod(mnt / "made", 0o600)
        assert stat.S_IMODE(os.stat(mnt / "made").st_mode) == 0o644
        with pytest.raises(OSError, match="not supported") as info:
            os.setxattr(mnt / "made", "user.x", b"1")
        assert info.value.errno == errno.EOPNOTSUPP

        # fcntl locks: kept in the server's own table, they conflict between processes.
        def other() -> str:
            done = subprocess.run(
                [sys.executable, "-c", LOCKER, str(mnt / "made")],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            return done.stdout.split()[0]

        with (mnt / "made").open("r+b") as f:
            fcntl.lockf(f, fcntl.LOCK_EX)
            assert other() == "busy"
            fcntl.lockf(f, fcntl.LOCK_UN)
            assert other() == "locked"  # and its lock goes when it exits
        assert other() == "locked"
