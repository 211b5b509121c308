"""A service, declared once: its friendly name, its service id, its handler and limits.

The declaration is also what Windows registration needs (name + id), so both
live here together.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import _validate
from .._core import ids
from .._core.addresses import HyperVAddress, VsockAddress
from .._core.framing import ABSOLUTE_MAX_FRAME, DEFAULT_MAX_FRAME
from .._errors import AddressError
from .._server.peers import allow_rules

if TYPE_CHECKING:
    from .connection import Connection, SyncConnection

AsyncHandler = Callable[["Connection"], Awaitable[None]]
SyncHandler = Callable[["SyncConnection"], None]
Handler = AsyncHandler | SyncHandler

MAX_NAME = _validate.MAX_SERVICE_NAME


@dataclass(frozen=True)
class Limits:
    """Per-service limits. Timeouts are seconds; None means no limit."""

    #: Connections served at once; at the limit the service stops accepting
    #: (clients wait in the listen backlog) rather than dropping anyone.
    max_connections: int = 64
    #: Longest wait for the peer in one read or write through the Connection.
    idle_timeout: float | None = 300.0
    #: Longest a whole connection may last.
    total_timeout: float | None = None
    #: Largest frame the Connection's frame/RPC helpers accept.
    max_message_size: int = DEFAULT_MAX_FRAME

    def __post_init__(self) -> None:
        _validate.whole_number(self.max_connections, "max_connections", 1, 100_000)
        _validate.positive_number(self.idle_timeout, "idle_timeout", optional=True)
        _validate.positive_number(self.total_timeout, "total_timeout", optional=True)
        _validate.whole_number(self.max_message_size, "max_message_size", 1, ABSOLUTE_MAX_FRAME)


def check_name(name: object) -> str:
    """A friendly name as the registry's ElementName takes it (the registration's check).

    Raises :class:`ArgumentError`.
    """
    return _validate.service_name(name)


@dataclass(frozen=True)
class Service:
    """An integration service: ``Service("My agent", 5000, handler)``.

    *service_id* is a port (meaning its VSOCK template id, reachable from Linux
    guests), a GUID string or a ``uuid.UUID``. *handler* is ``async def h(conn)``
    taking a :class:`Connection`, or a plain function taking a
    :class:`SyncConnection` (run in a thread pool). *allow*, when given, lists the
    peers let in: CIDs, VM ids, TCP hosts, or ``"uid:N"`` for Unix peers; others
    are closed before the handler sees them.
    """

    name: str
    service_id: Any  # uuid.UUID after __post_init__
    handler: Handler
    allow: Any = None  # frozenset[AllowRule] | None after __post_init__
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        check_name(self.name)
        object.__setattr__(self, "service_id", ids.coerce_service_id(self.service_id))
        object.__setattr__(self, "allow", allow_rules(self.allow))
        _validate.callable_(self.handler, "handler")
        _validate.instance(self.limits, Limits, "limits")

    @property
    def is_async(self) -> bool:
        # An object with an ``async def __call__`` counts as async too.
        return inspect.iscoroutinefunction(self.handler) or inspect.iscoroutinefunction(
            type(self.handler).__call__
        )

    @property
    def framed(self) -> bool:
        """True when the handler speaks hvsock frames from the first byte (an
        :func:`rpc_handler`): a peer the allowlist refuses is then told why."""
        return bool(getattr(self.handler, "hvsock_framed", False))

    @property
    def port(self) -> int | None:
        """The vsock port, when the service id has the template form."""
        sid: uuid.UUID = self.service_id
        return ids.port_for_service_id(sid) if ids.is_template_service_id(sid) else None

    def hyperv_address(self, vm_id: uuid.UUID = ids.WILDCARD) -> HyperVAddress:
        """Where a Windows host listens for it (wildcard, or an exact VM id for WSL)."""
        return HyperVAddress(vm_id, self.service_id)

    def vsock_address(self, cid: int = ids.CID_ANY) -> VsockAddress:
        """Where a Linux machine listens for it; needs a template service id."""
        port = self.port
        if port is None:
            raise AddressError(
                f"service {self.name!r} has id {self.service_id}, not of the VSOCK template "
                "form, so it has no vsock port; declare it with a port to serve Linux peers"
            )
        return VsockAddress(cid, port)
