"""Facts about this machine, and the info, health and time services that report them.

``info`` answers what the host asks about a guest (OS, kernel, hostname, uptime,
interfaces, agent version); ``health`` keeps what the guest's applications
report (ready / healthy / unhealthy and a message) and lets the host ask or
watch; ``time`` reports the guest clock so the host can compute the offset and,
only when enabled, set it. All three speak hvsock's framed JSON RPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import platform
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._errors import RemoteError
from .._service.connection import Connection
from .._service.declaration import Service
from .._service.rpc import rpc_handler
from .._version import __version__

__all__: list[str] = []

INFO_PORT = 5101
HEALTH_PORT = 5102
TIME_PORT = 5103

_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B
_STATS = (("rx-bytes", "rx_bytes"), ("rx-packets", "rx_packets"), ("rx-errs", "rx_errors"),
          ("rx-dropped", "rx_dropped"), ("tx-bytes", "tx_bytes"), ("tx-packets", "tx_packets"),
          ("tx-errs", "tx_errors"), ("tx-dropped", "tx_dropped"))


def os_info() -> dict[str, str]:
    """What qemu-ga's guest-get-osinfo reports: /etc/os-release plus uname."""
    release: dict[str, str] = {}
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        with contextlib.suppress(OSError):
            for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
                key, sep, value = line.partition("=")
                if sep and key.strip() and not key.startswith("#"):
                    release[key.strip()] = value.strip().strip("\"'")
            break
    uname = platform.uname()
    out = {"kernel-release": uname.release, "kernel-version": uname.version,
           "machine": uname.machine}
    for key, field in (("ID", "id"), ("NAME", "name"), ("PRETTY_NAME", "pretty-name"),
                       ("VERSION", "version"), ("VERSION_ID", "version-id"),
                       ("VARIANT", "variant"), ("VARIANT_ID", "variant-id")):
        if key in release:
            out[field] = release[key]
    return out


def _ipv4(name: str) -> tuple[str, int] | None:
    import fcntl  # POSIX only; here, so the module imports everywhere

    packed = struct.pack("256s", name.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            addr = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, packed)[20:24]
            mask = fcntl.ioctl(sock.fileno(), _SIOCGIFNETMASK, packed)[20:24]
        except OSError:
            return None
    prefix = bin(int.from_bytes(mask, "big")).count("1")
    return socket.inet_ntoa(addr), prefix


def _ipv6() -> dict[str, list[tuple[str, int]]]:
    out: dict[str, list[tuple[str, int]]] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 6:
                addr = ipaddress.IPv6Address(bytes.fromhex(parts[0]))
                out.setdefault(parts[5], []).append((str(addr), int(parts[2], 16)))
    return out


def network_interfaces() -> list[dict[str, Any]]:
    """Interfaces as qemu-ga's guest-network-get-interfaces lists them."""
    v6 = _ipv6()
    result: list[dict[str, Any]] = []
    for _index, name in socket.if_nameindex():
        entry: dict[str, Any] = {"name": name}
        sysdir = Path("/sys/class/net") / name
        with contextlib.suppress(OSError):
            entry["hardware-address"] = (sysdir / "address").read_text().strip()
        addrs: list[dict[str, Any]] = []
        v4 = _ipv4(name)
        if v4 is not None:
            addrs.append({"ip-address-type": "ipv4", "ip-address": v4[0], "prefix": v4[1]})
        addrs += [{"ip-address-type": "ipv6", "ip-address": a, "prefix": p}
                  for a, p in v6.get(name, [])]
        if addrs:
            # qemu-ga lists statistics only beside addresses; so do we.
            entry["ip-addresses"] = addrs
            stats: dict[str, int] = {}
            for key, filename in _STATS:
                with contextlib.suppress(OSError, ValueError):
                    stats[key] = int((sysdir / "statistics" / filename).read_text())
            entry["statistics"] = stats
        result.append(entry)
    return result


def uptime() -> float:
    """Seconds since boot (CLOCK_BOOTTIME, which counts suspend)."""
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))


def machine_info() -> dict[str, Any]:
    """The info service's answer."""
    return {"hostname": socket.gethostname(), "os": os_info(), "uptime": uptime(),
            "interfaces": network_interfaces(), "agent_version": __version__,
            "pid": os.getpid()}


# -- services --------------------------------------------------------------------


