"""The VMs of this KVM host and their vsock endpoints; VM names in addresses resolved.

Sources, each optional (one that fails or finds nothing says why, and the others go
on):

- ``virsh`` (read-only: ``virsh -r list --all --name``, ``virsh -r dumpxml NAME``),
  else libvirt-python when it is installed: libvirt's domains and their ``<vsock>``;
- ``/proc/<pid>/cmdline`` of the processes this user may read: QEMU
  (``-device vhost-vsock-pci,guest-cid=N``, ``-name``), Firecracker (asked over its
  API socket, ``GET /`` and ``GET /vm/config``, else its ``--config-file`` read) and
  Cloud Hypervisor (``--vsock cid=N,socket=PATH``, and ``GET /api/v1/vm.info`` on its
  ``--api-socket``).

One VM seen by two sources (a libvirt domain is also a QEMU process) is listed once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from .._core import vmconfig
from .._core.addresses import HybridAddress, NamedHybridAddress, NamedVsockAddress, VsockAddress
from .._core.vmconfig import CLOUD_HYPERVISOR, FIRECRACKER, QEMU, VsockDevice
from .._errors import AddressError, HvsockError, UnreachableError
from .._validate import quote
from . import unix_http

__all__ = ["HostDiscovery", "HostVm", "SourceReport", "discover_host_vms", "resolve_host_address"]

SOURCE_VIRSH = "virsh"
SOURCE_LIBVIRT_PYTHON = "libvirt-python"
SOURCE_PROC = "/proc"
VIRSH = "virsh"
#: Seconds one virsh run may take (it talks to libvirtd over a socket).
VIRSH_TIMEOUT = 20.0
#: libvirt's system instance, where VMs that outlive a login live; LIBVIRT_DEFAULT_URI
#: (honoured by virsh and libvirt-python alike) picks another.
SYSTEM_URI = "qemu:///system"
#: A command line longer than this is skipped (QEMU's, with libvirt's options, is ~10 KB).
MAX_CMDLINE = 1 << 20
RUNNING = "running"
SHUT_OFF = "shut off"
#: States that mean the guest runs (libvirt's, Firecracker's, Cloud Hypervisor's).
RUNNING_STATES = {"running", "Running"}


@dataclass(frozen=True)
class HostVm:
    """One VM of this host: its name (None: the VMM has none), hypervisor, state, its
    vsock device (None: it has none) and where it was found."""

    name: str | None
    hypervisor: str
    state: str
    vsock: VsockDevice | None
    source: str
    pid: int | None = None

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES

    @property
    def cid(self) -> int | None:
        return self.vsock.cid if self.vsock is not None else None

    @property
    def uds_path(self) -> str | None:
        return self.vsock.uds_path if self.vsock is not None else None

    @property
    def endpoint(self) -> str:
        """The vsock endpoint in words: ``cid 3``, the hybrid socket's path, or why none."""
        if self.vsock is None:
            return "no vsock device"
        if self.vsock.uds_path is not None:
            return f"hybrid {self.vsock.uds_path}"
        if self.vsock.cid is None:
            return "cid auto (assigned at start)"
        return f"cid {self.vsock.cid}"

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "hypervisor": self.hypervisor,
            "state": self.state,
            "running": self.running,
            "cid": self.cid,
            "uds_path": self.uds_path,
            "vsock": self.vsock is not None,
            "auto_cid": self.vsock.auto if self.vsock is not None else False,
            "source": self.source,
            "pid": self.pid,
        }


