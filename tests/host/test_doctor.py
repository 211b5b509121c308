"""hvsock doctor on fake trees standing in for ``/`` with fake AF_VSOCK sockets, and
the Windows checks with a fake registry, fake PowerShell and a fake self-test.

Nothing here creates a real AF_VSOCK socket (the host tier's machine may be a VM whose
vsock leads to a real hypervisor): the doctor on this machine for real is in
tests/kernel/test_doctor_kernel.py.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import uuid
from pathlib import Path

import pytest

from hvsock import AddressError
from hvsock._cli.doctor_cmds import print_diagnosis
from hvsock._doctor import Machine, diagnose
from hvsock._doctor.model import (
    FAIL,
    INFO,
    LINUX_ADDRESS_CHECKS,
    LINUX_CHECKS,
    NOT_APPLICABLE,
    OK,
    STATUSES,
    WARN,
    WINDOWS_ADDRESS_CHECKS,
    WINDOWS_CHECKS,
    WINDOWS_ERRORS,
    Diagnosis,
)
from hvsock._errors import HvsockError, translate
from hvsock._windows.registry import register_service
from hvsock._windows.vms import CIM_SCRIPT, GET_VM_SCRIPT, WSLHOST_SCRIPT
from hvsock.testing import MemoryRegistry
from hvsock.windows import service_id_for_port

from .._doctor_fakes import FakeVsock, tree
from ..fakes import FakeRunner, failed, fixture, ok, ps

WSL_ID = uuid.UUID("f6446e02-236e-4b24-9916-2d4ad9a1096f")
WIN11 = uuid.UUID("a3c2e1d0-1111-4222-8333-944455556666")
needs_af_vsock = pytest.mark.skipif(
    not hasattr(socket, "AF_VSOCK"), reason="this Python has no socket.AF_VSOCK"
)


def statuses(report: Diagnosis) -> dict[str, str]:
    return {check.name: check.status for check in report.checks}


def assert_well_formed(report: Diagnosis) -> None:
    names = [check.name for check in report.checks]
    assert len(names) == len(set(names))
    for check in report.checks:
        assert check.status in STATUSES
        assert check.summary
        if check.status in (FAIL, WARN):
            assert check.fix, f"{check.name} failed without saying what to do"


def test_privileged_ports_need_root(tmp_path: Path) -> None:
    as_user = diagnose("vsock://any:22", machine=tree(tmp_path / "u", euid=1000))
    assert as_user["address_port"].status == WARN
    assert "CAP_NET_BIND_SERVICE" in as_user["address_port"].fix
    as_root = diagnose("vsock://any:22", machine=tree(tmp_path / "r", euid=0))
    assert as_root["address_port"].status == OK
    # connecting to a privileged port needs nothing
    to_host = diagnose("vsock://host:22", machine=tree(tmp_path / "h", euid=1000))["address_port"]
    assert (to_host.status, to_host.summary) == (OK, "port 22: any port can be connected to")


def test_a_malformed_address_is_an_address_error() -> None:
    with pytest.raises(AddressError):
        diagnose("vsock://nowhere")


# -- fake trees standing in for / --------------------------------------------------------


def test_a_hyperv_guest_without_hv_sock(tmp_path: Path) -> None:
    report = diagnose(machine=tree(tmp_path, vmbus=True))
    assert_well_formed(report)
    check = report["hyperv_guest"]
    assert check.status == FAIL
    assert "/sys/bus/vmbus exists" in check.summary
    assert "modprobe hv_sock" in check.fix
    assert "modules-load.d" in check.fix
    assert report["dev_vsock"].status == FAIL
    assert report["local_cid"].status == NOT_APPLICABLE
    # no transport module in this tree, yet AF_VSOCK sockets can be made: built in
    assert report["vsock_socket"].status == OK
    assert report["vsock_transports"].status == WARN
    assert not report.ok


def test_a_hyperv_guest_with_hv_sock_and_its_limits(tmp_path: Path) -> None:
    machine = tree(tmp_path, modules=("hv_sock",), dmi=("Microsoft Corporation", "Virtual Machine"))
    report = diagnose(machine=machine)
    assert report["hyperv_guest"].status == OK
    assert "DMI: Microsoft Corporation Virtual Machine" in report["hyperv_guest"].summary
    assert "vsock://host:<port>" in report["hyperv_guest"].summary
    assert report["vsock_transports"].summary.startswith("hv_sock: Hyper-V guest")

    high = diagnose("vsock://any:0x80000000", machine=machine)
    assert high["address_port"].status == FAIL
    assert "above 0x7FFFFFFF" in high["address_port"].summary
    assert diagnose("vsock://any:0x7FFFFFFF", machine=machine)["address_port"].status == OK
    # the limit is for listeners: the host's services may have any port
    assert diagnose("vsock://host:0x80000000", machine=machine)["address_port"].status == OK

    sibling = diagnose("vsock://3:5000", machine=machine)
    assert sibling["address_cid"].status == FAIL
    assert "reaches only its host" in sibling["address_cid"].summary
    assert sibling["address_bind"].status == NOT_APPLICABLE

    hint = diagnose("vsock://host:5000", machine=machine)["host_registration"]
    sid = service_id_for_port(5000)
    assert hint.status == INFO
    assert str(sid) in hint.summary
    assert "hvsock register NAME --port 5000 --export ps1" in hint.fix
    assert "refused" in hint.fix


def test_hv_sock_without_vmbus_is_odd(tmp_path: Path) -> None:
    report = diagnose(machine=tree(tmp_path, modules=("hv_sock",)))
    assert report["hyperv_guest"].status == WARN


def test_cid_1_needs_the_loopback_transport(tmp_path: Path) -> None:
    without = diagnose("vsock://local:5000", machine=tree(tmp_path / "a"))
    assert without["address_cid"].status == FAIL
    assert "modprobe vsock_loopback" in without["address_cid"].fix
    with_it = diagnose(
        "vsock://local:5000", machine=tree(tmp_path / "b", modules=("vsock_loopback",))
    )
    assert with_it["address_cid"].status == OK


def test_dev_vsock_that_is_not_a_device(tmp_path: Path) -> None:
    report = diagnose(machine=tree(tmp_path, dev_vsock=True))
    assert report["dev_vsock"].status == WARN
    assert "not a character device" in report["dev_vsock"].summary
    if report["af_vsock"].status == OK:
        assert report["local_cid"].status == WARN


def test_wsl2_prints_the_vm_id_for_the_host(tmp_path: Path) -> None:
    machine = tree(
        tmp_path, vmbus=True, modules=("hv_sock",), osrelease="5.15.153.1-microsoft-standard-WSL2"
    )
    machine.runner.answers[("wslinfo", "--vm-id")] = ok(  # type: ignore[union-attr]
        fixture("wslinfo-vm-id.txt")
    )
    check = diagnose(machine=machine)["wsl"]
    assert check.status == INFO
    assert str(WSL_ID) in check.summary
    assert "hvsock://wsl/<port>" in check.fix
    assert "wildcard never receives WSL's connections" in check.fix


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        (None, "could not run"),
        (ok("wslinfo: unknown option --vm-id\n"), "gave no VM id"),
    ],
)
def test_wsl2_without_a_vm_id(tmp_path: Path, answer: object, fragment: str) -> None:
    machine = tree(tmp_path, vmbus=True, osrelease="5.15.153.1-microsoft-standard-WSL2")
    if answer is not None:
        machine.runner.answers[("wslinfo", "--vm-id")] = answer  # type: ignore[union-attr]
    check = diagnose(machine=machine)["wsl"]
    assert check.status == WARN
    assert fragment in check.summary
    assert "wsl --update" in check.fix


def test_wsl1(tmp_path: Path) -> None:
    check = diagnose(machine=tree(tmp_path, osrelease="4.4.0-19041-Microsoft"))["wsl"]
    assert check.status == INFO
    assert "WSL 1" in check.summary


def test_another_platform_has_nothing_to_check() -> None:
    report = diagnose("vsock://any:5000", platform="darwin")
    assert set(statuses(report).values()) == {NOT_APPLICABLE}
    assert report.ok


# -- the Windows checks, with fakes --------------------------------------------------------


def windows_host(
    *, wsl: bool = True, loopback: BaseException | None = None, registered: bool = True
) -> Machine:
    registry = MemoryRegistry()
    if registered:
        register_service("Guest agent", 5000, registry=registry)
    runner = FakeRunner(
        {
            ps(GET_VM_SCRIPT): ok(fixture("get-vm.json")),
            ps(CIM_SCRIPT): ok(fixture("cim-msvm.json")),
            ps(WSLHOST_SCRIPT): ok(fixture("wslhost-processes.json") if wsl else b"[]"),
        }
    )

    def self_test() -> None:
        if loopback is not None:
            raise loopback

    return Machine(runner=runner, registry=registry, loopback_test=self_test)


def windows(address: str | None = None, **kwargs: object) -> Diagnosis:
    report = diagnose(
        address,
        machine=windows_host(**kwargs),  # type: ignore[arg-type]
        platform="win32",
    )
    assert_well_formed(report)
    return report


def test_windows_host_checks() -> None:
    report = windows()
    got = statuses(report)
    assert set(got) == set(LINUX_CHECKS) | set(WINDOWS_CHECKS)
    for name in LINUX_CHECKS:
        assert report[name].summary == "Linux only"
    # this Python (on Linux) has no AF_HYPERV: the check says what to install
    assert got["af_hyperv"] == FAIL
    assert "CPython 3.12 or newer" in report["af_hyperv"].fix
    assert report["registry"].summary.startswith("1 registered services, 1 made by hvsock")
    assert got["hyperv_loopback"] == OK
    assert got["vms"] == INFO
    assert "Ubuntu 24.04 (Running)" in report["vms"].summary
    assert "WSL (Running)" in report["vms"].summary


@pytest.mark.parametrize(
    ("winerror", "code"), [(10013, errno.EACCES), (10050, errno.ENETDOWN), (10060, errno.ETIMEDOUT)]
)
def test_windows_socket_errors_are_explained_in_plain_words(winerror: int, code: int) -> None:
    raw = OSError(code, os.strerror(code))
    raw.winerror = winerror  # type: ignore[attr-defined]
    error = translate(raw, op="connect", family="hyperv", where="the loopback service")
    error.__cause__ = raw
    check = windows(loopback=error)["hyperv_loopback"]
    assert check.status == FAIL
    assert check.fix == WINDOWS_ERRORS[winerror]
    assert str(winerror) in check.fix


def test_an_unregistered_service_says_how_to_register_it() -> None:
    check = windows("hvsock://parent/6000")["service_registered"]
    assert check.status == FAIL
    assert "hvsock register NAME --port 6000" in check.fix
    assert "refused" in check.fix
    sid = uuid.UUID("3f9e1a2b-4c5d-4e6f-8a7b-9c0d1e2f3a4b")
    other = windows(f"hvsock://parent/{sid}")["service_registered"]
    assert f"--service-id {sid}" in other.fix
    assert windows("hvsock://parent/5000")["service_registered"].status == OK
    assert windows("hvsock://loopback/6000")["service_registered"].status == NOT_APPLICABLE


def test_a_wildcard_listener_with_wsl_running_is_warned() -> None:
    check = windows("hvsock://wildcard/5000")["address_vm"]
    assert check.status == WARN
    assert "hvsock://wsl/5000" in check.fix
    assert windows("hvsock://children/5000")["address_vm"].status == WARN
    assert windows("hvsock://wildcard/5000", wsl=False)["address_vm"].status == OK
    assert windows("hvsock://parent/5000")["address_vm"].status == OK


@pytest.mark.parametrize(
    ("address", "status", "fragment"),
    [
        ("hvsock://name:ubuntu 24.04/5000", OK, "VM 'Ubuntu 24.04' runs"),
        ("hvsock://name:win11-dev/5000", FAIL, "Start-VM -Name 'win11-dev'"),
        ("hvsock://name:nope/5000", FAIL, "no Hyper-V VM is named 'nope'"),
        ("hvsock://wsl/5000", OK, str(WSL_ID)),
        (f"hvsock://{WIN11}/5000", FAIL, "Start-VM -Name 'win11-dev'"),
        (f"hvsock://{uuid.UUID(int=5)}/5000", WARN, "WSL's id from an earlier start"),
    ],
)
def test_the_vm_of_an_address(address: str, status: str, fragment: str) -> None:
    check = windows(address)["address_vm"]
    assert check.status == status
    assert fragment in check.summary + check.fix


def test_wsl_not_running() -> None:
    check = windows("hvsock://wsl/5000", wsl=False)["address_vm"]
    assert check.status == FAIL
    assert "start WSL" in check.fix


def test_windows_checks_when_nothing_can_be_read() -> None:
    machine = Machine(runner=FakeRunner(), registry=None, loopback_test=lambda: None)
    report = diagnose("hvsock://name:x/5000", machine=machine, platform="win32")
    assert_well_formed(report)
    assert report["registry"].status == WARN  # no registry on this Linux machine
    assert report["vms"].status == WARN
    assert "powershell.exe was not found" in report["vms"].fix
    assert report["service_registered"].status == WARN
    assert report["address_vm"].status == WARN


def test_vsock_addresses_on_windows_are_not_applicable() -> None:
    report = windows("vsock://host:5000")
    for name in WINDOWS_ADDRESS_CHECKS:
        assert report[name].status == NOT_APPLICABLE
        assert "hvsock://<VM id>/P" in report[name].summary
    for name in LINUX_ADDRESS_CHECKS:
        assert report[name].summary == "Linux only"


def test_hvsock_addresses_on_linux_point_to_the_guest_view(tmp_path: Path) -> None:
    report = diagnose("hvsock://wsl/5000", platform="linux", machine=tree(tmp_path))
    for name in LINUX_ADDRESS_CHECKS:
        assert report[name].status == NOT_APPLICABLE
        assert "vsock://host:5000" in report[name].summary


def test_the_real_self_test_is_windows_only() -> None:
    # with no fake and no AF_HYPERV, the self-test is not applicable, not a failure
    report = diagnose(
        machine=Machine(runner=FakeRunner(), registry=MemoryRegistry()), platform="win32"
    )
    assert report["hyperv_loopback"].status == NOT_APPLICABLE


def test_a_failing_self_test_without_a_windows_error_keeps_its_message() -> None:
    check = windows(loopback=HvsockError("the loopback echo came back wrong or short"))[
        "hyperv_loopback"
    ]
    assert check.status == FAIL
    assert check.fix == "the loopback echo came back wrong or short"


def test_vms_that_cannot_be_listed_say_why() -> None:
    runner = FakeRunner(
        {
            ps(GET_VM_SCRIPT): failed(fixture("get-vm-access-denied.stderr.txt")),
            ps(CIM_SCRIPT): failed(fixture("cim-invalid-namespace.stderr.txt")),
            ps(WSLHOST_SCRIPT): ok("[]"),
        }
    )
    machine = Machine(runner=runner, registry=MemoryRegistry(), loopback_test=lambda: None)
    report = diagnose("hvsock://name:MyVM/5000", machine=machine, platform="win32")
    assert report["vms"].status == WARN
    assert report["vms"].summary == "VMs: none found"
    assert "Hyper-V Administrators" in report["vms"].fix
    assert "Hyper-V is not enabled" in report["vms"].fix
    assert "WSL is not running" not in report["vms"].fix  # that is no problem
    assert report["address_vm"].status == FAIL
    assert "could not look up VM 'MyVM'" in report["address_vm"].fix


# -- no real socket; and the doctor changes nothing it reports (issue 19) -------------------


@needs_af_vsock
def test_the_fake_machine_makes_every_socket_and_closes_it(tmp_path: Path) -> None:
    vsock = FakeVsock(busy=(6000,))
    machine = tree(tmp_path, modules=("vmw_vsock_virtio_transport",), vsock=vsock)
    free = diagnose("vsock://any:5000", machine=machine)
    assert free["vsock_socket"].status == OK
    assert free["address_bind"].status == OK
    assert vsock.bound == [(socket.VMADDR_CID_ANY, 5000)]
    busy = diagnose("vsock://any:6000", machine=machine)
    assert busy["address_bind"].status == WARN
    assert "already in use" in busy["address_bind"].fix
    assert vsock.made == 4  # one socket check and one bind per report
    assert vsock.open == 0


@needs_af_vsock
def test_a_kernel_without_af_vsock_is_explained_for_an_address(tmp_path: Path) -> None:
    # /proc/net/protocols unreadable: the socket is tried, and the kernel says EAFNOSUPPORT
    machine = tree(tmp_path, registered=None, vsock=FakeVsock(error=errno.EAFNOSUPPORT))
    report = diagnose("vsock://any:5000", machine=machine)  # no "[Errno 97]" escapes
    assert_well_formed(report)
    assert report["vsock_socket"].status == FAIL
    assert "modprobe vmw_vsock_virtio_transport" in report["vsock_socket"].fix
    assert report["address_bind"].status == NOT_APPLICABLE
    assert "see vsock_socket" in report["address_bind"].summary
    out = io.StringIO()
    print_diagnosis(report, out)
    assert "Errno" not in out.getvalue()
    assert "fix: the kernel has no vsock transport loaded" in out.getvalue()


@needs_af_vsock
def test_no_socket_is_made_while_af_vsock_is_not_in_the_kernel(tmp_path: Path) -> None:
    vsock = FakeVsock()
    machine = tree(tmp_path, registered=False, vsock=vsock)
    for address in (None, "vsock://any:5000", "vsock://host:5000"):
        report = diagnose(address, machine=machine)
        assert_well_formed(report)
        assert report["vsock_socket"].status == FAIL
        assert "not tried" in report["vsock_socket"].summary
        assert "modprobe vmw_vsock_virtio_transport" in report["vsock_socket"].fix
        assert report["vsock_transports"].status == FAIL
    assert report["address_bind"].status == NOT_APPLICABLE
    assert vsock.made == 0


class AutoloadingVsock(FakeVsock):
    """socket(AF_VSOCK) on a kernel without the family: the kernel asks modprobe for
    net-pf-40, whose first pick is VMware's transport, and the family appears."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __call__(self) -> object:  # type: ignore[override]
        for module in ("vsock", "vmw_vsock_vmci_transport"):
            (self.root / "sys" / "module" / module).mkdir(parents=True, exist_ok=True)
        (self.root / "proc" / "net" / "protocols").write_text(
            "AF_VSOCK  1240  0  -1  NI  0  yes  vsock\n"
        )
        return super().__call__()


@needs_af_vsock
def test_the_doctor_reports_the_same_twice_on_a_kernel_without_vsock(tmp_path: Path) -> None:
    vsock = AutoloadingVsock(tmp_path)
    machine = tree(tmp_path, registered=False, vsock=vsock)
    first, second = (diagnose("vsock://any:5000", machine=machine) for _ in range(2))
    assert first.as_dict() == second.as_dict()
    assert "vmw_vsock_vmci_transport" not in str(second.as_dict())
    assert not (tmp_path / "sys" / "module" / "vmw_vsock_vmci_transport").exists()
