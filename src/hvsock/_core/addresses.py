"""The address model: one frozen, hashable type per transport, and one text form for all.

Text forms (parsed by :func:`parse_address`, produced by ``str(address)``)::

    vsock://<cid>:<port>          cid: number | any | local | host | hypervisor
                                  port: number | any
    vsock://name:<VM>:<port>      a KVM host's VM by name (libvirt, QEMU's -name),
                                  looked up when connecting; the name runs to the
                                  last ':'
    hvsock://<vm>/<service>       vm: GUID | wildcard | zero | children | loopback |
                                      parent | broadcast | silohost
                                      | wsl | name:<VM name> (looked up when
                                      connecting or listening; '/' and '%' in a
                                      name are written %2F and %25)
                                  service: GUID | port number (its VSOCK template id)
    hybrid://<uds_path>:<port>    host side of Firecracker / Cloud Hypervisor vsock;
                                  the path runs to the last ':'
    hybrid://name:<VM>:<port>     a Firecracker / Cloud Hypervisor VM by name, its
                                  vsock socket looked up when connecting (a
                                  relative path starting with name: is ./name:...)
    tcp://<host>:<port>           host: name, IPv4, or [IPv6]
    unix://<path>                 a Unix socket path; unix://@name is Linux's abstract
                                  namespace

Numbers are decimal or 0x-prefixed hex. Schemes and GUIDs are read in any case;
GUIDs may have braces. Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .._errors import AddressError
from .._validate import quote
from . import ids
from .values import Value, set_fields

# Not typing.TYPE_CHECKING: `hvsock connect` imports this module on every call, and
# typing alone costs a third of Python's own start-up; uuid is imported where a Hyper-V
# address needs it (see ids.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import uuid
    from typing import ClassVar

__all__ = [
    "Address",
    "HybridAddress",
    "HyperVAddress",
    "NamedHybridAddress",
    "NamedVmAddress",
    "NamedVsockAddress",
    "SocketAddress",
    "TcpAddress",
    "UnixAddress",
    "VsockAddress",
    "describe_address",
    "guest_view",
    "host_view",
    "parse_address",
]

_U32_MAX = 0xFFFFFFFF
# sun_path is 108 bytes on Linux, including the terminating NUL.
UNIX_PATH_MAX = 107

FORMS = {
    "vsock": "vsock://<cid>:<port>, e.g. vsock://3:5000, vsock://any:5000 or "
    "vsock://name:web1:5000 (a VM on this KVM host)",
    "hvsock": "hvsock://<vm>/<service>, e.g. hvsock://parent/5000, hvsock://wsl/5000, "
    "hvsock://name:MyVM/5000 or hvsock://<vm GUID>/<service GUID>",
    "hybrid": "hybrid://<uds_path>:<port>, e.g. hybrid:///run/fc/v.sock:52 or "
    "hybrid://name:fc1:52 (a Firecracker / Cloud Hypervisor VM on this host)",
    "tcp": "tcp://<host>:<port>, e.g. tcp://127.0.0.1:2222 or tcp://[::1]:2222",
    "unix": "unix://<path>, e.g. unix:///run/agent.sock or unix://@abstract-name",
}


def _int_in(value: object, lo: int, hi: int, what: str, form: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AddressError(f"{what} must be an integer, not {type(value).__name__}; {form}")
    if not lo <= value <= hi:
        # str() of an int over ~4300 digits raises ValueError; never show that many.
        shown = value if value.bit_length() <= 128 else f"({value.bit_length()}-bit number)"
        raise AddressError(f"{what} {shown} is out of range {lo}..{hi}; {form}")
    return value


def _check_path(path: object, what: str, form: str, suffix_len: int = 0) -> str:
    if not isinstance(path, str):
        raise AddressError(f"{what} must be a string, not {type(path).__name__}; {form}")
    if not path:
        raise AddressError(f"{what} is empty; {form}")
    if "\0" in path:
        raise AddressError(f"{what} {quote(path)} contains a NUL character; {form}")
    try:
        size = len(path.encode()) + suffix_len
    except UnicodeEncodeError as exc:
        raise AddressError(
            f"{what} {quote(path)} is not valid text ({exc.reason}); {form}"
        ) from None
    if size > UNIX_PATH_MAX:
        raise AddressError(
            f"{what} {quote(path)} is too long for a Unix socket ({size} bytes with what is "
            f"appended, at most {UNIX_PATH_MAX}); use a shorter path"
        )
    return path


class VsockAddress(Value):
    """A Linux VM-socket address: context id and port (``AF_VSOCK``)."""

    cid: int
    port: int
    kind: ClassVar[str] = "vsock"
    _fields = __match_args__ = ("cid", "port")

    def __init__(self, cid: int, port: int) -> None:
        set_fields(
            self,
            cid=_int_in(cid, 0, _U32_MAX, "CID", FORMS["vsock"]),
            port=_int_in(port, 0, _U32_MAX, "port", FORMS["vsock"]),
        )

    def __str__(self) -> str:
        cid = "any" if self.cid == ids.CID_ANY else str(self.cid)
        port = "any" if self.port == ids.PORT_ANY else str(self.port)
        return f"vsock://{cid}:{port}"

    @property
    def sockaddr(self) -> tuple[int, int]:
        """The address tuple ``socket.AF_VSOCK`` takes."""
        return (self.cid, self.port)

    def to_hyperv(self) -> HyperVAddress:
        """The same endpoint in Hyper-V terms, seen from the same machine.

        CID host -> PARENT, CID any -> WILDCARD, CID local -> LOOPBACK, port -> its
        template service id. Other CIDs have no well-known VM id: use
        :func:`host_view` with the VM's id instead.
        """
        vm = {ids.CID_HOST: ids.PARENT, ids.CID_ANY: ids.WILDCARD, ids.CID_LOCAL: ids.LOOPBACK}.get(
            self.cid
        )
        if vm is None:
            raise AddressError(
                f"CID {self.cid} has no Hyper-V VM id of its own; only host (2), any and "
                "local (1) map to parent, wildcard and loopback; use host_view(address, "
                "vm_id) with the VM's id"
            )
        return HyperVAddress(vm, ids.service_id_for_port(self.port))


class HyperVAddress(Value):
    """A Hyper-V socket address: VM id and service id (``AF_HYPERV``)."""

    vm_id: uuid.UUID
    service_id: uuid.UUID
    kind: ClassVar[str] = "hvsock"
    _fields = __match_args__ = ("vm_id", "service_id")

    def __init__(self, vm_id: uuid.UUID | str, service_id: uuid.UUID | str) -> None:
        import uuid

        # GUID text (any case, braces optional) is taken as the UUID it names.
        for name, value in (("vm_id", vm_id), ("service_id", service_id)):
            if not isinstance(value, (uuid.UUID, str)):
                raise AddressError(
                    f"{name} must be a uuid.UUID or a GUID string, not "
                    f"{type(value).__name__}; {FORMS['hvsock']}"
                )
            set_fields(self, **{name: ids.as_guid(value, name)})

    @classmethod
    def for_port(cls, vm_id: uuid.UUID | str, port: int) -> HyperVAddress:
        """The address of a vsock-style service: *port*'s template service id on *vm_id*."""
        return cls(ids.as_guid(vm_id, "VM id"), ids.service_id_for_port(port))

    @property
    def port(self) -> int | None:
        """The vsock port of a template service id, else None."""
        if ids.is_template_service_id(self.service_id):
            return ids.port_for_service_id(self.service_id)
        return None

    @property
    def vm_name(self) -> str | None:
        """The well-known name of the VM id (``"parent"``, ...), else None."""
        return ids.VM_ID_NAMES.get(self.vm_id)

    def __str__(self) -> str:
        vm = self.vm_name or str(self.vm_id)
        port = self.port
        return f"hvsock://{vm}/{port if port is not None else self.service_id}"

    @property
    def sockaddr(self) -> tuple[str, str]:
        """The address tuple CPython's ``socket.AF_HYPERV`` takes."""
        return (str(self.vm_id).upper(), str(self.service_id).upper())

    def to_vsock(self) -> VsockAddress:
        """The same endpoint in Linux vsock terms (inverse of :meth:`VsockAddress.to_hyperv`)."""
        cid = {
            ids.PARENT: ids.CID_HOST,
            ids.WILDCARD: ids.CID_ANY,
            ids.LOOPBACK: ids.CID_LOCAL,
        }.get(self.vm_id)
        if cid is None:
            raise AddressError(
                f"VM id {self.vm_id} has no vsock CID; only parent, wildcard and loopback "
                "map to CID host, any and local"
            )
        return VsockAddress(cid, ids.port_for_service_id(self.service_id))


