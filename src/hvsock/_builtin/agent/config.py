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
import re
import sys
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
from ..._server.peers import PrivilegedCid, allow_rules, fits, kind_hint
from ..._transports.features import has_hyperv

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__: list[str] = []

DEFAULT_PATH = "/etc/hvsock/agent.toml"
AGENT_PORT = 5100

#: Each service's keys and their kinds ("listen", "allow" and "enabled" are common to all).
SERVICE_KEYS: dict[str, dict[str, str]] = {
    "exec": {"allow_user": "bool", "max_sessions": "int", "max_timeout": "seconds",
             "max_output": "int"},
    "info": {},
    "health": {},
    "time": {"allow_set": "bool", "max_step": "seconds"},
    "qga": {"commands": "strings", "block": "strings"},
    "kvp": {"pool_dir": "string"},
    "cp": {"roots": "strings", "read_only": "bool", "max_file_size": "int", "max_files": "int",
           "refuse_hardlinks": "bool"},
}
#: Enabled when the config does not say (exec never is: it runs commands).
DEFAULT_ENABLED = {"exec": False, "info": True, "health": True, "time": True, "qga": False,
                   "kvp": False, "cp": False}
#: Services that speak their own protocol and so need their own address (no hello).
OWN_ADDRESS_ONLY = {"qga", "kvp", "cp"}
#: Own-address services with a well-known port: with no `listen` they are served on it,
#: on the agent's address family (vsock://any:5010, ...), so their clients need no hello.
OWN_DEFAULT_PORTS = {"kvp": 5010, "cp": 5005}
AGENT_KEYS = {"listen": "address", "allow": "allow", "max_connections": "int",
              "grace": "seconds"}
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
    return (f"{service} on {address} needs its own allow rules: every local user can "
            "connect to a TCP address (127.0.0.1 too), and TCP cannot tell root from "
            f"anyone else; if that is what you want, set [{service}] allow = "
            "[\"127.0.0.1\"] (--allow 127.0.0.1 on the command line)")


class ConfigError(ArgumentError):
    """The configuration is wrong; ``problems`` lists ``(line, message)`` pairs."""

    def __init__(self, path: str, problems: list[tuple[int | None, str]]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}:{line or '-'}: {msg}" for line, msg in problems))


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
    grace: float = 10.0
    services: dict[str, ServiceConfig] = field(default_factory=dict)
    #: (line, message) pairs worth a word that do not stop the agent (--check-config).
    warnings: list[tuple[int | None, str]] = field(default_factory=list)

    @property
    def enabled(self) -> list[str]:
        return [name for name, svc in self.services.items() if svc.enabled]


class _Lines:
    """Where a table or key is in the text, for messages (tomllib gives no positions)."""

    _HEADER = re.compile(r"\s*\[\s*([A-Za-z0-9_.-]+)\s*\]")
    _KEY = re.compile(r"\s*([A-Za-z0-9_-]+)\s*=")

    def __init__(self, text: str) -> None:
        self.tables: dict[str, int] = {}
        self.keys: dict[tuple[str, str], int] = {}
        table = ""
        for number, line in enumerate(text.splitlines(), 1):
            header = self._HEADER.match(line)
            if header:
                table = header.group(1)
                self.tables.setdefault(table, number)
                continue
            key = self._KEY.match(line)
            if key:
                self.keys.setdefault((table, key.group(1)), number)

    def of(self, table: str, key: str | None = None) -> int | None:
        if key is not None and (table, key) in self.keys:
            return self.keys[(table, key)]
        return self.tables.get(table)


def _check_value(kind: str, value: Any) -> tuple[Any, str | None]:
    """(normalised value, problem or None)."""
    if kind == "bool":
        return value, None if isinstance(value, bool) else "must be true or false"
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        return value, None if ok else "must be a whole number > 0"
    if kind == "seconds":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        return (float(value) if ok else value), None if ok else "must be a number of seconds > 0"
    if kind == "string":
        return value, None if isinstance(value, str) and value else "must be a non-empty string"
    if kind == "strings":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value, None if ok else "must be a list of strings"
    if kind == "address":
        if not isinstance(value, str):
            return value, "must be an address string like vsock://any:5100"
        try:
            return parse_address(value), None
        except HvsockError as exc:
            return value, str(exc)
    if kind == "allow":
        if not isinstance(value, list) or not all(
                isinstance(v, (int, str)) and not isinstance(v, bool) for v in value):
            return value, ("must be a list of CIDs, VM ids, IP addresses or \"uid:N\" "
                           "(e.g. [2], [\"host:privileged\"] or [\"uid:0\"])")
        try:
            rules = allow_rules(value)
        except ArgumentError as exc:
            return value, f"has a bad rule: {exc}"
        assert rules is not None
        return sorted(rules, key=str), None
    raise AssertionError(kind)


