"""Well-known Hyper-V VM ids, vsock CIDs and ports, and the VSOCK template mapping."""

from __future__ import annotations

from .._errors import AddressError
from .._validate import quote

# The GUIDs below are built on first use (PEP 562 __getattr__ at the end), and the
# functions import uuid when called: `uuid` imports `platform`, which together cost
# `hvsock connect` a seventh of Python's start-up, and vsock, TCP and Unix addresses
# never need them. mypy reads the declarations; the values come from _GUIDS.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import uuid

    WILDCARD: uuid.UUID
    ZERO: uuid.UUID
    BROADCAST: uuid.UUID
    CHILDREN: uuid.UUID
    LOOPBACK: uuid.UUID
    PARENT: uuid.UUID
    SILOHOST: uuid.UUID
    VSOCK_TEMPLATE: uuid.UUID
    #: name used in address text -> VM id. "zero" is an alias of "wildcard".
    WELL_KNOWN_VM_IDS: dict[str, uuid.UUID]
    #: VM id -> canonical name (the first name wins, so WILDCARD formats as "wildcard").
    VM_ID_NAMES: dict[uuid.UUID, str]

#: Well-known VM ids (Windows SDK hvsocket.h), used in place of a real VM id, by the
#: name used in address text ("zero" is an alias of "wildcard"); and the VSOCK template,
#: whose Data1 (the first 32 bits) is replaced by a port.
_GUIDS = {
    "wildcard": "00000000-0000-0000-0000-000000000000",
    "zero": "00000000-0000-0000-0000-000000000000",
    "broadcast": "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "children": "90db8b89-0d35-4f79-8ce9-49ea0ac8b7cd",
    "loopback": "e0e16197-dd56-4a10-9195-5ee7a155a838",
    "parent": "a42e7cda-d03f-480c-9cc2-a4de20abb878",
    "silohost": "36bd0c5c-7276-4223-88ba-7d03b654c568",
}
_VSOCK_TEMPLATE = "00000000-facb-11e6-bd58-64006a7986d3"
#: The low 96 bits every template-form service id shares.
_TEMPLATE_TAIL = int(_VSOCK_TEMPLATE.replace("-", ""), 16) & ((1 << 96) - 1)


_LAZY = (
    "WILDCARD",
    "ZERO",
    "BROADCAST",
    "CHILDREN",
    "LOOPBACK",
    "PARENT",
    "SILOHOST",
    "VSOCK_TEMPLATE",
    "WELL_KNOWN_VM_IDS",
    "VM_ID_NAMES",
)