@dataclass
class SourceReport:
    """What one source did: how many VMs it found, and why it found none or failed."""

    source: str
    found: int = 0
    #: Why it gave nothing at all (not installed, no permission...); None: it ran.
    unavailable: str | None = None
    #: What went wrong with single entries (a domain, a process) it skipped or kept half.
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.unavailable is not None:
            return f"{self.source}: {self.unavailable}"
        text = f"{self.source}: {self.found} VM{'s' if self.found != 1 else ''}"
        return text + "".join(f"; {problem}" for problem in self.problems)

    def as_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "found": self.found,
            "unavailable": self.unavailable,
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class HostDiscovery:
    """What :func:`discover_host_vms` found, and what each source did."""

    vms: tuple[HostVm, ...]
    sources: tuple[SourceReport, ...]

    @property
    def problems(self) -> list[str]:
        """Each failure, one per line: a source that could not run or an entry skipped."""
        found: list[str] = []
        for report in self.sources:
            found += [f"{report.source}: {problem}" for problem in report.problems]
        return found

    def why_empty(self) -> str:
        """Which sources were asked and why each found nothing."""
        return "; ".join(report.summary() for report in self.sources)

    def names(self) -> list[str]:
        return sorted({vm.name for vm in self.vms if vm.name is not None})


# -- libvirt -------------------------------------------------------------------------------


def _libvirt_uri() -> str | None:
    # virsh and libvirt-python read LIBVIRT_DEFAULT_URI themselves; without it a user
    # would get qemu:///session (which starts a session daemon): ask the system one.
    return None if os.environ.get("LIBVIRT_DEFAULT_URI") else SYSTEM_URI


