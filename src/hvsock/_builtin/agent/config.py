"""The agent's configuration: ``/etc/hvsock/agent.toml``, checked with line-precise errors.

::

    [agent]                       # the shared address: every enabled service behind the hello
    listen = "vsock://any:5100"   # default: vsock://any:5100 (Linux), hvsock://wildcard/5100
    allow = [2]                   # default: the host only (CID 2 / the parent partition)
    max_connections = 64
    grace = 10

    [exec]                        # off unless enabled
    enabled = true
    allow = [2]                   # narrows [agent] allow for this service
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

import re
import sys
from dataclasses import dataclass, field
from typing import Any

from ..._core.addresses import Address, parse_address
from ..._errors import ArgumentError, HvsockError

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
            return value, ("must be a list of CIDs, VM ids, hosts or \"uid:N\" "
                           "(e.g. [2] or [\"uid:0\"])")
        return value, None
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
    if not problems and not config.enabled:
        problems.append((None, "no service is enabled: set enabled = true in at least one "
                         "section"))
    if problems:
        raise ConfigError(path, problems)
    return config


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
