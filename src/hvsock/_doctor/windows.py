"""The doctor's Windows checks: AF_HYPERV, the registry, the Hyper-V loopback self-test,
the VMs, and what an hvsock:// address needs here."""

from __future__ import annotations

import secrets
import sys
import threading

from .. import _endpoints
from .._core import ids
from .._core.addresses import Address, HyperVAddress, NamedVmAddress, VsockAddress
from .._errors import HvsockError
from .._transports.features import has_hyperv
from .._transports.recv import recv_into_exactly
from .._windows import registry as reg
from .._windows import vms as vmlib
from .model import (
    FAIL,
    INFO,
    NOT_APPLICABLE,
    OK,
    WARN,
    WINDOWS_ADDRESS_CHECKS,
    Check,
    Machine,
    explain,
)


def hyperv_loopback_selftest(timeout: float = 5.0) -> None:  # pragma: no cover - Windows
    """Listen and connect on HV_GUID_LOOPBACK with a random template id; echo once.

    Needs no registration and no VM. Raises :class:`HvsockError` on failure.
    """
    address = HyperVAddress.for_port(ids.LOOPBACK, 0x10000000 + secrets.randbelow(0x6FFFFFFF))
    payload = b"hvsock doctor " + secrets.token_hex(8).encode()
    echo = bytearray(len(payload))
    with _endpoints.listen(address, backlog=1) as listener:
        listener.settimeout(timeout)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(timeout)
                conn.sendall(conn.recv(len(payload)))

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        with _endpoints.connect(address, timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(payload)
            got = recv_into_exactly(sock, echo)
        server.join(timeout)
    if echo[:got] != payload:
        raise HvsockError("the loopback echo came back wrong or short")


def windows_checks(addr: Address | None, m: Machine) -> list[Check]:
    python = ".".join(map(str, sys.version_info[:2]))
    checks = [
        Check("af_hyperv", OK, f"Python {python} has socket.AF_HYPERV")
        if has_hyperv()
        else Check(
            "af_hyperv",
            FAIL,
            f"Python {python} has no socket.AF_HYPERV",
            "AF_HYPERV needs CPython 3.12 or newer on Windows: install it from python.org "
            "(or `winget install Python.Python.3.12`)",
        ),
    ]
    entries: list[reg.ServiceEntry] | None = None
    try:
        entries = reg.registered_services(m.registry)
    except HvsockError as exc:
        checks.append(
            Check("registry", WARN, "the registered services could not be read", str(exc))
        )
    else:
        mine = sum(1 for e in entries if e.made_by_hvsock)
        checks.append(
            Check(
                "registry",
                OK,
                f"{len(entries)} registered services, {mine} "
                "made by hvsock (`hvsock services` lists them)",
            )
        )
    checks.append(_loopback_check(m))
    discovery: vmlib.VmDiscovery | None = None
    try:
        discovery = vmlib.discover_vms(m.runner)
    except HvsockError as exc:
        checks.append(Check("vms", WARN, "VMs could not be listed", str(exc)))
    else:
        names = ", ".join(f"{vm.name} ({vm.state})" for vm in discovery.vms) or "none found"
        problems = [p for p in discovery.problems if p != vmlib.WSL_NOT_RUNNING]
        checks.append(
            Check("vms", WARN if problems else INFO, f"VMs: {names}", "; ".join(problems))
        )
    if addr is not None:
        checks += _windows_address_checks(addr, entries, discovery)
    return checks


def _loopback_check(m: Machine) -> Check:
    test = m.loopback_test
    if test is None:
        if not has_hyperv():
            return Check("hyperv_loopback", NOT_APPLICABLE, "needs AF_HYPERV (see af_hyperv)")
        test = hyperv_loopback_selftest  # pragma: no cover - Windows only
    try:
        test()
    except HvsockError as exc:
        return Check(
            "hyperv_loopback", FAIL, f"the Hyper-V loopback self-test failed: {exc}", explain(exc)
        )
    return Check(
        "hyperv_loopback", OK, "a listener and a client on HV_GUID_LOOPBACK exchanged data"
    )


def _windows_address_checks(
    addr: Address, entries: list[reg.ServiceEntry] | None, discovery: vmlib.VmDiscovery | None
) -> list[Check]:
    if not isinstance(addr, (HyperVAddress, NamedVmAddress)):
        seen = (
            "the host side of vsock://host:P is hvsock://<VM id>/P"
            if isinstance(addr, VsockAddress)
            else "not a VM socket address"
        )
        return [
            Check(name, NOT_APPLICABLE, f"{addr.kind}:// on Windows: {seen}")
            for name in WINDOWS_ADDRESS_CHECKS
        ]
    return [_registered_check(addr, entries), _vm_check(addr, discovery)]


def _registered_check(
    addr: HyperVAddress | NamedVmAddress, entries: list[reg.ServiceEntry] | None
) -> Check:
    sid = addr.service_id
    if isinstance(addr, HyperVAddress) and addr.vm_id == ids.LOOPBACK:
        return Check("service_registered", NOT_APPLICABLE, "loopback needs no registration")
    if entries is None:
        return Check(
            "service_registered",
            WARN,
            "unknown: the registry could not be read",
            "see the registry check; `hvsock services` lists what is registered",
        )
    found = reg.find_service(entries, sid)
    if found is not None:
        return Check(
            "service_registered",
            OK,
            f"{reg.describe_service(sid)} is registered as {found.name!r} ({found.origin})",
        )
    how = f"--port {addr.port}" if addr.port is not None else f"--service-id {sid}"
    return Check(
        "service_registered",
        FAIL,
        f"{reg.describe_service(sid)} is not registered",
        "VMs cannot reach an unregistered service (their connects are refused); as "
        f"administrator: `hvsock register NAME {how}`",
    )


def _vm_check(addr: HyperVAddress | NamedVmAddress, discovery: vmlib.VmDiscovery | None) -> Check:
    if discovery is None:
        return Check(
            "address_vm",
            WARN,
            "unknown: VMs could not be listed",
            "see the vms check; `hvsock vms` lists the VMs",
        )
    vms = discovery.vms
    wsl = [vm for vm in vms if vm.is_wsl]
    if isinstance(addr, NamedVmAddress):
        try:
            if addr.vm_name is None:
                vm_id = vmlib.choose_wsl_vm([vm.vm_id for vm in wsl], discovery.problems)
                return Check("address_vm", OK, f"WSL's VM runs, id {vm_id}")
            vm = vmlib.choose_vm(vms, addr.vm_name, discovery.problems)
        except HvsockError as exc:
            return Check("address_vm", FAIL, f"{addr}: the VM cannot be used", str(exc))
        return Check("address_vm", OK, f"VM {vm.name!r} runs, id {vm.vm_id}")
    if addr.vm_id in (ids.WILDCARD, ids.CHILDREN):
        if wsl:
            return Check(
                "address_vm",
                WARN,
                f"{addr.vm_name}: any VM, but never WSL's",
                "a listener on wildcard or children never receives connections "
                f"from WSL 2; listen on hvsock://wsl/{_service_text(addr)} for WSL",
            )
        return Check("address_vm", OK, f"{addr.vm_name}: any VM")
    if addr.vm_name is not None:
        return Check("address_vm", OK, f"{addr.vm_name}: a well-known id")
    found = next((vm for vm in vms if vm.vm_id == addr.vm_id), None)
    if found is None:
        return Check(
            "address_vm",
            WARN,
            f"no VM with id {addr.vm_id} is listed",
            "it may be another user's VM, or WSL's id from an earlier start (it "
            "changes at every start: use hvsock://wsl/...)",
        )
    if not found.running:
        return Check(
            "address_vm",
            FAIL,
            f"VM {found.name!r} ({addr.vm_id}) is {found.state}",
            f"start it: Start-VM -Name '{found.name}'",
        )
    return Check("address_vm", OK, f"VM {found.name!r} runs")


def _service_text(addr: HyperVAddress) -> str:
    return str(addr.port) if addr.port is not None else str(addr.service_id)
