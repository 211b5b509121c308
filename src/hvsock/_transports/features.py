"""What this machine offers: socket families, vsock transports, the local CID.

Feature checks, not platform checks: a family is there when ``socket`` has it.
Reading these never connects anything.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys

from .._core import ids
from .._errors import TransportUnavailableError, UnsupportedError

#: ioctl on /dev/vsock that returns the local CID (vm_sockets.h).
IOCTL_VM_SOCKETS_GET_LOCAL_CID = 0x7B9
VSOCK_DEVICE = "/dev/vsock"
SYS_MODULE = "/sys/module"

#: Kernel modules that carry vsock traffic, and what each is for.
VSOCK_TRANSPORT_MODULES = {
    "vsock_loopback": "loopback (CID 1, inside this kernel)",
    "vmw_vsock_virtio_transport": "virtio guest (KVM/QEMU guest to its host)",
    "hv_sock": "Hyper-V guest (hv_sock)",
    "vhost_vsock": "vhost host (this machine hosts KVM guests)",
    "vmw_vsock_vmci_transport": "VMware VMCI",
}


def has_vsock() -> bool:
    """True when Python exposes ``socket.AF_VSOCK`` (Linux)."""
    return hasattr(socket, "AF_VSOCK")


def has_hyperv() -> bool:
    """True when Python exposes ``socket.AF_HYPERV`` (Windows, CPython 3.12+)."""
    return hasattr(socket, "AF_HYPERV")


def require_vsock() -> int:
    """``socket.AF_VSOCK``, or :class:`UnsupportedError` saying why it is missing."""
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise UnsupportedError(
            f"AF_VSOCK is not available on {sys.platform}: VM sockets need Linux; on a "
            "Windows host use hvsock:// addresses, on a Firecracker / Cloud Hypervisor "
            "host use hybrid:// addresses"
        )
    return int(family)


def require_hyperv() -> int:
    """``socket.AF_HYPERV``, or :class:`UnsupportedError` saying why it is missing."""
    family = getattr(socket, "AF_HYPERV", None)
    if family is None:
        if sys.platform == "win32":
            why = (
                f"this is Python {sys.version_info.major}.{sys.version_info.minor}; "
                "AF_HYPERV needs CPython 3.12 or newer"
            )
        else:
            why = (
                f"AF_HYPERV exists only on Windows (this is {sys.platform}); inside a "
                "Linux guest use vsock:// addresses (vsock://host:<port> reaches the host)"
            )
        raise UnsupportedError(f"Hyper-V sockets are not available: {why}")
    return int(family)


def loaded_vsock_transports(sys_module: str = SYS_MODULE) -> list[str]:
    """Names of the vsock transport modules the kernel has loaded (per *sys_module*)."""
    return [m for m in VSOCK_TRANSPORT_MODULES if os.path.isdir(os.path.join(sys_module, m))]


def vsock_loopback_loaded() -> bool:
    """True when ``vsock_loopback`` is loaded, so CID 1 stays inside this kernel.

    Without it a connect to CID 1 (or 2, or our own CID) leaves the machine for
    its hypervisor, so demos and tests must check this before connecting.
    """
    return os.path.isdir(os.path.join(SYS_MODULE, "vsock_loopback"))


def local_cid(device: str = VSOCK_DEVICE) -> int:
    """This machine's CID, from the ``/dev/vsock`` ioctl.

    Returns ``CID_ANY`` under Hyper-V's transport and 1 with only the loopback one.
    Raises :class:`TransportUnavailableError` when there is no vsock device, and
    :class:`UnsupportedError` off Linux.
    """
    require_vsock()
    import fcntl  # Unix only; AF_VSOCK above already proved this is Linux.

    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TransportUnavailableError(
            f"{device} does not exist: no vsock transport is loaded; load one "
            "(`modprobe vmw_vsock_virtio_transport` in a KVM guest, `modprobe hv_sock` on "
            "Hyper-V, `modprobe vsock_loopback` for local tests)",
            errno=errno.ENOENT,
        ) from None
    except PermissionError as exc:
        raise TransportUnavailableError(
            f"cannot open {device} ({exc.strerror}); run as a user that may read it",
            errno=exc.errno,
        ) from exc
    try:
        buf = fcntl.ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, b"\0" * 4)
    except OSError as exc:
        raise TransportUnavailableError(
            f"the local-CID ioctl on {device} failed ({exc.strerror})", errno=exc.errno
        ) from exc
    finally:
        os.close(fd)
    cid: int = struct.unpack("I", buf)[0]
    return cid


def describe_cid(cid: int) -> str:
    """A word on what a local CID means."""
    if cid == ids.CID_ANY:
        return "any (the Hyper-V transport reports no CID of its own)"
    if cid == ids.CID_LOCAL:
        return "local (only the loopback transport is loaded)"
    return "this VM's CID"
