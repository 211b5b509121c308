"""Who connected, and whether they are let in: shared by ServiceHost, Relay and the bench server.

Rules, in the Python API and in config files alike:

- a CID (``2``, ``"2"``, ``"cid:2"``, or a name: ``"host"``, ``"local"``) for AF_VSOCK peers;
- a privileged CID (``"2:privileged"``, ``"host:privileged"``): that CID, from a source
  port <= 1023, which the peer's kernel lets only root (CAP_NET_BIND_SERVICE) bind;
- a VM id (a GUID) for Hyper-V peers;
- an IP address for TCP peers (a name could never match: peers are seen by address);
- ``"uid:N"`` for Unix and hybrid-listener peers (SO_PEERCRED).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from .._core import ids
from .._core.addresses import (
    Address,
    HybridAddress,
    HyperVAddress,
    TcpAddress,
    UnixAddress,
    VsockAddress,
)
from .._errors import ArgumentError
from .._validate import quote

__all__ = [
    "AllowRule",
    "Peer",
    "PrivilegedCid",
    "allow_rules",
    "check_reachable",
    "fits",
    "peer_of",
    "refusal",
    "refused_by",
]

#: The highest AF_VSOCK port only a privileged process may bind (Linux's
#: LAST_RESERVED_PORT in net/vmw_vsock/af_vsock.c; rresvport's rule for TCP).
LAST_RESERVED_PORT = 1023


@dataclass(frozen=True)
class PrivilegedCid:
    """CID *cid*, only from a reserved source port (<= 1023): root on that machine."""

    cid: int

    def __str__(self) -> str:
        name = ids.CID_NAMES.get(self.cid)
        return f"{name or self.cid}:privileged"


#: An allowlist entry: a CID (int), a privileged CID, a VM id (UUID), an IP (str), "uid:N".
AllowRule = int | PrivilegedCid | uuid.UUID | str


@dataclass(frozen=True)
class Peer:
    """Who connected: a CID and port (vsock), a VM id (Hyper-V), a host (TCP), a uid/pid (Unix)."""

    address: str
    cid: int | None = None
    vm_id: uuid.UUID | None = None
    host: str | None = None
    uid: int | None = None
    pid: int | None = None
    #: The vsock source port: <= 1023 only when the peer's kernel let a privileged
    #: process bind it.
    port: int | None = None

    @property
    def privileged_port(self) -> bool:
        return self.port is not None and self.port <= LAST_RESERVED_PORT

    def matches(self, rule: AllowRule) -> bool:
        if isinstance(rule, bool):
            return False
        if isinstance(rule, int):
            return self.cid == rule
        if isinstance(rule, PrivilegedCid):
            return self.cid == rule.cid and self.privileged_port
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
        return Peer(str(VsockAddress(cid, port)), cid=cid, port=port)
    if isinstance(listen, HyperVAddress) and isinstance(raw, tuple):
        vm = uuid.UUID(str(raw[0]))
        return Peer(f"hvsock://{vm}/{raw[1]}", vm_id=vm)
    if isinstance(listen, TcpAddress) and isinstance(raw, tuple):
        # TcpAddress's text form, without re-validating an address the kernel gave:
        # the relay asks this once per connection.
        host = str(raw[0])
        return Peer(
            f"tcp://[{host}]:{raw[1]}" if ":" in host else f"tcp://{host}:{raw[1]}", host=host
        )
    uid = pid = None
    so_peercred = getattr(socket, "SO_PEERCRED", None)
    if so_peercred is not None and sock.family == socket.AF_UNIX:
        with contextlib.suppress(OSError):
            pid, uid, _gid = struct.unpack(
                "3i", sock.getsockopt(socket.SOL_SOCKET, so_peercred, struct.calcsize("3i"))
            )
    where = f"guest of {listen.uds_path}" if isinstance(listen, HybridAddress) else str(listen)
    who = f" (pid {pid}, uid {uid})" if pid is not None else ""
    return Peer(f"{where}{who}", uid=uid, pid=pid)


_KINDS = 'a CID (2, "host:privileged"), a VM id, an IP address or "uid:N"'


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes "²", which int() refuses."""
    return text.isascii() and text.isdigit()


def _cid(text: str, rule: object) -> int:
    if _digits(text):
        cid = int(text)
    elif text in ids.WELL_KNOWN_CIDS and text != "any":
        cid = ids.WELL_KNOWN_CIDS[text]
    else:
        raise ArgumentError(
            f'allow rule {quote(rule)}: write a CID number, "host" or '
            '"local" before :privileged (e.g. "2:privileged")'
        )
    if not 0 <= cid < ids.CID_ANY:
        raise ArgumentError(f"allow rule CID {cid} is out of range")
    return cid