#: Longest VM name an address takes.
MAX_VM_NAME = 256


def _check_vm_name(name: object, form: str) -> str:
    if not isinstance(name, str):
        raise AddressError(f"VM name must be a string, not {type(name).__name__}; {form}")
    if not name:
        raise AddressError(f"VM name is empty; {form}")
    if len(name) > MAX_VM_NAME:
        raise AddressError(f"VM name is {len(name)} characters long; at most {MAX_VM_NAME}; {form}")
    bad = next((c for c in name if not c.isprintable()), None)
    if bad is not None:
        raise AddressError(f"VM name {quote(name)} has a control character {quote(bad)}; {form}")
    return name


def _escape_vm_name(name: str) -> str:
    # '/' ends the VM part of the text; '%' starts an escape.
    return name.replace("%", "%25").replace("/", "%2F")


def _unescape_vm_name(text: str, form: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "%":
            pair = text[i + 1 : i + 3]
            if len(pair) != 2 or any(c not in "0123456789abcdefABCDEF" for c in pair):
                raise AddressError(
                    f"VM name {quote(text)}: '%' must start an escape such as "
                    f"%2F ('/') or %25 ('%'); {form}"
                )
            raw.append(int(pair, 16))
            i += 3
        else:
            raw += text[i].encode("utf-8", "surrogatepass")
            i += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AddressError(
            f"VM name {quote(text)} is not valid text (bad UTF-8 or escapes); {form}"
        ) from None


class NamedVmAddress(Value):
    """A Hyper-V address that names its VM instead of giving its id.

    ``hvsock://name:<VM name>/<service>`` names a Hyper-V VM (as ``Get-VM`` lists
    it, any case); ``hvsock://wsl/<service>`` is the WSL 2 utility VM, whose id
    changes at every start: *vm_name* is None for it. Building or parsing one does
    no I/O: :func:`hvsock.connect` and :func:`hvsock.listen` look the VM up (see
    :func:`hvsock.resolve_address`) and raise :class:`VmNotFoundError` when no VM
    has that name, :class:`UnreachableError` when it is not running.
    """

    vm_name: str | None
    service_id: uuid.UUID
    kind: ClassVar[str] = "hvsock"
    _fields = __match_args__ = ("vm_name", "service_id")

    def __init__(self, vm_name: str | None, service_id: uuid.UUID | str) -> None:
        import uuid

        if vm_name is not None:
            _check_vm_name(vm_name, FORMS["hvsock"])
        if not isinstance(service_id, (uuid.UUID, str)):
            raise AddressError(
                f"service_id must be a uuid.UUID or a GUID string, not "
                f"{type(service_id).__name__}; {FORMS['hvsock']}"
            )
        set_fields(self, vm_name=vm_name, service_id=ids.as_guid(service_id, "service id"))

    @property
    def is_wsl(self) -> bool:
        return self.vm_name is None

    @property
    def port(self) -> int | None:
        """The vsock port of a template service id, else None."""
        if ids.is_template_service_id(self.service_id):
            return ids.port_for_service_id(self.service_id)
        return None

    def with_vm_id(self, vm_id: uuid.UUID) -> HyperVAddress:
        """The address once the VM's id is known."""
        return HyperVAddress(vm_id, self.service_id)

    def __str__(self) -> str:
        vm = "wsl" if self.vm_name is None else "name:" + _escape_vm_name(self.vm_name)
        port = self.port
        return f"hvsock://{vm}/{port if port is not None else self.service_id}"


class HybridAddress(Value):
    """The host side of a hybrid-vsock VMM (Firecracker, Cloud Hypervisor).

    Connecting dials *uds_path* and asks the VMM for guest *port*; listening
    accepts guest-initiated connections at ``<uds_path>_<port>``.
    """

    uds_path: str
    port: int
    kind: ClassVar[str] = "hybrid"
    _fields = __match_args__ = ("uds_path", "port")

    def __init__(self, uds_path: str, port: int) -> None:
        _int_in(port, 0, _U32_MAX, "port", FORMS["hybrid"])
        _check_path(uds_path, "uds path", FORMS["hybrid"], suffix_len=1 + len(str(port)))
        if uds_path[:5].lower() == "name:":
            # Its text would read back as a VM name (hybrid://name:<VM>:<port>).
            raise AddressError(
                f"uds path {quote(uds_path)} starts with 'name:', which names "
                f"a VM; write the relative path as ./{uds_path}"
            )
        set_fields(self, uds_path=uds_path, port=port)

    @property
    def listen_path(self) -> str:
        """Where the VMM forwards the guest's connections to host port *port*."""
        return f"{self.uds_path}_{self.port}"

    def __str__(self) -> str:
        return f"hybrid://{self.uds_path}:{self.port}"


class _NamedGuestAddress(Value):
    """A VM on this KVM host named instead of given by its CID or vsock socket."""

    vm_name: str
    port: int
    kind: ClassVar[str]
    _fields = __match_args__ = ("vm_name", "port")

    def __init__(self, vm_name: str, port: int) -> None:
        form = FORMS[self.kind]
        set_fields(
            self,
            vm_name=_check_vm_name(vm_name, form),
            port=_int_in(port, 0, _U32_MAX, "port", form),
        )

    def __str__(self) -> str:
        return f"{self.kind}://name:{_escape_vm_name(self.vm_name)}:{self.port}"


class NamedVsockAddress(_NamedGuestAddress):
    """``vsock://name:<VM>:<port>``: a VM of this KVM host (libvirt, QEMU) by name.

    Parsing does no I/O: :func:`hvsock.connect` looks the VM's CID up (``hvsock vms``
    lists what it finds) and raises :class:`AddressError` for an unknown or ambiguous
    name, :class:`UnreachableError` for a VM that is not running.
    """

    kind: ClassVar[str] = "vsock"

    def with_cid(self, cid: int) -> VsockAddress:
        """The address once the VM's CID is known."""
        return VsockAddress(cid, self.port)


class NamedHybridAddress(_NamedGuestAddress):
    """``hybrid://name:<VM>:<port>``: a Firecracker / Cloud Hypervisor VM by name.

    Parsing does no I/O: :func:`hvsock.connect` looks the VM's vsock socket up, as
    for :class:`NamedVsockAddress`.
    """

    kind: ClassVar[str] = "hybrid"

    def with_uds_path(self, uds_path: str) -> HybridAddress:
        """The address once the VM's vsock socket is known."""
        return HybridAddress(uds_path, self.port)


class TcpAddress(Value):
    """A TCP address, for bridging VM sockets to the network stack."""

    host: str
    port: int
    kind: ClassVar[str] = "tcp"
    _fields = __match_args__ = ("host", "port")

    def __init__(self, host: str, port: int) -> None:
        _int_in(port, 0, 0xFFFF, "TCP port", FORMS["tcp"])
        if not isinstance(host, str):
            raise AddressError(
                f"TCP host must be a string, not {type(host).__name__}; {FORMS['tcp']}"
            )
        if not host:
            raise AddressError(f"TCP host is empty; {FORMS['tcp']}")
        # Printable ASCII only (IDN names go in their xn-- form); '%' stays for
        # IPv6 scope ids such as fe80::1%eth0.
        if any(not (33 <= ord(c) <= 126) or c in "/[]@?#" for c in host):
            raise AddressError(
                f"TCP host {quote(host)} has characters a host cannot have; {FORMS['tcp']}"
            )
        set_fields(self, host=host, port=port)

    @property
    def sockaddr(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


class UnixAddress(Value):
    """A Unix-domain stream socket path (``@name`` is Linux's abstract namespace)."""

    path: str
    kind: ClassVar[str] = "unix"
    _fields = __match_args__ = ("path",)

    def __init__(self, path: str) -> None:
        _check_path(path, "Unix socket path", FORMS["unix"])
        if path == "@":
            raise AddressError(f"abstract Unix socket name is empty; {FORMS['unix']}")
        set_fields(self, path=path)

    @property
    def abstract(self) -> bool:
        return self.path.startswith("@")

    @property
    def sockaddr(self) -> str | bytes:
        """What ``socket.AF_UNIX`` takes (a NUL-led name for the abstract namespace)."""
        return b"\0" + self.path[1:].encode() if self.abstract else self.path

    def __str__(self) -> str:
        return f"unix://{self.path}"


#: An address a socket can use as it is: no VM name left to look up.
SocketAddress = VsockAddress | HyperVAddress | HybridAddress | TcpAddress | UnixAddress
#: An address that names a VM, to be looked up before a socket can use it.
NamedAddress = NamedVmAddress | NamedVsockAddress | NamedHybridAddress
NAMED_ADDRESS_TYPES = (NamedVmAddress, NamedVsockAddress, NamedHybridAddress)
Address = SocketAddress | NamedAddress
ADDRESS_TYPES = (
    VsockAddress,
    HyperVAddress,
    NamedVmAddress,
    HybridAddress,
    TcpAddress,
    UnixAddress,
    NamedVsockAddress,
    NamedHybridAddress,
)

_NUMBER = re.compile(r"(?:0[xX][0-9a-fA-F]+|[0-9]+)\Z")


def _number(text: str, what: str, form: str) -> int:
    if not text:
        raise AddressError(f"{what} is missing; {form}")
    if not _NUMBER.match(text):
        if text.startswith("-") and _NUMBER.match(text[1:]):
            raise AddressError(
                f"{what} {quote(text)} is out of range: it cannot be negative; {form}"
            )
        raise AddressError(f"{what} {quote(text)} is not a number; {form}")
    hex_form = text[:2].lower() == "0x"
    # int() refuses decimal text over 4300 digits (leading zeros count), so drop the
    # zeros, and refuse what is far out of range before converting.
    digits = (text[2:] if hex_form else text).lstrip("0") or "0"
    if len(digits) > 20:
        raise AddressError(f"{what} {quote(text)} is out of range ({len(text)} digits); {form}")
    return int(digits, 16 if hex_form else 10)


def _named(rest: str, form: str) -> tuple[str, int]:
    """The VM name and port of ``<VM name>:<port>`` (the name runs to the last ':')."""
    name_text, sep, port_text = rest.rpartition(":")
    if not sep:
        raise AddressError(f"{quote('name:' + rest)} has no ':<port>' after the VM name; {form}")
    return _unescape_vm_name(name_text, form), _number(port_text, "port", form)


def _parse_vsock(rest: str) -> VsockAddress | NamedVsockAddress:
    form = FORMS["vsock"]
    if rest[:5].lower() == "name:":
        return NamedVsockAddress(*_named(rest[5:], form))
    cid_text, sep, port_text = rest.partition(":")
    if not sep:
        raise AddressError(f"vsock address {quote(rest)} has no ':<port>'; {form}")
    lowered = cid_text.lower()
    if lowered in ids.WELL_KNOWN_CIDS:
        cid = ids.WELL_KNOWN_CIDS[lowered]
    elif cid_text and not _NUMBER.match(cid_text):
        names = ", ".join(ids.WELL_KNOWN_CIDS)
        raise AddressError(f"unknown CID {quote(cid_text)}: use a number or one of {names}; {form}")
    else:
        cid = _number(cid_text, "CID", form)
    port = ids.PORT_ANY if port_text.lower() == "any" else _number(port_text, "port", form)
    return VsockAddress(cid, port)


def _parse_hvsock(rest: str) -> HyperVAddress | NamedVmAddress:
    form = FORMS["hvsock"]
    vm_text, sep, svc_text = rest.partition("/")
    if not sep:
        raise AddressError(f"hvsock address {quote(rest)} has no '/<service>'; {form}")
    if not vm_text:
        raise AddressError(f"VM id is empty; {form}")
    lowered = vm_text.lower()
    if lowered == "wsl" or lowered.startswith("name:"):
        vm_name = None if lowered == "wsl" else _unescape_vm_name(vm_text[5:], form)
        return NamedVmAddress(vm_name, _parse_service(svc_text, form))
    if lowered in ids.WELL_KNOWN_VM_IDS:
        vm = ids.WELL_KNOWN_VM_IDS[lowered]
    elif "-" in vm_text or vm_text.startswith("{"):
        vm = ids.parse_guid(vm_text, what="VM id")
    else:
        names = ", ".join(ids.WELL_KNOWN_VM_IDS)
        raise AddressError(
            f"unknown VM name {quote(vm_text)}: use a GUID, one of {names}, wsl "
            f"(the WSL 2 VM), or name:{vm_text} for a VM named so; {form}"
        )
    return HyperVAddress(vm, _parse_service(svc_text, form))


def _parse_service(svc_text: str, form: str) -> uuid.UUID:
    if not svc_text:
        raise AddressError(f"service id is empty; {form}")
    if _NUMBER.match(svc_text):
        port = _int_in(_number(svc_text, "port", form), 0, _U32_MAX, "port", form)
        return ids.service_id_for_port(port)
    return ids.parse_guid(svc_text, what="service id")


def _parse_hybrid(rest: str) -> HybridAddress | NamedHybridAddress:
    form = FORMS["hybrid"]
    if rest[:5].lower() == "name:":
        return NamedHybridAddress(*_named(rest[5:], form))
    path, sep, port_text = rest.rpartition(":")
    if not sep:
        raise AddressError(f"hybrid address {quote(rest)} has no ':<port>'; {form}")
    if not path:
        raise AddressError(f"uds path is empty; {form}")
    return HybridAddress(path, _number(port_text, "port", form))


def _parse_tcp(rest: str) -> TcpAddress:
    form = FORMS["tcp"]
    if rest.startswith("["):
        host, close, tail = rest[1:].partition("]")
        if not close or not tail.startswith(":"):
            raise AddressError(f"TCP address {quote(rest)}: write IPv6 as [addr]:port; {form}")
        port_text = tail[1:]
        if ":" not in host:
            raise AddressError(f"TCP host [{host}] is not an IPv6 address; {form}")
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            raise AddressError(f"TCP address {quote(rest)} has no ':<port>'; {form}")
        if ":" in host:
            raise AddressError(f"TCP host {quote(host)}: put IPv6 addresses in brackets; {form}")
    if not host:
        raise AddressError(f"TCP host is empty; {form}")
    return TcpAddress(host, _number(port_text, "TCP port", form))


_PARSERS: dict[str, Callable[[str], Address]] = {
    "vsock": _parse_vsock,
    "hvsock": _parse_hvsock,
    "hybrid": _parse_hybrid,
    "tcp": _parse_tcp,
    "unix": UnixAddress,
}


def parse_address(text: str | Address) -> Address:
    """Parse address text (see the module docs); an address object is returned as is.

    Raises :class:`AddressError` naming the bad part and showing an accepted form.
    """
    if isinstance(text, ADDRESS_TYPES):
        return text
    if not isinstance(text, str):
        raise AddressError(
            f"an address must be text or an address object, not {type(text).__name__}"
        )
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise AddressError(
            f"address {quote(text)} has no scheme; use one of: " + "; ".join(FORMS.values())
        )
    parser = _PARSERS.get(scheme.lower())
    if parser is None:
        raise AddressError(
            f"unknown address scheme {quote(scheme)}; use one of: " + "; ".join(FORMS.values())
        )
    return parser(rest)


def host_view(guest: VsockAddress, vm_id: uuid.UUID | str) -> HyperVAddress:
    """What a Hyper-V host calls the endpoint a Linux guest names *guest*.

    A guest's ``vsock://host:p`` (it connects to the host) is the host's listener
    ``hvsock://<vm_id>/p``; a guest's ``vsock://any:p`` (it listens) is what the host
    connects to, also ``hvsock://<vm_id>/p``. *vm_id* is the guest's VM id (a UUID or
    GUID text). Raises :class:`AddressError`.
    """
    if not isinstance(guest, VsockAddress):
        raise AddressError(f"host_view takes a VsockAddress, not {type(guest).__name__}")
    if guest.cid not in (ids.CID_HOST, ids.CID_ANY):
        raise AddressError(
            f"a Hyper-V guest reaches only the host (CID 2) and listens on CID any; "
            f"{guest} has CID {guest.cid}"
        )
    return HyperVAddress(ids.as_guid(vm_id, "vm_id"), ids.service_id_for_port(guest.port))


def guest_view(host: HyperVAddress, *, guest_listens: bool = False) -> VsockAddress:
    """What a Linux guest calls the endpoint its Hyper-V host names *host*.

    By default *host* is a host listener, so the guest connects to ``vsock://host:p``;
    with ``guest_listens=True`` the host connects and the guest listens on
    ``vsock://any:p``. Raises :class:`AddressError` if the service id has no port.
    """
    if not isinstance(host, HyperVAddress):
        raise AddressError(f"guest_view takes a HyperVAddress, not {type(host).__name__}")
    return VsockAddress(
        ids.CID_ANY if guest_listens else ids.CID_HOST, ids.port_for_service_id(host.service_id)
    )


def describe_address(address: Address) -> dict[str, object]:
    """A plain explanation of *address*: its fields, names, and its other views."""
    if not isinstance(address, ADDRESS_TYPES):
        raise AddressError(f"not an address: {type(address).__name__}; parse text first")
    info: dict[str, object] = {"address": str(address), "kind": address.kind}
    if isinstance(address, VsockAddress):
        info["cid"] = address.cid
        info["cid_name"] = ids.CID_NAMES.get(address.cid)
        info["port"] = address.port
        info["port_any"] = address.port == ids.PORT_ANY
        info["privileged_port"] = address.port < ids.PRIVILEGED_PORTS_BELOW
        info["hyperv_listen_ok"] = (
            address.port <= ids.HV_SOCK_MAX_LISTEN_PORT or address.port == ids.PORT_ANY
        )
        info["service_id"] = str(ids.service_id_for_port(address.port))
        try:
            info["hyperv_view"] = str(address.to_hyperv())
        except AddressError:
            info["hyperv_view"] = None
    elif isinstance(address, HyperVAddress):
        info["vm_id"] = str(address.vm_id)
        info["vm_name"] = address.vm_name
        info["service_id"] = str(address.service_id)
        info["template"] = address.port is not None
        info["port"] = address.port
        info["linux_guest_connects_to"] = (
            str(guest_view(address)) if address.port is not None else None
        )
        try:
            info["vsock_view"] = str(address.to_vsock())
        except AddressError:
            info["vsock_view"] = None
    elif isinstance(address, NamedVmAddress):
        info["vm_name"] = address.vm_name
        info["wsl"] = address.is_wsl
        info["vm_id"] = None
        info["vm_id_from"] = (
            "WSL's running VM" if address.is_wsl else "the VM of that name"
        ) + ", looked up when connecting or listening; `hvsock vms` lists them"
        info["service_id"] = str(address.service_id)
        info["template"] = address.port is not None
        info["port"] = address.port
        info["linux_guest_connects_to"] = (
            str(VsockAddress(ids.CID_HOST, address.port)) if address.port is not None else None
        )
    elif isinstance(address, (NamedVsockAddress, NamedHybridAddress)):
        info["vm_name"] = address.vm_name
        info["port"] = address.port
        what = "CID" if isinstance(address, NamedVsockAddress) else "vsock socket"
        info["looked_up"] = (
            f"the VM's {what}, looked up on this KVM host when "
            "connecting; `hvsock vms` lists the VMs it finds"
        )
    elif isinstance(address, HybridAddress):
        info["uds_path"] = address.uds_path
        info["port"] = address.port
        info["listen_path"] = address.listen_path
    elif isinstance(address, TcpAddress):
        info["host"] = address.host
        info["port"] = address.port
    else:
        info["path"] = address.path
        info["abstract"] = address.abstract
    return info
