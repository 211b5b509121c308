"""The doctor's Linux checks: kernel modules, /dev/vsock, the CID, sockets, Hyper-V and
WSL evidence, and what an address needs here. They look, bind and (for hybrid
vsock, a Unix socket) connect; they never connect AF_VSOCK.

The doctor must not change what it reports: ``socket(AF_VSOCK)`` on a kernel where
the family is not registered makes the kernel load a module for it (``net-pf-40``;
modprobe's first pick is often VMware's ``vmw_vsock_vmci_transport``, in any VM). So
the module list is read before any socket is made, and no AF_VSOCK socket is made
while ``/proc/net/protocols`` lacks AF_VSOCK."""

from __future__ import annotations

import errno as _errno
import os
import socket
import stat
import sys

from .. import _endpoints
from .._builtin.kvp.checks import kvp_findings
from .._core import ids
from .._core.addresses import Address, HybridAddress, HyperVAddress, NamedVmAddress, VsockAddress
from .._errors import HvsockError, translate
from .._transports.features import (
    VSOCK_TRANSPORT_MODULES,
    describe_cid,
    has_vsock,
    loaded_vsock_transports,
    local_cid,
)
from .._windows import vms as vmlib
from .model import (
    FAIL,
    GUEST_TO_HOST_TRANSPORTS,
    INFO,
    LINUX_ADDRESS_CHECKS,
    NOT_APPLICABLE,
    OK,
    VMM_TIMEOUT,
    WARN,
    Check,
    Machine,
    VsockProbe,
)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(4096).strip()
    except OSError:
        return ""


def dmi(machine: Machine, field: str) -> str:
    """A DMI field of this machine (``sys_vendor``, ``product_name``); "" when there is
    none (Firecracker gives no DMI)."""
    return _read(machine.path("sys", "class", "dmi", "id", field))


def hyperv_evidence(machine: Machine) -> list[str]:
    """Why this Linux machine looks like a Hyper-V guest (empty: it does not)."""
    evidence = []
    if os.path.isdir(machine.path("sys", "bus", "vmbus")):
        evidence.append("/sys/bus/vmbus exists")
    vendor = dmi(machine, "sys_vendor")
    product = dmi(machine, "product_name")
    if vendor == "Microsoft Corporation" and product == "Virtual Machine":
        evidence.append("DMI: Microsoft Corporation Virtual Machine")
    return evidence


def vsock_registered(m: Machine) -> bool | None:
    """Is the AF_VSOCK family in this kernel now (its module loaded, or built in)? From
    ``/proc/net/protocols``, which has an AF_VSOCK line once af_vsock is up; None when
    that file cannot be read (a socket is then the only way to know)."""
    try:
        with open(m.path("proc", "net", "protocols"), encoding="ascii", errors="replace") as f:
            return any(line.split(None, 1)[:1] == ["AF_VSOCK"] for line in f)
    except OSError:
        return None


def linux_checks(addr: Address | None, m: Machine) -> list[Check]:
    # Both read before _socket_check may make a socket (see the module docstring).
    transports = loaded_vsock_transports(m.path("sys", "module"))
    registered = vsock_registered(m)
    evidence = hyperv_evidence(m)
    hv_sock = "hv_sock" in transports
    socket_check = _socket_check(m, registered, evidence)
    cid_check, cid = _cid_check(m)
    checks = [
        Check("af_vsock", OK, "Python has socket.AF_VSOCK")
        if has_vsock()
        else Check(
            "af_vsock",
            FAIL,
            f"this Python ({sys.version.split()[0]}) has no socket.AF_VSOCK",
            "use a CPython built for Linux; VM sockets need it",
        ),
        _transports_check(transports, evidence, socket_check.status == OK),
        _dev_check(m),
        cid_check,
        socket_check,
        _hyperv_check(evidence, hv_sock, transports),
        _wsl_check(m, evidence),
        # KVP (hvsock.kvp): the daemon, the pool files, stale pools.
        *(Check(*f) for f in kvp_findings(root=m.root, hyperv_guest=bool(evidence))),
    ]
    if addr is not None:
        checks += _linux_address_checks(
            addr,
            m,
            hyperv=bool(evidence) or hv_sock,
            transports=transports,
            cid=cid,
            sockets_work=socket_check.status == OK,
        )
    return checks


