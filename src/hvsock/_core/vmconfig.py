"""What a KVM host's VM managers say about a VM's vsock device. Pure: no I/O.

Four readers, each of what one source prints or holds (``hvsock._kvm`` fetches it):

- libvirt's domain XML (``virsh dumpxml``): the name, whether it runs, and
  ``<devices><vsock><cid auto='yes' address='3'/></vsock>``;
- a QEMU command line: ``-name NAME[,...]`` (or ``guest=NAME``) and
  ``-device vhost-vsock-pci,guest-cid=N`` (or the JSON form libvirt writes);
- Firecracker: its command line (``--id``, ``--api-sock``, ``--config-file``,
  ``--no-api``), its configuration JSON (the config file, or ``GET /vm/config``:
  ``vsock.guest_cid``, ``vsock.uds_path``) and ``GET /`` (``id``, ``state``);
- Cloud Hypervisor: ``--vsock cid=N,socket=PATH`` and ``--api-socket``, and its
  ``GET /api/v1/vm.info`` answer (``config.vsock``, ``state``).

Input is untrusted (another user's process, a hostile file): sizes are capped, XML
with a DOCTYPE or an entity is refused before the parser sees it (the standard
library's parser would expand entities), and every problem is an
:class:`HvsockError` saying what was wrong and where.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from .._errors import HvsockError
from .._validate import quote

__all__ = [
    "CLOUD_HYPERVISOR",
    "FIRECRACKER",
    "QEMU",
    "Domain",
    "VmmCommand",
    "VsockDevice",
    "parse_cloud_hypervisor_info",
    "parse_domain_xml",
    "parse_firecracker_config",
    "parse_firecracker_instance",
    "parse_vmm_argv",
    "split_qemu_options",
]

QEMU = "qemu"
FIRECRACKER = "firecracker"
CLOUD_HYPERVISOR = "cloud-hypervisor"
#: libvirt's domain types, as hypervisors (kvm and qemu both run QEMU).
LIBVIRT_TYPES = {"kvm": QEMU, "qemu": QEMU, "ch": CLOUD_HYPERVISOR}

#: A domain's XML is a few kilobytes; a VMM's JSON answer about as much.
MAX_XML = 1 << 20
MAX_JSON = 1 << 20
#: Guest CIDs a VMM accepts: 0-2 are the hypervisor, local and host, 2**32-1 is "any".
MIN_GUEST_CID = 3
MAX_GUEST_CID = 0xFFFFFFFE
#: Where Firecracker puts its API socket when no --api-sock is given.
FIRECRACKER_DEFAULT_API = "/run/firecracker.socket"
#: Firecracker's VM id when no --id is given.
FIRECRACKER_DEFAULT_ID = "anonymous-instance"
_VHOST_VSOCK = "vhost-vsock"


@dataclass(frozen=True)
class VsockDevice:
    """A VM's vsock device: its guest CID (None: auto-assigned, not yet known) and,
    for hybrid vsock (Firecracker, Cloud Hypervisor), the host's Unix socket."""

    cid: int | None
    uds_path: str | None = None
    auto: bool = False


@dataclass(frozen=True)
class Domain:
    """A libvirt domain: name, hypervisor, whether it is active, its vsock device."""

    name: str
    hypervisor: str
    active: bool
    vsock: VsockDevice | None


@dataclass(frozen=True)
class VmmCommand:
    """What a VMM's command line tells: which VMM, the VM's name, its vsock device
    (when the command line has it), and where to ask for the rest."""

    hypervisor: str
    name: str | None
    vsock: VsockDevice | None = None
    #: Firecracker's / Cloud Hypervisor's API socket (None: none, or not a path).
    api_socket: str | None = None
    #: Firecracker's --config-file.
    config_file: str | None = None


# -- numbers -----------------------------------------------------------------------------


def _cid(value: object, what: str) -> int:
    if isinstance(value, str):
        text = value.strip()
        try:
            # QEMU takes decimal, 0x hex and 0 octal; a CID in the thousands of digits is
            # garbage, refused before int() (which refuses over 4300 digits itself).
            if len(text) > 24:
                raise ValueError
            number = int(text, 0) if text[:2].lower() == "0x" else int(text, 10)
        except ValueError:
            raise HvsockError(f"{what} {quote(value)} is not a number") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise HvsockError(f"{what} {quote(value)} is not a number")
    if not MIN_GUEST_CID <= number <= MAX_GUEST_CID:
        raise HvsockError(
            f"{what} {quote(number)} is not a guest CID ({MIN_GUEST_CID}..{MAX_GUEST_CID})"
        )
    return number


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise HvsockError(f"{what} {quote(value)} is not a non-empty string")
    if "\0" in value:
        raise HvsockError(f"{what} {quote(value)} contains a NUL character")
    return value


# -- libvirt domain XML ------------------------------------------------------------------


