"""Below connect and listen: vsock CIDs and ports, what this machine has, socket helpers.

The CID constants and :data:`PORT_ANY` are the numbers behind ``vsock://host:...``,
``vsock://any:any`` and the other names addresses take. :func:`has_vsock`,
:func:`has_hyperv`, :func:`local_cid`, :func:`loaded_vsock_transports` and
:func:`vsock_loopback_loaded` say what this machine can do (feature checks, no
connection made). :func:`listener_address` gives the address a listener got (the port
the kernel picked for ``any``), :func:`remove_socket_file` cleans up after a Unix or
hybrid-vsock listener, :func:`set_buffer_size` sets both kernel buffers of a socket.
"""

from ._core.ids import CID_ANY, CID_HOST, CID_HYPERVISOR, CID_LOCAL, PORT_ANY
from ._transports._common import DEFAULT_CONNECT_TIMEOUT
from ._transports.api import listener_address, remove_socket_file, set_buffer_size
from ._transports.features import (
    has_hyperv,
    has_vsock,
    loaded_vsock_transports,
    local_cid,
    vsock_loopback_loaded,
)

__all__ = [
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
]