def info_service(*, port: int = INFO_PORT, allow: Any = None) -> Service:
    """The info service: RPC ``info`` -> :func:`machine_info`."""

    def info(conn: Connection, params: Any) -> dict[str, Any]:
        return machine_info()

    return Service("hvsock info", port, rpc_handler({"info": info}), allow=allow)


HEALTH_STATES = ("starting", "ready", "healthy", "unhealthy", "stopping")


class HealthBoard:
    """What applications reported, and a version bumped on every change (for watchers)."""

    def __init__(self) -> None:
        self.apps: dict[str, dict[str, Any]] = {}
        self.version = 0
        self._changed = asyncio.Condition()

    async def report(self, name: object, state: object, message: object = "") -> int:
        if not isinstance(name, str) or not 0 < len(name) <= 128:
            raise RemoteError("bad_request", "name must be a string of 1..128 chars")
        if state not in HEALTH_STATES:
            raise RemoteError("bad_request",
                                     f"state must be one of {', '.join(HEALTH_STATES)}")
        if not isinstance(message, str) or len(message) > 4096:
            raise RemoteError("bad_request", "message must be a string of <= 4096 chars")
        self.apps[name] = {"state": state, "message": message, "since": time.time()}
        async with self._changed:
            self.version += 1
            self._changed.notify_all()
        return self.version

    def status(self) -> dict[str, Any]:
        return {"version": self.version, "apps": dict(self.apps)}

    async def watch(self, after: int, timeout: float) -> dict[str, Any]:
        async with self._changed:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.version > after), timeout)
        return self.status()


def health_service(*, port: int = HEALTH_PORT, allow: Any = None,
                   board: HealthBoard | None = None) -> Service:
    """RPC ``report {name, state, message}``, ``status``, ``watch {after, timeout}``."""
    board = board or HealthBoard()

    async def report(conn: Connection, params: Any) -> int:
        params = params if isinstance(params, dict) else {}
        return await board.report(params.get("name"), params.get("state"),
                                  params.get("message", ""))

    def status(conn: Connection, params: Any) -> dict[str, Any]:
        return board.status()

    async def watch(conn: Connection, params: Any) -> dict[str, Any]:
        params = params if isinstance(params, dict) else {}
        after, timeout = params.get("after", board.version), params.get("timeout", 30)
        if not isinstance(after, int) or not isinstance(timeout, (int, float)) or not (
                0 < timeout <= 3600):
            raise RemoteError("bad_request", "watch takes after (int), timeout (s)")
        return await board.watch(after, float(timeout))

    return Service("hvsock health", port, rpc_handler(
        {"report": report, "status": status, "watch": watch}), allow=allow)


def _set_clock(ns: int) -> None:
    time.clock_settime_ns(time.CLOCK_REALTIME, ns)


def time_service(*, port: int = TIME_PORT, allow: Any = None, allow_set: bool = False,
                 max_step: float | None = None,
                 set_clock: Callable[[int], None] = _set_clock) -> Service:
    """RPC ``now`` -> ``{realtime_ns, boottime_ns}``; ``set {realtime_ns}`` when *allow_set*.

    Setting is off by default: where the hypervisor already syncs time (Hyper-V's
    time sync, kvm-clock with chrony) two writers fight. *max_step* refuses
    steps larger than that many seconds.
    """

    def now(conn: Connection, params: Any) -> dict[str, int]:
        return {"realtime_ns": time.time_ns(), "boottime_ns": int(uptime() * 1e9)}

    def set_(conn: Connection, params: Any) -> dict[str, int]:
        if not allow_set:
            raise RemoteError("disabled", "setting the clock is off in this agent "
                                     "(time.allow_set in agent.toml)")
        value = params.get("realtime_ns") if isinstance(params, dict) else None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise RemoteError("bad_request", "set takes realtime_ns, a positive int")
        step = abs(value - time.time_ns()) / 1e9
        if max_step is not None and step > max_step:
            raise RemoteError("refused", f"a step of {step:.3f} s is over time.max_step "
                                     f"({max_step:g} s)")
        try:
            set_clock(value)
        except OSError as exc:
            raise RemoteError("failed", f"could not set the clock: {exc}") from None
        conn.log.warning("clock set by %s (step %.3f s)", conn.peer, step)
        return {"realtime_ns": time.time_ns()}

    return Service("hvsock time", port,
                          rpc_handler({"now": now, "set": set_}), allow=allow)
