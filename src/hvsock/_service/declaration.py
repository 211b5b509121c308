"""A service, declared once: its friendly name, its service id, its handler and limits.

The declaration is also what Windows registration needs (name + id), so both
live here together.
"""

from __future__ import annotations

import inspect
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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

MAX_NAME = 256


def _positive(value: object, what: str, *, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{what} must be a positive number{' or None' if optional else ''}, "
                         f"not {value!r}")


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
        if isinstance(self.max_connections, bool) or not isinstance(self.max_connections, int) \
                or not 1 <= self.max_connections <= 100_000:
            raise ValueError(f"max_connections must be a whole number in 1..100000, "
                             f"not {self.max_connections!r}")
        _positive(self.idle_timeout, "idle_timeout", optional=True)
        _positive(self.total_timeout, "total_timeout", optional=True)
        if isinstance(self.max_message_size, bool) or not isinstance(self.max_message_size, int) \
                or not 1 <= self.max_message_size <= ABSOLUTE_MAX_FRAME:
            raise ValueError(f"max_message_size must be a whole number in "
                             f"1..{ABSOLUTE_MAX_FRAME}, not {self.max_message_size!r}")


def check_name(name: object) -> str:
    """A friendly name as the registry's ElementName takes it: 1..256 printable chars."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a service needs a non-empty name, not {name!r}")
    if len(name) > MAX_NAME:
        raise ValueError(f"service name is {len(name)} characters; at most {MAX_NAME}")
    if any(not c.isprintable() for c in name):
        raise ValueError(f"service name {name!r} has control characters")
    return name


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
        if not callable(self.handler):
            raise TypeError(f"handler must be callable, not {type(self.handler).__name__}")
        if not isinstance(self.limits, Limits):
            raise TypeError("limits must be a hvsock.Limits")

    @property
    def is_async(self) -> bool:
        # An object with an ``async def __call__`` counts as async too.
        return inspect.iscoroutinefunction(self.handler) or inspect.iscoroutinefunction(
            type(self.handler).__call__)

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
                "form, so it has no vsock port; declare it with a port to serve Linux peers")
        return VsockAddress(cid, port)
