"""``hvsock doctor``: what works on this machine, what does not, and what to do.

:func:`diagnose` returns a :class:`Diagnosis` (it never prints). Each
:class:`Check` has a status: ``ok``, ``info``, ``warn``, ``fail``, or ``not
applicable`` for checks of the other platform. A failed or warned check says the
likely cause and the fix in plain words.

The checks only look: they list kernel modules, open ``/dev/vsock`` for the CID
ioctl, create and bind sockets. They never connect AF_VSOCK, since a connect
leaves a VM for its hypervisor. On Windows the Hyper-V self-test connects over
HV_GUID_LOOPBACK, which stays inside this partition.
"""

from __future__ import annotations

import errno as _errno
import os
import secrets
import socket
import stat
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ._builtin.kvp import checks as kvp_checks
from ._core import ids
from ._core.addresses import (
    Address,
    HyperVAddress,
    NamedVmAddress,
    VsockAddress,
    parse_address,
)
from ._errors import HvsockError, translate
from ._transports import api
from ._transports.features import (
    VSOCK_TRANSPORT_MODULES,
    describe_cid,
    has_hyperv,
    has_vsock,
    loaded_vsock_transports,
    local_cid,
)
from ._windows import registry as reg
from ._windows import vms as vmlib

__all__ = ["Check", "Diagnosis", "Machine", "diagnose"]

OK = "ok"
INFO = "info"
WARN = "warn"
FAIL = "fail"
NOT_APPLICABLE = "not applicable"
STATUSES = (OK, INFO, WARN, FAIL, NOT_APPLICABLE)

LINUX_CHECKS = ("af_vsock", "vsock_transports", "dev_vsock", "local_cid", "vsock_socket",
                "hyperv_guest", "wsl", *kvp_checks.CHECKS)
WINDOWS_CHECKS = ("af_hyperv", "registry", "hyperv_loopback", "vms")
LINUX_ADDRESS_CHECKS = ("address_cid", "address_port", "address_bind", "host_registration")
WINDOWS_ADDRESS_CHECKS = ("service_registered", "address_vm")

#: Windows socket errors people meet with Hyper-V sockets, in plain words.
WINDOWS_ERRORS = {
    10013: "WSAEACCES (10013), access denied: the VM belongs to another user, or its "
           "settings refuse this service. Run as the VM's owner or an administrator, and "
           "check that the service id is registered (`hvsock services`).",
    10050: "WSAENETDOWN (10050): the VM is starting, rebooting or stopped. Wait until it "
           "runs, then retry (`--retries 10` waits for it).",
    10060: "WSAETIMEDOUT (10060): nobody answered in time. Check that the VM runs, that the "
           "service listens in it and that its id is registered on the host; or raise "
           "--timeout.",
    10061: "WSAECONNREFUSED (10061): the VM runs but nothing listens on that service id; "
           "start the service there first.",
}


@dataclass(frozen=True)
class Check:
    """One finding: *name* (stable, for scripts), *status*, what was found, and the fix."""

    name: str
    status: str
    summary: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "summary": self.summary,
                "fix": self.fix}


@dataclass(frozen=True)
class Diagnosis:
    """Every check the doctor made; ``ok`` is False when any failed."""

    platform: str
    python: str
    address: str | None
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(check.status != FAIL for check in self.checks)

    def __getitem__(self, name: str) -> Check:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def as_dict(self) -> dict[str, object]:
        return {"platform": self.platform, "python": self.python, "address": self.address,
                "ok": self.ok, "checks": [check.as_dict() for check in self.checks]}


@dataclass(frozen=True)
class Machine:
    """Where the doctor looks. The defaults are this machine; tests pass a directory
    tree standing in for ``/`` and fakes for the programs, registry and self-test."""

    #: Prefix for /sys, /proc and /dev.
    root: str = "/"
    runner: vmlib.Runner | None = None
    registry: reg.RegistryBackend | None = None
    #: The Hyper-V loopback self-test; raises HvsockError when it fails.
    loopback_test: Callable[[], None] | None = None
    #: The effective user id (privileged ports); None: this process's.
    euid: int | None = None

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)


