"""The self-test's steps inside a Linux guest (or any Linux machine with AF_VSOCK).

Safety: an AF_VSOCK connect to CID 1 leaves the machine for its hypervisor unless
``vsock_loopback`` is loaded, so the loopback round trip runs only when
``/sys/module/vsock_loopback`` exists on the real machine (checked again right
before connecting, whatever *root* the caller passed), and the host echo step
connects only when the user named the host's port.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from .._builtin.echo import ping
from .._core.addresses import Address, VsockAddress, parse_address
from .._doctor.linux import dmi, hyperv_evidence, is_wsl
from .._doctor.model import Machine
from .._errors import HvsockError
from .._transports.features import (
    VSOCK_TRANSPORT_MODULES,
    describe_cid,
    has_vsock,
    loaded_vsock_transports,
    local_cid,
)
from . import roundtrip
from .model import Step, failed, not_applicable, ok

STEPS = ("af_vsock", "vsock_transports", "local_cid", "vsock_loopback", "host_echo")
#: Transports that carry a guest's traffic to its host, and the hypervisor each is for.
GUEST_TRANSPORTS = {
    "vmw_vsock_virtio_transport": "KVM/QEMU, Firecracker, Cloud Hypervisor",
    "hv_sock": "Hyper-V",
    "vmw_vsock_vmci_transport": "VMware",
}
LOOPBACK_MODULE = "vsock_loopback"
REAL_SYS_MODULE = "/sys/module"


def loopback_round_trip(timeout: float = roundtrip.DEFAULT_TIMEOUT) -> str:
    """Listen on ``vsock://any:any`` and connect to it on CID 1; echo with a half-close.

    Raises :class:`HvsockError` without touching AF_VSOCK unless this machine's
    kernel has ``vsock_loopback`` loaded (else CID 1 would leave the machine).
    """
    if not os.path.isdir(os.path.join(REAL_SYS_MODULE, LOOPBACK_MODULE)):
        raise HvsockError(
            "vsock_loopback is not loaded; a connect to CID 1 would leave "
            "this machine, so the loopback round trip is not tried"
        )

    def on_cid_1(actual: Address) -> Address:
        assert isinstance(actual, VsockAddress)
        return VsockAddress(1, actual.port)

    return roundtrip.round_trip("vsock://any:any", on_cid_1, timeout=timeout)


@dataclass(frozen=True)
class Guest:
    """Where the Linux steps look; tests pass a directory tree standing in for ``/``
    and a fake loopback test. The defaults are this machine."""

    root: str = "/"
    loopback_test: Callable[[], str] = loopback_round_trip
    #: Whether Python has AF_VSOCK; None: ask the socket module.
    af_vsock: bool | None = None

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)


def linux_steps(
    guest: Guest, echo: Address | str | None = None, timeout: float = roundtrip.DEFAULT_TIMEOUT
) -> list[Step]:
    """Run the Linux steps; *echo* is a host-side echo server to reach (only when the
    user named it). Never raises for a failed step: each becomes a :class:`Step`.
    """
    steps: list[Step] = []
    have_family = has_vsock() if guest.af_vsock is None else guest.af_vsock
    if not have_family:
        steps.append(
            failed(
                "af_vsock",
                "this Python has no socket.AF_VSOCK",
                advice="VM sockets need Linux and a CPython built with AF_VSOCK (3.7+ on Linux)",
            )
        )
        steps += [not_applicable(name, "needs AF_VSOCK") for name in STEPS[1:]]
        return steps
    steps.append(ok("af_vsock", "socket.AF_VSOCK exists"))
    transports = loaded_vsock_transports(guest.path("sys", "module"))
    steps.append(_transports_step(transports))
    steps.append(_cid_step(guest))
    if LOOPBACK_MODULE in transports:
        try:
            where = guest.loopback_test()
        except (HvsockError, OSError) as exc:
            steps.append(failed("vsock_loopback", "the loopback round trip failed", exc))
        else:
            steps.append(
                ok(
                    "vsock_loopback",
                    f"a listener and a client on {where} "
                    "exchanged 64 KiB each way, with a half-close",
                )
            )
    else:
        steps.append(
            not_applicable(
                "vsock_loopback",
                "vsock_loopback is not loaded (`modprobe vsock_loopback` "
                "enables it); without it a connect to CID 1 would leave this machine",
            )
        )
    steps.append(_echo_step(echo, timeout, guest, transports))
    return steps


def _transports_step(transports: list[str]) -> Step:
    if not transports:
        return failed(
            "vsock_transports", "no vsock transport module is loaded", advice=_load_advice()
        )
    names = ", ".join(f"{m} ({VSOCK_TRANSPORT_MODULES[m]})" for m in transports)
    if not any(m in GUEST_TRANSPORTS for m in transports):
        return failed(
            "vsock_transports", f"loaded: {names}; none reaches a host", advice=_load_advice()
        )
    return ok("vsock_transports", f"loaded: {names}")


def _load_advice() -> str:
    return "load the guest transport for your hypervisor: " + "; ".join(
        f"`modprobe {m}` ({what})" for m, what in GUEST_TRANSPORTS.items()
    )


def _cid_step(guest: Guest) -> Step:
    try:
        cid = local_cid(guest.path("dev", "vsock"))
    except HvsockError as exc:
        return failed("local_cid", "the local CID could not be read", exc)
    return ok("local_cid", f"CID {cid}: {describe_cid(cid)}")


def host_echo_server(guest: Guest, transports: list[str], port: int | str = "N") -> str:
    """Where and how to run the echo server that ``hvsock selftest --port PORT`` reaches
    from this guest: the host's address form differs per hypervisor (and transport)."""
    machine = Machine(root=guest.root)
    vsock = f"`hvsock echo-server vsock://any:{port}`"
    if is_wsl(machine):
        return f"on Windows: `hvsock echo-server hvsock://wsl/{port}`"
    if "hv_sock" in transports or hyperv_evidence(machine):
        return (
            f"on the Windows host, as administrator `hvsock register hvsock-echo --port "
            f"{port}`, then `hvsock echo-server hvsock://<this VM's id>/{port}`"
        )
    if "vmw_vsock_virtio_transport" in transports:
        qemu = f"on the KVM/QEMU host (vhost_vsock loaded): {vsock}"
        hybrid = (
            f"on the Firecracker / Cloud Hypervisor host: `hvsock echo-server "
            f"hybrid://<the VM's vsock socket>:{port}`"
        )
        vendor = dmi(machine, "sys_vendor")
        if vendor == "QEMU":
            return qemu
        if vendor == "Cloud Hypervisor":
            return hybrid
        return f"{qemu}; {hybrid}"  # Firecracker gives no DMI: either
    if "vmw_vsock_vmci_transport" in transports:
        return f"on the VMware host: {vsock}"
    if LOOPBACK_MODULE in transports:
        return (
            f"on this machine ({LOOPBACK_MODULE} is the only transport, so CID 2 is "
            f"this machine): {vsock}"
        )
    return (
        f"on the host: {vsock} (KVM/QEMU), `hvsock echo-server "
        f"hybrid://<the VM's vsock socket>:{port}` (Firecracker, Cloud Hypervisor) or "
        f"`hvsock echo-server hvsock://<this VM's id>/{port}` (Hyper-V)"
    )


def _echo_step(
    echo: Address | str | None, timeout: float, guest: Guest, transports: list[str]
) -> Step:
    if echo is None:
        where = host_echo_server(guest, transports)
        return not_applicable(
            "host_echo",
            f"no host port given (`hvsock selftest --port N` with the echo server running {where})",
        )
    try:
        port = getattr(parse_address(echo), "port", None)
    except HvsockError:
        port = None
    try:
        stats = ping(echo, count=3, size=1024, timeout=timeout)
    except (HvsockError, OSError) as exc:
        return failed(
            "host_echo",
            f"no echo from {echo}",
            exc,
            advice="check that the echo server runs for this port: "
            + host_echo_server(guest, transports, "N" if port is None else port),
        )
    return ok(
        "host_echo",
        f"{stats.count} echoes of {stats.size} bytes from {echo}, median {stats.median_ms:.3f} ms",
    )
