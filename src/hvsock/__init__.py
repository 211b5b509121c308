"""hvsock: Hyper-V sockets and VM sockets for Python.

One address model for Hyper-V (VM id + service id), Linux VM sockets (CID +
port), hybrid vsock (Firecracker / Cloud Hypervisor Unix sockets), TCP and Unix;
``connect`` and ``listen`` that hand back real ``socket.socket`` objects; one
exception root, :class:`HvsockError`.
"""

from ._aio.streams import connect_socket, open_connection, start_server
from ._core.addresses import (
    Address,
    HybridAddress,
    HyperVAddress,
    NamedVmAddress,
    SocketAddress,
    TcpAddress,
    UnixAddress,
    VsockAddress,
    describe_address,
    guest_view,
    host_view,
    parse_address,
)
from ._core.framing import (
    DEFAULT_MAX_FRAME,
    ErrorReply,
    FrameDecoder,
    Request,
    Response,
    decode_message,
    encode_frame,
    encode_message,
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
from ._doctor import Check, Diagnosis, diagnose
from ._errors import (
    AddressError,
    AddressInUseError,
    ArgumentError,
    ConnectTimeoutError,
    FrameTooLargeError,
    HandshakeError,
    HvsockError,
    IdleTimeoutError,
    NothingListeningError,
    PermissionDeniedError,
    ProtocolError,
    RegistryError,
    RemoteError,
    TransportUnavailableError,
    UnreachableError,
    UnsupportedError,
    VmNotFoundError,
)
from ._relay import ConnectionRecord, Relay, RelayStats, relay
from ._service.connection import Connection, Peer, SyncConnection
from ._service.declaration import Limits, Service
from ._service.frames import (
    AsyncRpcClient,
    RpcClient,
    read_frame,
    recv_frame,
    send_frame,
    write_frame,
)
from ._service.host import ServiceHost
from ._service.rpc import rpc_handler
from ._services.echo import ECHO_PORT, PingStats, echo_service, ping
from ._tools.bench import BenchResult, BenchServer
from ._tools.stress import StressFailure, StressResult, stress
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
from ._windows.export import registration_script
from ._windows.registry import (
    Registration,
    Removal,
    ServiceEntry,
    register_service,
    registered_services,
    unregister_service,
)
from ._windows.vms import VmInfo, discover_vms, resolve_address

__version__ = "0.1.0"

# Remote exec through an hvsock agent (issue 10): one block, easy to move.
from ._builtin.exec.client import ExecResult, exec, exec_async

__all__ = ["ExecResult", "exec", "exec_async"]

__all__ += [
    "BROADCAST",
    "CHILDREN",
    "CID_ANY",
    "CID_HOST",
    "CID_HYPERVISOR",
    "CID_LOCAL",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_FRAME",
    "ECHO_PORT",
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
    "ArgumentError",
    "AsyncRpcClient",
    "BenchResult",
    "BenchServer",
    "Check",
    "ConnectTimeoutError",
    "Connection",
    "ConnectionRecord",
    "Diagnosis",
    "ErrorReply",
    "FrameDecoder",
    "FrameTooLargeError",
    "HandshakeError",
    "HvsockError",
    "HybridAddress",
    "HyperVAddress",
    "IdleTimeoutError",
    "Limits",
    "NamedVmAddress",
    "NothingListeningError",
    "Peer",
    "PermissionDeniedError",
    "PingStats",
    "ProtocolError",
    "Registration",
    "RegistryError",
    "Relay",
    "RelayStats",
    "RemoteError",
    "Removal",
    "Request",
    "Response",
    "RpcClient",
    "Service",
    "ServiceEntry",
    "ServiceHost",
    "SocketAddress",
    "StressFailure",
    "StressResult",
    "SyncConnection",
    "TcpAddress",
    "TransportUnavailableError",
    "UnixAddress",
    "UnreachableError",
    "UnsupportedError",
    "VmInfo",
    "VmNotFoundError",
    "VsockAddress",
    "__version__",
    "close_write",
    "connect",
    "connect_socket",
    "decode_message",
    "describe_address",
    "diagnose",
    "discover_vms",
    "echo_service",
    "encode_frame",
    "encode_message",
    "guest_view",
    "has_hyperv",
    "has_vsock",
    "host_view",
    "is_template_service_id",
    "listen",
    "listener_address",
    "loaded_vsock_transports",
    "local_cid",
    "open_connection",
    "parse_address",
    "ping",
    "port_for_service_id",
    "read_frame",
    "recv_frame",
    "register_service",
    "registered_services",
    "registration_script",
    "relay",
    "remove_socket_file",
    "resolve_address",
    "rpc_handler",
    "send_frame",
    "service_id_for_port",
    "set_buffer_size",
    "start_server",
    "stress",
    "unregister_service",
    "vsock_loopback_loaded",
    "write_frame",
]
