"""`hvsock share`, `hvsock mount` and `mount.hvsock` as the installed commands, up to
the point where the kernel would take over (mounting is the real-kernel tier's)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from hvsock import ArgumentError
from hvsock._builtin.share.mount import _modules_hint, parse_options
from hvsock._core import ninep as p

from .._ninep import Client, Rlerror

pytestmark = pytest.mark.skipif(not hasattr(os, "O_PATH"), reason="the share needs Linux")


def helper(hvsock_cmd: list[str]) -> str:
    path = Path(hvsock_cmd[0]).with_name("mount.hvsock")
    if not path.exists():
        pytest.skip("mount.hvsock is not installed next to hvsock")
    return str(path)


def test_share_serves_named_exports(hvsock_cmd: list[str], short_tmp: Path) -> None:
    first, second = short_tmp / "first", short_tmp / "second"
    first.mkdir()
    second.mkdir()
    (first / "f").write_bytes(b"one")
    (second / "f").write_bytes(b"two")
    ready = short_tmp / "ready.json"
    sock = short_tmp / "s.sock"
    with subprocess.Popen(
        [
            *hvsock_cmd,
            "share",
            str(first),
            f"docs={second}",
            "--listen",
            f"unix://{sock}",
            "--ready-file",
            str(ready),
        ],
        stderr=subprocess.PIPE,
        text=True,
    ) as server:
        try:
            deadline = time.monotonic() + 60
            while not ready.exists():
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                assert time.monotonic() < deadline, "hvsock share did not get ready"
                time.sleep(0.05)
            assert json.loads(ready.read_text())["pid"] == server.pid
            for aname, want in ((b"", b"one"), (b"first", b"one"), (b"docs", b"two")):
                c = Client(str(sock))
                c.attach(0, aname)
                c.walk(0, 1, b"f")
                c.rpc(p.TLOPEN, 1, os.O_RDONLY)
                assert c.rpc(p.TREAD, 1, 0, 10).args == (want,)
                c.close()
        finally:
            while Client.live:
                Client.live.pop().close()
            server.terminate()
            assert server.wait(30) == 0


def test_share_portable_synthesizes_modes_and_owners(
    hvsock_cmd: list[str], short_tmp: Path
) -> None:
    export = short_tmp / "export"
    export.mkdir()
    (export / "f").write_bytes(b"data")
    os.chmod(export / "f", 0o600)
    ready, sock = short_tmp / "ready.json", short_tmp / "s.sock"
    argv = [*hvsock_cmd, "share", str(export), "--portable", "--listen", f"unix://{sock}"]
    with subprocess.Popen(
        [*argv, "--ready-file", str(ready)], stderr=subprocess.PIPE, text=True
    ) as server:
        try:
            deadline = time.monotonic() + 60
            while not ready.exists():
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                assert time.monotonic() < deadline, "hvsock share did not get ready"
                time.sleep(0.05)
            c = Client(str(sock))
            c.attach(0, b"", uid=4321)
            c.walk(0, 1, b"f")
            attr = c.rpc(p.TGETATTR, 1, 0x7FF).args
            assert (attr[2], attr[3], attr[4]) == (0o100644, 4321, 4321)
            with pytest.raises(Rlerror) as refused:
                c.rpc(p.TXATTRWALK, 1, 3, b"")
            assert refused.value.errno == errno.EOPNOTSUPP
        finally:
            while Client.live:
                Client.live.pop().close()
            server.terminate()
            assert server.wait(30) == 0
    wrong = subprocess.run(
        [*hvsock_cmd, "share", str(export), "--listen", f"unix://{sock}", "--ownership",
         "synthesized"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert wrong.returncode == 2, wrong.stderr
    assert "portable" in wrong.stderr


def test_share_on_vm_sockets_needs_allow(hvsock_cmd: list[str], tmp_path: Path) -> None:
    # Refused before anything is bound: no vsock socket is made on this machine.
    for listen in ("vsock://any:5999", "hybrid:///tmp/nowhere.sock:5999"):
        done = subprocess.run(
            [*hvsock_cmd, "share", str(tmp_path), "--listen", listen],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert "--allow" in done.stderr


def test_mount_checks_its_arguments_before_connecting(
    hvsock_cmd: list[str], tmp_path: Path
) -> None:
    done = subprocess.run(
        [*hvsock_cmd, "mount", f"unix://{tmp_path}/none.sock", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "not a directory" in done.stderr
    done = subprocess.run(
        [*hvsock_cmd, "mount", f"unix://{tmp_path}/none.sock", str(tmp_path), "-o", "trans=tcp"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "set by hvsock mount itself" in done.stderr


def test_mount_helper_speaks_mount8(hvsock_cmd: list[str], tmp_path: Path) -> None:
    tool = helper(hvsock_cmd)
    usage = subprocess.run([tool], capture_output=True, text=True, timeout=60, check=False)
    assert usage.returncode == 1
    assert "usage: mount.hvsock" in usage.stderr
    fake = subprocess.run(
        [tool, "vsock://2:564", str(tmp_path), "-f", "-o", "defaults,nofail,cache=loose"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert fake.returncode == 0, fake.stderr
    bad = subprocess.run(
        [tool, "vsock://2:564", str(tmp_path), "-f", "-o", "rfdno=3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 32
    assert "rfdno" in bad.stderr
    missing = subprocess.run(
        [tool, f"unix://{tmp_path}/none.sock", str(tmp_path / "no")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 32
    assert "not a directory" in missing.stderr


def test_parse_options() -> None:
    flags, rest = parse_options(
        "defaults,ro,nosuid,noatime,msize=262144,cache=loose,"
        "x-systemd.automount,_netdev,nofail,aname=docs,posixacl"
    )
    assert flags == 1 | 2 | 1024
    assert rest == {"msize": "262144", "cache": "loose", "aname": "docs", "posixacl": None}
    assert parse_options("ro,rw")[0] == 0
    for bad in ("trans=tcp", "rfdno=1", "wfdno=1", "version=9p2000.u"):
        with pytest.raises(ArgumentError, match="set by hvsock mount"):
            parse_options(bad)


def _kernel_tree(top: Path, *, filesystems: str, loaded: list[str], shipped: list[str]) -> str:
    """A root with what _modules_hint reads: /proc/filesystems, /sys/module, the modules."""
    (top / "proc").mkdir()
    (top / "proc" / "filesystems").write_text(filesystems)
    for name in loaded:
        (top / "sys" / "module" / name).mkdir(parents=True)
    net9p = top / "lib" / "modules" / os.uname().release / "kernel" / "net" / "9p"
    net9p.mkdir(parents=True)
    for name in shipped:
        (net9p / name).write_bytes(b"")
    return str(top)


@pytest.mark.parametrize(
    ("filesystems", "loaded", "shipped", "lacks"),
    [
        # Linux 6.1+: fd is its own module; shipped but not loaded is what a minimal
        # image without modprobe has (v9fs then says only EINVAL).
        ("nodev\t9p\n", ["9pnet", "9p"], ["9pnet_fd.ko.xz"], "9pnet_fd"),
        ("nodev\t9p\n", ["9pnet", "9p", "9pnet_fd"], ["9pnet_fd.ko"], ""),
        # Before 6.1 the fd transport is inside 9pnet: no module file, nothing to load.
        ("nodev\t9p\n", ["9pnet", "9p"], [], ""),
        ("nodev\tproc\n", [], ["9pnet_fd.ko"], "9p and 9pnet_fd"),
        ("nodev\tproc\n", ["9pnet", "9pnet_fd"], ["9pnet_fd.ko"], "9p"),
    ],
)
def test_mount_names_the_missing_9p_modules(
    tmp_path: Path, filesystems: str, loaded: list[str], shipped: list[str], lacks: str
) -> None:
    hint = _modules_hint(
        _kernel_tree(tmp_path, filesystems=filesystems, loaded=loaded, shipped=shipped)
    )
    if not lacks:
        assert hint == ""
    else:
        assert f"the kernel lacks {lacks}:" in hint
        assert f"modprobe {lacks.replace(' and ', ' ')}" in hint
