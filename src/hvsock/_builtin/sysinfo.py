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
    out = {
        "kernel-release": uname.release,
        "kernel-version": uname.version,
        "machine": uname.machine,
    }
    for key, field in (
        ("ID", "id"),
        ("NAME", "name"),
        ("PRETTY_NAME", "pretty-name"),
        ("VERSION", "version"),
        ("VERSION_ID", "version-id"),
        ("VARIANT", "variant"),
        ("VARIANT_ID", "variant-id"),
    ):
        if key in release:
            out[field] = release[key]
    return out


_SIOCGIFHWADDR = 0x8927


def _getifaddrs() -> list[tuple[str, int, int, bytes, bytes]]:
    """libc's getifaddrs(3): (name, flags, family, address, netmask) in its order.

    Why libc's and not /proc/net/if_inet6 and /sys/class/net: qemu-ga walks this very
    list, and its order (every link first, in the kernel's order; then IPv4 addresses;
    then IPv6 ones, global before link-local, newest first within a scope) is not the
    order /proc/net/if_inet6 gives (a hash table's). IPv4 names are the address's label
    (``eth0:1``), as qemu-ga reports them. Address and netmask are the raw bytes (b""
    when absent or of another family).
    """
    import ctypes  # here: only the agent's info and QGA services need it

    # Linux's layouts (a 16-bit family first; BSDs put a length byte before it).
    class _SockAddr(ctypes.Structure):
        _fields_ = [("family", ctypes.c_ushort), ("data", ctypes.c_ubyte * 26)]

    class _IfAddrs(ctypes.Structure):
        pass

    _IfAddrs._fields_ = [
        ("next", ctypes.POINTER(_IfAddrs)),
        ("name", ctypes.c_char_p),
        ("flags", ctypes.c_uint),
        ("addr", ctypes.POINTER(_SockAddr)),
        ("netmask", ctypes.POINTER(_SockAddr)),
        ("ifu", ctypes.c_void_p),
        ("data", ctypes.c_void_p),
    ]
    libc = ctypes.CDLL(None, use_errno=True)
    head = ctypes.POINTER(_IfAddrs)()
    if libc.getifaddrs(ctypes.byref(head)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"getifaddrs failed: {os.strerror(code)}")

    def raw(sa: Any, family: int) -> bytes:
        if not sa or sa.contents.family != family:
            return b""
        data = bytes(sa.contents.data)
        # sockaddr_in: port (2), address (4); sockaddr_in6: port (2), flowinfo (4), address (16)
        return data[2:6] if family == socket.AF_INET else data[6:22]

    out: list[tuple[str, int, int, bytes, bytes]] = []
    try:
        node = head
        while node:
            item = node.contents
            family = item.addr.contents.family if item.addr else socket.AF_UNSPEC
            out.append(
                (
                    os.fsdecode(item.name),
                    item.flags,
                    family,
                    raw(item.addr, family),
                    raw(item.netmask, family),
                )
            )
            node = item.next
    finally:
        libc.freeifaddrs(head)
    return out


def _hardware_address(name: str) -> str | None:
    import fcntl  # POSIX only; here, so the module imports everywhere

    request = struct.pack("16s16s", name.encode()[:15], b"")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), _SIOCGIFHWADDR, request)
        except OSError:
            return None  # qemu-ga leaves the field out then (loopback on some kernels)
    return ":".join(f"{b:02x}" for b in answer[18:24])


def _net_dev_stats(name: str) -> dict[str, int] | None:
    """The interface's line of /proc/net/dev, the file qemu-ga reads its statistics from
    (its drop counts include missed packets, unlike /sys/class/net/*/statistics)."""
    try:
        lines = Path("/proc/net/dev").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        label, colon, rest = line.lstrip().partition(":")
        if not colon or label != name:
            continue
        fields = rest.split()
        if len(fields) < 16 or not all(f.isdigit() for f in fields[:16]):
            continue
        n = [int(f) for f in fields[:16]]
        return {
            "rx-bytes": n[0],
            "rx-packets": n[1],
            "rx-errs": n[2],
            "rx-dropped": n[3],
            "tx-bytes": n[8],
            "tx-packets": n[9],
            "tx-errs": n[10],
            "tx-dropped": n[11],
        }
    return None


