"""The agent's configuration: ``/etc/hvsock/agent.toml``, checked with line-precise errors.

::

    [agent]                       # the shared address: every enabled service behind the hello
    listen = "vsock://any:5100"   # default: vsock://any:5100 (Linux), hvsock://wildcard/5100
    allow = [2]                   # default: the host only (CID 2 / the parent partition)
    max_connections = 64
    grace = 10

    [exec]                        # off unless enabled
    enabled = true
    allow = ["host:privileged"]   # the default on vsock: root on the host (docs/agent.md,
                                  # "Security model"); exec never takes [agent] allow
    listen = "vsock://any:5105"   # optional: its own address too (no hello there)
    allow_user = true
    max_sessions = 32
    max_timeout = 3600
    max_output = 1073741824

    [info]    enabled = true
    [health]  enabled = true
    [time]    enabled = true, allow_set = false, max_step = 5.0
    [qga]     enabled = false, listen = "vsock://any:5104", commands = [...], block = [...]
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..._core import ids
from ..._core.addresses import (
    Address,
    HybridAddress,
    HyperVAddress,
    TcpAddress,
    UnixAddress,
    VsockAddress,
    parse_address,
)
from ..._errors import ArgumentError, HvsockError
from ..._server import config as toml
from ..._server.config import ConfigError, Lines, Problem, Problems
from ..._server.lifecycle import DEFAULT_GRACE, check_grace
from ..._server.peers import PrivilegedCid, allow_rules, fits, kind_hint
from ..._transports.features import has_hyperv

__all__ = ["ConfigError"]

DEFAULT_PATH = "/etc/hvsock/agent.toml"
AGENT_PORT = 5100

#: Each service's keys and their kinds ("listen", "allow" and "enabled" are common to all).
SERVICE_KEYS: dict[str, dict[str, str]] = {
    "exec": {
        "allow_user": "bool",
        "max_sessions": "int",
        "max_timeout": "seconds",
        "max_output": "int",
    },
    "info": {},
    "health": {},
    "time": {"allow_set": "bool", "max_step": "seconds"},
    "qga": {"commands": "strings", "block": "strings"},
    "kvp": {"pool_dir": "string"},
    "cp": {
        "roots": "strings",
        "read_only": "bool",
        "max_file_size": "int",
        "max_files": "int",
        "refuse_hardlinks": "bool",
    },
}
#: Enabled when the config does not say (exec never is: it runs commands).
DEFAULT_ENABLED = {
    "exec": False,
    "info": True,
    "health": True,
    "time": True,
    "qga": False,
    "kvp": False,
    "cp": False,
}
#: Services that speak their own protocol and so need their own address (no hello).
OWN_ADDRESS_ONLY = {"qga", "kvp", "cp"}
#: Own-address services with a well-known port: with no `listen` they are served on it,
#: on the agent's address family (vsock://any:5010, ...), so their clients need no hello.
OWN_DEFAULT_PORTS = {"kvp": 5010, "cp": 5005}
AGENT_KEYS = {"listen": "address", "allow": "allow", "max_connections": "int", "grace": "grace"}
COMMON_KEYS = {"enabled": "bool", "listen": "address", "allow": "allow"}
#: Services that run commands as the agent's user (root): with no ``allow`` of their own
#: they let in only a privileged host user, never whatever ``[agent] allow`` says.
SENSITIVE = frozenset({"exec", "qga"})


def default_listen() -> Address:
    """The shared address when the config names none: port 5100 on the VM socket family."""
    if has_hyperv():
        return HyperVAddress(ids.WILDCARD, ids.service_id_for_port(AGENT_PORT))
    return VsockAddress(ids.CID_ANY, AGENT_PORT)


def default_allow(address: Address, service: str | None = None) -> list[Any]:
    """Who may connect when the config does not say: the host side only.

    For a :data:`SENSITIVE` *service*: on AF_VSOCK only a privileged host user (CID 2
    from a source port <= 1023); on TCP nobody (see :func:`needs_opt_in`).
    """
    if isinstance(address, VsockAddress):
        return [PrivilegedCid(ids.CID_HOST) if service in SENSITIVE else ids.CID_HOST]
    if isinstance(address, HyperVAddress):
        return [ids.PARENT]
    if isinstance(address, (UnixAddress, HybridAddress)):
        # A hybrid listener's peer is the VMM's process, seen by its uid like a Unix peer.
        me = os.geteuid()
        return [f"uid:{me}"] + (["uid:0"] if me != 0 else [])
    if isinstance(address, TcpAddress):
        if service in SENSITIVE:
            raise ArgumentError(needs_opt_in(service, address))
        return ["127.0.0.1", "::1"]
    return []


def needs_opt_in(service: str, address: Address) -> str:
    return (
        f"{service} on {address} needs its own allow rules: every local user can "
        "connect to a TCP address (127.0.0.1 too), and TCP cannot tell root from "
        f"anyone else; if that is what you want, set [{service}] allow = "
        '["127.0.0.1"] (--allow 127.0.0.1 on the command line)'
    )


@dataclass
class ServiceConfig:
    name: str
    enabled: bool
    listen: Address | None = None
    allow: list[Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AgentConfig:
    listen: Address | None = None
    allow: list[Any] | None = None  # None: the default for the address kind
    max_connections: int = 64
    grace: float = DEFAULT_GRACE
    services: dict[str, ServiceConfig] = field(default_factory=dict)
    #: (line, message) pairs worth a word that do not stop the agent (--check-config).
    warnings: list[Problem] = field(default_factory=list)

    @property
    def enabled(self) -> list[str]:
        return [name for name, svc in self.services.items() if svc.enabled]


def _fail(problem: str) -> ArgumentError:
    return ArgumentError(problem)


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _fail("must be true or false")
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise _fail("must be a whole number > 0")
    return value


def _seconds(value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise _fail("must be a number of seconds > 0")
    return float(value)


def _grace(value: object) -> float:
    try:
        return check_grace(value)
    except ArgumentError:
        raise _fail("must be a number of seconds >= 0") from None


def _string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _fail("must be a non-empty string")
    return value


def _strings(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail("must be a list of strings")
    return value


def _address(value: object) -> Address:
    if not isinstance(value, str):
        raise _fail("must be an address string like vsock://any:5100")
    try:
        return parse_address(value)
    except HvsockError as exc:
        raise _fail(str(exc)) from None


def _allow(value: object) -> list[Any]:
    if not isinstance(value, list) or not all(
        isinstance(v, (int, str)) and not isinstance(v, bool) for v in value
    ):
        raise _fail(
            'must be a list of CIDs, VM ids, IP addresses or "uid:N" '
            '(e.g. [2], ["host:privileged"] or ["uid:0"])'
        )
    try:
        rules = allow_rules(value)
    except ArgumentError as exc:
        raise _fail(f"has a bad rule: {exc}") from None
    assert rules is not None
    return sorted(rules, key=str)


#: The type of every option (the tables above name them): its check, which returns
#: the value normalised or raises ArgumentError saying what the value must be.
KINDS: dict[str, Callable[[object], Any]] = {
    "bool": _bool,
    "int": _int,
    "seconds": _seconds,
    "grace": _grace,
    "string": _string,
    "strings": _strings,
    "address": _address,
    "allow": _allow,
}


def parse_config(text: str, path: str = "agent.toml") -> AgentConfig:
    """The configuration in *text*; :class:`ConfigError` lists every problem with its line."""
    data, lines = toml.parse(text, path)
    problems = Problems(path, lines)
    config = AgentConfig()

    def check(table: str, key: str, kind: str, value: Any) -> Any:
        _ok, norm = problems.check(KINDS[kind], value, table, key, label=f"[{table}] {key}")
        return norm

    for table, section in data.items():
        if table != "agent" and table not in SERVICE_KEYS:
            problems.add(
                f"unknown section [{table}]; known: "
                f"[agent], {', '.join(f'[{n}]' for n in SERVICE_KEYS)}",
                table,
            )
        elif not isinstance(section, dict):
            problems.add(f"{table} must be a table: [{table}]", "", table)
    agent = data.get("agent", {})
    if isinstance(agent, dict):
        for key, value in agent.items():
            if key not in AGENT_KEYS:
                problems.add(
                    f"[agent] has no key {key!r}; known: {', '.join(AGENT_KEYS)}", "agent", key
                )
                continue
            norm = check("agent", key, AGENT_KEYS[key], value)
            if norm is not None:
                setattr(config, key, norm)
    for name, extra in SERVICE_KEYS.items():
        section = data.get(name, {})
        if not isinstance(section, dict):
            continue
        svc = ServiceConfig(name, DEFAULT_ENABLED.get(name, False))
        known = {**COMMON_KEYS, **extra}
        for key, value in section.items():
            if key not in known:
                problems.add(f"[{name}] has no key {key!r}; known: {', '.join(known)}", name, key)
                continue
            norm = check(name, key, known[key], value)
            if norm is None:
                continue
            if key == "enabled":
                svc.enabled = norm
            elif key == "listen":
                svc.listen = norm
            elif key == "allow":
                svc.allow = norm
            else:
                svc.options[key] = norm
        if (
            name in OWN_ADDRESS_ONLY
            and name not in OWN_DEFAULT_PORTS
            and svc.enabled
            and svc.listen is None
        ):
            problems.add(
                f'[{name}] speaks its own protocol: give it its own listen = "vsock://any:PORT"',
                name,
                "enabled",
            )
        if name == "cp" and svc.enabled and not svc.options.get("roots"):
            problems.add(
                '[cp] serves only the directories it is given: set roots = ["/srv/share"]',
                name,
                "enabled",
            )
        config.services[name] = svc
    if not problems:
        _check_allow(config, problems)
    if not problems and not config.enabled:
        problems.add("no service is enabled: set enabled = true in at least one section")
    problems.raise_if_any()
    return config


def addresses_of(config: AgentConfig, name: str) -> list[Address]:
    """Where service *name* is served: the shared address (behind the hello) and its own."""
    shared = config.listen or default_listen()
    svc = config.services[name]
    out = [] if name in OWN_ADDRESS_ONLY else [shared]
    if svc.listen is not None:
        out.append(svc.listen)
    elif name in OWN_DEFAULT_PORTS:
        out.append(shared)  # the same kind: only the port differs
    return out


def validate(config: AgentConfig, where: str = "command line") -> None:
    """Check a configuration built without a file (``--listen``/``--enable``) the way
    :func:`parse_config` checks a file; raises :class:`ConfigError`."""
    problems = Problems(where, Lines(""))
    holders: list[AgentConfig | ServiceConfig] = [config, *config.services.values()]
    for holder in holders:
        if holder.allow is not None:
            ok, rules = problems.check(_allow, holder.allow, label="allow")
            if ok:
                holder.allow = rules
    if not problems:
        _check_allow(config, problems)
    problems.raise_if_any()


def _check_allow(config: AgentConfig, problems: Problems) -> None:
    """Rules that can never match where they apply are errors; exec on TCP needs its own."""
    shared = config.listen or default_listen()
    lines = problems.lines

    def never(rules: list[Any], address: Address, table: str) -> None:
        bad = [r for r in rules if not fits(r, address)]
        if bad:
            problems.add(
                f"[{table}] allow: {', '.join(map(str, bad))} can never match a "
                f"peer on {address} ({kind_hint(address)})",
                table,
                "allow",
            )

    if config.allow is not None and any(n not in OWN_ADDRESS_ONLY for n in config.enabled):
        never(config.allow, shared, "agent")  # checked at accept on the shared address
    for name in config.enabled:
        svc = config.services[name]
        for address in addresses_of(config, name):
            if svc.allow is not None:
                never(svc.allow, address, name)
            elif name in SENSITIVE:
                if isinstance(address, TcpAddress):
                    problems.add(needs_opt_in(name, address), name, "enabled")
            elif config.allow is not None:
                never(config.allow, address, "agent")
            if name in SENSITIVE and svc.allow is not None and isinstance(address, VsockAddress):
                plain = [r for r in svc.allow if isinstance(r, int)]
                warning = (lines.of(name, "allow"), unproven(name, plain))
                if plain and warning not in config.warnings:
                    config.warnings.append(warning)


def unproven(name: str, cids: list[int]) -> str:
    """The warning for a sensitive service that lets CIDs in from any source port."""
    return (
        f"[{name}] allow lets CID {', '.join(map(str, cids))} in from any source port: "
        "on a KVM/QEMU host every local user can connect to a guest, so every one of "
        "them may use "
        f'{name} here; use "host:privileged" unless the host side is guarded '
        "otherwise (Firecracker / Cloud Hypervisor: only the VMM socket's file mode "
        "guards it, and hybrid vsock cannot prove privilege; see docs/agent.md, "
        '"Security model")'
    )


def load_config(path: str) -> AgentConfig:
    """Read and check *path*; raises :class:`ConfigError` (also for an unreadable file)."""
    return parse_config(toml.read(path), path)


def default_config(enable: list[str] | None = None) -> AgentConfig:
    """The configuration with no file: defaults, with *enable* (names) switched on."""
    config = AgentConfig()
    for name in SERVICE_KEYS:
        config.services[name] = ServiceConfig(
            name, DEFAULT_ENABLED.get(name, False) if enable is None else name in enable
        )
    return config
