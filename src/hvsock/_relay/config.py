"""The relay's settings, checked once: :class:`RelayConfig` (built by ``Relay`` and the CLI).

Pure: no sockets, no files. :func:`parse_toml` reads the text of a ``relay.toml``
(several listen -> target forwards in one relay, each with its own allowlist) and
reports a bad value with the file and line it is on.

Target rules (``allow_targets``, ``--allow-target``) bound where a relay may
forward at all, as AWS's ``vsock-proxy`` allowlist does: every forward's target
must match one rule, or the configuration is refused before anything is bound.
A rule is an address pattern, matched field by field: ``tcp://HOST:PORT`` where
HOST is an IP, a network (``10.0.0.0/8``), a name or a glob (``*.amazonaws.com``)
and PORT a number or ``*``; ``vsock://CID:PORT`` (each a value or ``*``);
``hvsock://VM/SERVICE`` (each as in an address, or ``*``); ``unix://PATH`` and
``hybrid://PATH:PORT`` where PATH has a glob per component (``unix:///run/app/*.sock``:
a ``*`` never crosses a ``/``). Paths are compared after dropping ``.`` and repeated
``/``; a ``..`` component is refused in a rule and never matched in a target (it
could lead anywhere). Paths are matched as written: a symlink is not followed. A
name target matches name rules only: it is not resolved here.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .._core.addresses import (
    Address,
    HybridAddress,
    HyperVAddress,
    NamedVmAddress,
    TcpAddress,
    UnixAddress,
    VsockAddress,
    parse_address,
)
from .._errors import AddressError, ArgumentError, HvsockError
from .._server import config as toml
from .._server.config import Problems
from .._server.lifecycle import DEFAULT_GRACE, check_grace, check_ready_file
from .._server.peers import AllowRule, allow_rules
from .._transports._common import DEFAULT_CONNECT_TIMEOUT, check_buffer_size
from .._transports.stream import DEFAULT_UNIX_MODE
from .._validate import non_negative_number, positive_number, quote, whole_number
from . import datapath

__all__ = ["Forward", "RelayConfig", "parse_toml"]

DATA_PATHS = ("auto", "splice", "copy")
#: Seconds the loop keeps polling without sleeping after it handled events.
DEFAULT_BUSY_POLL = 200e-6
#: Bytes the whole relay may hold in flight (its buffers and pipes). Each
#: direction also gets a small floor (datapath.MIN_READ) past the budget, so a
#: stalled one is never starved of progress: the bound is budget + floor x directions.
DEFAULT_BUFFER_MEMORY = 32 << 20
#: Most workers a relay runs (each is a process with its own event loop).
MAX_WORKERS = 256
_SCHEMES = ("tcp", "unix", "vsock", "hvsock", "hybrid")


def cores() -> int:
    """The cores this process may run on (its affinity where the OS tells it); 1
    where there is no fork (Windows), as workers are forked processes."""
    if not hasattr(os, "fork"):
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# -- one check per setting: the Python API, the CLI and the config file share them -----------
def _seconds_or_none(what: str) -> Callable[[object], object]:
    return lambda v: positive_number(v, what, optional=True)


def _busy_poll(value: object) -> float:
    seconds = non_negative_number(value, "busy_poll")
    assert seconds is not None
    if seconds > 0.01:
        raise ArgumentError(
            f"busy_poll is seconds of spinning after activity; {seconds!r} "
            "is more than the 0.01 s that could ever pay"
        )
    return seconds


def _buffer_size(value: object) -> int | None:
    if value is None:
        return None
    try:
        check_buffer_size(value)  # type: ignore[arg-type]
    except HvsockError as exc:
        raise ArgumentError(f"buffer_size: {exc}") from None
    assert isinstance(value, int)
    return value


def _chunk_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (4096 <= value <= 64 * 2**20):
        raise ArgumentError(
            f"chunk_size must be a whole number of bytes in 4096..64 MiB, not {quote(value)}"
        )
    return value


def _data_path(value: object) -> str:
    if value not in DATA_PATHS:
        raise ArgumentError(f"data_path must be one of {', '.join(DATA_PATHS)}, not {quote(value)}")
    if value == "splice" and not datapath.SPLICE_WORKS:
        raise ArgumentError("data_path 'splice' needs Linux (os.splice); use 'auto' or 'copy'")
    return str(value)


def _mode(value: object) -> int | None:
    if value is None:
        return None
    return whole_number(value, "mode (a file mode such as 0o600)", 0, 0o777)


def _workers(value: object) -> int:
    if value is None:
        return cores()
    workers = whole_number(value, "workers", 1, MAX_WORKERS)
    if workers > 1 and not hasattr(os, "fork"):
        raise ArgumentError(
            "workers > 1 are forked processes, and this system has no fork (Windows): use workers=1"
        )
    return workers


def _buffer_memory(value: object) -> int:
    return whole_number(value, "max_buffer_memory (bytes)", 64 << 10, 1 << 40)


def _ready_file(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ArgumentError(f"ready_file must be a path, not {quote(value)}")
    # Checked here, before the relay binds: a bad path fails at once, naming the path
    # given, and leaves no socket file behind.
    return check_ready_file(str(os.fspath(value)))


CHECKS: dict[str, Callable[[object], object]] = {
    "max_connections": lambda v: whole_number(v, "max_connections", 1, 1_000_000),
    "idle_timeout": _seconds_or_none("idle_timeout"),
    "connect_timeout": _seconds_or_none("connect_timeout"),
    "retries": lambda v: whole_number(v, "retries", 0, 1000),
    "mode": _mode,
    "backlog": lambda v: whole_number(v, "backlog", 1, 1 << 20),
    "buffer_size": _buffer_size,
    "chunk_size": _chunk_size,
    "data_path": _data_path,
    "busy_poll": _busy_poll,
    "grace": check_grace,
    "workers": _workers,
    "max_buffer_memory": _buffer_memory,
    "ready_file": _ready_file,
}


# -- target rules ------------------------------------------------------------------------------
_STAR = "*"


def _path_parts(path: str) -> tuple[str, ...] | None:
    """The components a path rule or target is matched on: "/" first for an absolute
    path, empty and "." components dropped (the kernel ignores them). None when a
    component is "..": a rule cannot bound where such a path leads (``/run/app/../x``
    is ``/run/x``, or elsewhere past a symlink), so it is never matched. An abstract
    name (``@...``) has no directories: its "/"-separated parts are kept as written."""
    if path.startswith("@"):
        return ("@", *path[1:].split("/"))
    parts = path.split("/")
    if ".." in parts:
        return None
    return (*(("/",) if path.startswith("/") else ()), *(p for p in parts if p not in ("", ".")))


def _parts_match(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    # One glob per component: a "*" never crosses a "/".
    return len(pattern) == len(parts) and all(
        fnmatch.fnmatchcase(part, pat) for pat, part in zip(pattern, parts, strict=True)
    )


@dataclass(frozen=True)
class TargetRule:
    """One ``allow_targets`` pattern (see the module docstring)."""

    text: str
    scheme: str
    host: str = ""  # tcp: a name glob or an IP; vsock: the CID, or "*"
    port: str = ""  # tcp, vsock, hybrid: digits or "*"
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    path: tuple[str, ...] = ()  # unix, hybrid: one glob per path component
    hyperv: tuple[str, str] = ("", "")  # hvsock: VM and service, canonical text or "*"

    @classmethod
    def parse(cls, text: object) -> TargetRule:
        if not isinstance(text, str) or "://" not in text:
            raise ArgumentError(
                f"target rule {quote(text)} is not an address pattern such as "
                "tcp://10.0.0.0/8:443, tcp://*.example.com:*, vsock://3:*"
            )
        scheme, rest = text.split("://", 1)
        if scheme not in _SCHEMES:
            raise ArgumentError(
                f"target rule {quote(text)}: unknown scheme {quote(scheme)}; "
                f"use one of {', '.join(_SCHEMES)}"
            )
        try:
            return getattr(cls, "_parse_" + scheme)(text, rest)  # type: ignore[no-any-return]
        except AddressError as exc:
            raise ArgumentError(f"target rule {quote(text)}: {exc}") from None

    @classmethod
    def _parse_tcp(cls, text: str, rest: str) -> TargetRule:
        match = re.fullmatch(r"(\[[^\]]+\]|[^:\[\]]+):(\*|\d{1,5})", rest)
        if match is None:
            raise ArgumentError(
                f"target rule {quote(text)} is not tcp://HOST:PORT "
                "(HOST an IP, a network, a name or a glob; PORT a number or *)"
            )
        host, port = match.group(1).strip("[]").lower(), match.group(2)
        if port != _STAR and not 0 < int(port) < 65536:
            raise ArgumentError(f"target rule {quote(text)}: port {port} is not in 1..65535")
        network = None
        if "/" in host:
            try:
                network = ipaddress.ip_network(host, strict=False)
            except ValueError:
                raise ArgumentError(
                    f"target rule {quote(text)}: {quote(host)} is not a network such as 10.0.0.0/8"
                ) from None
        return cls(text, "tcp", host, port, network)

    @classmethod
    def _parse_vsock(cls, text: str, rest: str) -> TargetRule:
        cid, sep, port = rest.partition(":")
        if not sep:
            raise ArgumentError(
                f"target rule {quote(text)} is not vsock://CID:PORT "
                "(CID a number, a name such as host, or *; PORT a number or *)"
            )
        # The address parser reads each field, so the rule takes what addresses take
        # (host, 0x10, ...) and compares numbers, not text.
        cid_value = cid if cid == _STAR else str(_vsock(f"vsock://{cid}:0").cid)
        port_value = port if port == _STAR else str(_vsock(f"vsock://0:{port}").port)
        return cls(text, "vsock", host=cid_value, port=port_value)

    @classmethod
    def _parse_unix(cls, text: str, rest: str) -> TargetRule:
        return cls(text, "unix", path=_rule_path(text, rest))

    @classmethod
    def _parse_hybrid(cls, text: str, rest: str) -> TargetRule:
        path, sep, port = rest.rpartition(":")
        if not sep or not path:
            raise ArgumentError(
                f"target rule {quote(text)} is not hybrid://PATH:PORT "
                "(PATH with globs per component; PORT a number or *)"
            )
        port_value = port if port == _STAR else str(_vsock(f"vsock://0:{port}").port)
        return cls(text, "hybrid", port=port_value, path=_rule_path(text, path))

    @classmethod
    def _parse_hvsock(cls, text: str, rest: str) -> TargetRule:
        vm, sep, service = rest.partition("/")
        if not sep or not vm or not service:
            raise ArgumentError(
                f"target rule {quote(text)} is not hvsock://VM/SERVICE "
                "(each as in an address, or *)"
            )
        # Canonical text from the address parser, so a GUID in capitals or braces and
        # a port for its template service id match the target they name.
        vm_value = vm if vm == _STAR else _hyperv_parts(parse_address(f"hvsock://{vm}/0"))[0]
        service_value = (
            service
            if service == _STAR
            else _hyperv_parts(parse_address(f"hvsock://parent/{service}"))[1]
        )
        return cls(text, "hvsock", hyperv=(vm_value, service_value))

    def matches(self, target: Address) -> bool:
        if target.kind != self.scheme:
            return False
        if isinstance(target, TcpAddress):
            if self.port != _STAR and int(self.port) != target.port:
                return False
            host = target.host.lower()
            if self.network is not None:
                try:
                    return ipaddress.ip_address(host) in self.network
                except ValueError:
                    return False  # a name: not resolved here
            return fnmatch.fnmatchcase(host, self.host)
        if isinstance(target, VsockAddress):
            return self.host in (_STAR, str(target.cid)) and self.port in (_STAR, str(target.port))
        if isinstance(target, UnixAddress):
            parts = _path_parts(target.path)
            return parts is not None and _parts_match(self.path, parts)
        if isinstance(target, HybridAddress):
            parts = _path_parts(target.uds_path)
            return (
                self.port in (_STAR, str(target.port))
                and parts is not None
                and _parts_match(self.path, parts)
            )
        vm, service = _hyperv_parts(target)
        return self.hyperv[0] in (_STAR, vm) and self.hyperv[1] in (_STAR, service)


def _vsock(text: str) -> VsockAddress:
    address = parse_address(text)
    assert isinstance(address, VsockAddress)
    return address


def _rule_path(text: str, path: str) -> tuple[str, ...]:
    parts = _path_parts(path)
    if parts is None:
        raise ArgumentError(
            f"target rule {quote(text)} has a '..' component; write the "
            "directory it means (rules match paths as written, after "
            "dropping '.' and repeated '/')"
        )
    if len(parts) <= (1 if parts[:1] in (("/",), ("@",)) else 0):
        raise ArgumentError(f"target rule {quote(text)} names no path")
    return parts


def _hyperv_parts(address: Address) -> tuple[str, str]:
    """(VM, service) of a Hyper-V address as canonical text: a well-known name, a
    lower-case GUID, ``name:<lower-case name>`` (Hyper-V names are any case) or
    ``wsl``; the service as its template port or GUID."""
    if isinstance(address, NamedVmAddress):
        vm = "wsl" if address.vm_name is None else "name:" + address.vm_name.lower()
    else:
        assert isinstance(address, HyperVAddress)
        vm = address.vm_name or str(address.vm_id)
    port = address.port
    return vm, str(port) if port is not None else str(address.service_id)


def check_target(rules: tuple[TargetRule, ...], target: Address) -> None:
    """Raise :class:`hvsock.ArgumentError` unless *rules* is empty or one matches *target*."""
    if not rules or any(r.matches(target) for r in rules):
        return
    path = (
        target.path
        if isinstance(target, UnixAddress)
        else target.uds_path
        if isinstance(target, HybridAddress)
        else ""
    )
    why = (
        "; its path has a '..' component, which no rule matches: write the path without it"
        if _path_parts(path) is None
        else "; add a rule that matches it, or forward somewhere allowed"
    )
    raise ArgumentError(
        f"target {quote(str(target))} is not allowed by the allow-target rules "
        f"({', '.join(r.text for r in rules)}){why}"
    )


def _target_rules(value: object) -> tuple[TargetRule, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ArgumentError(f"allow_targets must be a list of address patterns, not {quote(value)}")
    return tuple(TargetRule.parse(rule) for rule in value)


# -- forwards and the whole configuration ------------------------------------------------------
@dataclass(frozen=True)
class Forward:
    """One listen -> target pair and who may use it (*allow*: None lets everyone in)."""

    listen: Address
    target: Address
    allow: frozenset[AllowRule] | None = None

    @classmethod
    def build(cls, listen: object, target: object, allow: object = None) -> Forward:
        try:
            rules = allow_rules(allow)  # type: ignore[arg-type]
        except ArgumentError:
            raise
        except ValueError as exc:
            raise ArgumentError(str(exc)) from None
        return cls(_address(listen, "listen"), _address(target, "target"), rules)


def _address(value: object, what: str) -> Address:
    if isinstance(value, (bytes, int, float)) or value is None:
        raise ArgumentError(
            f"{what} must be an address such as tcp://127.0.0.1:8000, not {quote(value)}"
        )
    try:
        return parse_address(value)  # type: ignore[arg-type]
    except ArgumentError:
        raise
    except ValueError as exc:
        raise ArgumentError(f"{what}: {exc}") from None


@dataclass(frozen=True)
class RelayConfig:
    """Every setting of a relay, checked. Build with :meth:`build` (raises
    :class:`hvsock.ArgumentError` for a bad value) or :func:`parse_toml`."""

    forwards: tuple[Forward, ...]
    max_connections: int = 1024
    idle_timeout: float | None = 3600.0
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT
    retries: int = 0
    mode: int | None = DEFAULT_UNIX_MODE
    backlog: int = 1024
    buffer_size: int | None = None
    chunk_size: int = datapath.DEFAULT_CHUNK
    data_path: str = "auto"
    busy_poll: float = DEFAULT_BUSY_POLL
    grace: float = DEFAULT_GRACE
    workers: int = 1
    max_buffer_memory: int = DEFAULT_BUFFER_MEMORY
    ready_file: str | None = None
    allow_targets: tuple[TargetRule, ...] = field(default=())

    @classmethod
    def build(
        cls, forwards: Iterable[Forward], *, allow_targets: object = None, **settings: object
    ) -> RelayConfig:
        """Check every setting (names as :class:`hvsock.forwarding.Relay`'s keywords) and the
        forwards against *allow_targets*. Raises :class:`hvsock.ArgumentError`."""
        forwards = tuple(forwards)
        if not forwards:
            raise ArgumentError("a relay needs at least one listen -> target forward")
        return cls(forwards, **_checked(allow_targets, settings))

    def __post_init__(self) -> None:
        # Here, not only in build(): a config made by replace()/with_() or by hand is
        # checked too, so no relay ever dials a target its rules do not allow (the
        # targets are fixed per forward, so this is the check for every connect).
        for forward in self.forwards:
            self.check_target(forward.target)

    def check_target(self, target: Address) -> None:
        """Raise :class:`hvsock.ArgumentError` unless *target* matches an allow-target rule."""
        check_target(self.allow_targets, target)

    @staticmethod
    def from_toml(text: str, source: str = "relay.toml", **overrides: object) -> RelayConfig:
        """:func:`parse_toml`: the configuration in the text of a ``relay.toml``."""
        return parse_toml(text, source, **overrides)

    def with_(self, **changes: Any) -> RelayConfig:
        return replace(self, **changes)


#: Each setting's default, by its name (Relay's keywords): a config= comes with none other.
SETTING_DEFAULTS: dict[str, object] = {
    f.name: f.default for f in fields(RelayConfig) if f.name in CHECKS
}


def _checked(allow_targets: object, settings: Mapping[str, object]) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for name, value in settings.items():
        check = CHECKS.get(name)
        if check is None:
            raise ArgumentError(
                f"unknown relay setting {quote(name)}; known: {', '.join(sorted(CHECKS))}"
            )
        checked[name] = check(value)
    checked["allow_targets"] = () if allow_targets is None else _target_rules(allow_targets)
    return checked


# -- relay.toml --------------------------------------------------------------------------------
_FORWARD_KEYS = ("listen", "target", "allow")
#: Stand-ins that pass, so Forward.build checks one key of a table at a time.
_FINE: dict[str, object] = {
    "listen": "tcp://127.0.0.1:0",
    "target": "tcp://127.0.0.1:1",
    "allow": None,
}


def _forward_key(key: str) -> Callable[[object], Forward]:
    """A check of one key of a [[forward]] table (the others stand-ins that pass)."""

    def check(value: object) -> Forward:
        return Forward.build(*(value if k == key else _FINE[k] for k in _FORWARD_KEYS))

    return check


def parse_toml(text: str, source: str = "relay.toml", **overrides: object) -> RelayConfig:
    """A :class:`RelayConfig` from the text of a relay config file.

    Top-level keys are :class:`hvsock.forwarding.Relay`'s settings (``max_connections``,
    ``workers``, ``allow_targets``, ...); each ``[[forward]]`` table has
    ``listen``, ``target`` and optionally ``allow``. *overrides* (from the
    command line) win over the file. Raises :class:`hvsock.ArgumentError` (a
    ``ConfigError``) naming every problem found, one ``SOURCE:LINE: ...`` line each.
    """
    data, lines = toml.parse(text, source)
    problems = Problems(source, lines)
    raw_forwards = data.pop("forward", None)
    settings: dict[str, object] = {}
    for key, value in data.items():
        if key != "allow_targets" and key not in CHECKS:
            problems.add(
                f"unknown setting {quote(key)}; known: allow_targets, {', '.join(sorted(CHECKS))}",
                "",
                key,
            )
            continue
        ok, _ = problems.check(
            _target_rules if key == "allow_targets" else CHECKS[key], value, "", key
        )
        if ok:
            settings[key] = value
    forwards: list[Forward] = []
    if not isinstance(raw_forwards, list) or not raw_forwards:
        problems.add('no [[forward]] table: add one with listen = "..." and target = "..."')
        raw_forwards = []
    for i, table in enumerate(raw_forwards):
        where = f"forward[{i}]"
        if not isinstance(table, Mapping):
            problems.add("each forward must be a [[forward]] table", where)
            continue
        count = len(problems.found)
        for key in table:
            if key not in _FORWARD_KEYS:
                problems.add(
                    f"unknown forward key {quote(key)}; known: {', '.join(_FORWARD_KEYS)}",
                    where,
                    key,
                )
        for key in ("listen", "target"):
            if key not in table:
                problems.add(f'this forward has no {key} = "ADDRESS"', where)
        for key in _FORWARD_KEYS:  # one at a time, to point at the bad line
            if key in table:
                problems.check(_forward_key(key), table[key], where, key)
        if len(problems.found) == count:
            forwards.append(Forward.build(table["listen"], table["target"], table.get("allow")))
    settings.update({k: v for k, v in overrides.items() if v is not None})
    config_targets = settings.pop("allow_targets", None)
    ok, checked = problems.check(lambda targets: _checked(targets, settings), config_targets)
    if ok and checked is not None:
        for i, forward in enumerate(forwards):  # before RelayConfig checks them: to name the line
            problems.check(
                lambda target: check_target(checked["allow_targets"], target),
                forward.target,
                f"forward[{i}]",
                "target",
            )
    listens = [str(f.listen) for f in forwards]
    for i, listen in enumerate(listens):
        if listens.index(listen) != i and not listen.endswith(":0"):
            problems.add(
                f"listen {quote(listen)} appears in two forwards", f"forward[{i}]", "listen"
            )
    problems.raise_if_any()
    assert checked is not None
    return RelayConfig(tuple(forwards), **checked)
