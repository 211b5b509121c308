"""File copy under concurrent, hostile and ordinary use (issue 19): real sockets, real files.

Two copies of one target at once, another user's file or symlink at a temporary
name, a peer's setuid bits, FIFOs and devices in a root, hard links, a re-run
of a tree copy, a corrupted stream. Cases that need a second user fork a child
that drops to it (root only; they skip saying so otherwise).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import hvsock
from hvsock._builtin.files.atomic_write import partial_name
from hvsock._cli.main import main

from .._files import serving
from ..conftest import open_fds

MB = 1024 * 1024
OTHER_UID = 4321


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip(
            "needs root and a second uid (a forked child drops to uid 4321); "
            f"this runs as uid {os.geteuid()}"
        )


def as_other_user(action: Callable[[], None]) -> None:
    """Run *action* in a forked child that has dropped to OTHER_UID; fail if it fails."""
    pid = os.fork()
    if pid == 0:  # the child: nothing but system calls, then _exit
        code = 1
        try:
            os.setgroups([])
            os.setgid(OTHER_UID)
            os.setuid(OTHER_UID)
            action()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the other user's action failed"


@pytest.fixture
def served(short_tmp: Path) -> Iterator[tuple[str, Path]]:
    root = short_tmp / "root"
    root.mkdir()
    with serving([root], f"unix://{short_tmp}/f.sock") as addr:
        yield addr, root


def hvsock_files(top: Path) -> list[str]:
    return sorted(p.name for p in top.iterdir() if p.name.startswith(".hvsock-"))


# -- two writers, one target -------------------------------------------------------------


@pytest.mark.parametrize("resume", [False, True])
def test_two_pushes_to_one_target_never_share_a_file(
    served: tuple[str, Path], tmp_path: Path, resume: bool
) -> None:
    """Each push writes its own file: the target ends as one pusher's whole file, and
    that pusher is one that reported success (once the second writer took over the
    first one's renamed file: a success that left the other's bytes, or an error
    while its own bytes landed)."""
    addr, root = served
    sources = {"big": os.urandom(24 * MB), "small": os.urandom(MB + MB // 2)}
    for name, data in sources.items():
        (tmp_path / name).write_bytes(data)
    for _ in range(3):
        outcome: dict[str, BaseException | None] = {}
        start = threading.Barrier(2)

        def push(
            name: str,
            start: threading.Barrier = start,
            outcome: dict[str, BaseException | None] = outcome,
        ) -> None:
            start.wait(30)
            try:
                hvsock.copy(addr, tmp_path / name, ":target", resume=resume)
                outcome[name] = None
            except hvsock.HvsockError as exc:
                outcome[name] = exc

        threads = [threading.Thread(target=push, args=(n,)) for n in sources]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert set(outcome) == set(sources)
        landed = (root / "target").read_bytes()
        winners = [n for n, data in sources.items() if data == landed]
        assert winners, "the target is neither push's file"
        assert outcome[winners[0]] is None, (
            f"{winners[0]} landed but reported {outcome[winners[0]]}"
        )
        assert all(e is None for e in outcome.values()), outcome
        assert hvsock_files(root) == []


# -- another user's file or symlink at a temporary name -----------------------------------


def test_a_symlink_at_the_partial_name_neither_breaks_nor_redirects_a_push(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    addr, root = served
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"untouched")
    os.symlink(elsewhere, root / partial_name(b"f").decode())
    data = os.urandom(2 * MB)
    (tmp_path / "f").write_bytes(data)
    for resume in (False, True):
        hvsock.copy(addr, tmp_path / "f", ":f", resume=resume)
        assert (root / "f").read_bytes() == data
        assert not (root / "f").is_symlink()
    assert elsewhere.read_bytes() == b"untouched"


@pytest.mark.parametrize("resume", [False, True])
def test_another_users_planted_partial_is_never_used(
    short_tmp: Path, tmp_path: Path, resume: bool
) -> None:
    """World-writable sticky root: uid 4321 plants the partial name first (with the
    right prefix, to tempt a resume). The root-run service must not rename that
    inode into place (the target would stay theirs and writable by them)."""
    needs_root()
    os.chmod(short_tmp, 0o755)  # the other user reaches the shared root through it
    root = short_tmp / "shared"
    root.mkdir()
    os.chmod(root, 0o1777)
    data = os.urandom(3 * MB)
    (tmp_path / "f").write_bytes(data)
    planted = root / partial_name(b"f").decode()

    def plant() -> None:
        fd = os.open(planted, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.write(fd, data[:MB])
        os.close(fd)
        os.chmod(planted, 0o666)

    as_other_user(plant)
    with serving([root], f"unix://{short_tmp}/f.sock") as addr:
        result = hvsock.copy(addr, tmp_path / "f", ":f", resume=resume)
    target = (root / "f").stat()
    assert (root / "f").read_bytes() == data
    assert target.st_uid == 0, "the pushed file is owned by the user who planted the name"
    assert stat.S_IMODE(target.st_mode) & 0o022 == 0
    assert result.bytes == len(data)  # nothing of theirs was taken as a resumable prefix
    assert planted.stat().st_uid == OTHER_UID  # their file is left as it was
    assert planted.read_bytes() == data[:MB]


def test_a_resume_takes_only_its_own_partial(served: tuple[str, Path], tmp_path: Path) -> None:
    """A partial with two links (one outside the root) is not ours alone: not reused."""
    addr, root = served
    data = os.urandom(3 * MB)
    (tmp_path / "f").write_bytes(data)
    part = root / partial_name(b"f").decode()
    part.write_bytes(data[: 2 * MB])
    os.link(part, tmp_path / "second-link")
    result = hvsock.copy(addr, tmp_path / "f", ":f", resume=True)
    assert result.bytes == len(data)
    assert (tmp_path / "second-link").read_bytes() == data[: 2 * MB]
    # Our own partial, a regular file with one link, is resumed from.
    (root / "f").unlink()
    part.unlink()
    part.write_bytes(data[: 2 * MB])
    result = hvsock.copy(addr, tmp_path / "f", ":f", resume=True)
    assert result.bytes == len(data) - 2 * MB
    assert (root / "f").read_bytes() == data
    assert hvsock_files(root) == []


def test_two_resumes_of_one_partial_never_share_it(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    """One resume claims the kept partial (one rename wins); the other starts from
    zero in its own file. Both land whole; nothing is left."""
    addr, root = served
    data = os.urandom(6 * MB)
    (tmp_path / "f").write_bytes(data)
    (root / partial_name(b"f").decode()).write_bytes(data[: 2 * MB])
    sent: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def resume() -> None:
        start.wait(30)
        try:
            sent.append(hvsock.copy(addr, tmp_path / "f", ":f", resume=True).bytes)
        except hvsock.HvsockError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=resume) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert sorted(sent) == [len(data) - 2 * MB, len(data)]
    assert (root / "f").read_bytes() == data
    assert hvsock_files(root) == []


# -- setuid, setgid, sticky --------------------------------------------------------------


def test_setuid_and_setgid_are_dropped_unless_the_owner_is_kept(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    """GNU cp -p clears them when it does not keep the owner; so does hvsock cp -p."""
    addr, root = served
    src = tmp_path / "tree"
    src.mkdir()
    (src / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "tool", 0o6755)
    (src / "sticky").write_bytes(b"x")
    os.chmod(src / "sticky", 0o1644)
    os.chmod(src, 0o2775)
    hvsock.copy(addr, src, ":", recursive=True, preserve=True)
    assert stat.S_IMODE((root / "tree/tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "tree/sticky").stat().st_mode) == 0o644
    assert stat.S_IMODE((root / "tree").stat().st_mode) == 0o775
    back = tmp_path / "back"
    back.mkdir()
    hvsock.copy(addr, ":tree", back, recursive=True, preserve=True)
    assert stat.S_IMODE((back / "tree/tool").stat().st_mode) == 0o755


def test_setuid_is_kept_with_the_owner_when_root(served: tuple[str, Path], tmp_path: Path) -> None:
    needs_root()
    addr, root = served
    (tmp_path / "tool").write_bytes(b"#!/bin/sh\n")
    os.chown(tmp_path / "tool", OTHER_UID, OTHER_UID)
    os.chmod(tmp_path / "tool", 0o6755)
    hvsock.copy(addr, tmp_path / "tool", ":tool", preserve=True, owner=True)
    st = (root / "tool").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (OTHER_UID, OTHER_UID, 0o6755)
    hvsock.copy(addr, tmp_path / "tool", ":plain", preserve=True)
    st = (root / "plain").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)


# -- FIFOs, devices, hard links in a root -------------------------------------------------


def test_pulling_a_fifo_or_device_is_an_error_and_in_a_tree_a_warning(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    addr, root = served
    os.mkfifo(root / "fifo")
    with pytest.raises(hvsock.RemoteError, match="'fifo' is a FIFO; hvsock cp copies only"):
        hvsock.copy(addr, ":fifo", tmp_path / "got", io_timeout=30)
    assert not (tmp_path / "got").exists()
    (root / "d").mkdir()
    os.mkfifo(root / "d/pipe")
    (root / "d/file").write_bytes(b"kept")
    result = hvsock.copy(addr, ":d", tmp_path, recursive=True, io_timeout=30)
    assert (tmp_path / "d/file").read_bytes() == b"kept"
    assert not (tmp_path / "d/pipe").exists()
    assert result.files == 1
    assert result.skipped == 1
    assert result.warnings == [
        "'d/pipe' is a FIFO; hvsock cp copies only regular files, directories and symlinks"
    ]
    err = io.StringIO()
    assert (
        main(
            ["cp", "--remote", addr, "-r", ":d", str(tmp_path / "cli")], out=io.StringIO(), err=err
        )
        == 0
    )
    assert err.getvalue() == (
        "hvsock cp: skipped 'd/pipe' is a FIFO; hvsock cp copies only "
        "regular files, directories and symlinks\n"
    )
    if os.geteuid() == 0:
        os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        with pytest.raises(hvsock.RemoteError, match="is a character device"):
            hvsock.copy(addr, ":null", tmp_path / "null", io_timeout=30)
    # Pushing a FIFO names the way that works.
    os.mkfifo(tmp_path / "local-fifo")
    with pytest.raises(hvsock.ArgumentError, match="use '-' as the source"):
        hvsock.copy(addr, tmp_path / "local-fifo", ":x")


def exchanger(a: Path, b: Path) -> Callable[[], None]:
    """Atomically swap two names (renameat2 RENAME_EXCHANGE): one system call a swap,
    so the name flips fast enough to land between a reader's lstat and its open."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        pytest.skip("needs renameat2 (glibc 2.28+) to swap a file and a FIFO atomically")
    at_fdcwd, rename_exchange = -100, 2
    old, new = os.fsencode(a), os.fsencode(b)

    def swap() -> None:
        if renameat2(at_fdcwd, old, at_fdcwd, new, rename_exchange) != 0:
            err = ctypes.get_errno()
            pytest.skip(f"renameat2(RENAME_EXCHANGE) refused here: {os.strerror(err)}")

    return swap


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_a_file_swapped_for_a_fifo_never_parks_the_service(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    """A swap between the service's lstat and open once parked its thread in open()
    for good (16 slots, hit within 6-176 pulls). Each pull now ends (copied, or
    refused as a FIFO), and the service's descriptors, threads and memory stay
    bounded."""
    addr, root = served
    data = b"f" * 1000
    (root / "x").write_bytes(data)
    os.mkfifo(root / "other")
    swap = exchanger(root / "x", root / "other")
    swap()
    swap()
    stop = threading.Event()

    def keep_swapping() -> None:
        while not stop.is_set():
            swap()

    fds_before = len(open_fds())
    threads_before = threading.active_count()
    rss_before = rss_bytes()
    swapper = threading.Thread(target=keep_swapping)
    swapper.start()
    outcomes = {"copied": 0, "fifo": 0}
    try:
        for _ in range(300):
            try:
                hvsock.copy(addr, ":x", tmp_path / "x", io_timeout=30)
                assert (tmp_path / "x").read_bytes() == data
                outcomes["copied"] += 1
            except hvsock.RemoteError as exc:
                refused = str(exc)
                outcomes["fifo"] += 1
                assert "is a FIFO" in refused
    finally:
        stop.set()
        swapper.join(30)
    assert outcomes["copied"], outcomes
    assert outcomes["fifo"], outcomes
    # Every connection's thread and descriptors are gone again (a margin for the
    # service's own loop), and memory did not grow with the pulls.
    assert len(open_fds()) <= fds_before + 4
    assert threading.active_count() <= threads_before + 2
    assert rss_bytes() - rss_before < 64 * MB


def test_hard_links_are_served_unless_refused(short_tmp: Path, tmp_path: Path) -> None:
    root = short_tmp / "root"
    root.mkdir()
    outside = short_tmp / "outside"
    outside.write_bytes(b"outside the root")
    os.link(outside, root / "link")
    (root / "plain").write_bytes(b"plain")
    with serving([root], f"unix://{short_tmp}/a.sock") as addr:
        hvsock.copy(addr, ":link", tmp_path / "served")  # the default: documented
    assert (tmp_path / "served").read_bytes() == b"outside the root"
    with serving([root], f"unix://{short_tmp}/b.sock", refuse_hardlinks=True) as addr:
        with pytest.raises(hvsock.RemoteError, match=r"2 hard links .*refuse_hardlinks"):
            hvsock.copy(addr, ":link", tmp_path / "refused")
        result = hvsock.copy(addr, ":.", tmp_path / "tree", recursive=True)
    assert not (tmp_path / "refused").exists()
    assert sorted(p.name for p in (tmp_path / "tree").iterdir()) == ["plain"]
    assert result.skipped == 1
    assert "'link' has 2 hard links" in result.warnings[0]


def test_the_agents_cp_section_takes_refuse_hardlinks(short_tmp: Path, tmp_path: Path) -> None:
    from hvsock._builtin.agent.config import parse_config
    from hvsock._builtin.agent.host import CATALOGUE

    root = short_tmp / "root"
    root.mkdir()
    (root / "one").write_bytes(b"x")
    os.link(root / "one", root / "two")
    config = parse_config(f'[cp]\nenabled = true\nroots = ["{root}"]\nrefuse_hardlinks = true\n')
    service = CATALOGUE["cp"](config.services["cp"], None)
    with (
        serving([], f"unix://{short_tmp}/agent-cp.sock", service=service) as addr,
        pytest.raises(hvsock.RemoteError, match="refuse_hardlinks"),
    ):
        hvsock.copy(addr, ":one", tmp_path / "one")


# -- a re-run, as a new user would --------------------------------------------------------


def test_rerunning_a_tree_push_with_symlinks_succeeds_like_cp_a(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    addr, root = served
    src = tmp_path / "site"
    src.mkdir()
    (src / "index.html").write_bytes(b"v1")
    os.symlink("index.html", src / "default.html")
    hvsock.copy(addr, src, ":", recursive=True, preserve=True)
    (src / "index.html").write_bytes(b"v2")
    again = hvsock.copy(addr, src, ":", recursive=True, preserve=True)
    assert (again.files, again.symlinks) == (1, 1)
    assert (root / "site/index.html").read_bytes() == b"v2"
    # A link with another target replaces the old link, as cp -a does.
    os.unlink(src / "default.html")
    os.symlink("other.html", src / "default.html")
    hvsock.copy(addr, src, ":", recursive=True)
    assert os.readlink(root / "site/default.html") == "other.html"
    # -n keeps what is there (the directory is kept too, and counted as done).
    os.unlink(src / "default.html")
    os.symlink("third.html", src / "default.html")
    assert hvsock.copy(addr, src, ":", recursive=True, policy="no-clobber").skipped == 2
    assert os.readlink(root / "site/default.html") == "other.html"
    assert hvsock_files(root / "site") == []


# -- a corrupted stream: the SHA-256 comparison ------------------------------------------


class CorruptingProxy:
    """A real TCP proxy that flips one byte, *at* bytes into one direction's stream."""

    def __init__(self, target: str, at: int, direction: str) -> None:
        self.target = target
        self.at = at
        self.direction = direction
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def pipe(self, src: socket.socket, dst: socket.socket, flip: bool) -> None:
        seen = 0
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if flip and seen <= self.at < seen + len(data):
                    i = self.at - seen
                    data = data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1 :]
                seen += len(data)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def run(self) -> None:
        with self.listener:
            client, _ = self.listener.accept()
        server = hvsock.connect(self.target, timeout=5)
        up = threading.Thread(target=self.pipe, args=(client, server, self.direction == "up"))
        up.start()
        self.pipe(server, client, self.direction == "down")
        up.join(30)
        client.close()
        server.close()


@pytest.mark.parametrize("size", [300_000, 3 * MB + 5, 9 * MB])  # eager, copy, sendfile
def test_a_byte_changed_on_the_way_is_caught_by_the_digest(
    short_tmp: Path, tmp_path: Path, size: int
) -> None:
    root = short_tmp / "root"
    root.mkdir()
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    (root / "f").write_bytes(data)
    flip_at = size // 2  # well inside the file's bytes, past the messages before them
    with serving([root], "tcp://127.0.0.1:0") as addr:
        proxy = CorruptingProxy(addr, flip_at, "up")
        with pytest.raises(hvsock.RemoteError, match="SHA-256 of 'new' differs"):
            hvsock.copy(proxy.address, tmp_path / "f", ":new")
        proxy.thread.join(30)
        proxy = CorruptingProxy(addr, flip_at, "down")
        with pytest.raises(hvsock.HvsockError, match="SHA-256 of 'pulled' differs"):
            hvsock.copy(proxy.address, ":f", tmp_path / "pulled")
        proxy.thread.join(30)
        proxy = CorruptingProxy(addr, flip_at, "down")
        sink = _Sink()
        with pytest.raises(hvsock.HvsockError, match="SHA-256 differs"):
            hvsock.copy(proxy.address, ":f", "-", stdout=sink)  # type: ignore[arg-type]
        proxy.thread.join(30)
    assert not (root / "new").exists()
    assert not (tmp_path / "pulled").exists()
    assert hvsock_files(root) == hvsock_files(tmp_path) == []
    assert hashlib.sha256(sink.data).digest() != hashlib.sha256(data).digest()


class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, block: memoryview) -> int:
        self.data += block
        return len(block)

    def flush(self) -> None:
        pass
