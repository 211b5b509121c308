"""hvsock: Hyper-V sockets and VM sockets for Python.

One address model for Hyper-V (VM id + service id), Linux VM sockets (CID +
port), hybrid vsock (Firecracker / Cloud Hypervisor Unix sockets), TCP and Unix;
``connect`` and ``listen`` that hand back real ``socket.socket`` objects; one
exception root, :class:`HvsockError`.

Names load lazily (PEP 562): ``import hvsock`` costs about as much as ``import
socket``; asyncio, the relay, the doctor and the Windows layer load when first used.
"""

import importlib

from ._version import __version__ as __version__

# Not typing.TYPE_CHECKING: importing typing would cost more than the rest of this
# file; mypy treats any constant of this name as true.
TYPE_CHECKING = False


#: Where each public name lives: module -> the names it gives the package. One table;
#: ``__all__``, ``dir()`` and the lazy lookup all come from it, and a test checks each
#: entry against its module's own ``__all__``.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "._endpoints": (
        "connect", "connect_socket", "listen", "open_connection", "resolve_address",
        "start_server",
    ),
    "._core.addresses": (
        "Address", "HybridAddress", "HyperVAddress", "NamedHybridAddress", "NamedVmAddress",
        "NamedVsockAddress", "SocketAddress",
        "TcpAddress", "UnixAddress", "VsockAddress", "describe_address", "guest_view",
        "host_view", "parse_address",
    ),
    "._core.framing": (
        "DEFAULT_MAX_FRAME", "ErrorReply", "FrameDecoder", "Request", "Response",
        "decode_message", "encode_frame", "encode_message",
    ),
    "._core.ids": (
        "BROADCAST", "CHILDREN", "CID_ANY", "CID_HOST", "CID_HYPERVISOR", "CID_LOCAL", "LOOPBACK",
        "PARENT", "PORT_ANY", "SILOHOST", "VSOCK_TEMPLATE", "WILDCARD", "ZERO",
        "is_template_service_id", "port_for_service_id", "service_id_for_port",
    ),
    "._builtin.bench": (
        "BenchResult", "BenchServer",
    ),
    "._builtin.echo": (
        "ECHO_PORT", "PingStats", "echo_service", "ping",
    ),
    "._builtin.exec.client": (
        "ExecResult", "exec", "exec_async",
    ),
    "._builtin.files.client": (
        "CopyResult", "copy", "copy_async",
    ),
    "._builtin.files.server": (
        "file_service",
    ),
    "._builtin.share.server": (
        "share_service",
    ),
    "._builtin.stress": (
        "StressFailure", "StressResult", "stress",
    ),
    "._doctor": (
        "Check", "Diagnosis", "Machine", "diagnose",
    ),
    "._errors": (
        "AddressError", "AddressInUseError", "ArgumentError", "ConnectTimeoutError",
        "FrameTooLargeError", "HandshakeError", "HvsockError", "IdleTimeoutError",
        "NothingListeningError", "PermissionDeniedError", "ProtocolError", "RegistryError",
        "RemoteError", "TransportUnavailableError", "UnreachableError", "UnsupportedError",
        "VmNotFoundError", "ConnectionResetByPeerError", "NotAllowedError", "KvpError",
        "Cancelled", "PeerClosedError",
    ),
    "._kvm.vms": (
        "HostDiscovery", "HostVm", "SourceReport", "discover_host_vms",
    ),
    "._core.vmconfig": (
        "VsockDevice",
    ),
    "._relay": (
        "ConnectionRecord", "Forward", "Relay", "RelayConfig", "RelayStats", "TargetRule",
        "relay",
    ),
    "._server.peers": (
        "Peer", "PrivilegedCid",
    ),
    "._service.connection": (
        "Connection", "SyncConnection",
    ),
    "._service.declaration": (
        "Limits", "Service",
    ),
    "._service.frames": (
        "AsyncRpcClient", "RpcClient", "read_frame", "recv_frame", "send_frame", "write_frame",
    ),
    "._service.host": (
        "ServiceHost",
    ),
    "._service.rpc": (
        "rpc_handler",
    ),
    "._transports._common": (
        "DEFAULT_CONNECT_TIMEOUT", "close_write",
    ),
    "._transports.api": (
        "listener_address", "remove_socket_file", "set_buffer_size",
    ),
    "._transports.features": (
        "has_hyperv", "has_vsock", "loaded_vsock_transports", "local_cid",
        "vsock_loopback_loaded",
    ),
    "._windows.export": (
        "registration_script",
    ),
    "._windows.registry": (
        "Registration", "RegistryBackend", "RegistryEdit", "Removal", "ServiceDeclaration",
        "ServiceEntry",
        "register_service", "registered_services", "unregister_service",
    ),
    "._windows.vms": (
        "ProcessResult", "VmDiscovery", "VmInfo", "discover_vms",
    ),
}

