"""The top-level names that moved into namespaces, kept importable for one release.

Until 0.2 every public name was at the top of ``hvsock``; now about fifty are, and the
rest live in the namespace that says what they are. ``hvsock.<old name>`` still works,
with a DeprecationWarning naming the new spelling; this module (and the lookup in
``hvsock.__getattr__``) goes in the release after. The table is a record of what was
public, not a listing to maintain: tests/unit/test_public_api.py checks that each name
is in its namespace's ``__all__``.
"""

from __future__ import annotations

import importlib
import warnings

#: namespace (hvsock.<namespace>) -> the old top-level names it now holds.
MOVED: dict[str, tuple[str, ...]] = {
    "windows": (
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
    ),
    "sockets": (
        "CID_ANY",
        "CID_HOST",
        "CID_HYPERVISOR",
        "CID_LOCAL",
        "DEFAULT_CONNECT_TIMEOUT",
        "PORT_ANY",
        "has_hyperv",
        "has_vsock",
        "listener_address",
        "loaded_vsock_transports",
        "local_cid",
        "remove_socket_file",
        "set_buffer_size",
        "vsock_loopback_loaded",
    ),
    "kvm": (
        "HostDiscovery",
        "HostVm",
        "SourceReport",
        "VsockDevice",
        "discover_host_vms",
    ),
    "framing": (
        "DEFAULT_MAX_FRAME",
        "ErrorReply",
        "FrameDecoder",
        "Request",
        "Response",
        "decode_message",
        "encode_frame",
        "encode_message",
        "read_frame",
        "recv_frame",
        "send_frame",
        "write_frame",
    ),
    "forwarding": (
        "ConnectionRecord",
        "Forward",
        "Relay",
        "RelayConfig",
        "RelayStats",
        "TargetRule",
        "relay",
    ),
    "services": (
        "ECHO_PORT",
        "BenchResult",
        "BenchServer",
        "PingStats",
        "StressFailure",
        "StressResult",
        "echo_service",
        "file_service",
        "ping",
        "share_service",
        "stress",
    ),
    "doctor": (
        "Check",
        "Diagnosis",
        "Machine",
        "diagnose",
    ),
}

_NAMESPACE = {name: namespace for namespace, names in MOVED.items() for name in names}


def deprecated(package: str, name: str, new_home: str, stacklevel: int) -> None:
    """Warn that ``package.name`` is spelled ``new_home.name`` now; *stacklevel* as for
    :func:`warnings.warn`, counted from the caller (so the warning names the user's line)."""
    warnings.warn(
        f"{package}.{name} is deprecated: use {new_home}.{name} (the old spelling "
        "goes in the next release)",
        DeprecationWarning,
        stacklevel=stacklevel + 1,
    )


def moved(name: str) -> object:
    """The object ``hvsock.<name>`` used to be, with a DeprecationWarning; AttributeError
    for a name that was never public."""
    namespace = _NAMESPACE.get(name)
    if namespace is None:
        raise AttributeError(f"module 'hvsock' has no attribute {name!r}")
    deprecated("hvsock", name, f"hvsock.{namespace}", stacklevel=3)
    # Not cached in the package: the next use warns too, and dir() leaves it out.
    return getattr(importlib.import_module(f"hvsock.{namespace}"), name)