def _ip(text: str) -> str | None:
    """*text* in the form accept() reports an IP address, or None if it is not one."""
    import ipaddress  # only string rules need it (not on hvsock connect's start-up)

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _rule(rule: object) -> AllowRule:
    if isinstance(rule, bool):
        raise ArgumentError(f"allow rule {quote(rule)} is not {_KINDS}")
    if isinstance(rule, int):
        if not 0 <= rule < ids.CID_ANY:
            raise ArgumentError(f"allow rule CID {rule} is out of range")
        return rule
    if isinstance(rule, (uuid.UUID, PrivilegedCid)):
        return rule
    if not isinstance(rule, str) or not rule:
        raise ArgumentError(f"allow rule {quote(rule)} is not {_KINDS}")
    text = rule.strip()
    if text.startswith("uid:"):
        if not _digits(text[4:]):
            raise ArgumentError(f"allow rule {quote(rule)}: write uid:<number>")
        return f"uid:{int(text[4:])}"
    if text.endswith(":privileged"):
        body = text[: -len(":privileged")]
        return PrivilegedCid(_cid(body[4:] if body.startswith("cid:") else body, rule))
    if text.startswith("cid:"):
        return _cid(text[4:], rule)
    if _digits(text) or text in ("host", "local"):
        return _cid(text, rule)
    if text == "any":
        raise ArgumentError(
            'allow rule "any" does not exist: list the peers let in '
            "(e.g. [2]); in Python, allow=None lets every peer in"
        )
    if "-" in text and len(text.strip("{}")) == 36:
        return ids.parse_guid(text, what="allowed VM id")
    ip = _ip(text)
    if ip is None:
        raise ArgumentError(
            f"allow rule {quote(rule)} is not {_KINDS}; TCP peers are "
            "matched by IP address, never by name"
        )
    return ip


def allow_rules(rules: Iterable[object] | None) -> frozenset[AllowRule] | None:
    """The allowlist *rules* checked and normalised (names and strings become CIDs, GUID
    strings UUIDs); None: all. Raises :class:`ArgumentError` naming a bad rule."""
    if rules is None:
        return None
    if isinstance(rules, (str, bytes, int)):
        raise ArgumentError("allow must be a collection of rules, e.g. allow={3, 4}")
    out = {_rule(rule) for rule in rules}
    if not out:
        raise ArgumentError(
            "allow is empty, which would let nobody in: give at least one "
            "rule, or allow=None to let every peer in"
        )
    return frozenset(out)


def fits(rule: AllowRule, address: Address) -> bool:
    """True if *rule* can ever match a peer of a listener on *address*."""
    if isinstance(address, VsockAddress):
        return isinstance(rule, (int, PrivilegedCid)) and not isinstance(rule, bool)
    if isinstance(address, HyperVAddress):
        return isinstance(rule, uuid.UUID)
    if isinstance(address, TcpAddress):
        return isinstance(rule, str) and not rule.startswith("uid:")
    if isinstance(address, (UnixAddress, HybridAddress)):
        # A hybrid listener's peer is the VMM's process: a uid, never a CID.
        return isinstance(rule, str) and rule.startswith("uid:")
    return True


def kind_hint(address: Address) -> str:
    """Which rules suit a listener on *address*, for messages."""
    if isinstance(address, VsockAddress):
        return 'vsock peers match CIDs: 2, "2:privileged", "host:privileged"'
    if isinstance(address, HyperVAddress):
        return "Hyper-V peers match VM ids (GUIDs)"
    if isinstance(address, TcpAddress):
        return 'TCP peers match IP addresses: "127.0.0.1"'
    if isinstance(address, HybridAddress):
        return (
            "a hybrid listener's peer is the VMM's process: it matches \"uid:N\" "
            "(the VMM's user), never a CID"
        )
    return 'Unix peers match "uid:N"'


def check_reachable(rules: Collection[AllowRule] | None, address: Address, whose: str) -> None:
    """Raise :class:`ArgumentError` when no rule of *rules* can ever match a peer of a
    listener on *address*: nobody could connect. *whose* starts the message
    (``"'echo''s"``)."""
    if rules is not None and not any(fits(rule, address) for rule in rules):
        raise ArgumentError(
            f"{whose} allow rules ({', '.join(sorted(map(str, rules)))}) can never match "
            f"a peer on {address}, so nobody could connect: {kind_hint(address)}"
        )


def refused_by(rules: Collection[AllowRule] | None, peer: Peer) -> str | None:
    """None when *rules* let *peer* in (None lets everyone in); else why not, naming
    the rules (:func:`refusal`). The one allowlist check of every server."""
    if rules is None or any(peer.matches(rule) for rule in rules):
        return None
    return refusal(peer, rules)


def refusal(peer: Peer, rules: Iterable[AllowRule]) -> str:
    """Why *peer* is not let in by *rules*, naming them (and what a privileged rule needs)."""
    listed = sorted(rules, key=str)
    text = f"{peer} is not in it; its rules: {', '.join(map(str, listed))}"
    near = [r for r in listed if isinstance(r, PrivilegedCid) and r.cid == peer.cid]
    if near and peer.port is not None:
        text += (
            f"; rule {near[0]} needs a source port <= {LAST_RESERVED_PORT} (this one is "
            f"{peer.port}): only root (CAP_NET_BIND_SERVICE) can bind one; connect as "
            "root, which binds a reserved port (reserved_port=True)"
        )
    return text