def diagnose(address: Address | str | None = None, *, machine: Machine | None = None,
             platform: str | None = None) -> Diagnosis:
    """Check this machine (and *address*, when given) for VM sockets.

    *platform* (``sys.platform`` by default) picks the Linux or the Windows checks;
    the other platform's are reported as not applicable. Raises
    :class:`AddressError` for a malformed *address*; everything else is a check.
    """
    addr = parse_address(address) if address is not None else None
    machine = machine or Machine()
    platform = platform or sys.platform
    linux = platform.startswith("linux")
    windows = platform == "win32"
    checks: list[Check] = []
    if linux:
        checks += _linux_checks(addr, machine)
    else:
        checks += _not_here(LINUX_CHECKS, "Linux only")
    if windows:
        checks += _windows_checks(addr, machine)
    else:
        checks += _not_here(WINDOWS_CHECKS, "Windows host only")
    if addr is not None:
        if not linux:
            checks += _not_here(LINUX_ADDRESS_CHECKS, "Linux only")
        if not windows:
            checks += _not_here(WINDOWS_ADDRESS_CHECKS, "Windows host only")
    python = ".".join(map(str, sys.version_info[:3]))
    return Diagnosis(platform, python, None if addr is None else str(addr), tuple(checks))


def _not_here(names: tuple[str, ...], why: str) -> list[Check]:
    return [Check(name, NOT_APPLICABLE, why) for name in names]


def explain(exc: BaseException) -> str:
    """The fix for a socket error, in plain words (Windows error numbers included)."""
    for cause in (exc, exc.__cause__):
        winerror = getattr(cause, "winerror", None)
        if winerror in WINDOWS_ERRORS:
            return WINDOWS_ERRORS[winerror]
    return str(exc)


# -- Linux ---------------------------------------------------------------------------

def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(4096).strip()
    except OSError:
        return ""


def hyperv_evidence(machine: Machine) -> list[str]:
    """Why this Linux machine looks like a Hyper-V guest (empty: it does not)."""
    evidence = []
    if os.path.isdir(machine.path("sys", "bus", "vmbus")):
        evidence.append("/sys/bus/vmbus exists")
    vendor = _read(machine.path("sys", "class", "dmi", "id", "sys_vendor"))
    product = _read(machine.path("sys", "class", "dmi", "id", "product_name"))
    if vendor == "Microsoft Corporation" and product == "Virtual Machine":
        evidence.append("DMI: Microsoft Corporation Virtual Machine")
    return evidence


def _linux_checks(addr: Address | None, m: Machine) -> list[Check]:
    transports = loaded_vsock_transports(m.path("sys", "module"))
    evidence = hyperv_evidence(m)
    hv_sock = "hv_sock" in transports
    socket_check = _socket_check()
    cid_check, cid = _cid_check(m)
    checks = [
        Check("af_vsock", OK, "Python has socket.AF_VSOCK") if has_vsock() else
        Check("af_vsock", FAIL, f"this Python ({sys.version.split()[0]}) has no "
              "socket.AF_VSOCK", "use a CPython built for Linux; VM sockets need it"),
        _transports_check(transports, evidence, socket_check.status == OK),
        _dev_check(m),
        cid_check,
        socket_check,
        _hyperv_check(evidence, hv_sock, transports),
        _wsl_check(m, evidence),
        # KVP (hvsock.kvp): the daemon, the pool files, stale pools.
        *(Check(*f) for f in kvp_checks.kvp_findings(root=m.root,
                                                     hyperv_guest=bool(evidence))),
    ]
    if addr is not None:
        checks += _linux_address_checks(addr, m, hyperv=bool(evidence) or hv_sock,
                                        loopback="vsock_loopback" in transports, cid=cid)
    return checks


def _transports_check(transports: list[str], evidence: list[str],
                      sockets_work: bool) -> Check:
    if transports:
        return Check("vsock_transports", OK, "; ".join(
            f"{name}: {VSOCK_TRANSPORT_MODULES[name]}" for name in transports))
    if sockets_work:
        return Check("vsock_transports", WARN,
                     "no vsock transport module is listed in /sys/module, yet AF_VSOCK "
                     "sockets can be made", "the transport is probably built into the "
                     "kernel; nothing to do unless connects fail")
    load = ("`sudo modprobe hv_sock`" if evidence else
            "on a KVM/QEMU guest `sudo modprobe vmw_vsock_virtio_transport`, on Hyper-V "
            "`sudo modprobe hv_sock`, for local tests `sudo modprobe vsock_loopback`")
    return Check("vsock_transports", FAIL, "no vsock transport is loaded",
                 f"load one: {load}")


