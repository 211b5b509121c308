"""hvsock: Hyper-V sockets and VM sockets for Python.

One address model for Hyper-V (VM id + service id), Linux VM sockets (CID +
port), hybrid vsock (Firecracker / Cloud Hypervisor Unix sockets), TCP and Unix;
``connect`` and ``listen`` that hand back real ``socket.socket`` objects; one
exception root, :class:`HvsockError`.

The names most programs use are here; the rest are in namespaces, one area each:
:mod:`hvsock.sockets`, :mod:`hvsock.windows`, :mod:`hvsock.kvm`, :mod:`hvsock.framing`,
:mod:`hvsock.forwarding`, :mod:`hvsock.services`, :mod:`hvsock.doctor`, :mod:`hvsock.kvp`
and :mod:`hvsock.testing` (docs/api.md lists them all).

Names load lazily (PEP 562): ``import hvsock`` costs about as much as ``import
socket``; asyncio, the service framework and each namespace load when first used.
"""

import importlib

from ._version import __version__ as __version__

# Not typing.TYPE_CHECKING: importing typing would cost more than the rest of this
# file; mypy treats any constant of this name as true.
TYPE_CHECKING = False


#: Where each top-level name lives: module -> the names it gives the package. One table;
#: ``__all__``, ``dir()`` and the lazy lookup all come from it, and a test checks each
#: entry against its module's own ``__all__`` and against the ``TYPE_CHECKING`` block.
#: The rest of the public API is in namespaces (hvsock.windows, .sockets, .kvm, .framing,
#: .forwarding, .services, .doctor, .kvp, .testing); docs/api.md lists them all.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "._core.addresses": (
        "Address",
        "HybridAddress",
        "HyperVAddress",
        "NamedHybridAddress",
        "NamedVmAddress",
        "NamedVsockAddress",
        "SocketAddress",
        "TcpAddress",
        "UnixAddress",
        "VsockAddress",
        "describe_address",
        "parse_address",
    ),
    "._endpoints": (
        "connect",
        "connect_socket",
        "listen",
        "open_connection",
        "resolve_address",
        "start_server",
    ),
    "._transports._common": ("close_write",),
    "._errors": (
        "AddressError",
        "AddressInUseError",
        "ArgumentError",
        "ConnectTimeoutError",
        "FrameTooLargeError",
        "HandshakeError",
        "HvsockError",
        "IdleTimeoutError",
        "NothingListeningError",
        "PermissionDeniedError",
        "ProtocolError",
        "RegistryError",
        "RemoteError",
        "TransportUnavailableError",
        "UnreachableError",
        "UnsupportedError",
        "VmNotFoundError",
        "ConnectionResetByPeerError",
        "NotAllowedError",
        "KvpError",
        "Cancelled",
        "PeerClosedError",
    ),
    "._server.peers": (
        "Peer",
        "PrivilegedCid",
    ),
    "._service.connection": (
        "Connection",
        "SyncConnection",
    ),
    "._service.declaration": (
        "Limits",
        "Service",
    ),
    "._service.frames": (
        "AsyncRpcClient",
        "RpcClient",
    ),
    "._service.host": ("ServiceHost",),
    "._service.rpc": ("rpc_handler",),
    "._builtin.exec.client": (
        "ExecResult",
        "exec",
        "exec_async",
    ),
    "._builtin.files.client": (
        "CopyResult",
        "copy",
        "copy_async",
    ),
}

_HOME: dict[str, str] = {name: module for module, names in _EXPORTS.items() for name in names}

#: The public namespaces: ``hvsock.windows`` works after a bare ``import hvsock`` too.
_NAMESPACES = (
    "doctor",
    "forwarding",
    "framing",
    "kvm",
    "kvp",
    "services",
    "sockets",
    "testing",
    "windows",
)

# Sorted as ruff sorts a literal __all__: CONSTANTS, then Classes, then functions.
__all__ = sorted(
    ["__version__", *_HOME], key=lambda n: (0 if n.isupper() else 1 if n[:1].isupper() else 2, n)
)


if not TYPE_CHECKING:  # hidden from type checkers: an unknown name is an error there

    def __getattr__(name: str) -> object:
        """Import the module that defines *name* on first use, and keep the name here.

        A name that moved to a namespace (``hvsock.WILDCARD`` is ``hvsock.windows.WILDCARD``
        now) still resolves, with a DeprecationWarning naming the new spelling.
        """
        module = _HOME.get(name)
        if module is None:
            if name in _NAMESPACES:
                return importlib.import_module(f"{__name__}.{name}")
            from ._moved import moved

            return moved(name)
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_NAMESPACES))


if TYPE_CHECKING:  # the same names, spelled out for type checkers and IDEs
    from ._builtin.exec.client import ExecResult as ExecResult
    from ._builtin.exec.client import exec as exec
    from ._builtin.exec.client import exec_async as exec_async
    from ._builtin.files.client import CopyResult as CopyResult
    from ._builtin.files.client import copy as copy
    from ._builtin.files.client import copy_async as copy_async
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
    from ._core.addresses import parse_address as parse_address
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
    from ._server.peers import Peer as Peer
    from ._server.peers import PrivilegedCid as PrivilegedCid
    from ._service.connection import Connection as Connection
    from ._service.connection import SyncConnection as SyncConnection
    from ._service.declaration import Limits as Limits
    from ._service.declaration import Service as Service
    from ._service.frames import AsyncRpcClient as AsyncRpcClient
    from ._service.frames import RpcClient as RpcClient
    from ._service.host import ServiceHost as ServiceHost
    from ._service.rpc import rpc_handler as rpc_handler
    from ._transports._common import close_write as close_write

del TYPE_CHECKING
