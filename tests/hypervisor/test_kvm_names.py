"""L1 as a KVM host finding its guest: `hvsock vms` lists L2 (QEMU's `-name l2`, CID 3)
from L1's /proc, and `vsock://name:l2:<port>` reaches L2 through vhost."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

import hvsock

from ._support import next_port
from ._vm import BOOT_TIMEOUT, L2_NAME, TEST_TIMEOUT, Guest

pytestmark = [pytest.mark.hypervisor, pytest.mark.timeout(TEST_TIMEOUT)]


def hvsock_cli(guest: Guest, *args: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """The installed console script in L1, as users run it."""
    return subprocess.run(
        [f"{guest.project}/.venv/bin/hvsock", *args],
        input=data,
        capture_output=True,
        timeout=600,
        check=False,
    )


def test_qemu_command_line_names_l2(guest: Guest) -> None:
    assert guest.qemu is not None
    with open(f"/proc/{guest.qemu.pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert argv[argv.index(b"-name") + 1] == L2_NAME.encode()


def test_hvsock_vms_lists_l2_with_cid_3(guest: Guest) -> None:
    assert guest.qemu is not None
    done = hvsock_cli(guest, "vms", "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    l2 = [vm for vm in found["vms"] if vm["name"] == L2_NAME]
    assert l2 == [
        {
            "name": L2_NAME,
            "hypervisor": "qemu",
            "state": "running",
            "running": True,
            "cid": 3,
            "uds_path": None,
            "vsock": True,
            "auto_cid": False,
            "source": f"/proc/{guest.qemu.pid}",
            "pid": guest.qemu.pid,
        }
    ]
    table = hvsock_cli(guest, "vms").stdout.decode()
    row = next(line for line in table.splitlines() if line.startswith(f"{L2_NAME} "))
    assert row.split()[:5] == [L2_NAME, "qemu", "running", "cid", "3"]


def test_connect_by_name_reaches_l2(guest: Guest) -> None:
    port = guest.serve("echo", next_port())
    done = hvsock_cli(
        guest, "connect", f"vsock://name:{L2_NAME}:{port}", data=b"to L2 by its name\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"to L2 by its name\n"
    with hvsock.connect(f"vsock://name:{L2_NAME}:{port}", timeout=30) as sock:
        assert sock.getpeername() == (3, port)


def test_exec_by_name_reaches_l2(guest: Guest) -> None:
    """`hvsock exec` and `hvsock.exec` look the name up themselves (they dial through
    _endpoints), and as root in L1 they pass the agent's default host:privileged rule."""
    where: dict[str, Any] = guest.call("start_agent", timeout=BOOT_TIMEOUT)
    named = f"vsock://name:{L2_NAME}:{where['port']}"
    assert hvsock.resolve_address(named) == hvsock.VsockAddress(3, where["port"])
    result = hvsock.exec(
        named, ["/bin/sh", "-c", "echo $((6 * 7))"], timeout=120, connect_timeout=30
    )
    assert (result.returncode, result.stdout) == (0, b"42\n")
    done = hvsock_cli(guest, "exec", "--connect-timeout", "30", named, "--", "echo", "by name")
    assert (done.returncode, done.stdout) == (0, b"by name\n"), done.stderr


def test_doctor_in_l1_sees_the_host_side(guest: Guest) -> None:
    done = hvsock_cli(guest, "doctor", "--json", f"vsock://name:{L2_NAME}:{next_port()}")
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["vhost_vsock"]["status"] == "ok"
    assert checks["dev_vhost_vsock"]["status"] == "ok", checks["dev_vhost_vsock"]
    assert "this user can open it" in checks["dev_vhost_vsock"]["summary"]
    assert f"{L2_NAME}: cid 3 (qemu, running" in checks["host_vms"]["summary"]
    assert checks["address_host_vm"]["status"] == "ok"
    assert "vsock://3:" in checks["address_host_vm"]["summary"]
    assert checks["address_cid"]["summary"].startswith("CID 3: another VM")