def _run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, LC_ALL="C")  # libvirt's messages untranslated
    try:
        return subprocess.run(
            list(argv),
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise HvsockError(
            f"`{' '.join(argv[:5])}` did not finish within {timeout:g} s (is libvirtd answering?)"
        ) from None


def _virsh(args: Sequence[str], uri: str | None) -> bytes:
    argv = [VIRSH, "-r", *(["-c", uri] if uri else []), *args]
    done = _run(argv, VIRSH_TIMEOUT)
    if done.returncode != 0:
        said = " ".join(done.stderr.decode("utf-8", "replace").split())
        raise HvsockError(
            f"`virsh -r {' '.join(args[:2])}` failed: "
            f"{said[:300] or f'exit status {done.returncode}'}"
        )
    return done.stdout


def _domain_vm(domain: vmconfig.Domain, source: str) -> HostVm:
    return HostVm(
        domain.name, domain.hypervisor, RUNNING if domain.active else SHUT_OFF, domain.vsock, source
    )


def libvirt_vms_virsh(report: SourceReport) -> list[HostVm]:
    """libvirt's domains through ``virsh -r``; *report* says what happened."""
    uri = _libvirt_uri()
    try:
        names = _virsh(["list", "--all", "--name"], uri).decode("utf-8", "replace")
    except FileNotFoundError:
        report.unavailable = "not installed (no virsh on PATH)"
        return []
    except (OSError, HvsockError) as exc:
        report.unavailable = str(exc)
        return []
    vms = []
    for name in filter(None, (line.strip() for line in names.splitlines())):
        try:
            xml = _virsh(["dumpxml", "--", name], uri)
            vms.append(
                _domain_vm(
                    vmconfig.parse_domain_xml(xml, f"domain {quote(name)}'s XML"), SOURCE_VIRSH
                )
            )
        except (OSError, HvsockError) as exc:
            report.problems.append(f"domain {quote(name)} skipped: {exc}")
    report.found = len(vms)
    return vms


def libvirt_vms_python(report: SourceReport) -> list[HostVm]:
    """libvirt's domains through libvirt-python (read-only), when it is installed."""
    try:
        import libvirt  # type: ignore[import-not-found]
    except ImportError:
        report.unavailable = "not installed (no Python module libvirt)"
        return []
    # libvirt's default handler prints every error to stderr; errors are raised anyway.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.openReadOnly(_libvirt_uri())
    except libvirt.libvirtError as exc:
        report.unavailable = f"cannot connect to libvirt: {exc}"
        return []
    vms = []
    try:
        for dom in conn.listAllDomains(0):
            name = str(dom.name())
            try:
                xml = dom.XMLDesc(0)
                vms.append(
                    _domain_vm(
                        vmconfig.parse_domain_xml(xml, f"domain {quote(name)}'s XML"),
                        SOURCE_LIBVIRT_PYTHON,
                    )
                )
            except (libvirt.libvirtError, HvsockError) as exc:
                report.problems.append(f"domain {quote(name)} skipped: {exc}")
    except libvirt.libvirtError as exc:
        report.problems.append(f"listing the domains failed: {exc}")
    finally:
        conn.close()
    report.found = len(vms)
    return vms


# -- processes -----------------------------------------------------------------------------


def read_cmdline(proc: str, pid: str) -> list[str] | None:
    """*pid*'s arguments (None: it has none, a kernel thread). Raises OSError."""
    with open(os.path.join(proc, pid, "cmdline"), "rb") as f:
        data = f.read(MAX_CMDLINE + 1)
    if len(data) > MAX_CMDLINE:
        raise HvsockError(f"its command line is over {MAX_CMDLINE} bytes: skipped")
    if not data:
        return None
    # NUL-separated, NUL-terminated; a process that rewrote its title may have no NULs.
    return [os.fsdecode(arg) for arg in data.rstrip(b"\0").split(b"\0")]


def host_path(proc: str, pid: str, path: str) -> str:
    """*path* as the process *pid* meant it, as this process reaches it: relative to its
    working directory, inside its root (a jailer's chroot)."""
    # The links name directories without symlinks, so '..' after them normalizes safely.
    with contextlib.suppress(OSError):
        if not os.path.isabs(path):
            return os.path.normpath(os.path.join(os.readlink(os.path.join(proc, pid, "cwd")), path))
        root = os.readlink(os.path.join(proc, pid, "root"))
        if root != "/":
            return os.path.normpath(os.path.join(root, path.lstrip("/")))
    return path


def _firecracker_vm(
    command: vmconfig.VmmCommand, proc: str, pid: str, report: SourceReport, ask: bool
) -> HostVm:
    name, state = command.name, "unknown"
    where = os.path.join(proc, pid)
    failures = []
    if ask and command.api_socket:
        api = host_path(proc, pid, command.api_socket)
        try:
            found_id, state = vmconfig.parse_firecracker_instance(
                unix_http.get(api, "/"), f"{api} GET /"
            )
            name = found_id or name
            device = vmconfig.parse_firecracker_config(
                unix_http.get(api, "/vm/config"), f"{api} GET /vm/config"
            )
            return HostVm(
                name,
                FIRECRACKER,
                state,
                _hybrid_on_host(device, proc, pid),
                f"firecracker API {api}",
                int(pid),
            )
        except HvsockError as exc:
            failures.append(str(exc))
    if command.config_file:
        path = host_path(proc, pid, command.config_file)
        try:
            with open(path, "rb") as f:
                data = f.read(vmconfig.MAX_JSON + 1)
            device = vmconfig.parse_firecracker_config(data, path)
            report.problems += [f"pid {pid}: {failure}" for failure in failures]
            return HostVm(
                name,
                FIRECRACKER,
                state,
                _hybrid_on_host(device, proc, pid),
                f"firecracker --config-file {path}",
                int(pid),
            )
        except OSError as exc:
            failures.append(f"cannot read {path}: {exc.strerror or exc}")
        except HvsockError as exc:
            failures.append(str(exc))
    if not ask:
        return HostVm(name, FIRECRACKER, state, None, where, int(pid))
    if not failures:
        failures.append("neither an API socket nor a --config-file to ask")
    report.problems += [f"pid {pid} (firecracker {quote(name)}): {failure}" for failure in failures]
    return HostVm(name, FIRECRACKER, state, None, where, int(pid))


def _hybrid_on_host(device: VsockDevice | None, proc: str, pid: str) -> VsockDevice | None:
    if device is None or device.uds_path is None:
        return device
    return replace(device, uds_path=host_path(proc, pid, device.uds_path))


def _cloud_hypervisor_vm(
    command: vmconfig.VmmCommand, proc: str, pid: str, report: SourceReport, ask: bool
) -> HostVm:
    device, state, source = command.vsock, RUNNING, os.path.join(proc, pid)
    if ask and command.api_socket:
        api = host_path(proc, pid, command.api_socket)
        try:
            asked, state = vmconfig.parse_cloud_hypervisor_info(
                unix_http.get(api, "/api/v1/vm.info"), f"{api} vm.info"
            )
            device, source = asked or device, f"cloud-hypervisor API {api}"
        except HvsockError as exc:
            report.problems.append(f"pid {pid} (cloud-hypervisor): {exc}")
    return HostVm(
        command.name, CLOUD_HYPERVISOR, state, _hybrid_on_host(device, proc, pid), source, int(pid)
    )


def process_vms(report: SourceReport, proc: str = "/proc", *, ask: bool = True) -> list[HostVm]:
    """The VMMs among the processes under *proc* this user may read; with *ask*,
    Firecracker and Cloud Hypervisor are asked over their API sockets."""
    try:
        pids = sorted((p for p in os.listdir(proc) if p.isdigit()), key=int)
    except OSError as exc:
        report.unavailable = f"cannot list {proc}: {exc.strerror or exc}"
        return []
    vms: list[HostVm] = []
    hidden = 0
    for pid in pids:
        try:
            argv = read_cmdline(proc, pid)
            command = vmconfig.parse_vmm_argv(argv) if argv else None
        except PermissionError:
            hidden += 1
            continue
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ESRCH):  # gone since the listing
                report.problems.append(f"pid {pid}: {exc.strerror or exc}")
            continue
        except HvsockError as exc:
            report.problems.append(f"pid {pid}: {exc}")
            continue
        if command is None:
            continue
        if command.hypervisor == QEMU:
            vms.append(
                HostVm(
                    command.name, QEMU, RUNNING, command.vsock, os.path.join(proc, pid), int(pid)
                )
            )
        elif command.hypervisor == FIRECRACKER:
            vms.append(_firecracker_vm(command, proc, pid, report, ask))
        else:
            vms.append(_cloud_hypervisor_vm(command, proc, pid, report, ask))
    if hidden:
        report.problems.append(
            f"{hidden} processes' command lines could not be read "
            "(permission): run as root to see other users' VMs"
        )
    report.found = len(vms)
    if not vms and not report.problems:
        report.unavailable = (
            f"none of the {len(pids)} processes is QEMU, Firecracker or Cloud Hypervisor"
        )
    return vms