def _transports_check(transports: list[str], evidence: list[str], sockets_work: bool) -> Check:
    if transports:
        return Check(
            "vsock_transports",
            OK,
            "; ".join(f"{name}: {VSOCK_TRANSPORT_MODULES[name]}" for name in transports),
        )
    if sockets_work:
        return Check(
            "vsock_transports",
            WARN,
            "no vsock transport module is listed in /sys/module, yet AF_VSOCK sockets can be made",
            "the transport is probably built into the kernel; nothing to do unless connects fail",
        )
    return Check(
        "vsock_transports",
        FAIL,
        "no vsock transport is loaded",
        f"load one: {_load_advice(evidence)}",
    )


def _load_advice(evidence: list[str]) -> str:
    return (
        "`sudo modprobe hv_sock`"
        if evidence
        else "on a KVM/QEMU guest `sudo modprobe vmw_vsock_virtio_transport`, on Hyper-V "
        "`sudo modprobe hv_sock`, for local tests `sudo modprobe vsock_loopback`"
    )


def _new_vsock_socket(m: Machine) -> VsockProbe:
    if m.vsock_socket is not None:
        return m.vsock_socket()
    return socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)


def _dev_check(m: Machine) -> Check:
    path = m.path("dev", "vsock")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Check(
            "dev_vsock",
            FAIL,
            "/dev/vsock does not exist",
            "it appears when a vsock transport loads (see vsock_transports)",
        )
    except OSError as exc:
        return Check("dev_vsock", WARN, f"cannot look at /dev/vsock: {exc.strerror}")
    mode = stat.filemode(st.st_mode)
    owner = f"{_user_name(st.st_uid)}:{_group_name(st.st_gid)}"
    if not stat.S_ISCHR(st.st_mode):
        return Check(
            "dev_vsock",
            WARN,
            f"/dev/vsock is not a character device ({mode})",
            "something replaced the device node; reboot or reload the vsock module",
        )
    if os.access(path, os.R_OK):
        return Check("dev_vsock", OK, f"{mode} {owner}; this user can open it")
    return Check(
        "dev_vsock",
        WARN,
        f"{mode} {owner}; this user cannot open it",
        "only the local-CID lookup (`hvsock cid`) needs it, sockets work without "
        "it; to let everyone read it: `sudo chmod a+r /dev/vsock`, or a udev rule "
        'KERNEL=="vsock", MODE="0644"',
    )


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


def _socket_check(m: Machine, registered: bool | None, evidence: list[str]) -> Check:
    if not has_vsock():
        return Check("vsock_socket", NOT_APPLICABLE, "no AF_VSOCK in this Python")
    if registered is False:
        return Check(
            "vsock_socket",
            FAIL,
            "AF_VSOCK is not in this kernel now (no AF_VSOCK "
            "in /proc/net/protocols: no vsock module is loaded); not tried, as a "
            "socket would make the kernel load a module of its own choosing",
            f"load the transport for this machine: {_load_advice(evidence)}; if "
            "modprobe finds none, this kernel was built without vsock "
            "(CONFIG_VSOCKETS)",
        )
    try:
        _new_vsock_socket(m).close()
    except OSError as exc:
        error = translate(exc, op="socket", family="vsock", where="an AF_VSOCK socket")
        return Check(
            "vsock_socket", FAIL, "an AF_VSOCK stream socket cannot be created", str(error)
        )
    return Check("vsock_socket", OK, "an AF_VSOCK stream socket can be created")


def _hyperv_check(evidence: list[str], hv_sock: bool, transports: list[str]) -> Check:
    if evidence and hv_sock:
        return Check(
            "hyperv_guest",
            OK,
            "a Hyper-V guest (" + "; ".join(evidence) + ") with "
            "hv_sock loaded: the host is vsock://host:<port>",
        )
    if evidence:
        return Check(
            "hyperv_guest",
            FAIL,
            "a Hyper-V guest (" + "; ".join(evidence) + ") without hv_sock",
            "`sudo modprobe hv_sock`; to load it at every boot: "
            "`echo hv_sock | sudo tee /etc/modules-load.d/hv_sock.conf`",
        )
    if hv_sock:
        return Check(
            "hyperv_guest",
            WARN,
            "hv_sock is loaded but no VMBus was found",
            "hv_sock only works in a Hyper-V guest; this may be a container "
            "without /sys/bus, or the module loaded for nothing",
        )
    kind = (
        "a KVM/QEMU-style guest (virtio vsock)"
        if "vmw_vsock_virtio_transport" in transports
        else "no VMBus, no Hyper-V DMI"
    )
    return Check("hyperv_guest", INFO, f"not a Hyper-V guest: {kind}")


