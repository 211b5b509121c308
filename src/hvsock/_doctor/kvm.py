"""The doctor's KVM host checks: ``vhost_vsock``, ``/dev/vhost-vsock`` and who may open
it, the VMs this host runs with their CIDs or hybrid sockets (:mod:`hvsock._kvm`),
and, for ``vsock://name:<VM>:<port>`` / ``hybrid://name:<VM>:<port>``, the VM the
name resolves to. They look only: list modules, stat the device, read ``/proc``, run
``virsh -r`` and ask the VMMs' API sockets."""

from __future__ import annotations

import os
import stat

from .._core.addresses import Address, NamedHybridAddress, NamedVsockAddress
from .._errors import HvsockError
from .._kvm.vms import HostDiscovery, discover_host_vms, resolve_host_address
from .model import INFO, NOT_APPLICABLE, OK, WARN, Check, Machine

#: How many VMs the host_vms check names before "and N more".
SHOWN_VMS = 12


def kvm_host_checks(m: Machine) -> list[Check]:
    """vhost_vsock, /dev/vhost-vsock, and the VMs found (see the module notes)."""
    loaded = os.path.isdir(m.path("sys", "module", "vhost_vsock"))
    device = m.path("dev", "vhost-vsock")
    found = discover_host_vms(m.path("proc"))
    vhost_vms = [vm for vm in found.vms if vm.vsock is not None and vm.uds_path is None]
    if loaded:
        module = Check(
            "vhost_vsock",
            OK,
            "vhost_vsock is loaded: QEMU VMs here can have "
            "vhost-vsock devices (vsock://<CID>:<port> reaches them)",
        )
    elif os.path.exists(device):
        module = Check(
            "vhost_vsock",
            OK,
            "/dev/vhost-vsock exists (vhost_vsock is built in or loads on first open)",
        )
    elif any(vm.running for vm in vhost_vms):
        module = Check(
            "vhost_vsock",
            WARN,
            "VMs with vhost-vsock devices run, yet vhost_vsock is not loaded",
            "`sudo modprobe vhost_vsock`",
        )
    else:
        module = Check(
            "vhost_vsock",
            INFO,
            "vhost_vsock is not loaded: this is not a "
            "vhost-vsock host (only QEMU / libvirt VMs with vsock need it)",
            "to run such VMs here: `sudo modprobe vhost_vsock`",
        )
    return [module, _device_check(device, loaded), _vms_check(found)]


def _device_check(path: str, loaded: bool) -> Check:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if loaded:
            return Check(
                "dev_vhost_vsock",
                WARN,
                "vhost_vsock is loaded but /dev/vhost-vsock does not exist",
                "udev did not make the node: `sudo udevadm trigger`, or reload the module",
            )
        return Check(
            "dev_vhost_vsock", NOT_APPLICABLE, "no /dev/vhost-vsock (vhost_vsock is not loaded)"
        )
    except OSError as exc:
        return Check("dev_vhost_vsock", WARN, f"cannot look at /dev/vhost-vsock: {exc.strerror}")
    mode = stat.filemode(st.st_mode)
    if not stat.S_ISCHR(st.st_mode):
        return Check(
            "dev_vhost_vsock",
            WARN,
            f"/dev/vhost-vsock is not a character device ({mode})",
            "reload vhost_vsock (`sudo modprobe -r vhost_vsock; sudo modprobe vhost_vsock`)",
        )
    owner, group = _name(st.st_uid, user=True), _name(st.st_gid, user=False)
    rw = stat.S_IRUSR | stat.S_IWUSR
    who = [owner] if st.st_mode & rw == rw else []
    if st.st_mode & (rw >> 3) == rw >> 3:
        who.append(f"group {group}")
    if st.st_mode & (rw >> 6) == rw >> 6:
        who = ["everyone"]
    may = ", ".join(who) or "root only"
    summary = f"{mode} {owner}:{group}; may be opened (read-write) by: {may}"
    if os.access(path, os.R_OK | os.W_OK):
        return Check("dev_vhost_vsock", OK, f"{summary}; this user can open it")
    return Check(
        "dev_vhost_vsock",
        WARN,
        f"{summary}; this user cannot open it",
        f"QEMU run by this user needs it: add the user to group {group} "
        f"(`sudo usermod -aG {group} $USER`, then log in again); libvirt's system "
        "QEMU opens it itself",
    )


def _name(number: int, *, user: bool) -> str:
    try:
        if user:
            import pwd

            return pwd.getpwuid(number).pw_name
        import grp

        return grp.getgrgid(number).gr_name
    except (ImportError, KeyError):
        return str(number)


def _vms_check(found: HostDiscovery) -> Check:
    if not found.vms:
        return Check("host_vms", INFO, f"no VMs found ({found.why_empty()})")
    shown = [
        f"{vm.name if vm.name is not None else '(no name)'}: {vm.endpoint} "
        f"({vm.hypervisor}, {vm.state}, from {vm.source})"
        for vm in found.vms[:SHOWN_VMS]
    ]
    more = len(found.vms) - len(shown)
    summary = "; ".join(shown) + (f"; and {more} more (`hvsock vms`)" if more > 0 else "")
    cids = [vm.cid for vm in found.vms if vm.running and vm.cid is not None and vm.uds_path is None]
    twice = sorted({cid for cid in cids if cids.count(cid) > 1})
    if twice:
        return Check(
            "host_vms",
            WARN,
            summary,
            f"CID {', '.join(map(str, twice))} is given "
            "to more than one running VM: give each VM its own guest CID",
        )
    if found.problems:
        return Check(
            "host_vms",
            WARN,
            summary,
            "some entries could not be read: " + "; ".join(found.problems),
        )
    return Check("host_vms", OK, summary)


def named_address_check(addr: Address, m: Machine) -> tuple[Check, Address | None]:
    """The ``address_host_vm`` check, and *addr* with its VM name resolved (None when
    it could not be: the other address checks then have nothing to look at)."""
    if not isinstance(addr, (NamedVsockAddress, NamedHybridAddress)):
        return Check(
            "address_host_vm",
            NOT_APPLICABLE,
            "only for vsock://name:<VM>:<port> and hybrid://name:<VM>:<port>",
        ), addr
    try:
        resolved = resolve_host_address(addr, m.path("proc"))
    except HvsockError as exc:
        return Check(
            "address_host_vm", WARN, f"VM {addr.vm_name!r} could not be resolved here", str(exc)
        ), None
    return Check("address_host_vm", OK, f"VM {addr.vm_name!r} is {resolved}"), resolved
