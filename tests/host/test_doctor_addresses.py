"""The doctor and an address: a guest that cannot reach its host (issue 13 item 3), and a
hybrid VMM socket checked for real (issue 13 item 4). Fake /sys trees of real files;
real Unix sockets and the emulated VMM muxer. No real AF_VSOCK socket is made: the
doctor's sockets come from a fake."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from hvsock._doctor import Machine, diagnose
from hvsock._doctor.model import FAIL, INFO, NOT_APPLICABLE, OK, WARN, Diagnosis
from hvsock.testing import HybridVsockMuxer

from .._doctor_fakes import FakeVsock, tree
from ..fakes import FakeRunner


def guest(root: Path, *modules: str) -> Machine:
    """A Linux machine whose /sys/module lists *modules* (plus vsock itself)."""
    return tree(root, modules=modules)


def linux(address: str, machine: Machine | None = None) -> Diagnosis:
    # No transport listed, no /proc/net/protocols: the fake socket is tried (never a real one).
    return diagnose(
        address,
        machine=machine
        or Machine(root="/nonexistent-root", runner=FakeRunner(), vsock_socket=FakeVsock()),
        platform="linux",
    )


# -- CID 2 needs a guest-to-host transport ---------------------------------------------------


def test_the_host_without_any_route_is_warned(tmp_path: Path) -> None:
    check = linux("vsock://host:5000", guest(tmp_path, "vhost_vsock"))["address_cid"]
    assert check.status == WARN
    assert "no guest-to-host transport is loaded" in check.summary
    assert "will fail" in check.summary
    assert_names_every_transport(check.fix)


@pytest.mark.parametrize("modules", [("vsock_loopback",), ("vsock_loopback", "vhost_vsock")])
def test_the_host_is_this_machine_with_only_vsock_loopback(
    tmp_path: Path, modules: tuple[str, ...]
) -> None:
    # Linux sends CID 2 to vsock_loopback when no guest-to-host transport is loaded
    # (vsock_use_local_transport): the connect works and stays here (the kernel tier
    # connects it for real: tests/kernel/test_doctor_kernel.py).
    check = linux("vsock://host:5000", guest(tmp_path, *modules))["address_cid"]
    assert check.status == INFO
    assert "routes CID 2 to vsock_loopback" in check.summary
    assert "will fail" not in check.summary
    assert "to reach a real host" in check.fix
    assert_names_every_transport(check.fix)


def assert_names_every_transport(fix: str) -> None:
    for module, hypervisor in [
        ("vmw_vsock_virtio_transport", "KVM/QEMU"),
        ("hv_sock", "Hyper-V"),
        ("vmw_vsock_vmci_transport", "VMware"),
    ]:
        assert f"{module}`" in fix
        assert hypervisor in fix.split(module)[0].rsplit(";", 1)[-1]


@pytest.mark.parametrize(
    "module", ["vmw_vsock_virtio_transport", "hv_sock", "vmw_vsock_vmci_transport"]
)
def test_the_host_with_a_guest_to_host_transport_is_fine(tmp_path: Path, module: str) -> None:
    check = linux("vsock://host:5000", guest(tmp_path, "vsock_loopback", module))["address_cid"]
    assert check.status == OK


def test_a_hyperv_guest_is_told_to_load_hv_sock(tmp_path: Path) -> None:
    machine = guest(tmp_path, "vsock_loopback")
    (tmp_path / "sys" / "bus" / "vmbus").mkdir(parents=True)
    check = linux("vsock://host:5000", machine)["address_cid"]
    assert check.status == INFO
    assert "modprobe hv_sock" in check.fix
    assert "virtio" not in check.fix


# -- hybrid:// : the VMM's socket -----------------------------------------------------------


def vmm(report: Diagnosis) -> tuple[str, str]:
    return report["vmm_socket"].status, report["vmm_handshake"].status


def test_a_missing_vmm_socket_fails(short_tmp: Path) -> None:
    report = linux(f"hybrid://{short_tmp}/vm.sock:52")
    assert vmm(report) == (FAIL, NOT_APPLICABLE)
    assert "does not exist" in report["vmm_socket"].summary
    assert "uds_path" in report["vmm_socket"].fix
    assert not report.ok


def test_a_regular_file_is_not_a_vmm_socket(short_tmp: Path) -> None:
    (short_tmp / "vm.sock").write_text("not a socket")
    report = linux(f"hybrid://{short_tmp}/vm.sock:52")
    assert vmm(report) == (FAIL, NOT_APPLICABLE)
    assert "is not a socket" in report["vmm_socket"].summary


def test_a_stale_vmm_socket_fails(short_tmp: Path) -> None:
    path = short_tmp / "vm.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))  # bound, never listening: what a dead VMM leaves
    report = linux(f"hybrid://{path}:52")
    assert vmm(report) == (FAIL, NOT_APPLICABLE)
    assert "nobody accepts" in report["vmm_socket"].summary


@pytest.mark.usefixtures("fd_baseline")
def test_a_vmm_that_answers_the_handshake(short_tmp: Path) -> None:
    with HybridVsockMuxer(str(short_tmp / "vm.sock")) as muxer, muxer.guest_listen(52):
        report = linux(str(muxer.address(52)))
    assert vmm(report) == (OK, OK)
    assert "CONNECT 52" in report["vmm_handshake"].summary
    for name in ("address_cid", "address_port", "address_bind", "host_registration"):
        assert report[name].status == NOT_APPLICABLE


@pytest.mark.usefixtures("fd_baseline")
def test_a_vmm_with_nothing_on_the_port_fails_the_handshake(short_tmp: Path) -> None:
    with HybridVsockMuxer(str(short_tmp / "vm.sock")) as muxer:
        report = linux(str(muxer.address(52)))
    assert vmm(report) == (OK, FAIL)
    assert "CONNECT 52" in report["vmm_handshake"].summary
    assert "port 52" in report["vmm_handshake"].fix
    assert not report.ok


def test_vsock_addresses_skip_the_vmm_checks(tmp_path: Path) -> None:
    report = linux("vsock://host:5000", guest(tmp_path, "vmw_vsock_virtio_transport"))
    assert vmm(report) == (NOT_APPLICABLE, NOT_APPLICABLE)


@pytest.mark.usefixtures("fd_baseline")
def test_a_vmm_socket_other_users_may_write_is_a_warning(short_tmp: Path) -> None:
    with HybridVsockMuxer(str(short_tmp / "vm.sock")) as muxer, muxer.guest_listen(52):
        os.chmod(muxer.uds_path, 0o600)
        private = linux(str(muxer.address(52)))["vmm_socket"]
        os.chmod(muxer.uds_path, 0o666)
        shared = linux(str(muxer.address(52)))["vmm_socket"]
    assert private.status == OK
    assert "cannot prove" in private.summary
    assert shared.status == WARN
    assert "other users may connect" in shared.summary
    assert "chmod 600" in shared.fix