def is_wsl(m: Machine) -> bool:
    release = _read(m.path("proc", "sys", "kernel", "osrelease")).lower()
    return "microsoft" in release or "wsl" in release


def _wsl_check(m: Machine, evidence: list[str]) -> Check:
    if not is_wsl(m):
        return Check("wsl", NOT_APPLICABLE, "not WSL")
    if not evidence:
        return Check(
            "wsl",
            INFO,
            "WSL 1: no VM, so no VM sockets",
            "convert the distribution: `wsl --set-version <distro> 2` on Windows",
        )
    runner = m.runner or vmlib.run_process
    try:
        result = runner(("wslinfo", "--vm-id"), vmlib.RUN_TIMEOUT)
    except OSError as exc:
        return Check(
            "wsl",
            WARN,
            f"WSL 2, but `wslinfo --vm-id` could not run ({exc})",
            "it needs WSL 2.0 or newer: on Windows, `wsl --update`",
        )
    try:
        if result.returncode != 0:
            raise HvsockError(vmlib.decode_output(result.stderr).strip() or "no output")
        vm_id = vmlib.parse_wslinfo(result.stdout)
    except HvsockError as exc:
        return Check(
            "wsl",
            WARN,
            f"WSL 2, but `wslinfo --vm-id` gave no VM id: {exc}",
            "it needs WSL 2.0 or newer: on Windows, `wsl --update`",
        )
    return Check(
        "wsl",
        INFO,
        f"WSL 2; this VM's id is {vm_id} (it changes at every start)",
        f"on the Windows host, listen on hvsock://wsl/<port> (or hvsock://{vm_id}/"
        "<port>); a listener on wildcard never receives WSL's connections",
    )


def _linux_address_checks(
    addr: Address,
    m: Machine,
    *,
    hyperv: bool,
    transports: list[str],
    cid: int | None,
    sockets_work: bool,
) -> list[Check]:
    loopback = "vsock_loopback" in transports
    if isinstance(addr, (HyperVAddress, NamedVmAddress)):
        port = addr.port
        seen = (
            f"from this machine the same service is vsock://host:{port}"
            if port is not None
            else "its service id is not of the VSOCK template form, so Linux guests cannot reach it"
        )
        return [
            Check(name, NOT_APPLICABLE, f"hvsock:// addresses are the Windows host's; {seen}")
            for name in LINUX_ADDRESS_CHECKS
        ]
    if isinstance(addr, HybridAddress):
        return [
            *(
                Check(
                    name,
                    NOT_APPLICABLE,
                    "hybrid:// goes through the VMM's socket, not this kernel's vsock",
                )
                for name in LINUX_ADDRESS_CHECKS[:4]
            ),
            *_vmm_checks(addr),
        ]
    if not isinstance(addr, VsockAddress):
        return [
            Check(name, NOT_APPLICABLE, f"{addr.kind}:// is not a VM socket address")
            for name in LINUX_ADDRESS_CHECKS
        ]
    # A listener binds CID any or this machine's own CID (or 1, with the loopback
    # transport); any other CID can only be connected to.
    listens = addr.cid == ids.CID_ANY or addr.cid == cid or (addr.cid == ids.CID_LOCAL and loopback)
    not_hybrid = "only for hybrid:// addresses"
    return [
        _cid_of_address(addr, hyperv, transports, cid),
        _port_of_address(addr, hyperv, m, listens),
        _bind_check(addr, listens, m, sockets_work),
        _registration_hint(addr, hyperv),
        Check("vmm_socket", NOT_APPLICABLE, not_hybrid),
        Check("vmm_handshake", NOT_APPLICABLE, not_hybrid),
    ]