def _dev_check(m: Machine) -> Check:
    path = m.path("dev", "vsock")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Check("dev_vsock", FAIL, "/dev/vsock does not exist",
                     "it appears when a vsock transport loads (see vsock_transports)")
    except OSError as exc:
        return Check("dev_vsock", WARN, f"cannot look at /dev/vsock: {exc.strerror}")
    mode = stat.filemode(st.st_mode)
    owner = f"{_user_name(st.st_uid)}:{_group_name(st.st_gid)}"
    if not stat.S_ISCHR(st.st_mode):
        return Check("dev_vsock", WARN, f"/dev/vsock is not a character device ({mode})",
                     "something replaced the device node; reboot or reload the vsock module")
    if os.access(path, os.R_OK):
        return Check("dev_vsock", OK, f"{mode} {owner}; this user can open it")
    return Check("dev_vsock", WARN, f"{mode} {owner}; this user cannot open it",
                 "only the local-CID lookup (`hvsock cid`) needs it, sockets work without "
                 "it; to let everyone read it: `sudo chmod a+r /dev/vsock`, or a udev rule "
                 "KERNEL==\"vsock\", MODE=\"0644\"")


def _user_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        import grp

        return grp.getgrgid(gid).gr_name
    except (ImportError, KeyError):
        return str(gid)


def _cid_check(m: Machine) -> tuple[Check, int | None]:
    device = m.path("dev", "vsock")
    if not has_vsock():
        return Check("local_cid", NOT_APPLICABLE, "no AF_VSOCK in this Python"), None
    if not os.path.exists(device):
        return Check("local_cid", NOT_APPLICABLE, "no /dev/vsock to ask"), None
    try:
        cid = local_cid(device)
    except HvsockError as exc:
        return Check("local_cid", WARN, "the local CID could not be read", str(exc)), None
    return Check("local_cid", OK, f"CID {cid}: {describe_cid(cid)}"), cid


def _socket_check() -> Check:
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        return Check("vsock_socket", NOT_APPLICABLE, "no AF_VSOCK in this Python")
    try:
        socket.socket(family, socket.SOCK_STREAM).close()
    except OSError as exc:
        error = translate(exc, op="socket", family="vsock", where="an AF_VSOCK socket")
        return Check("vsock_socket", FAIL, "an AF_VSOCK stream socket cannot be created",
                     str(error))
    return Check("vsock_socket", OK, "an AF_VSOCK stream socket can be created")


def _hyperv_check(evidence: list[str], hv_sock: bool, transports: list[str]) -> Check:
    if evidence and hv_sock:
        return Check("hyperv_guest", OK, "a Hyper-V guest (" + "; ".join(evidence) + ") with "
                     "hv_sock loaded: the host is vsock://host:<port>")
    if evidence:
        return Check("hyperv_guest", FAIL, "a Hyper-V guest (" + "; ".join(evidence) + ") "
                     "without hv_sock", "`sudo modprobe hv_sock`; to load it at every boot: "
                     "`echo hv_sock | sudo tee /etc/modules-load.d/hv_sock.conf`")
    if hv_sock:
        return Check("hyperv_guest", WARN, "hv_sock is loaded but no VMBus was found",
                     "hv_sock only works in a Hyper-V guest; this may be a container "
                     "without /sys/bus, or the module loaded for nothing")
    kind = ("a KVM/QEMU-style guest (virtio vsock)"
            if "vmw_vsock_virtio_transport" in transports else "no VMBus, no Hyper-V DMI")
    return Check("hyperv_guest", INFO, f"not a Hyper-V guest: {kind}")


def is_wsl(m: Machine) -> bool:
    release = _read(m.path("proc", "sys", "kernel", "osrelease")).lower()
    return "microsoft" in release or "wsl" in release