def parse_config(text: str, path: str = "agent.toml") -> AgentConfig:
    """The configuration in *text*; :class:`ConfigError` lists every problem with its line."""
    lines = _Lines(text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise ConfigError(path, [(int(match.group(1)) if match else None,
                                  f"not valid TOML: {exc}")]) from None
    problems: list[tuple[int | None, str]] = []
    config = AgentConfig()

    def check(table: str, key: str, kind: str, value: Any) -> Any:
        norm, problem = _check_value(kind, value)
        if problem:
            problems.append((lines.of(table, key), f"[{table}] {key} {problem}"))
            return None
        return norm

    for table, section in data.items():
        if table != "agent" and table not in SERVICE_KEYS:
            problems.append((lines.of(table), f"unknown section [{table}]; known: "
                             f"[agent], {', '.join(f'[{n}]' for n in SERVICE_KEYS)}"))
        elif not isinstance(section, dict):
            problems.append((lines.of("", table), f"{table} must be a table: [{table}]"))
    agent = data.get("agent", {})
    if isinstance(agent, dict):
        for key, value in agent.items():
            if key not in AGENT_KEYS:
                problems.append((lines.of("agent", key), f"[agent] has no key {key!r}; known: "
                                 f"{', '.join(AGENT_KEYS)}"))
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
                problems.append((lines.of(name, key), f"[{name}] has no key {key!r}; known: "
                                 f"{', '.join(known)}"))
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
        if (name in OWN_ADDRESS_ONLY and name not in OWN_DEFAULT_PORTS and svc.enabled
                and svc.listen is None):
            problems.append((lines.of(name, "enabled") or lines.of(name),
                             f"[{name}] speaks its own protocol: give it its own "
                             "listen = \"vsock://any:PORT\""))
        if name == "cp" and svc.enabled and not svc.options.get("roots"):
            problems.append((lines.of(name, "enabled") or lines.of(name),
                             "[cp] serves only the directories it is given: set "
                             "roots = [\"/srv/share\"]"))
        config.services[name] = svc
    if not problems:
        _check_allow(config, lines, problems)
    if not problems and not config.enabled:
        problems.append((None, "no service is enabled: set enabled = true in at least one "
                         "section"))
    if problems:
        raise ConfigError(path, problems)
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
    problems: list[tuple[int | None, str]] = []
    holders: list[AgentConfig | ServiceConfig] = [config, *config.services.values()]
    for holder in holders:
        if holder.allow is not None:
            rules, problem = _check_value("allow", holder.allow)
            if problem is not None:
                problems.append((None, f"allow {problem}"))
            else:
                holder.allow = rules
    if not problems:
        _check_allow(config, _Lines(""), problems)
    if problems:
        raise ConfigError(where, problems)


def _check_allow(config: AgentConfig, lines: _Lines,
                 problems: list[tuple[int | None, str]]) -> None:
    """Rules that can never match where they apply are errors; exec on TCP needs its own."""
    shared = config.listen or default_listen()

    def never(rules: list[Any], address: Address, table: str) -> None:
        bad = [r for r in rules if not fits(r, address)]
        problem = (lines.of(table, "allow"), f"[{table}] allow: {', '.join(map(str, bad))} "
                   f"can never match a peer on {address} ({kind_hint(address)})")
        if bad and problem not in problems:
            problems.append(problem)

    if config.allow is not None and any(n not in OWN_ADDRESS_ONLY for n in config.enabled):
        never(config.allow, shared, "agent")  # checked at accept on the shared address
    for name in config.enabled:
        svc = config.services[name]
        for address in addresses_of(config, name):
            if svc.allow is not None:
                never(svc.allow, address, name)
            elif name in SENSITIVE:
                problem = (lines.of(name, "enabled") or lines.of(name),
                           needs_opt_in(name, address))
                if isinstance(address, TcpAddress) and problem not in problems:
                    problems.append(problem)
            elif config.allow is not None:
                never(config.allow, address, "agent")
            if (name in SENSITIVE and svc.allow is not None
                    and isinstance(address, VsockAddress)):
                plain = [r for r in svc.allow if isinstance(r, int)]
                warning = (lines.of(name, "allow"), unproven(name, plain))
                if plain and warning not in config.warnings:
                    config.warnings.append(warning)


def unproven(name: str, cids: list[int]) -> str:
    """The warning for a sensitive service that lets CIDs in from any source port."""
    return (f"[{name}] allow lets CID {', '.join(map(str, cids))} in from any source port: "
            "on a KVM/QEMU host every local user can connect to a guest, so every one of "
            "them may use "
            f"{name} here; use \"host:privileged\" unless the host side is guarded "
            "otherwise (Firecracker / Cloud Hypervisor: only the VMM socket's file mode "
            "guards it, and hybrid vsock cannot prove privilege; see docs/agent.md, "
            "\"Security model\")")


def load_config(path: str) -> AgentConfig:
    """Read and check *path*; raises :class:`ConfigError` (also for an unreadable file)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [(None, f"cannot read the configuration: {exc}")]) from None
    return parse_config(text, path)


def default_config(enable: list[str] | None = None) -> AgentConfig:
    """The configuration with no file: defaults, with *enable* (names) switched on."""
    config = AgentConfig()
    for name in SERVICE_KEYS:
        config.services[name] = ServiceConfig(name, DEFAULT_ENABLED.get(name, False)
                                              if enable is None else name in enable)
    return config