# -- all sources -----------------------------------------------------------------------------


def merge(vms: Iterable[HostVm]) -> list[HostVm]:
    """*vms* with each VM once: entries of one name and one vsock endpoint are one VM
    (a libvirt domain is also a QEMU process), their sources joined."""
    merged: list[HostVm] = []
    for vm in vms:
        for i, seen in enumerate(merged):
            if (
                seen.name == vm.name
                and seen.name is not None
                and seen.cid == vm.cid
                and seen.uds_path == vm.uds_path
                and seen.vsock is not None
                and vm.vsock is not None
                and seen.hypervisor == vm.hypervisor
            ):
                merged[i] = replace(
                    seen,
                    source=f"{seen.source}, {vm.source}",
                    pid=seen.pid if seen.pid is not None else vm.pid,
                    state=seen.state if seen.running else vm.state,
                )
                break
        else:
            merged.append(vm)
    return merged


def discover_host_vms(
    proc: str = "/proc", *, libvirt: bool = True, ask: bool = True
) -> HostDiscovery:
    """Every VM this user can see on this host, from every source (see the module
    notes). Never starts or changes anything; never raises for a source that fails.

    *proc* stands in for ``/proc`` (a container that sees the host's elsewhere, or a
    test's tree); *libvirt* False skips libvirt, *ask* False skips the VMMs' APIs.
    """
    reports: list[SourceReport] = []
    found: list[HostVm] = []
    if libvirt:
        virsh = SourceReport(SOURCE_VIRSH)
        reports.append(virsh)
        found += libvirt_vms_virsh(virsh)
        if virsh.unavailable is not None:
            python = SourceReport(SOURCE_LIBVIRT_PYTHON)
            reports.append(python)
            found += libvirt_vms_python(python)
    processes = SourceReport(SOURCE_PROC if proc == "/proc" else proc)
    reports.append(processes)
    found += process_vms(processes, proc, ask=ask)
    return HostDiscovery(tuple(merge(found)), tuple(reports))


# -- resolution ----------------------------------------------------------------------------