def __getattr__(name: str) -> object:
    """Build every GUID constant at the first use of one, and keep them in the module
    (one object each: ZERO is WILDCARD, the tables hold the same objects)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import uuid

    # One UUID per GUID text, so aliases ("zero") are the same object as their id.
    by_text = {guid: uuid.UUID(guid) for guid in _GUIDS.values()}
    known = {text: by_text[guid] for text, guid in _GUIDS.items()}
    names: dict[uuid.UUID, str] = {}
    for text, vm in known.items():
        names.setdefault(vm, text)
    values: dict[str, object] = {text.upper(): vm for text, vm in known.items()}
    values.update(
        VSOCK_TEMPLATE=uuid.UUID(_VSOCK_TEMPLATE), WELL_KNOWN_VM_IDS=known, VM_ID_NAMES=names
    )
    globals().update(values)
    return values[name]


# Well-known CIDs and ports (include/uapi/linux/vm_sockets.h).
CID_HYPERVISOR = 0
CID_LOCAL = 1
CID_HOST = 2
CID_ANY = 0xFFFFFFFF
PORT_ANY = 0xFFFFFFFF
#: Highest port a listener may use under Hyper-V's hv_sock transport.
HV_SOCK_MAX_LISTEN_PORT = 0x7FFFFFFF
#: Ports below this need CAP_NET_BIND_SERVICE to bind on Linux.
PRIVILEGED_PORTS_BELOW = 1024

WELL_KNOWN_CIDS: dict[str, int] = {
    "hypervisor": CID_HYPERVISOR,
    "local": CID_LOCAL,
    "host": CID_HOST,
    "any": CID_ANY,
}
CID_NAMES: dict[int, str] = {v: k for k, v in WELL_KNOWN_CIDS.items()}

_U32_MAX = 0xFFFFFFFF


def service_id_for_port(port: int) -> uuid.UUID:
    """The Hyper-V service id a Linux guest's vsock *port* maps to.

    >>> service_id_for_port(2761)
    UUID('00000ac9-facb-11e6-bd58-64006a7986d3')

    Raises :class:`AddressError` for a port outside 0..0xFFFFFFFF.
    """
    if isinstance(port, bool) or not isinstance(port, int):
        raise AddressError(f"port must be an integer, not {type(port).__name__}")
    if not 0 <= port <= _U32_MAX:
        raise AddressError(
            f"port {quote(port)} is out of range: a vsock port is 0..4294967295 (0xFFFFFFFF)"
        )
    import uuid

    return uuid.UUID(int=(port << 96) | _TEMPLATE_TAIL)


def as_guid(value: uuid.UUID | str, what: str) -> uuid.UUID:
    """*value* as a ``uuid.UUID``: a UUID itself, or GUID text in any case, braces optional.

    Raises :class:`AddressError` for anything else.
    """
    import uuid

    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        return parse_guid(value, what=what)
    raise AddressError(f"{what} must be a GUID string or a uuid.UUID, not {type(value).__name__}")


def is_template_service_id(service_id: uuid.UUID | str) -> bool:
    """True when *service_id* (a UUID or GUID text) has the VSOCK template form.

    Raises :class:`AddressError` when *service_id* is not a GUID.
    """
    return (as_guid(service_id, "service id").int & ((1 << 96) - 1)) == _TEMPLATE_TAIL


def port_for_service_id(service_id: uuid.UUID | str) -> int:
    """The vsock port of a template-form service id (the inverse of :func:`service_id_for_port`).

    *service_id* is a ``uuid.UUID`` or GUID text (any case, braces optional).
    Raises :class:`AddressError`, naming the template, when it is not of that form.
    """
    service_id = as_guid(service_id, "service id")
    if not is_template_service_id(service_id):
        raise AddressError(
            f"service id {service_id} is not of the VSOCK template form "
            f"xxxxxxxx-{_VSOCK_TEMPLATE[9:]} (template {_VSOCK_TEMPLATE}), "
            "so it has no vsock port; Linux guests can only reach template ids"
        )
    return service_id.int >> 96


def parse_guid(text: str, *, what: str = "GUID") -> uuid.UUID:
    """Parse a GUID in any case, with or without braces; :class:`AddressError` otherwise."""
    if not isinstance(text, str):
        raise AddressError(f"{what} must be a string, not {type(text).__name__}")
    s = text.strip()
    if s.startswith("{") and s.endswith("}"):
        s = s[1:-1]
    # uuid.UUID also takes "urn:uuid:" and 32 bare hex digits; an address
    # should take only the dashed 8-4-4-4-12 form, as Windows prints it.
    parts = s.split("-")
    if [len(p) for p in parts] != [8, 4, 4, 4, 12] or not all(
        c in "0123456789abcdefABCDEF" for p in parts for c in p
    ):
        raise AddressError(
            f"{what} {quote(text)} is not a GUID; write it as "
            "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (hex digits, braces optional)"
        )
    import uuid

    return uuid.UUID(s)


def coerce_service_id(value: object) -> uuid.UUID:
    """A service id from a ``uuid.UUID``, GUID text (braces optional) or a vsock port
    (an int, or decimal digits meaning its template id). :class:`AddressError` otherwise."""
    import uuid

    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return service_id_for_port(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():
            return service_id_for_port(parse_number(text, "port", 0, _U32_MAX))
        return parse_guid(text, what="service id")
    raise AddressError(
        f"a service id must be a GUID, a port number or a uuid.UUID, not {type(value).__name__}"
    )


def parse_number(text: str, what: str, lo: int, hi: int, hint: str = "") -> int:
    """A whole number written in ASCII decimal or ``0x`` hex, in ``lo..hi``.

    The one reading of numbers typed by users (addresses, CLI ports): leading zeros
    are fine however many, other digits than ASCII (``٣``) are not. Raises
    :class:`AddressError` quoting *text* cut short; *hint* ends the message.
    """
    if not isinstance(text, str):
        raise AddressError(f"{what} must be a string, not {type(text).__name__}")
    tail = f"; {hint}" if hint else ""
    if not text:
        raise AddressError(f"{what} is missing{tail}")
    hex_form = text[:2].lower() == "0x"
    body = text[2:] if hex_form else text
    allowed = "0123456789abcdefABCDEF" if hex_form else "0123456789"
    if text[:1] == "-" and text[1:] and all(c in "0123456789" for c in text[1:]):
        raise AddressError(f"{what} {quote(text)} is out of range {lo}..{hi}{tail}")
    if not body or not all(c in allowed for c in body):
        raise AddressError(
            f"{what} {quote(text)} is not a number (ASCII digits, or 0x and hex digits){tail}"
        )
    # int() refuses decimal text over 4300 digits (leading zeros count): drop the
    # zeros, and refuse what is far out of range before converting.
    digits = body.lstrip("0") or "0"
    if len(digits) > 40:
        raise AddressError(
            f"{what} {quote(text)} is out of range {lo}..{hi} ({len(digits)} digits){tail}"
        )
    value = int(digits, 16 if hex_form else 10)
    if not lo <= value <= hi:
        raise AddressError(f"{what} {value} is out of range {lo}..{hi}{tail}")
    return value
