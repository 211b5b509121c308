"""The doctor's KVP checks, on a directory tree standing in for ``/``."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import hvsock.kvp as kvp
from hvsock._builtin.kvp.checks import CHECKS, kvp_findings, running_programs
from hvsock._doctor import Machine
from hvsock.doctor import diagnose

from .._doctor_fakes import FakeVsock

BOOT = 1_700_000_000


def machine_root(tmp_path: Path, processes: dict[int, tuple[str, bytes]]) -> Path:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "stat").write_text(f"cpu 1 2 3\nbtime {BOOT}\n")
    for pid, (comm, cmdline) in processes.items():
        d = tmp_path / "proc" / str(pid)
        d.mkdir()
        (d / "comm").write_text(comm + "\n")
        (d / "cmdline").write_bytes(cmdline)
    return tmp_path


def pools(root: Path) -> Path:
    directory = root / "var" / "lib" / "hyperv"
    directory.mkdir(parents=True)
    return directory


def by_name(findings: list[object]) -> dict[str, tuple[str, str]]:
    return {f.name: (f.status, f.summary) for f in findings}  # type: ignore[attr-defined]


def test_running_programs(tmp_path: Path) -> None:
    root = machine_root(
        tmp_path,
        {
            10: ("hv_kvp_daemon", b"/usr/sbin/hv_kvp_daemon\0-n\0"),
            11: ("python3", b"python3\0-m\0hvsock\0kvp\0serve\0"),
            12: ("bash", b"bash\0"),
        },
    )
    assert running_programs(str(root)) == ["hv_kvp_daemon", "hvsock kvp serve"]
    assert running_programs(str(tmp_path / "nowhere")) == []


def test_healthy_hyperv_guest(tmp_path: Path) -> None:
    root = machine_root(tmp_path, {10: ("hv_kvp_daemon", b"hv_kvp_daemon\0")})
    directory = pools(root)
    kvp.open_pool(directory=directory).set("k", "v")
    got = by_name(kvp_findings(root=str(root), hyperv_guest=True))
    assert list(got) == list(CHECKS)
    assert got["kvp_daemon"] == ("ok", "running: hv_kvp_daemon")
    assert got["kvp_pools"] == ("ok", "records by pool: 1: 1")
    assert got["kvp_stale"][0] == "ok"


def test_hyperv_guest_without_daemon_torn_and_stale_pools(tmp_path: Path) -> None:
    root = machine_root(tmp_path, {})
    directory = pools(root)
    (directory / ".kvp_pool_0").write_bytes(b"x" * 3000)
    kvp.open_pool(3, directory=directory, allow_host_pool=True).set("HostName", "old")
    kvp.open_pool(2, directory=directory, allow_host_pool=True).clear()  # empty: not stale
    for name in (".kvp_pool_3", ".kvp_pool_2"):
        os.utime(directory / name, (BOOT - 100, BOOT - 100))
    got = by_name(kvp_findings(root=str(root), hyperv_guest=True))
    assert got["kvp_daemon"][0] == "fail"
    assert got["kvp_pools"] == ("fail", ".kvp_pool_0 is 3000 bytes, not a multiple of 2560")
    assert got["kvp_stale"][0] == "warn"
    assert "3 (auto-external)" in got["kvp_stale"][1]
    assert "2 (auto)" not in got["kvp_stale"][1]


def test_not_a_hyperv_guest(tmp_path: Path) -> None:
    root = machine_root(tmp_path, {})
    got = by_name(kvp_findings(root=str(root), hyperv_guest=False))
    assert got["kvp_daemon"][0] == "info"
    assert "hvsock kvp serve" in got["kvp_daemon"][1]
    assert got["kvp_pools"][0] == "info"
    assert "does not exist" in got["kvp_pools"][1]


def test_no_boot_time(tmp_path: Path) -> None:
    root = machine_root(tmp_path, {})
    (root / "proc" / "stat").write_text("cpu 1\n")
    kvp.open_pool(directory=pools(root)).set("k", "v")
    assert by_name(kvp_findings(root=str(root), hyperv_guest=False))["kvp_stale"][0] == "warn"


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux only")
def test_the_doctor_runs_them(tmp_path: Path) -> None:
    root = machine_root(tmp_path, {})
    kvp.open_pool(directory=pools(root)).set("k", "v")
    os.utime(root / "var/lib/hyperv/.kvp_pool_1", (time.time(), time.time()))
    # A fake AF_VSOCK socket maker: the unit tier makes no real AF_VSOCK socket.
    report = diagnose(machine=Machine(root=str(root), vsock_socket=FakeVsock()), platform="linux")
    assert report["kvp_pools"].status == "ok"
    assert report["kvp_daemon"].status == "info"
    windows = diagnose(machine=Machine(root=str(root)), platform="win32")
    assert windows["kvp_pools"].status == "not applicable"