def _label(vm: HostVm) -> str:
    return f"{vm.name!r} ({vm.hypervisor}, {vm.endpoint}, from {vm.source})"


def choose_host_vm(
    found: HostDiscovery,
    address: NamedVsockAddress | NamedHybridAddress,
) -> HostVm:
    """The VM *address* names among *found*, able to take it.

    Raises :class:`AddressError` for an unknown name (listing the names found, or why
    nothing was found), an ambiguous one, or a VM whose vsock is of the other kind;
    :class:`UnreachableError` for a VM that has no vsock device or is not running.
    """
    name = address.vm_name
    matches = [vm for vm in found.vms if vm.name == name] or [
        vm for vm in found.vms if vm.name is not None and vm.name.casefold() == name.casefold()
    ]
    if not matches:
        seen = ", ".join(repr(n) for n in found.names())
        where = f"VMs found: {seen}" if seen else f"no VM was found at all: {found.why_empty()}"
        raise AddressError(
            f"no VM on this host is named {name!r} ({where}); `hvsock vms` lists them"
        )
    hybrid = isinstance(address, NamedHybridAddress)
    usable = [vm for vm in matches if vm.vsock is not None and (vm.uds_path is not None) == hybrid]
    if not usable:
        other = next((vm for vm in matches if vm.vsock is not None), None)
        if other is not None and hybrid:
            raise AddressError(
                f"VM {name!r} has a vhost-vsock device ({other.endpoint}), not "
                f"a hybrid socket: use vsock://name:{name}:{address.port}"
            )
        if other is not None:
            raise AddressError(
                f"VM {name!r} is a {other.hypervisor} VM whose vsock is hybrid "
                f"({other.uds_path}): use hybrid://name:{name}:{address.port}"
            )
        vm = matches[0]
        why = (
            "its VMM's API could not be asked (see `hvsock vms`)"
            if vm.hypervisor in (FIRECRACKER, CLOUD_HYPERVISOR) and vm.pid is not None
            else "add one (docs/kvm.md: <vsock model='virtio'><cid auto='yes'/></vsock> "
            "for libvirt, -device vhost-vsock-pci,guest-cid=N for QEMU)"
        )
        raise UnreachableError(f"VM {name!r} has no vsock device that hvsock can see: {why}")
    if len(usable) > 1:
        raise AddressError(
            f"{len(usable)} VMs are named {name!r}: "
            + "; ".join(_label(vm) for vm in usable)
            + "; name the one you mean by its CID or socket path"
        )
    vm = usable[0]
    if not vm.running and vm.state != "unknown":
        start = (
            f"`virsh start {name}`"
            if vm.source.startswith("virsh") or vm.source.startswith("libvirt")
            else "start it"
        )
        raise UnreachableError(f"VM {name!r} is {vm.state}, not running: {start} and retry")
    if not hybrid and vm.cid is None:
        raise UnreachableError(f"VM {name!r} has no CID yet ({vm.endpoint}); start it and retry")
    return vm


def resolve_host_address(
    address: NamedVsockAddress | NamedHybridAddress, proc: str = "/proc"
) -> VsockAddress | HybridAddress:
    """*address* with its VM looked up on this KVM host: ``vsock://name:web1:5100`` to
    ``vsock://<its CID>:5100``, ``hybrid://name:fc1:52`` to ``hybrid://<its socket>:52``.

    Asks only the sources that can know such a VM first (libvirt and QEMU for a CID,
    Firecracker and Cloud Hypervisor over their APIs for a socket); when that finds no
    VM to use, all of them, to say what the name is instead. Raises as
    :func:`choose_host_vm`.
    """
    if isinstance(address, NamedVsockAddress):
        first = discover_host_vms(proc, ask=False)
    else:
        first = discover_host_vms(proc, libvirt=False)
    try:
        vm = choose_host_vm(first, address)
    except HvsockError:
        vm = choose_host_vm(discover_host_vms(proc), address)
    if isinstance(address, NamedVsockAddress):
        assert vm.cid is not None  # choose_host_vm checked
        return address.with_cid(vm.cid)
    assert vm.uds_path is not None
    return address.with_uds_path(vm.uds_path)
