"""Who connected, and whether they are let in: shared by ServiceHost, Relay and the bench server."""

from __future__ import annotations

import contextlib
import socket
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .._core import ids
from .._core.addresses import Address, HybridAddress, HyperVAddress, TcpAddress, VsockAddress
from .._errors import ArgumentError
from .._validate import quote

__all__ = ["AllowRule", "Peer", "allow_rules", "peer_of"]

#: An allowlist entry: a CID (int), a VM id (UUID), a TCP host (str), or "uid:N".
AllowRule = int | uuid.UUID | str


@dataclass(frozen=True)
class Peer:
    """Who connected: a CID (vsock), a VM id (Hyper-V), a host (TCP), a uid/pid (Unix)."""

    address: str
    cid: int | None = None
    vm_id: uuid.UUID | None = None
    host: str | None = None
    uid: int | None = None
    pid: int | None = None

    def matches(self, rule: AllowRule) -> bool:
        if isinstance(rule, int):
            return self.cid == rule
        if isinstance(rule, uuid.UUID):
            return self.vm_id == rule
        if rule.startswith("uid:"):
            return self.uid is not None and self.uid == int(rule[4:])
        return self.host == rule

    def __str__(self) -> str:
        return self.address


def peer_of(sock: socket.socket, raw: Any, listen: Address) -> Peer:
    """The identity of an accepted connection, from what accept() returned."""
    if isinstance(listen, VsockAddress) and isinstance(raw, tuple):
        cid, port = int(raw[0]), int(raw[1])
        return Peer(str(VsockAddress(cid, port)), cid=cid)
    if isinstance(listen, HyperVAddress) and isinstance(raw, tuple):
        vm = uuid.UUID(str(raw[0]))
        return Peer(f"hvsock://{vm}/{raw[1]}", vm_id=vm)
    if isinstance(listen, TcpAddress) and isinstance(raw, tuple):
        # TcpAddress's text form, without re-validating an address the kernel gave:
        # the relay asks this once per connection.
        host = str(raw[0])
        return Peer(f"tcp://[{host}]:{raw[1]}" if ":" in host else f"tcp://{host}:{raw[1]}",
                    host=host)
    uid = pid = None
    so_peercred = getattr(socket, "SO_PEERCRED", None)
    if so_peercred is not None and sock.family == socket.AF_UNIX:
        with contextlib.suppress(OSError):
            pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, so_peercred,
                                                                 struct.calcsize("3i")))
    where = (f"guest of {listen.uds_path}" if isinstance(listen, HybridAddress)
             else str(listen))
    who = f" (pid {pid}, uid {uid})" if pid is not None else ""
    return Peer(f"{where}{who}", uid=uid, pid=pid)



def allow_rules(rules: Iterable[object] | None) -> frozenset[AllowRule] | None:
    """The allowlist *rules* checked and normalised (GUID strings become UUIDs); None: all."""
    if rules is None:
        return None
    if isinstance(rules, (str, bytes, int)):
        raise ArgumentError("allow must be a collection of rules, e.g. allow={3, 4}")
    out: set[AllowRule] = set()
    for rule in rules:
        if isinstance(rule, bool):
            raise ArgumentError(f"allow rule {quote(rule)} is not a CID, VM id, host or 'uid:N'")
        if isinstance(rule, int):
            if not 0 <= rule <= ids.CID_ANY:
                raise ArgumentError(f"allow rule CID {rule} is out of range")
            out.add(rule)
        elif isinstance(rule, uuid.UUID):
            out.add(rule)
        elif isinstance(rule, str) and rule:
            if rule.startswith("uid:"):
                if not rule[4:].isdigit():
                    raise ArgumentError(f"allow rule {quote(rule)}: write uid:<number>")
                out.add(rule)
            elif "-" in rule and len(rule.strip("{}")) == 36:
                out.add(ids.parse_guid(rule, what="allowed VM id"))
            else:
                out.add(rule)
        else:
            raise ArgumentError(f"allow rule {quote(rule)} is not a CID, VM id, host or 'uid:N'")
    if not out:
        raise ArgumentError("allow is empty, which would let nobody in: give at least one "
                            "rule, or allow=None to let every peer in")
    return frozenset(out)
