"""The doctor's model: a :class:`Check`, the :class:`Diagnosis` made of them, and the
:class:`Machine` the checks look at. Pure: no I/O here."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .._builtin.kvp.checks import CHECKS as KVP_CHECKS

if TYPE_CHECKING:
    from .._windows import registry as reg
    from .._windows import vms as vmlib

OK = "ok"
INFO = "info"
WARN = "warn"
FAIL = "fail"
NOT_APPLICABLE = "not applicable"
STATUSES = (OK, INFO, WARN, FAIL, NOT_APPLICABLE)

#: The KVM host side (_doctor/kvm.py): vhost_vsock, /dev/vhost-vsock, the VMs found.
KVM_HOST_CHECKS = ("vhost_vsock", "dev_vhost_vsock", "host_vms")
LINUX_CHECKS = (
    "af_vsock",
    "vsock_transports",
    "dev_vsock",
    "local_cid",
    "vsock_socket",
    "hyperv_guest",
    "wsl",
    *KVP_CHECKS,
    *KVM_HOST_CHECKS,
)
#: With a vsock://name: or hybrid://name: address: the VM it resolves to.
KVM_ADDRESS_CHECKS = ("address_host_vm",)
WINDOWS_CHECKS = ("af_hyperv", "registry", "hyperv_loopback", "vms")
LINUX_ADDRESS_CHECKS = (
    "address_cid",
    "address_port",
    "address_bind",
    "host_registration",
    "vmm_socket",
    "vmm_handshake",
)
#: The transports that carry a guest's connections to its host, and for which hypervisor.
GUEST_TO_HOST_TRANSPORTS = {
    "vmw_vsock_virtio_transport": "KVM/QEMU, Firecracker, Cloud Hypervisor",
    "hv_sock": "Hyper-V",
    "vmw_vsock_vmci_transport": "VMware",
}
#: Seconds the doctor waits for a VMM socket to accept and answer.
VMM_TIMEOUT = 3.0
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
        return {"name": self.name, "status": self.status, "summary": self.summary, "fix": self.fix}


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
        return {
            "platform": self.platform,
            "python": self.python,
            "address": self.address,
            "ok": self.ok,
            "checks": [check.as_dict() for check in self.checks],
        }


class VsockProbe(Protocol):
    """What the checks do with an AF_VSOCK socket: bind it and close it (never connect)."""

    def bind(self, address: tuple[int, int], /) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Machine:
    """Where the doctor looks. The defaults are this machine; tests pass a directory
    tree standing in for ``/`` and fakes for the programs, registry and self-test."""

    #: Prefix for /sys, /proc and /dev: tests pass a directory of real files standing
    #: in for ``/`` (a fake /sys/module, /proc/sys/kernel/osrelease, /dev/vsock).
    root: str = "/"
    runner: vmlib.Runner | None = None
    registry: reg.RegistryBackend | None = None
    #: The Hyper-V loopback self-test; raises HvsockError when it fails.
    loopback_test: Callable[[], None] | None = None
    #: The effective user id (privileged ports); None: this process's.
    euid: int | None = None
    #: Makes the AF_VSOCK stream socket the checks create and bind; raises OSError as
    #: socket.socket does. None: a real one. Tests pass a fake, so that checking a fake
    #: tree creates no real AF_VSOCK socket on the machine the tests run on.
    vsock_socket: Callable[[], VsockProbe] | None = None

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)


def not_here(names: tuple[str, ...], why: str) -> list[Check]:
    return [Check(name, NOT_APPLICABLE, why) for name in names]


def explain(exc: BaseException) -> str:
    """The fix for a socket error, in plain words (Windows error numbers included)."""
    for cause in (exc, exc.__cause__):
        winerror = getattr(cause, "winerror", None)
        if winerror in WINDOWS_ERRORS:
            return WINDOWS_ERRORS[winerror]
    return str(exc)
