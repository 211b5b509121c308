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

import sys

from .._core.addresses import Address, parse_address
from .kvm import kvm_host_checks, named_address_check
from .linux import linux_checks
from .model import (
    KVM_ADDRESS_CHECKS,
    LINUX_ADDRESS_CHECKS,
    LINUX_CHECKS,
    WINDOWS_ADDRESS_CHECKS,
    WINDOWS_CHECKS,
    Check,
    Diagnosis,
    Machine,
    not_here,
)
from .windows import windows_checks

__all__ = ["Check", "Diagnosis", "Machine", "diagnose"]


def diagnose(
    address: Address | str | None = None,
    *,
    machine: Machine | None = None,
    platform: str | None = None,
) -> Diagnosis:
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
        if addr is None:
            checks += linux_checks(None, machine)
        else:
            # A VM name of this KVM host is resolved first: the other checks look at
            # the CID or socket it names.
            named, resolved = named_address_check(addr, machine)
            checks += linux_checks(resolved, machine)
            if resolved is None:
                checks += not_here(
                    LINUX_ADDRESS_CHECKS, "the VM name was not resolved (see address_host_vm)"
                )
            checks.append(named)
        checks += kvm_host_checks(machine)
    else:
        checks += not_here(LINUX_CHECKS, "Linux only")
    if windows:
        checks += windows_checks(addr, machine)
    else:
        checks += not_here(WINDOWS_CHECKS, "Windows host only")
    if addr is not None:
        if not linux:
            checks += not_here(LINUX_ADDRESS_CHECKS + KVM_ADDRESS_CHECKS, "Linux only")
        if not windows:
            checks += not_here(WINDOWS_ADDRESS_CHECKS, "Windows host only")
    python = ".".join(map(str, sys.version_info[:3]))
    return Diagnosis(platform, python, None if addr is None else str(addr), tuple(checks))
