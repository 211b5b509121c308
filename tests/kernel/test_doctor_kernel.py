"""hvsock doctor on a real kernel (the test VM: vsock_loopback only): the checks that
make real AF_VSOCK sockets, what "the host" means without a guest-to-host transport,
and that the doctor's own socket() loads no module it would then report."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

import hvsock
from hvsock._doctor import Machine, diagnose
from hvsock._doctor.linux import vsock_registered
from hvsock._doctor.model import (
    FAIL,
    GUEST_TO_HOST_TRANSPORTS,
    INFO,
    LINUX_ADDRESS_CHECKS,
    LINUX_CHECKS,
    NOT_APPLICABLE,
    OK,
    WARN,
    WINDOWS_ADDRESS_CHECKS,
    WINDOWS_CHECKS,
)
from hvsock.sockets import local_cid

from ._support import Listening, recv_until_eof

SYS_MODULE = "/sys/module"


def loaded(module: str) -> bool:
    return os.path.isdir(os.path.join(SYS_MODULE, module))


def no_guest_to_host_transport() -> None:
    """A connect to CID 2 is safe only while no guest-to-host transport is loaded:
    then Linux keeps it in this kernel (vsock_loopback). Else it would leave the VM."""
    present = [m for m in GUEST_TO_HOST_TRANSPORTS if loaded(m)]
    assert not present, (
        f"{present} loaded in the test VM: a connect to CID 2 would leave "
        "it; this test must not run here"
    )


def test_this_machine() -> None:
    report = diagnose()
    got = {check.name: check.status for check in report.checks}
    assert set(got) == set(LINUX_CHECKS) | set(WINDOWS_CHECKS)
    assert got["af_vsock"] == OK
    assert got["vsock_socket"] == OK
    assert got["vsock_transports"] == OK
    assert "vsock_loopback" in report["vsock_transports"].summary
    if got["dev_vsock"] == OK:
        assert report["local_cid"].summary.startswith(f"CID {local_cid()}:")
    for name in WINDOWS_CHECKS:
        assert report[name].status == NOT_APPLICABLE
    assert vsock_registered(Machine()) is True  # /proc/net/protocols has AF_VSOCK


def test_a_listening_address_is_bound_for_real(vsock_listener: Listening) -> None:
    report = diagnose("vsock://any:any")
    assert report["address_bind"].status == NOT_APPLICABLE
    busy = diagnose(f"vsock://any:{vsock_listener.port}")
    assert busy["address_bind"].status == WARN
    assert "already in use" in busy["address_bind"].fix
    vsock_listener.sock.close()
    free = diagnose(f"vsock://any:{vsock_listener.port}")
    assert free["address_bind"].status == OK
    assert set(c.name for c in free.checks) >= set(LINUX_ADDRESS_CHECKS) | set(
        WINDOWS_ADDRESS_CHECKS
    )


def test_the_host_is_this_machine_with_only_vsock_loopback(vsock_listener: Listening) -> None:
    no_guest_to_host_transport()
    check = diagnose(f"vsock://host:{vsock_listener.port}")["address_cid"]
    assert check.status == INFO
    assert "routes CID 2 to vsock_loopback" in check.summary
    # What the doctor says, for real: a connect to CID 2 reaches this listener.
    with (
        hvsock.connect(f"vsock://2:{vsock_listener.port}", timeout=30) as client,
        vsock_listener.accept() as server,
    ):
        client.sendall(b"to the host, which is here")
        hvsock.close_write(client)
        assert recv_until_eof(server, 100) == b"to the host, which is here"


# -- the doctor's socket() must load nothing it then reports ----------------------------------

VSOCK_STACK = (
    "vsock_loopback",
    "vmw_vsock_vmci_transport",
    "hv_sock",
    "vmw_vsock_virtio_transport",
    "vsock_diag",
    "vsock",
)


def modprobe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["modprobe", *args], capture_output=True, text=True, timeout=60, check=False
    )


def unload(module: str) -> None:
    """``modprobe -r`` once the module is no longer in use: a closed vsock socket holds
    its transport until the kernel frees it (up to its close timeout, 8 s)."""
    refcnt = os.path.join(SYS_MODULE, module, "refcnt")
    deadline = time.monotonic() + 60
    for _ in range(600):
        with open(refcnt) as f:
            users = int(f.read())
        if users == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    result = modprobe("-r", module)
    assert result.returncode == 0, f"modprobe -r {module} ({users} users): {result.stderr}"


@pytest.fixture
def vsock_unloaded() -> Iterator[None]:
    """The kernel with no AF_VSOCK family (every vsock module out), restored after."""
    assert loaded("vsock_loopback")
    try:
        for module in VSOCK_STACK:
            if loaded(module):
                unload(module)
        assert not loaded("vsock"), "vsock is built in or still in use"
        # devtmpfs drops /dev/vsock on its own thread after the unload: a doctor run
        # before that sees the node (dev_vsock, local_cid), the next one does not.
        deadline = time.monotonic() + 120
        while os.path.exists("/dev/vsock") and time.monotonic() < deadline:
            time.sleep(0.05)
        yield
    finally:
        for module in VSOCK_STACK:
            if loaded(module) and module != "vsock_loopback":
                modprobe("-r", module)
        result = modprobe("vsock_loopback")
        assert result.returncode == 0, f"could not load vsock_loopback again: {result.stderr}"
        assert loaded("vsock_loopback")


@pytest.mark.timeout(900)  # two CLI starts under software emulation, module unloads
@pytest.mark.usefixtures("vsock_unloaded")
def test_the_doctor_loads_no_vsock_module(hvsock_cmd: list[str]) -> None:
    assert vsock_registered(Machine()) is False
    reports = []
    for _ in range(2):
        result = subprocess.run(
            [*hvsock_cmd, "doctor", "vsock://any:5000", "--json"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 1, result.stderr  # checks failed, and said so
        reports.append(json.loads(result.stdout))
        assert [m for m in VSOCK_STACK if loaded(m)] == [], "the doctor loaded a module"
    first, second = ({c["name"]: c for c in r["checks"]} for r in reports)
    # host_vms counts the processes it scanned, and kernel threads come and go between
    # runs: its status must match, its summary may not.
    for checks in (first, second):
        checks["host_vms"] = {k: v for k, v in checks["host_vms"].items() if k != "summary"}
    assert first == second, {
        n: (first.get(n), second.get(n)) for n in first | second if first.get(n) != second.get(n)
    }
    checks = {c["name"]: c for c in reports[0]["checks"]}
    assert checks["vsock_socket"]["status"] == FAIL
    assert "not tried" in checks["vsock_socket"]["summary"]
    assert checks["vsock_transports"]["status"] == FAIL
    assert checks["address_bind"]["status"] == NOT_APPLICABLE
    # What it keeps from happening: a plain socket() makes the kernel load a module.
    socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    assert loaded("vsock"), "socket(AF_VSOCK) loaded no module here: the test shows nothing"