def _wsl_check(m: Machine, evidence: list[str]) -> Check:
    if not is_wsl(m):
        return Check("wsl", NOT_APPLICABLE, "not WSL")
    if not evidence:
        return Check("wsl", INFO, "WSL 1: no VM, so no VM sockets",
                     "convert the distribution: `wsl --set-version <distro> 2` on Windows")
    runner = m.runner or vmlib.run_process
    try:
        result = runner(("wslinfo", "--vm-id"), vmlib.RUN_TIMEOUT)
    except OSError as exc:
        return Check("wsl", WARN, f"WSL 2, but `wslinfo --vm-id` could not run ({exc})",
                     "it needs WSL 2.0 or newer: on Windows, `wsl --update`")
    try:
        if result.returncode != 0:
            raise HvsockError(vmlib.decode_output(result.stderr).strip() or "no output")
        vm_id = vmlib.parse_wslinfo(result.stdout)
    except HvsockError as exc:
        return Check("wsl", WARN, f"WSL 2, but `wslinfo --vm-id` gave no VM id: {exc}",
                     "it needs WSL 2.0 or newer: on Windows, `wsl --update`")
    return Check("wsl", INFO, f"WSL 2; this VM's id is {vm_id} (it changes at every start)",
                 f"on the Windows host, listen on hvsock://wsl/<port> (or hvsock://{vm_id}/"
                 "<port>); a listener on wildcard never receives WSL's connections")


def _linux_address_checks(addr: Address, m: Machine, *, hyperv: bool, loopback: bool,
                          cid: int | None) -> list[Check]:
    if isinstance(addr, (HyperVAddress, NamedVmAddress)):
        port = addr.port
        seen = (f"from this machine the same service is vsock://host:{port}"
                if port is not None else
                "its service id is not of the VSOCK template form, so Linux guests "
                "cannot reach it")
        return [Check(name, NOT_APPLICABLE, f"hvsock:// addresses are the Windows host's; "
                      f"{seen}") for name in LINUX_ADDRESS_CHECKS]
    if not isinstance(addr, VsockAddress):
        return [Check(name, NOT_APPLICABLE, f"{addr.kind}:// is not a VM socket address")
                for name in LINUX_ADDRESS_CHECKS]
    # A listener binds CID any or this machine's own CID (or 1, with the loopback
    # transport); any other CID can only be connected to.
    listens = addr.cid == ids.CID_ANY or addr.cid == cid or (
        addr.cid == ids.CID_LOCAL and loopback)
    return [_cid_of_address(addr, hyperv, loopback, cid),
            _port_of_address(addr, hyperv, m, listens),
            _bind_check(addr, listens), _registration_hint(addr, hyperv)]


def _cid_of_address(addr: VsockAddress, hyperv: bool, loopback: bool,
                    cid: int | None) -> Check:
    if addr.cid == ids.CID_ANY:
        return Check("address_cid", OK, "CID any: a listener for every peer")
    if addr.cid == ids.CID_HOST:
        return Check("address_cid", OK, "CID 2: this VM's host")
    if addr.cid == ids.CID_LOCAL:
        if loopback:
            return Check("address_cid", OK, "CID 1: stays in this kernel (vsock_loopback)")
        return Check("address_cid", FAIL, "CID 1 without vsock_loopback: a connect would "
                     "leave this machine for its hypervisor", "`sudo modprobe vsock_loopback`")
    if hyperv:
        return Check("address_cid", FAIL, f"CID {addr.cid}: a Hyper-V guest reaches only its "
                     "host", "connect to vsock://host:<port>, listen on vsock://any:<port>")
    if addr.cid == ids.CID_HYPERVISOR:
        return Check("address_cid", WARN, "CID 0 is the hypervisor; few services listen there")
    if cid is not None and addr.cid == cid:
        return Check("address_cid", INFO, f"CID {addr.cid} is this machine's own")
    return Check("address_cid", INFO, f"CID {addr.cid}: another VM; reachable from its host "
                 "(vhost_vsock), not from a sibling VM")