def _cid_of_address(
    addr: VsockAddress, hyperv: bool, transports: list[str], cid: int | None
) -> Check:
    loopback = "vsock_loopback" in transports
    if addr.cid == ids.CID_ANY:
        return Check("address_cid", OK, "CID any: a listener for every peer")
    if addr.cid == ids.CID_HOST:
        return _host_cid_check(transports, hyperv)
    if addr.cid == ids.CID_LOCAL:
        if loopback:
            return Check("address_cid", OK, "CID 1: stays in this kernel (vsock_loopback)")
        return Check(
            "address_cid",
            FAIL,
            "CID 1 without vsock_loopback: a connect would leave this machine for its hypervisor",
            "`sudo modprobe vsock_loopback`",
        )
    if hyperv:
        return Check(
            "address_cid",
            FAIL,
            f"CID {addr.cid}: a Hyper-V guest reaches only its host",
            "connect to vsock://host:<port>, listen on vsock://any:<port>",
        )
    if addr.cid == ids.CID_HYPERVISOR:
        return Check("address_cid", WARN, "CID 0 is the hypervisor; few services listen there")
    if cid is not None and addr.cid == cid:
        return Check("address_cid", INFO, f"CID {addr.cid} is this machine's own")
    return Check(
        "address_cid",
        INFO,
        f"CID {addr.cid}: another VM; reachable from its host (vhost_vsock), not from a sibling VM",
    )


def _host_cid_check(transports: list[str], hyperv: bool) -> Check:
    """CID 2 needs a guest-to-host transport to reach a hypervisor's host. Without one,
    Linux sends CID 2 to vsock_loopback when it is loaded (vsock_use_local_transport),
    so the "host" is this machine; with neither, a connect fails whatever the host runs."""
    g2h = [t for t in transports if t in GUEST_TO_HOST_TRANSPORTS]
    if g2h or not transports:
        # None listed at all: built into the kernel, or none (vsock_transports says).
        return Check("address_cid", OK, "CID 2: this VM's host")
    if hyperv:
        how = "this is a Hyper-V guest: `sudo modprobe hv_sock`"
    else:
        how = "; ".join(
            f"{where}: `sudo modprobe {module}`"
            for module, where in GUEST_TO_HOST_TRANSPORTS.items()
        )
    if "vsock_loopback" in transports:
        return Check(
            "address_cid",
            INFO,
            "CID 2 (the host): no guest-to-host transport is loaded, so Linux "
            "routes CID 2 to vsock_loopback: a connect reaches a listener on this "
            "machine (vsock://any:<port> here), not a hypervisor's host",
            f"to reach a real host, load the one for your hypervisor: {how}",
        )
    return Check(
        "address_cid",
        WARN,
        f"CID 2 (the host), but no guest-to-host transport is loaded (only "
        f"{', '.join(transports)}): a connect to the host will fail",
        f"load the one for your hypervisor: {how}",
    )


