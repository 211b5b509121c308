"""The KVM host side: this Linux host's VMs and their vsock devices.

:func:`discover_host_vms` asks libvirt (``virsh -r`` or libvirt-python), the QEMU,
Firecracker and Cloud Hypervisor processes in ``/proc`` and the VMMs' API sockets which
VMs run here and how each is reached (a CID, or a hybrid-vsock socket); it is what
``hvsock vms`` prints on a KVM host and what ``vsock://name:web1:22`` resolves through.
"""

from ._core.vmconfig import VsockDevice
from ._kvm.vms import HostDiscovery, HostVm, SourceReport, discover_host_vms

__all__ = ["HostDiscovery", "HostVm", "SourceReport", "VsockDevice", "discover_host_vms"]