def _port_of_address(addr: VsockAddress, hyperv: bool, m: Machine, listens: bool) -> Check:
    port = addr.port
    if port == ids.PORT_ANY:
        return Check("address_port", OK, "port any: the kernel picks one when listening")
    if not listens:
        return Check("address_port", OK, f"port {port}: any port can be connected to")
    if hyperv and port > ids.HV_SOCK_MAX_LISTEN_PORT:
        return Check("address_port", FAIL, f"port {port} is above 0x7FFFFFFF: hv_sock refuses "
                     "it for a listener", "listen on a port <= 2147483647")
    if port < ids.PRIVILEGED_PORTS_BELOW:
        euid = m.euid if m.euid is not None else os.geteuid()
        if euid == 0:
            return Check("address_port", OK, f"port {port} is privileged (below 1024); "
                         "allowed, running as root")
        return Check("address_port", WARN, f"port {port} is privileged (below 1024): "
                     "listening on it needs root", "use a port >= 1024, or give the program "
                     "CAP_NET_BIND_SERVICE")
    return Check("address_port", OK, f"port {port} is in range")


def _bind_check(addr: VsockAddress, listens: bool) -> Check:
    family = getattr(socket, "AF_VSOCK", None)
    if family is None or not listens or addr.port == ids.PORT_ANY:
        return Check("address_bind", NOT_APPLICABLE,
                     "tried only for a listening address with a port (vsock://any:<port>)")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind(addr.sockaddr)
    except OSError as exc:
        error = translate(exc, op="bind", family="vsock", where=f"port {addr.port}")
        status = WARN if exc.errno == _errno.EADDRINUSE else FAIL
        return Check("address_bind", status, f"cannot bind {addr}", str(error))
    finally:
        sock.close()
    return Check("address_bind", OK, f"{addr} can be bound: the port is free")


def _registration_hint(addr: VsockAddress, hyperv: bool) -> Check:
    if not hyperv or addr.port == ids.PORT_ANY:
        return Check("host_registration", NOT_APPLICABLE, "only for a Hyper-V guest's port")
    sid = ids.service_id_for_port(addr.port)
    return Check(
        "host_registration", INFO,
        f"the Windows host must have service id {sid} (port {addr.port}) registered",
        f"on the host, as administrator: `hvsock register NAME --port {addr.port}`; or "
        f"from here: `hvsock register NAME --port {addr.port} --export ps1 > "
        "register.ps1`, then run that on the host. Unregistered, the connect is refused.")


# -- Windows ---------------------------------------------------------------------------