def _vmm_checks(addr: HybridAddress) -> list[Check]:
    """Hybrid vsock: the VMM's socket file exists, is a socket, accepts, and answers
    ``CONNECT <port>`` (one connection through it, closed at once; never AF_VSOCK)."""
    path = addr.uds_path
    skipped = Check(
        "vmm_handshake", NOT_APPLICABLE, "needs a VMM socket that accepts (see vmm_socket)"
    )
    fix_missing = (
        "start the VM, or give its vsock socket's path (Firecracker: the vsock "
        "device's uds_path; Cloud Hypervisor: --vsock socket=PATH)"
    )
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return [Check("vmm_socket", FAIL, f"{path} does not exist", fix_missing), skipped]
    except OSError as exc:
        return [
            Check(
                "vmm_socket",
                FAIL,
                f"cannot look at {path}: {exc.strerror}",
                "run as the VMM's user, or fix the directory's permissions",
            ),
            skipped,
        ]
    if not stat.S_ISSOCK(st.st_mode):
        return [
            Check(
                "vmm_socket",
                FAIL,
                f"{path} is not a socket ({stat.filemode(st.st_mode)})",
                fix_missing,
            ),
            skipped,
        ]
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(VMM_TIMEOUT)
        probe.connect(path)
    except ConnectionRefusedError:
        return [
            Check(
                "vmm_socket",
                FAIL,
                f"{path} is a socket but nobody accepts on it",
                "a stale file: the VMM exited; start the VM again",
            ),
            skipped,
        ]
    except PermissionError:
        return [
            Check(
                "vmm_socket",
                FAIL,
                f"{path}: permission denied",
                "run as the VMM's user, or give this user write access to the socket",
            ),
            skipped,
        ]
    except OSError as exc:
        return [
            Check(
                "vmm_socket", FAIL, f"cannot connect to {path}: {exc}", "check that the VMM runs"
            ),
            skipped,
        ]
    finally:
        probe.close()
    accepts = Check(
        "vmm_socket",
        OK,
        f"{path} is a socket and the VMM accepts on it; "
        "its file mode is all that guards the guest's services (hybrid vsock "
        "cannot prove a host user's privilege)",
    )
    if st.st_mode & 0o022:
        # Write permission is what connect() needs on a Unix socket.
        accepts = Check(
            "vmm_socket",
            WARN,
            f"{path} accepts, and other users may connect "
            f"to it ({stat.filemode(st.st_mode)}): each reaches every service of "
            "the guest, exec included, and the guest cannot tell them from root "
            "(hybrid vsock cannot prove privilege)",
            f'`chmod 600 {path}`, owned by the VMM\'s user; see docs/agent.md, "Security model"',
        )
    try:
        _endpoints.connect(addr, timeout=VMM_TIMEOUT).close()
    except HvsockError as exc:
        return [
            accepts,
            Check(
                "vmm_handshake",
                FAIL,
                f"CONNECT {addr.port} through {path} failed: {exc}",
                f"start the service in the guest (listening on vsock port {addr.port}), and "
                "check that this socket is the VMM's vsock socket",
            ),
        ]
    return [
        accepts,
        Check(
            "vmm_handshake",
            OK,
            f"the VMM answered CONNECT {addr.port}: a guest service listens on port {addr.port}",
        ),
    ]


def _port_of_address(addr: VsockAddress, hyperv: bool, m: Machine, listens: bool) -> Check:
    port = addr.port
    if port == ids.PORT_ANY:
        return Check("address_port", OK, "port any: the kernel picks one when listening")
    if not listens:
        return Check("address_port", OK, f"port {port}: any port can be connected to")
    if hyperv and port > ids.HV_SOCK_MAX_LISTEN_PORT:
        return Check(
            "address_port",
            FAIL,
            f"port {port} is above 0x7FFFFFFF: hv_sock refuses it for a listener",
            "listen on a port <= 2147483647",
        )
    if port < ids.PRIVILEGED_PORTS_BELOW:
        euid = m.euid if m.euid is not None else os.geteuid()
        if euid == 0:
            return Check(
                "address_port",
                OK,
                f"port {port} is privileged (below 1024); allowed, running as root",
            )
        return Check(
            "address_port",
            WARN,
            f"port {port} is privileged (below 1024): listening on it needs root",
            "use a port >= 1024, or give the program CAP_NET_BIND_SERVICE",
        )
    return Check("address_port", OK, f"port {port} is in range")


def _bind_check(addr: VsockAddress, listens: bool, m: Machine, sockets_work: bool) -> Check:
    if not has_vsock() or not listens or addr.port == ids.PORT_ANY:
        return Check(
            "address_bind",
            NOT_APPLICABLE,
            "tried only for a listening address with a port (vsock://any:<port>)",
        )
    if not sockets_work:
        return Check(
            "address_bind", NOT_APPLICABLE, "no AF_VSOCK socket can be made here (see vsock_socket)"
        )
    try:
        sock = _new_vsock_socket(m)
    except OSError as exc:  # it worked a moment ago: a module unloaded since
        error = translate(exc, op="socket", family="vsock", where="an AF_VSOCK socket")
        return Check("address_bind", FAIL, f"cannot make a socket to bind {addr}", str(error))
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
        "host_registration",
        INFO,
        f"the Windows host must have service id {sid} (port {addr.port}) registered",
        f"on the host, as administrator: `hvsock register NAME --port {addr.port}`; or "
        f"from here: `hvsock register NAME --port {addr.port} --export ps1 > "
        "register.ps1`, then run that on the host. Unregistered, the connect is refused.",
    )
