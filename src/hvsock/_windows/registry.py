"""Service registration: the host's GuestCommunicationServices key.

A service is registered by a key named by its service id under :data:`SERVICES_KEY`
with a string value ``ElementName`` (its friendly name). hvsock also writes
``CreatedBy = "hvsock"`` so it can tell its own entries from Windows' built-in
ones and other tools', and never removes those by accident.

The logic works on any :class:`RegistryBackend`: :class:`WinregBackend` on
Windows (the only code here that touches Windows), or
:class:`hvsock.testing.MemoryRegistry`, which tests and ``--dry-run`` use.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import _validate
from .._core import ids
from .._errors import ArgumentError, PermissionDeniedError, RegistryError, UnsupportedError

HKLM = "HKEY_LOCAL_MACHINE"
SERVICES_KEY = (
    r"SOFTWARE\Microsoft\Windows NT\CurrentVersion\Virtualization"
    r"\GuestCommunicationServices"
)
ELEMENT_NAME = "ElementName"
#: The extra value that marks entries hvsock made.
MARKER_NAME = "CreatedBy"
MARKER_VALUE = "hvsock"
#: Longest friendly name hvsock writes (the registry would take more).
MAX_ELEMENT_NAME = 256
#: Windows' own limits: a key name, and a value name.
MAX_KEY_NAME = 255
MAX_VALUE_NAME = 16383

#: Services Windows registers itself (the seed's "built-in services").
BUILTIN_SERVICES: dict[uuid.UUID, str] = {
    uuid.UUID("999e53d4-3d5c-4c3e-8779-bed06ec056e1"): "VM Session Service",
    uuid.UUID("a5201c21-2770-4c11-a68e-f182edb29220"): "VM Session Service-2",
}
_BUILTIN_NAMES = frozenset(name.casefold() for name in BUILTIN_SERVICES.values())


class RegistryBackend(Protocol):
    """What registration needs from a registry. Paths are below HKEY_LOCAL_MACHINE,
    parts joined by backslashes; names compare without regard to case, as Windows' do.
    """

    def subkeys(self, path: str) -> list[str]:
        """Names of the keys right under *path*; [] when *path* does not exist."""
        ...

    def values(self, path: str) -> dict[str, object] | None:
        """The values of *path* by name; None when the key does not exist."""
        ...

    def create_key(self, path: str) -> None:
        """Create *path* and any missing parents; nothing when it exists."""
        ...

    def set_value(self, path: str, name: str, value: str) -> None:
        """Set string value *name* of the existing key *path*."""
        ...

    def delete_key(self, path: str) -> None:
        """Remove *path*, which must have no subkeys; nothing when it does not exist."""
        ...


def check_element_name(name: object) -> str:
    """A friendly name hvsock will write: 1..256 printable characters, no edge spaces.

    Raises :class:`RegistryError` before anything is written, with the message
    ``hvsock.Service`` gives for the same name (one check: ``_validate.service_name``).
    """
    try:
        return _validate.service_name(name)
    except ArgumentError as exc:
        raise RegistryError(str(exc)) from None


def check_service_id(value: object) -> uuid.UUID:
    """A service id: a ``uuid.UUID``, GUID text (braces optional) or a vsock port number."""
    if isinstance(value, bool) or not isinstance(value, (uuid.UUID, int, str)):
        raise RegistryError(
            f"a service id must be a GUID, a port number or a uuid.UUID, not {type(value).__name__}"
        )
    return ids.coerce_service_id(value)


def service_key(key_name: str) -> str:
    """The full path (below HKEY_LOCAL_MACHINE) of the service key named *key_name*."""
    return f"{SERVICES_KEY}\\{key_name}"


@dataclass(frozen=True)
class ServiceEntry:
    """One registered service as found in the registry."""

    #: The key's name as found (normally the service id in lower case).
    key: str
    #: None when the key's name is not a GUID.
    service_id: uuid.UUID | None
    #: ElementName; None when it is missing or not a string.
    name: str | None
    made_by_hvsock: bool

    @property
    def port(self) -> int | None:
        """The vsock port of a template service id (reachable from Linux guests), else None."""
        if self.service_id is not None and ids.is_template_service_id(self.service_id):
            return ids.port_for_service_id(self.service_id)
        return None

    @property
    def template(self) -> bool:
        return self.port is not None

    @property
    def builtin(self) -> bool:
        """A service Windows registers itself, known by its id or its name."""
        if self.made_by_hvsock:
            return False
        return self.service_id in BUILTIN_SERVICES or (
            self.name is not None and self.name.casefold() in _BUILTIN_NAMES
        )

    @property
    def origin(self) -> str:
        """``"hvsock"``, ``"built-in"`` or ``"other"`` (another tool, or by hand)."""
        return "hvsock" if self.made_by_hvsock else "built-in" if self.builtin else "other"

    def as_dict(self) -> dict[str, object]:
        return {
            "id": None if self.service_id is None else str(self.service_id),
            "key": self.key,
            "name": self.name,
            "template": self.template,
            "port": self.port,
            "made_by_hvsock": self.made_by_hvsock,
            "builtin": self.builtin,
            "origin": self.origin,
        }


@dataclass(frozen=True)
class RegistryEdit:
    """One step of a change, as a .reg file says it: set string values of a key
    (creating it), or delete the key. *key* is below HKEY_LOCAL_MACHINE.
    """

    key: str
    values: tuple[tuple[str, str], ...] = ()
    delete: bool = False

    def __post_init__(self) -> None:
        if self.delete and self.values:
            raise RegistryError(f"an edit cannot both delete {self.key} and set values in it")


@dataclass(frozen=True)
class Registration:
    """Register *name* as *service_id* (in key *key_name*, the id by default)."""

    service_id: uuid.UUID
    name: str
    key_name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        check_element_name(self.name)
        if not self.key_name:
            object.__setattr__(self, "key_name", str(self.service_id))

    @property
    def port(self) -> int | None:
        sid = self.service_id
        return ids.port_for_service_id(sid) if ids.is_template_service_id(sid) else None

    def edits(self) -> tuple[RegistryEdit, ...]:
        # The marker goes first: if writing stops half-way, the entry is still
        # known as hvsock's and `hvsock unregister` can remove it.
        return (
            RegistryEdit(
                service_key(self.key_name), ((MARKER_NAME, MARKER_VALUE), (ELEMENT_NAME, self.name))
            ),
        )


@dataclass(frozen=True)
class Removal:
    """Remove the registration of *service_id*; *force* also removes entries hvsock
    did not make (never Windows' built-in ones).
    """

    service_id: uuid.UUID
    force: bool = False
    key_name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.service_id in BUILTIN_SERVICES:
            raise RegistryError(
                f"{self.service_id} is Windows' own {BUILTIN_SERVICES[self.service_id]!r}; "
                "hvsock never removes a built-in service"
            )
        if not self.key_name:
            object.__setattr__(self, "key_name", str(self.service_id))

    def edits(self) -> tuple[RegistryEdit, ...]:
        return (RegistryEdit(service_key(self.key_name), delete=True),)


Change = Registration | Removal


def describe_service(service_id: uuid.UUID) -> str:
    """``00001388-facb-... (vsock port 5000)``: the id, and its port when it has one."""
    if ids.is_template_service_id(service_id):
        return f"{service_id} (vsock port {ids.port_for_service_id(service_id)})"
    return str(service_id)


# -- reading ---------------------------------------------------------------------


def _entry(key: str, values: dict[str, object]) -> ServiceEntry:
    try:
        service_id: uuid.UUID | None = ids.parse_guid(key)
    except ValueError:
        service_id = None
    folded = {name.casefold(): value for name, value in values.items()}
    name = folded.get(ELEMENT_NAME.casefold())
    return ServiceEntry(
        key=key,
        service_id=service_id,
        name=name if isinstance(name, str) else None,
        made_by_hvsock=folded.get(MARKER_NAME.casefold()) == MARKER_VALUE,
    )


def list_services(backend: RegistryBackend) -> list[ServiceEntry]:
    """Every entry under the services key: hvsock's first, then by name."""
    entries = []
    for key in backend.subkeys(SERVICES_KEY):
        values = backend.values(service_key(key))
        if values is not None:
            entries.append(_entry(key, values))
    return sorted(
        entries, key=lambda e: (e.origin != "hvsock", (e.name or "").casefold(), e.key.casefold())
    )


def find_service(entries: Sequence[ServiceEntry], service_id: uuid.UUID) -> ServiceEntry | None:
    """The entry for *service_id* (its key may be in any case, with braces), or None."""
    return next((e for e in entries if e.service_id == service_id), None)


# -- planning (pure) ---------------------------------------------------------------


def plan_registration(
    entries: Sequence[ServiceEntry], name: str, service_id: object
) -> Registration | None:
    """What registering *name* as *service_id* needs, given the *entries* there now.

    None when it is already registered so (a no-op). Raises :class:`RegistryError`
    when the id is registered under another name, or the name is not valid.
    """
    check_element_name(name)
    sid = check_service_id(service_id)
    found = find_service(entries, sid)
    if found is None:
        return Registration(sid, name)
    if found.name == name:
        return None
    if found.name is None and found.made_by_hvsock:
        return Registration(sid, name, key_name=found.key)  # finish a half-written entry
    if found.name is None:
        raise RegistryError(
            f"service {describe_service(sid)} has a key but no ElementName, and hvsock did "
            f"not make it; look at it in regedit, or `hvsock unregister {sid} --force`"
        )
    what = "Windows' built-in service" if found.builtin else "service"
    raise RegistryError(
        f"{describe_service(sid)} is already registered as {what} {found.name!r}; pick "
        f"another id (`--new`), or `hvsock unregister {sid}` first"
    )


def plan_removal(
    entries: Sequence[ServiceEntry], service_id: object, *, force: bool = False
) -> Removal | None:
    """What unregistering *service_id* needs; None when it is not registered.

    Raises :class:`RegistryError` for an entry hvsock did not make (unless *force*)
    and always for Windows' built-in ones.
    """
    sid = check_service_id(service_id)
    found = find_service(entries, sid)
    if sid in BUILTIN_SERVICES or (found is not None and found.builtin):
        raise RegistryError(f"{sid} is a service built into Windows; hvsock never removes it")
    if found is None:
        return None
    if not found.made_by_hvsock and not force:
        raise RegistryError(
            f"{describe_service(sid)} ({found.name!r}) was not registered by hvsock; add "
            "--force to remove it anyway"
        )
    return Removal(sid, force, key_name=found.key)


# -- writing -----------------------------------------------------------------------


def apply_edits(backend: RegistryBackend, edits: Sequence[RegistryEdit]) -> None:
    """Carry out *edits* in order."""
    for edit in edits:
        if edit.delete:
            backend.delete_key(edit.key)
            continue
        backend.create_key(edit.key)
        for name, value in edit.values:
            backend.set_value(edit.key, name, value)


class ServiceDeclaration(Protocol):
    """What registration needs of a declaration such as :class:`hvsock.Service`."""

    @property
    def name(self) -> str: ...

    @property
    def service_id(self) -> Any: ...


def register_service(
    service: ServiceDeclaration | str,
    service_id: object = None,
    *,
    registry: RegistryBackend | None = None,
) -> Registration | None:
    """Register a service on this Hyper-V host: ``register_service("My agent", 5000)``,
    or ``register_service(my_service)`` for anything with a ``name`` and a
    ``service_id`` (a :class:`hvsock.Service` declaration).

    *service_id* is a port (its template id), GUID text or ``uuid.UUID``.
    *registry* defaults to the machine's (Windows only). Returns the change made,
    or None when it was registered so already. Raises :class:`RegistryError` (the
    id is registered under another name, bad name), :class:`AddressError` (bad
    id), :class:`PermissionDeniedError` (not elevated), :class:`UnsupportedError`
    (no registry here: write a script with :func:`registration_script`).
    """
    if not isinstance(service, str) and hasattr(service, "name") and hasattr(service, "service_id"):
        if service_id is not None:
            raise RegistryError("pass a Service alone: it has its own service id")
        name, service_id = service.name, service.service_id
    else:
        name = check_element_name(service)
        if service_id is None:
            raise RegistryError(f"register_service({name!r}) needs a service id too")
    check_element_name(name)
    check_service_id(service_id)
    backend = registry if registry is not None else default_backend()
    change = plan_registration(list_services(backend), name, service_id)
    if change is not None:
        apply_edits(backend, change.edits())
    return change


def unregister_service(
    service_id: object, *, force: bool = False, registry: RegistryBackend | None = None
) -> Removal | None:
    """Remove the registration of *service_id*; None when there was none.

    Only entries hvsock made, unless *force*; never Windows' built-in ones
    (:class:`RegistryError`).
    """
    sid = check_service_id(service_id)
    backend = registry if registry is not None else default_backend()
    change = plan_removal(list_services(backend), sid, force=force)
    if change is not None:
        apply_edits(backend, change.edits())
    return change


def registered_services(registry: RegistryBackend | None = None) -> list[ServiceEntry]:
    """Every registered service (hvsock's first); *registry* defaults to the machine's."""
    return list_services(registry if registry is not None else default_backend())


# -- the real registry (Windows only) ---------------------------------------------


def default_backend() -> RegistryBackend:
    """The machine's registry; :class:`UnsupportedError` where there is none."""
    try:
        winreg = importlib.import_module("winreg")
    except ImportError:
        raise UnsupportedError(
            "the Windows registry is not here: services are registered on the Hyper-V "
            "host; from here, write the host-side step as a script "
            "(hvsock.windows.registration_script) and run it on the host as administrator"
        ) from None
    return WinregBackend(winreg)  # pragma: no cover - Windows only


class WinregBackend:
    """HKEY_LOCAL_MACHINE through ``winreg``, in its 64-bit view (also from 32-bit Python,
    which would otherwise be redirected to WOW6432Node).

    *winreg* is the module; tests on Linux pass a fake one with its interface.
    *hive* (``winreg.HKEY_CURRENT_USER``, say) replaces HKEY_LOCAL_MACHINE: the
    self-test and the Windows test tier work in a scratch key there.
    """

    def __init__(self, winreg: Any, hive: Any = None, hive_name: str = "HKLM") -> None:
        self._w = winreg
        self._view = winreg.KEY_WOW64_64KEY
        self._hive = winreg.HKEY_LOCAL_MACHINE if hive is None else hive
        self._hive_name = hive_name

    @contextmanager
    def _errors(self, op: str, path: str) -> Iterator[None]:
        try:
            yield
        except PermissionError as exc:
            raise PermissionDeniedError(
                f"cannot {op} {self._hive_name}\\{path}: access denied; run this from an "
                "elevated prompt (Run as administrator), or write a script for an administrator "
                "with --export ps1",
                errno=exc.errno,
            ) from exc
        except OSError as exc:
            raise RegistryError(
                f"cannot {op} {self._hive_name}\\{path}: {exc.strerror or exc}"
            ) from exc

    def _open(self, path: str, access: int) -> Any:
        return self._w.OpenKey(self._hive, path, 0, access | self._view)

    def subkeys(self, path: str) -> list[str]:
        with self._errors("read", path):
            try:
                key = self._open(path, self._w.KEY_READ)
            except FileNotFoundError:
                return []
            with key:
                return [self._w.EnumKey(key, i) for i in range(self._w.QueryInfoKey(key)[0])]

    def values(self, path: str) -> dict[str, object] | None:
        with self._errors("read", path):
            try:
                key = self._open(path, self._w.KEY_READ)
            except FileNotFoundError:
                return None
            with key:
                count = self._w.QueryInfoKey(key)[1]
                return {
                    name: value
                    for name, value, _kind in (self._w.EnumValue(key, i) for i in range(count))
                }

    def create_key(self, path: str) -> None:
        with self._errors("create", path):
            self._w.CreateKeyEx(self._hive, path, 0, self._w.KEY_WRITE | self._view).Close()

    def set_value(self, path: str, name: str, value: str) -> None:
        with self._errors("write", path), self._open(path, self._w.KEY_SET_VALUE) as key:
            self._w.SetValueEx(key, name, 0, self._w.REG_SZ, value)

    def delete_key(self, path: str) -> None:
        with self._errors("delete", path), suppress(FileNotFoundError):
            self._w.DeleteKeyEx(self._hive, path, self._view, 0)

    def delete_value(self, path: str, name: str) -> None:
        """Remove value *name* of *path*; nothing when either does not exist."""
        with (
            self._errors("delete", path),
            suppress(FileNotFoundError),
            self._open(path, self._w.KEY_SET_VALUE) as key,
        ):
            self._w.DeleteValue(key, name)
