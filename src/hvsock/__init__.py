"""hvsock: Hyper-V sockets and VM sockets for Python.

One address model for Hyper-V (VM id + service id), Linux VM sockets (CID +
port), hybrid vsock (Firecracker / Cloud Hypervisor Unix sockets), TCP and Unix;
``connect`` and ``listen`` that hand back real ``socket.socket`` objects; one
exception root, :class:`HvsockError`.
"""

from ._core.addresses import (
    Address,
    HybridAddress,
    HyperVAddress,
    TcpAddress,
    UnixAddress,
    VsockAddress,
    describe_address,
    guest_view,
    host_view,
    parse_address,
)
from ._core.ids import (
    BROADCAST,
    CHILDREN,
    CID_ANY,
    CID_HOST,
    CID_HYPERVISOR,
    CID_LOCAL,
    LOOPBACK,
    PARENT,
    PORT_ANY,
    SILOHOST,
    VSOCK_TEMPLATE,
    WILDCARD,
    ZERO,
    is_template_service_id,
    port_for_service_id,
    service_id_for_port,
)
from ._errors import (
    AddressError,
    AddressInUseError,
    ConnectTimeoutError,
    HandshakeError,
    HvsockError,
    NothingListeningError,
    PermissionDeniedError,
    TransportUnavailableError,
    UnreachableError,
    UnsupportedError,
)
from ._transports._common import DEFAULT_CONNECT_TIMEOUT, close_write
from ._transports.api import (
    connect,
    listen,
    listener_address,
    remove_socket_file,
    set_buffer_size,
)
from ._transports.features import (
    has_hyperv,
    has_vsock,
    loaded_vsock_transports,
    local_cid,
    vsock_loopback_loaded,
)

__version__ = "0.1.0"

__all__ = [
    "BROADCAST",
    "CHILDREN",
    "CID_ANY",
    "CID_HOST",
    "CID_HYPERVISOR",
    "CID_LOCAL",
    "DEFAULT_CONNECT_TIMEOUT",
    "LOOPBACK",
    "PARENT",
    "PORT_ANY",
    "SILOHOST",
    "VSOCK_TEMPLATE",
    "WILDCARD",
    "ZERO",
    "Address",
    "AddressError",
    "AddressInUseError",
    "ConnectTimeoutError",
    "HandshakeError",
    "HvsockError",
    "HybridAddress",
    "HyperVAddress",
    "NothingListeningError",
    "PermissionDeniedError",
    "TcpAddress",
    "TransportUnavailableError",
    "UnixAddress",
    "UnreachableError",
    "UnsupportedError",
    "VsockAddress",
    "__version__",
    "close_write",
    "connect",
    "describe_address",
    "guest_view",
    "has_hyperv",
    "has_vsock",
    "host_view",
    "is_template_service_id",
    "listen",
    "listener_address",
    "loaded_vsock_transports",
    "local_cid",
    "parse_address",
    "port_for_service_id",
    "remove_socket_file",
    "service_id_for_port",
    "set_buffer_size",
    "vsock_loopback_loaded",
]