def _xml_text(data: bytes | str, what: str) -> str:
    if len(data) > MAX_XML:
        raise HvsockError(
            f"{what} is {len(data)} bytes long; a domain's XML is at most "
            f"{MAX_XML} here: refusing it"
        )
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HvsockError(
                f"{what} is not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
    else:
        text = data
    upper = text.upper()
    # The standard library's parser expands internal entities (a "billion laughs"
    # document grows without bound); libvirt never writes either.
    for marker in ("<!DOCTYPE", "<!ENTITY"):
        if marker in upper:
            raise HvsockError(
                f"{what} has a {marker[2:]} declaration, which libvirt never writes: refusing it"
            )
    return text


def parse_domain_xml(data: bytes | str, what: str = "the domain XML") -> Domain:
    """The :class:`Domain` of libvirt's ``<domain>`` XML (``virsh dumpxml``).

    An active domain's root carries its ``id``; an auto CID has its ``address`` once
    the domain runs. Raises :class:`HvsockError` for input that is not such XML.
    """
    text = _xml_text(data, what)
    try:
        # A str with an encoding declaration is refused by the parser: drop it.
        if text.lstrip().startswith("<?xml"):
            text = text[text.index("?>") + 2 :]
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise HvsockError(f"{what} is not well-formed XML ({exc})") from None
    except ValueError:
        raise HvsockError(f"{what} has an unterminated <?xml declaration") from None
    if root.tag != "domain":
        raise HvsockError(f"{what} is a <{root.tag[:40]}> document, not a libvirt <domain>")
    name = (root.findtext("name") or "").strip()
    if not name:
        raise HvsockError(f"{what} has no <name>")
    kind = root.get("type", "")
    hypervisor = LIBVIRT_TYPES.get(kind, kind or "unknown")
    vsock = root.find("devices/vsock")
    device = None
    if vsock is not None:
        cid = vsock.find("cid")
        auto = cid is not None and cid.get("auto", "no") == "yes"
        address = cid.get("address") if cid is not None else None
        number = _cid(address, f"{what}: <cid address=...>") if address else None
        device = VsockDevice(number, auto=auto)
    return Domain(name, hypervisor, root.get("id") is not None, device)


# -- command lines ---------------------------------------------------------------------------


def split_qemu_options(text: str) -> list[str]:
    """QEMU's ``a,b=c,,d`` option syntax split at single commas (``,,`` is a comma)."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == ",":
            if text[i + 1 : i + 2] == ",":
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    parts.append("".join(current))
    return parts


def _qemu_keys(text: str, implied: str) -> dict[str, str]:
    """``-device``/``-name`` text as keys; a first part without '=' is *implied*."""
    keys: dict[str, str] = {}
    for n, part in enumerate(split_qemu_options(text)):
        key, sep, value = part.partition("=")
        if not sep:
            if n == 0:
                keys[implied] = part
            continue
        keys.setdefault(key, value)
    return keys


def _qemu_device(text: str) -> dict[str, object]:
    if text.lstrip().startswith("{"):
        # libvirt writes -device as JSON: {"driver":"vhost-vsock-pci","guest-cid":3,...}
        data = _json(text, "a -device JSON argument")
        if not isinstance(data, dict):
            raise HvsockError(f"-device JSON {quote(text)} is not an object")
        return data
    return dict(_qemu_keys(text, "driver"))


def _options(argv: Sequence[str]) -> list[tuple[str, str | None]]:
    """``(option, value)`` pairs of ``-opt value``, ``--opt value`` and ``--opt=value``;
    an option last on the line has the value None."""
    pairs: list[tuple[str, str | None]] = []
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-") and len(arg) > 1:
            name = "-" + arg.lstrip("-")
            if "=" in name:
                name, _, value = name.partition("=")
                pairs.append((name, value))
                i += 1
                continue
            following = argv[i + 1] if i + 1 < len(argv) else None
            pairs.append((name, following))
        i += 1
    return pairs


def _vmm_kind(argv0: str) -> str | None:
    base = os.path.basename(argv0)
    if base.startswith("qemu-system-") or base in ("qemu-kvm", "kvm", "qemu"):
        return QEMU
    if base.startswith("firecracker"):
        return FIRECRACKER
    if base.startswith("cloud-hypervisor"):
        return CLOUD_HYPERVISOR
    return None


def parse_vmm_argv(argv: Sequence[str]) -> VmmCommand | None:
    """What a VMM's command line says; None when *argv* is not QEMU's, Firecracker's or
    Cloud Hypervisor's. Raises :class:`HvsockError` for a vsock option it cannot read."""
    if not argv:
        return None
    kind = _vmm_kind(argv[0])
    if kind is None:
        return None
    options = _options(argv)
    if kind == QEMU:
        return _qemu(options)
    if kind == FIRECRACKER:
        return _firecracker(options)
    return _cloud_hypervisor(options)


def _qemu(options: list[tuple[str, str | None]]) -> VmmCommand:
    name = None
    device = None
    for option, value in options:
        if value is None:
            continue
        if option == "-name" and name is None:
            name = _qemu_keys(value, "guest").get("guest") or None
        elif option == "-device" and device is None:
            keys = _qemu_device(value)
            driver = keys.get("driver")
            if isinstance(driver, str) and driver.startswith(_VHOST_VSOCK):
                if "guest-cid" not in keys:
                    raise HvsockError(f"-device {quote(value)} has no guest-cid")
                device = VsockDevice(_cid(keys["guest-cid"], "guest-cid"))
    return VmmCommand(QEMU, name, device)


def _firecracker(options: list[tuple[str, str | None]]) -> VmmCommand:
    values = {option: value for option, value in reversed(options)}
    api = None if "-no-api" in values else (values.get("-api-sock") or FIRECRACKER_DEFAULT_API)
    return VmmCommand(
        FIRECRACKER,
        values.get("-id") or FIRECRACKER_DEFAULT_ID,
        api_socket=api,
        config_file=values.get("-config-file") or None,
    )


def _ch_keys(text: str) -> dict[str, str]:
    """Cloud Hypervisor's ``k=v,k="a,b"`` option syntax (double quotes group)."""
    keys: dict[str, str] = {}
    current: list[str] = []
    quoted = False
    for c in text + ",":
        if c == '"':
            quoted = not quoted
        elif c == "," and not quoted:
            key, sep, value = "".join(current).partition("=")
            if sep:
                keys.setdefault(key.strip(), value)
            current = []
        else:
            current.append(c)
    return keys


def _cloud_hypervisor(options: list[tuple[str, str | None]]) -> VmmCommand:
    values = {option: value for option, value in reversed(options)}
    api = values.get("-api-socket")
    if api is not None and "=" in api:
        api = _ch_keys(api).get("path")  # path=PATH; fd=N has no path to dial
    device = None
    vsock = values.get("-vsock")
    if vsock is not None:
        keys = _ch_keys(vsock)
        if "cid" not in keys or not keys.get("socket"):
            raise HvsockError(f"--vsock {quote(vsock)} lacks cid=N or socket=PATH")
        device = VsockDevice(_cid(keys["cid"], "--vsock cid"), keys["socket"])
    # Cloud Hypervisor has no VM name: its API socket's file names it, else its vsock's.
    named_by = api or (device.uds_path if device is not None else None)
    name = _stem(named_by) if named_by else None
    return VmmCommand(CLOUD_HYPERVISOR, name, device, api_socket=api or None)


def _stem(path: str) -> str | None:
    base = os.path.basename(path.rstrip("/"))
    stem = base.rsplit(".", 1)[0] if "." in base[1:] else base
    return stem or None


# -- Firecracker and Cloud Hypervisor JSON ------------------------------------------------


def _json(data: bytes | str, what: str) -> object:
    if len(data) > MAX_JSON:
        raise HvsockError(f"{what} is {len(data)} bytes long; at most {MAX_JSON} here: refusing it")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        text = data if isinstance(data, str) else data.decode("utf-8", "replace")
        raise HvsockError(f"{what} is not JSON ({str(exc)[:120]}): {quote(text[:80])}") from None


def parse_firecracker_config(data: bytes | str, what: str) -> VsockDevice | None:
    """The vsock device of a Firecracker configuration (a ``--config-file``, or the
    ``GET /vm/config`` answer); None when it has none."""
    config = _json(data, what)
    if not isinstance(config, dict):
        raise HvsockError(f"{what} is not a JSON object")
    vsock = config.get("vsock")
    if vsock is None:
        return None
    if not isinstance(vsock, dict):
        raise HvsockError(f"{what}: 'vsock' is not an object")
    return VsockDevice(
        _cid(vsock.get("guest_cid"), f"{what}: vsock.guest_cid"),
        _text(vsock.get("uds_path"), f"{what}: vsock.uds_path"),
    )


def parse_firecracker_instance(data: bytes | str, what: str) -> tuple[str | None, str]:
    """``(id, state)`` of Firecracker's ``GET /`` answer (``state``: "Running", ...)."""
    info = _json(data, what)
    if not isinstance(info, dict):
        raise HvsockError(f"{what} is not a JSON object")
    vm_id = info.get("id")
    state = info.get("state")
    return (
        _text(vm_id, f"{what}: id") if vm_id is not None else None,
        _text(state, f"{what}: state") if state is not None else "unknown",
    )


def parse_cloud_hypervisor_info(data: bytes | str, what: str) -> tuple[VsockDevice | None, str]:
    """``(vsock device, state)`` of Cloud Hypervisor's ``vm.info`` answer."""
    info = _json(data, what)
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise HvsockError(f"{what} is not a vm.info object (no 'config')")
    state = info.get("state")
    vsock = info["config"].get("vsock")
    device = None
    if vsock is not None:
        if not isinstance(vsock, dict):
            raise HvsockError(f"{what}: config.vsock is not an object")
        device = VsockDevice(
            _cid(vsock.get("cid"), f"{what}: config.vsock.cid"),
            _text(vsock.get("socket"), f"{what}: config.vsock.socket"),
        )
    return device, _text(state, f"{what}: state") if state is not None else "unknown"
