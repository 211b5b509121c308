"""The agent: one process hosting the enabled built-ins on the service framework.

Every enabled service is reachable on the shared address behind the service hello
(:mod:`hvsock._core.mux`); a service whose section has ``listen`` is also served
there on its own, without the hello (QGA only that way: its clients speak QGA
from the first byte). Allowlists default to the host (see
:func:`.config.default_allow`): CID 2 for vsock, and for exec and QGA only a
privileged host user (a source port <= 1023); the parent partition for Hyper-V;
the agent's own uid and root for Unix sockets and hybrid listeners; loopback for
TCP, where exec and QGA need an explicit allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..._core import ids, mux
from ..._core.addresses import (
    Address,
    HybridAddress,
    HyperVAddress,
    TcpAddress,
    VsockAddress,
)
from ..._core.framing import encode_frame
from ..._errors import ArgumentError, ProtocolError
from ..._server.peers import refused_by
from ..._service.connection import Connection, SyncConnection
from ..._service.declaration import Limits, Service
from ..._service.frames import read_frame
from ..._service.host import ServiceHost
from .. import qga as qga_mod
from .. import sysinfo
from .config import (
    AGENT_PORT,
    OWN_ADDRESS_ONLY,
    OWN_DEFAULT_PORTS,
    SENSITIVE,
    AgentConfig,
    ServiceConfig,
    addresses_of,
    default_allow,
    default_listen,
)

__all__: list[str] = []

LOG = logging.getLogger("hvsock.agent")
#: Seconds a client has to send its service hello.
HELLO_TIMEOUT = 30.0

#: factory(section, allow, **extras) -> Service
Factory = Callable[..., Service]


def _exec(section: ServiceConfig, allow: Any) -> Service:
    # Imported here: exec needs POSIX (PTYs, process groups); the rest of the agent does not.
    from ..exec import server as exec_server

    o = section.options
    policy = exec_server.ExecPolicy(
        max_sessions=o.get("max_sessions", 32),
        allow_user=o.get("allow_user", True),
        max_timeout=o.get("max_timeout"),
        max_output=o.get("max_output"),
    )
    return exec_server.exec_service(allow=allow, policy=policy)


def _qga(section: ServiceConfig, allow: Any, **extra: Any) -> Service:
    o = section.options
    return qga_mod.qga_service(
        allow=allow, commands=o.get("commands"), block=o.get("block", ()), **extra
    )


def _kvp(section: ServiceConfig, allow: Any) -> Service:
    from ..kvp.service import kvp_service
    from ..kvp.store import DEFAULT_DIRECTORY

    return kvp_service(
        port=OWN_DEFAULT_PORTS["kvp"],
        allow=allow,
        pool_dir=section.options.get("pool_dir", DEFAULT_DIRECTORY),
    )


def _cp(section: ServiceConfig, allow: Any) -> Service:
    from ..files.server import file_service

    o = section.options
    return file_service(
        o.get("roots", []),
        port=OWN_DEFAULT_PORTS["cp"],
        allow=allow,
        read_only=o.get("read_only", False),
        max_file_size=o.get("max_file_size"),
        max_files=o.get("max_files"),
        refuse_hardlinks=o.get("refuse_hardlinks", False),
    )


#: The built-ins the agent can host: name -> factory(section, allow) -> Service.
CATALOGUE: dict[str, Factory] = {
    "exec": _exec,
    "info": lambda section, allow: sysinfo.info_service(allow=allow),
    "health": lambda section, allow: sysinfo.health_service(allow=allow),
    "time": lambda section, allow: sysinfo.time_service(
        allow=allow,
        allow_set=section.options.get("allow_set", False),
        max_step=section.options.get("max_step"),
    ),
    "qga": _qga,
    "kvp": _kvp,
    "cp": _cp,
}


def with_port(address: Address, port: int) -> Address:
    """*address* (the agent's shared one) with *port*: where an own-address service
    with a well-known port listens when its section names no address."""
    if isinstance(address, VsockAddress):
        return VsockAddress(address.cid, port)
    if isinstance(address, HyperVAddress):
        return HyperVAddress(address.vm_id, ids.service_id_for_port(port))
    if isinstance(address, HybridAddress):
        return HybridAddress(address.uds_path, port)
    if isinstance(address, TcpAddress):
        return TcpAddress(address.host, port)
    raise ArgumentError(f"give the service its own listen address: {address} has no port to change")


@dataclass
class _Sub:
    service: Service
    log: logging.Logger


class MuxHandler:
    """The handler of the shared address: read the hello, hand the connection over."""

    def __init__(self, services: dict[str, Service]) -> None:
        self.subs = {
            name: _Sub(svc, logging.getLogger(f"hvsock.service.{svc.name}"))
            for name, svc in services.items()
        }

    async def __call__(self, conn: Connection) -> None:
        try:
            body = await asyncio.wait_for(read_frame(conn.reader, mux.MAX_HELLO), HELLO_TIMEOUT)
            if body is None:
                return
            name = mux.decode_hello(body)
        except asyncio.TimeoutError:
            return
        except ProtocolError as exc:
            await self._refuse(conn, "bad_hello", str(exc))
            return
        sub = self.subs.get(name)
        if sub is None:
            await self._refuse(
                conn,
                "unknown_service",
                f"this agent serves {', '.join(sorted(self.subs)) or 'nothing'}, not {name!r}",
            )
            return
        why = refused_by(sub.service.allow, conn.peer)
        if why is not None:
            sub.log.warning("denied %s: not in the allowlist (%s)", conn.peer, why)
            await self._refuse(conn, "forbidden", f"refused by {name}'s allowlist: {why}")
            return
        conn.writer.write(encode_frame(mux.encode_answer(), mux.MAX_HELLO))
        await conn.writer.drain()
        inner = Connection(conn.reader, conn.writer, conn.peer, sub.service, sub.log)
        if sub.service.is_async:
            await sub.service.handler(inner)  # type: ignore[arg-type,misc]
        else:
            await self._run_sync(conn, sub)

    async def _refuse(self, conn: Connection, code: str, message: str) -> None:
        with contextlib.suppress(OSError):
            conn.writer.write(encode_frame(mux.encode_answer((code, message)), mux.MAX_HELLO))
            await conn.writer.drain()

    async def _run_sync(self, conn: Connection, sub: _Sub) -> None:
        # A plain handler wants a blocking socket: stop asyncio reading (the client
        # sends nothing before our answer, so nothing is buffered) and lend it a copy.
        transport = conn.writer.transport
        transport.pause_reading()  # type: ignore[attr-defined]
        raw = transport.get_extra_info("socket")
        sock = socket.socket(fileno=os.dup(raw.fileno()))
        try:
            sock.setblocking(True)
            sock.settimeout(sub.service.limits.idle_timeout)
            sync = SyncConnection(sock, conn.peer, sub.service, sub.log)
            await asyncio.to_thread(sub.service.handler, sync)  # type: ignore[arg-type]
        finally:
            sock.close()


@dataclass
class Agent:
    """What :func:`build_host` made: the host, and which service is where."""

    host: ServiceHost
    shared: Address
    services: dict[str, Service]
    own: dict[str, Address]


def build_agent(
    config: AgentConfig,
    *,
    ready_file: str | None = None,
    on_ready: Callable[[dict[str, Address]], None] | None = None,
    qga_shutdown: qga_mod.ShutdownAction | None = None,
) -> Agent:
    """A :class:`hvsock.ServiceHost` serving *config*'s enabled services.

    *qga_shutdown* replaces what guest-shutdown does (tests pass a recorder).
    Raises :class:`hvsock.ArgumentError` for a service the catalogue lacks.
    """
    shared = config.listen or default_listen()
    agent_allow = config.allow if config.allow is not None else default_allow(shared)
    services: dict[str, Service] = {}
    own: dict[str, Address] = {}
    for name in config.enabled:
        if name not in CATALOGUE:
            raise ArgumentError(
                f"this agent has no built-in {name!r}; known: {', '.join(CATALOGUE)}"
            )
        section = config.services[name]
        # Never "everyone" by accident: the section's list, else the agent's, else the
        # host side of the address it is served on. On the shared address the agent's
        # list is checked at accept as well, so a section's list narrows it there.
        # Services that run commands never take the agent's list: theirs is the
        # privileged host (docs/agent.md, "Security model").
        if section.allow is not None:
            allow = section.allow
        elif name in SENSITIVE:
            allow = list(
                dict.fromkeys(
                    rule
                    for address in addresses_of(config, name)
                    for rule in default_allow(address, name)
                )
            )
        elif config.allow is not None:
            allow = config.allow
        else:
            allow = default_allow(section.listen or shared)
        extra = {"shutdown": qga_shutdown} if name == "qga" and qga_shutdown else {}
        services[name] = CATALOGUE[name](section, allow, **extra)
        if section.listen is not None:
            own[name] = section.listen
        elif name in OWN_DEFAULT_PORTS:
            own[name] = with_port(shared, OWN_DEFAULT_PORTS[name])
    host = ServiceHost(grace=config.grace, ready_file=ready_file, on_ready=on_ready)
    # QGA clients speak QGA from the first byte: it lives on its own address only.
    shared_names = {n: s for n, s in services.items() if n not in OWN_ADDRESS_ONLY}
    if shared_names:
        host.add(
            Service(
                "hvsock agent",
                AGENT_PORT,
                MuxHandler(shared_names),
                allow=agent_allow,
                limits=Limits(max_connections=config.max_connections, idle_timeout=None),
            ),
            shared,
        )
    for name, address in own.items():
        host.add(services[name], address)
    return Agent(host, shared, services, own)
