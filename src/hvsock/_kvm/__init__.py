"""The KVM host side: finding the VMs of this Linux host (libvirt, QEMU, Firecracker,
Cloud Hypervisor) and their vsock endpoints, and resolving the VM names in
``vsock://name:<VM>:<port>`` and ``hybrid://name:<VM>:<port>``.

What each source prints is parsed in :mod:`hvsock._core.vmconfig` (pure); this package
does the I/O: it reads ``/proc``, runs ``virsh`` read-only and asks the VMMs' API
sockets over HTTP.
"""