def network_interfaces() -> list[dict[str, Any]]:
    """Interfaces as qemu-ga's guest-network-get-interfaces lists them.

    The same walk: one entry per name in getifaddrs' order, so links without an address
    (down ones too) are listed; a hardware address from SIOCGIFHWADDR (loopback's is
    00:00:00:00:00:00, as qemu-ga says); addresses in getifaddrs' order; statistics from
    /proc/net/dev, only for an interface with an address, as qemu-ga adds them.
    """
    result: list[dict[str, Any]] = []
    by_name: dict[str, dict[str, Any]] = {}
    for name, _flags, family, addr, mask in _getifaddrs():
        entry = by_name.get(name)
        if entry is None:
            entry = by_name[name] = {"name": name}
            result.append(entry)
        if "hardware-address" not in entry:
            mac = _hardware_address(name)
            if mac is not None:
                entry["hardware-address"] = mac
        if family == socket.AF_INET and addr:
            kind = "ipv4"
        elif family == socket.AF_INET6 and addr:
            kind = "ipv6"
        else:
            continue
        entry.setdefault("ip-addresses", []).append(
            {
                "ip-address-type": kind,
                "ip-address": socket.inet_ntop(family, addr),
                "prefix": sum(bin(b).count("1") for b in mask),
            }
        )
        if "statistics" not in entry:
            stats = _net_dev_stats(name)
            if stats is not None:
                entry["statistics"] = stats
    return result


def uptime() -> float:
    """Seconds since boot (CLOCK_BOOTTIME, which counts suspend)."""
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))


def machine_info() -> dict[str, Any]:
    """The info service's answer."""
    return {
        "hostname": socket.gethostname(),
        "os": os_info(),
        "uptime": uptime(),
        "interfaces": network_interfaces(),
        "agent_version": __version__,
        "pid": os.getpid(),
    }


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
            raise RemoteError("bad_request", f"state must be one of {', '.join(HEALTH_STATES)}")
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
                    self._changed.wait_for(lambda: self.version > after), timeout
                )
        return self.status()


def health_service(
    *, port: int = HEALTH_PORT, allow: Any = None, board: HealthBoard | None = None
) -> Service:
    """RPC ``report {name, state, message}``, ``status``, ``watch {after, timeout}``."""
    board = board or HealthBoard()

    async def report(conn: Connection, params: Any) -> int:
        params = params if isinstance(params, dict) else {}
        return await board.report(
            params.get("name"), params.get("state"), params.get("message", "")
        )

    def status(conn: Connection, params: Any) -> dict[str, Any]:
        return board.status()

    async def watch(conn: Connection, params: Any) -> dict[str, Any]:
        params = params if isinstance(params, dict) else {}
        after, timeout = params.get("after", board.version), params.get("timeout", 30)
        if (
            not isinstance(after, int)
            or not isinstance(timeout, (int, float))
            or not (0 < timeout <= 3600)
        ):
            raise RemoteError("bad_request", "watch takes after (int), timeout (s)")
        return await board.watch(after, float(timeout))

    return Service(
        "hvsock health",
        port,
        rpc_handler({"report": report, "status": status, "watch": watch}),
        allow=allow,
    )


def _set_clock(ns: int) -> None:
    time.clock_settime_ns(time.CLOCK_REALTIME, ns)


def time_service(
    *,
    port: int = TIME_PORT,
    allow: Any = None,
    allow_set: bool = False,
    max_step: float | None = None,
    set_clock: Callable[[int], None] = _set_clock,
) -> Service:
    """RPC ``now`` -> ``{realtime_ns, boottime_ns}``; ``set {realtime_ns}`` when *allow_set*.

    Setting is off by default: where the hypervisor already syncs time (Hyper-V's
    time sync, kvm-clock with chrony) two writers fight. *max_step* refuses
    steps larger than that many seconds.
    """

    def now(conn: Connection, params: Any) -> dict[str, int]:
        return {"realtime_ns": time.time_ns(), "boottime_ns": int(uptime() * 1e9)}

    def set_(conn: Connection, params: Any) -> dict[str, int]:
        if not allow_set:
            raise RemoteError(
                "disabled", "setting the clock is off in this agent (time.allow_set in agent.toml)"
            )
        value = params.get("realtime_ns") if isinstance(params, dict) else None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise RemoteError("bad_request", "set takes realtime_ns, a positive int")
        step = abs(value - time.time_ns()) / 1e9
        if max_step is not None and step > max_step:
            raise RemoteError(
                "refused", f"a step of {step:.3f} s is over time.max_step ({max_step:g} s)"
            )
        try:
            set_clock(value)
        except OSError as exc:
            raise RemoteError("failed", f"could not set the clock: {exc}") from None
        conn.log.warning("clock set by %s (step %.3f s)", conn.peer, step)
        return {"realtime_ns": time.time_ns()}

    return Service("hvsock time", port, rpc_handler({"now": now, "set": set_}), allow=allow)