_HOME: dict[str, str] = {name: module for module, names in _EXPORTS.items() for name in names}

# Sorted as ruff sorts a literal __all__: CONSTANTS, then Classes, then functions.
__all__ = sorted(["__version__", *_HOME],
                 key=lambda n: (0 if n.isupper() else 1 if n[:1].isupper() else 2, n))


def __getattr__(name: str) -> object:
    """Import the module that defines *name* on first use, and keep the name here."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'hvsock' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # the same names, spelled out for type checkers and IDEs
    from ._builtin.bench import BenchResult as BenchResult
    from ._builtin.bench import BenchServer as BenchServer
    from ._builtin.echo import ECHO_PORT as ECHO_PORT
    from ._builtin.echo import PingStats as PingStats
    from ._builtin.echo import echo_service as echo_service
    from ._builtin.echo import ping as ping
    from ._builtin.exec.client import ExecResult as ExecResult
    from ._builtin.exec.client import exec as exec
    from ._builtin.exec.client import exec_async as exec_async
    from ._builtin.files.client import CopyResult as CopyResult
    from ._builtin.files.client import copy as copy
    from ._builtin.files.client import copy_async as copy_async
    from ._builtin.files.server import file_service as file_service
    from ._builtin.share.server import share_service as share_service
    from ._builtin.stress import StressFailure as StressFailure
    from ._builtin.stress import StressResult as StressResult
    from ._builtin.stress import stress as stress
    from ._core.addresses import Address as Address
    from ._core.addresses import HybridAddress as HybridAddress
    from ._core.addresses import HyperVAddress as HyperVAddress
    from ._core.addresses import NamedHybridAddress as NamedHybridAddress
    from ._core.addresses import NamedVmAddress as NamedVmAddress
    from ._core.addresses import NamedVsockAddress as NamedVsockAddress
    from ._core.addresses import SocketAddress as SocketAddress
    from ._core.addresses import TcpAddress as TcpAddress
    from ._core.addresses import UnixAddress as UnixAddress
    from ._core.addresses import VsockAddress as VsockAddress
    from ._core.addresses import describe_address as describe_address
    from ._core.addresses import guest_view as guest_view
    from ._core.addresses import host_view as host_view
    from ._core.addresses import parse_address as parse_address
    from ._core.framing import DEFAULT_MAX_FRAME as DEFAULT_MAX_FRAME
    from ._core.framing import ErrorReply as ErrorReply
    from ._core.framing import FrameDecoder as FrameDecoder
    from ._core.framing import Request as Request
    from ._core.framing import Response as Response
    from ._core.framing import decode_message as decode_message
    from ._core.framing import encode_frame as encode_frame
    from ._core.framing import encode_message as encode_message
    from ._core.ids import BROADCAST as BROADCAST
    from ._core.ids import CHILDREN as CHILDREN
    from ._core.ids import CID_ANY as CID_ANY
    from ._core.ids import CID_HOST as CID_HOST
    from ._core.ids import CID_HYPERVISOR as CID_HYPERVISOR
    from ._core.ids import CID_LOCAL as CID_LOCAL
    from ._core.ids import LOOPBACK as LOOPBACK
    from ._core.ids import PARENT as PARENT
    from ._core.ids import PORT_ANY as PORT_ANY
    from ._core.ids import SILOHOST as SILOHOST
    from ._core.ids import VSOCK_TEMPLATE as VSOCK_TEMPLATE
    from ._core.ids import WILDCARD as WILDCARD
    from ._core.ids import ZERO as ZERO
    from ._core.ids import is_template_service_id as is_template_service_id
    from ._core.ids import port_for_service_id as port_for_service_id
    from ._core.ids import service_id_for_port as service_id_for_port
    from ._core.vmconfig import VsockDevice as VsockDevice
    from ._doctor import Check as Check
    from ._doctor import Diagnosis as Diagnosis
    from ._doctor import Machine as Machine
    from ._doctor import diagnose as diagnose
    from ._endpoints import connect as connect
    from ._endpoints import connect_socket as connect_socket
    from ._endpoints import listen as listen
    from ._endpoints import open_connection as open_connection
    from ._endpoints import resolve_address as resolve_address
    from ._endpoints import start_server as start_server
    from ._errors import AddressError as AddressError
    from ._errors import AddressInUseError as AddressInUseError
    from ._errors import ArgumentError as ArgumentError
    from ._errors import Cancelled as Cancelled
    from ._errors import ConnectionResetByPeerError as ConnectionResetByPeerError
    from ._errors import ConnectTimeoutError as ConnectTimeoutError
    from ._errors import FrameTooLargeError as FrameTooLargeError
    from ._errors import HandshakeError as HandshakeError
    from ._errors import HvsockError as HvsockError
    from ._errors import IdleTimeoutError as IdleTimeoutError
    from ._errors import KvpError as KvpError
    from ._errors import NotAllowedError as NotAllowedError
    from ._errors import NothingListeningError as NothingListeningError
    from ._errors import PeerClosedError as PeerClosedError
    from ._errors import PermissionDeniedError as PermissionDeniedError
    from ._errors import ProtocolError as ProtocolError
    from ._errors import RegistryError as RegistryError
    from ._errors import RemoteError as RemoteError
    from ._errors import TransportUnavailableError as TransportUnavailableError
    from ._errors import UnreachableError as UnreachableError
    from ._errors import UnsupportedError as UnsupportedError
    from ._errors import VmNotFoundError as VmNotFoundError
    from ._kvm.vms import HostDiscovery as HostDiscovery
    from ._kvm.vms import HostVm as HostVm
    from ._kvm.vms import SourceReport as SourceReport
    from ._kvm.vms import discover_host_vms as discover_host_vms
    from ._relay import ConnectionRecord as ConnectionRecord
    from ._relay import Forward as Forward
    from ._relay import Relay as Relay
    from ._relay import RelayConfig as RelayConfig
    from ._relay import RelayStats as RelayStats
    from ._relay import TargetRule as TargetRule
    from ._relay import relay as relay
    from ._server.peers import Peer as Peer
    from ._server.peers import PrivilegedCid as PrivilegedCid
    from ._service.connection import Connection as Connection
    from ._service.connection import SyncConnection as SyncConnection
    from ._service.declaration import Limits as Limits
    from ._service.declaration import Service as Service
    from ._service.frames import AsyncRpcClient as AsyncRpcClient
    from ._service.frames import RpcClient as RpcClient
    from ._service.frames import read_frame as read_frame
    from ._service.frames import recv_frame as recv_frame
    from ._service.frames import send_frame as send_frame
    from ._service.frames import write_frame as write_frame
    from ._service.host import ServiceHost as ServiceHost
    from ._service.rpc import rpc_handler as rpc_handler
    from ._transports._common import DEFAULT_CONNECT_TIMEOUT as DEFAULT_CONNECT_TIMEOUT
    from ._transports._common import close_write as close_write
    from ._transports.api import listener_address as listener_address
    from ._transports.api import remove_socket_file as remove_socket_file
    from ._transports.api import set_buffer_size as set_buffer_size
    from ._transports.features import has_hyperv as has_hyperv
    from ._transports.features import has_vsock as has_vsock
    from ._transports.features import loaded_vsock_transports as loaded_vsock_transports
    from ._transports.features import local_cid as local_cid
    from ._transports.features import vsock_loopback_loaded as vsock_loopback_loaded
    from ._windows.export import registration_script as registration_script
    from ._windows.registry import Registration as Registration
    from ._windows.registry import RegistryBackend as RegistryBackend
    from ._windows.registry import RegistryEdit as RegistryEdit
    from ._windows.registry import Removal as Removal
    from ._windows.registry import ServiceDeclaration as ServiceDeclaration
    from ._windows.registry import ServiceEntry as ServiceEntry
    from ._windows.registry import register_service as register_service
    from ._windows.registry import registered_services as registered_services
    from ._windows.registry import unregister_service as unregister_service
    from ._windows.vms import ProcessResult as ProcessResult
    from ._windows.vms import VmDiscovery as VmDiscovery
    from ._windows.vms import VmInfo as VmInfo
    from ._windows.vms import discover_vms as discover_vms

del TYPE_CHECKING
