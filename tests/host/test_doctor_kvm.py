"""hvsock doctor on a KVM host, on fake trees standing in for / (a /sys/module, a
/dev/vhost-vsock, a /proc with QEMU command lines): vhost_vsock, who may open the
device, the VMs found with their CIDs, and a vsock://name: address resolved first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hvsock._doctor import Machine, diagnose
from hvsock._doctor.model import (
    INFO,
    KVM_ADDRESS_CHECKS,
    KVM_HOST_CHECKS,
    LINUX_ADDRESS_CHECKS,
    LINUX_CHECKS,
    NOT_APPLICABLE,
    OK,
    WARN,
    Diagnosis,
)
from tests._doctor_fakes import FakeVsock


@pytest.fixture(autouse=True)
def _no_virsh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No libvirt: the host is what the fake tree says."""
    empty = tmp_path / "no-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def host(
    tmp_path: Path,
    *,
    module: bool = True,
    device: str | None = "/dev/null",
    vms: dict[int, list[str]] | None = None,
) -> Machine:
    root = tmp_path / "root"
    (root / "sys" / "module").mkdir(parents=True)
    (root / "dev").mkdir()
    (root / "proc").mkdir()
    if module:
        (root / "sys" / "module" / "vhost_vsock").mkdir()
    if device is not None:
        (root / "dev" / "vhost-vsock").symlink_to(device)  # /dev/null: a char device
    for pid, argv in (vms or {}).items():
        (root / "proc" / str(pid)).mkdir()
        (root / "proc" / str(pid) / "cmdline").write_bytes(
            b"".join(a.encode() + b"\0" for a in argv)
        )
    # Fake vsock sockets: the host tier makes no real AF_VSOCK socket (tests/conftest.py).
    return Machine(root=str(root), euid=os.geteuid(), vsock_socket=FakeVsock())


def qemu(name: str, cid: int) -> list[str]:
    return ["qemu-system-x86_64", "-name", name, "-device", f"vhost-vsock-pci,guest-cid={cid}"]


def checks(report: Diagnosis) -> dict[str, tuple[str, str, str]]:
    return {c.name: (c.status, c.summary, c.fix) for c in report.checks}


def test_a_kvm_host_with_two_vms(tmp_path: Path) -> None:
    m = host(tmp_path, vms={10: qemu("web1", 3), 11: qemu("db1", 4)})
    report = diagnose(machine=m, platform="linux")
    got = checks(report)
    assert set(KVM_HOST_CHECKS) <= set(got)
    assert set(KVM_HOST_CHECKS) <= set(LINUX_CHECKS)
    assert got["vhost_vsock"][0] == OK
    status, summary, _ = got["dev_vhost_vsock"]
    assert status == OK
    assert (
        summary == "crw-rw-rw- root:root; may be opened (read-write) by: everyone; this "
        "user can open it"
    )
    status, summary, _ = got["host_vms"]
    assert status == OK
    assert summary.startswith(
        f"web1: cid 3 (qemu, running, from {m.root}/proc/10); "
        f"db1: cid 4 (qemu, running, from {m.root}/proc/11)"
    )


def test_one_cid_on_two_running_vms_is_a_warning(tmp_path: Path) -> None:
    m = host(tmp_path, vms={10: qemu("a", 5), 11: qemu("b", 5)})
    status, _, fix = checks(diagnose(machine=m, platform="linux"))["host_vms"]
    assert status == WARN
    assert fix.startswith("CID 5 is given to more than one running VM")


def test_not_a_vhost_host(tmp_path: Path) -> None:
    got = checks(diagnose(machine=host(tmp_path, module=False, device=None), platform="linux"))
    assert got["vhost_vsock"][0] == INFO
    assert "`sudo modprobe vhost_vsock`" in got["vhost_vsock"][2]
    assert got["dev_vhost_vsock"][0] == NOT_APPLICABLE
    assert got["host_vms"][0] == INFO
    assert "none of the 0 processes" in got["host_vms"][1]


def test_vms_without_the_module_and_a_module_without_its_node(tmp_path: Path) -> None:
    got = checks(
        diagnose(
            machine=host(tmp_path, module=False, device=None, vms={10: qemu("web1", 3)}),
            platform="linux",
        )
    )
    assert got["vhost_vsock"][0] == WARN
    got = checks(diagnose(machine=host(tmp_path / "2", device=None), platform="linux"))
    assert got["dev_vhost_vsock"][0] == WARN
    assert "does not exist" in got["dev_vhost_vsock"][1]
    not_a_device = tmp_path / "plain-file"
    not_a_device.write_text("")
    got = checks(diagnose(machine=host(tmp_path / "3", device=str(not_a_device)), platform="linux"))
    assert got["dev_vhost_vsock"][0] == WARN
    assert "is not a character device" in got["dev_vhost_vsock"][1]


def test_a_vm_name_is_resolved_before_the_address_checks(tmp_path: Path) -> None:
    m = host(tmp_path, vms={10: qemu("web1", 3)})
    report = diagnose("vsock://name:web1:5000", machine=m, platform="linux")
    got = checks(report)
    assert got["address_host_vm"] == (OK, "VM 'web1' is vsock://3:5000", "")
    assert got["address_cid"][1].startswith("CID 3: another VM")
    assert report.address == "vsock://name:web1:5000"


def test_a_vm_name_that_does_not_resolve(tmp_path: Path) -> None:
    m = host(tmp_path, vms={10: qemu("web1", 3)})
    got = checks(diagnose("hybrid://name:web1:5000", machine=m, platform="linux"))
    status, summary, fix = got["address_host_vm"]
    assert (status, summary) == (WARN, "VM 'web1' could not be resolved here")
    assert "use vsock://name:web1:5000" in fix
    for name in LINUX_ADDRESS_CHECKS:
        assert got[name] == (
            NOT_APPLICABLE,
            "the VM name was not resolved (see address_host_vm)",
            "",
        )


def test_other_addresses_and_other_platforms(tmp_path: Path) -> None:
    m = host(tmp_path)
    got = checks(diagnose("vsock://any:5000", machine=m, platform="linux"))
    assert got["address_host_vm"][0] == NOT_APPLICABLE
    assert got["address_host_vm"][1].startswith("only for vsock://name:")
    got = checks(diagnose("vsock://name:web1:5000", machine=m, platform="darwin"))
    for name in (*KVM_HOST_CHECKS, *KVM_ADDRESS_CHECKS):
        assert got[name] == (NOT_APPLICABLE, "Linux only", "")