def hyperv_loopback_selftest(timeout: float = 5.0) -> None:  # pragma: no cover - Windows
    """Listen and connect on HV_GUID_LOOPBACK with a random template id; echo once.

    Needs no registration and no VM. Raises :class:`HvsockError` on failure.
    """
    address = HyperVAddress.for_port(ids.LOOPBACK, 0x10000000 + secrets.randbelow(0x6FFFFFFF))
    payload = b"hvsock doctor " + secrets.token_hex(8).encode()
    received: list[bytes] = []
    with api.listen(address, backlog=1) as listener:
        listener.settimeout(timeout)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(timeout)
                conn.sendall(conn.recv(len(payload)))

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        with api.connect(address, timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(payload)
            while sum(map(len, received)) < len(payload):
                chunk = sock.recv(len(payload))
                if not chunk:
                    break
                received.append(chunk)
        server.join(timeout)
    if b"".join(received) != payload:
        raise HvsockError("the loopback echo came back wrong or short")


def _windows_checks(addr: Address | None, m: Machine) -> list[Check]:
    python = ".".join(map(str, sys.version_info[:2]))
    checks = [
        Check("af_hyperv", OK, f"Python {python} has socket.AF_HYPERV") if has_hyperv() else
        Check("af_hyperv", FAIL, f"Python {python} has no socket.AF_HYPERV",
              "AF_HYPERV needs CPython 3.12 or newer on Windows: install it from python.org "
              "(or `winget install Python.Python.3.12`)"),
    ]
    entries: list[reg.ServiceEntry] | None = None
    try:
        entries = reg.registered_services(m.registry)
    except HvsockError as exc:
        checks.append(Check("registry", WARN, "the registered services could not be read",
                            str(exc)))
    else:
        mine = sum(1 for e in entries if e.made_by_hvsock)
        checks.append(Check("registry", OK, f"{len(entries)} registered services, {mine} "
                            "made by hvsock (`hvsock services` lists them)"))
    checks.append(_loopback_check(m))
    discovery: vmlib.VmDiscovery | None = None
    try:
        discovery = vmlib.discover_vms(m.runner)
    except HvsockError as exc:
        checks.append(Check("vms", WARN, "VMs could not be listed", str(exc)))
    else:
        names = ", ".join(f"{vm.name} ({vm.state})" for vm in discovery.vms) or "none found"
        problems = [p for p in discovery.problems if p != vmlib.WSL_NOT_RUNNING]
        checks.append(Check("vms", WARN if problems else INFO, f"VMs: {names}",
                            "; ".join(problems)))
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
        return Check("hyperv_loopback", FAIL, f"the Hyper-V loopback self-test failed: {exc}",
                     explain(exc))
    return Check("hyperv_loopback", OK, "a listener and a client on HV_GUID_LOOPBACK "
                 "exchanged data")


def _windows_address_checks(addr: Address, entries: list[reg.ServiceEntry] | None,
                            discovery: vmlib.VmDiscovery | None) -> list[Check]:
    if not isinstance(addr, (HyperVAddress, NamedVmAddress)):
        seen = ("the host side of vsock://host:P is hvsock://<VM id>/P"
                if isinstance(addr, VsockAddress) else "not a VM socket address")
        return [Check(name, NOT_APPLICABLE, f"{addr.kind}:// on Windows: {seen}")
                for name in WINDOWS_ADDRESS_CHECKS]
    return [_registered_check(addr, entries), _vm_check(addr, discovery)]


def _registered_check(addr: HyperVAddress | NamedVmAddress,
                      entries: list[reg.ServiceEntry] | None) -> Check:
    sid = addr.service_id
    if isinstance(addr, HyperVAddress) and addr.vm_id == ids.LOOPBACK:
        return Check("service_registered", NOT_APPLICABLE, "loopback needs no registration")
    if entries is None:
        return Check("service_registered", WARN, "unknown: the registry could not be read",
                     "see the registry check; `hvsock services` lists what is registered")
    found = reg.find_service(entries, sid)
    if found is not None:
        return Check("service_registered", OK, f"{reg.describe_service(sid)} is registered "
                     f"as {found.name!r} ({found.origin})")
    how = f"--port {addr.port}" if addr.port is not None else f"--service-id {sid}"
    return Check("service_registered", FAIL, f"{reg.describe_service(sid)} is not registered",
                 "VMs cannot reach an unregistered service (their connects are refused); as "
                 f"administrator: `hvsock register NAME {how}`")


def _vm_check(addr: HyperVAddress | NamedVmAddress,
              discovery: vmlib.VmDiscovery | None) -> Check:
    if discovery is None:
        return Check("address_vm", WARN, "unknown: VMs could not be listed",
                     "see the vms check; `hvsock vms` lists the VMs")
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
            return Check("address_vm", WARN, f"{addr.vm_name}: any VM, but never WSL's",
                         "a listener on wildcard or children never receives connections "
                         f"from WSL 2; listen on hvsock://wsl/{_service_text(addr)} for WSL")
        return Check("address_vm", OK, f"{addr.vm_name}: any VM")
    if addr.vm_name is not None:
        return Check("address_vm", OK, f"{addr.vm_name}: a well-known id")
    found = next((vm for vm in vms if vm.vm_id == addr.vm_id), None)
    if found is None:
        return Check("address_vm", WARN, f"no VM with id {addr.vm_id} is listed",
                     "it may be another user's VM, or WSL's id from an earlier start (it "
                     "changes at every start: use hvsock://wsl/...)")
    if not found.running:
        return Check("address_vm", FAIL, f"VM {found.name!r} ({addr.vm_id}) is {found.state}",
                     f"start it: Start-VM -Name '{found.name}'")
    return Check("address_vm", OK, f"VM {found.name!r} runs")


def _service_text(addr: HyperVAddress) -> str:
    return str(addr.port) if addr.port is not None else str(addr.service_id)

