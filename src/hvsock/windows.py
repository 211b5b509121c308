"""The Hyper-V side: well-known VM ids, service ids and ports, registration, VM listing.

A Hyper-V host names a service by GUID, a Linux guest by port; the VSOCK template
(:data:`VSOCK_TEMPLATE`) maps one to the other (:func:`service_id_for_port`,
:func:`port_for_service_id`), and :func:`host_view` / :func:`guest_view` turn one side's
address of a connection into the other's. A service is registered on the host under
``GuestCommunicationServices`` (:func:`register_service`, or :func:`registration_script`
for a script to run there), and :func:`discover_vms` lists the VMs and WSL's utility VM.
Everything here except the registry writes and the VM listing's PowerShell runs, and is
tested, on Linux too.
"""

from ._core.addresses import guest_view, host_view
from ._core.ids import (
    BROADCAST,
    CHILDREN,
    LOOPBACK,
    PARENT,
    SILOHOST,
    VSOCK_TEMPLATE,
    WILDCARD,
    ZERO,
    is_template_service_id,
    port_for_service_id,
    service_id_for_port,
)
from ._windows.export import registration_script
from ._windows.registry import (
    Registration,
    RegistryBackend,
    RegistryEdit,
    Removal,
    ServiceDeclaration,
    ServiceEntry,
    register_service,
    registered_services,
    unregister_service,
)
from ._windows.vms import ProcessResult, VmDiscovery, VmInfo, discover_vms

__all__ = [
    "BROADCAST",
    "CHILDREN",
    "LOOPBACK",
    "PARENT",
    "SILOHOST",
    "VSOCK_TEMPLATE",
    "WILDCARD",
    "ZERO",
    "ProcessResult",
    "Registration",
    "RegistryBackend",
    "RegistryEdit",
    "Removal",
    "ServiceDeclaration",
    "ServiceEntry",
    "VmDiscovery",
    "VmInfo",
    "discover_vms",
    "guest_view",
    "host_view",
    "is_template_service_id",
    "port_for_service_id",
    "register_service",
    "registered_services",
    "registration_script",
    "service_id_for_port",
    "unregister_service",
]
