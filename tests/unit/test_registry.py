"""Service registration on the in-memory registry: the same logic `hvsock register` runs."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hvsock import AddressError, PermissionDeniedError, Service, UnsupportedError
from hvsock._errors import RegistryError
from hvsock._windows import registry as reg
from hvsock._windows.registry import (
    ELEMENT_NAME,
    MARKER_NAME,
    SERVICES_KEY,
    Registration,
    RegistryEdit,
    Removal,
    register_service,
    registered_services,
    unregister_service,
)
from hvsock.testing import MemoryRegistry
from hvsock.windows import service_id_for_port

from ..fakes import outcome

SID = service_id_for_port(5000)
RANDOM_SID = uuid.UUID("7c1e4a2b-9d3f-4e8a-b6c5-2f1a0e9d8c7b")
VM_SESSION = uuid.UUID("999e53d4-3d5c-4c3e-8779-bed06ec056e1")


def key(name: str) -> str:
    return f"{SERVICES_KEY}\\{name}"


def windows_host() -> MemoryRegistry:
    """A host's services key as Windows leaves it: the built-in entries, in upper case."""
    registry = MemoryRegistry()
    for sid, name in reg.BUILTIN_SERVICES.items():
        registry.create_key(key(str(sid).upper()))
        registry.set_value(key(str(sid).upper()), ELEMENT_NAME, name)
    return registry


async def handler(conn: object) -> None:
    return None


# -- the in-memory registry itself ---------------------------------------------------


def test_memory_registry_keeps_keys_and_values_like_windows() -> None:
    registry = MemoryRegistry()
    assert registry.subkeys("SOFTWARE") == []
    assert registry.values("SOFTWARE") is None
    registry.create_key("SOFTWARE\\Vendor\\App")
    assert registry.subkeys("software") == ["Vendor"]
    assert registry.subkeys("SOFTWARE\\VENDOR") == ["App"]
    registry.set_value("software\\vendor\\app", "Name", "one")
    registry.set_value("SOFTWARE\\Vendor\\App", "NAME", "two")  # same value, any case
    assert registry.values("SOFTWARE\\Vendor\\App") == {"Name": "two"}
    registry.create_key("SOFTWARE\\VENDOR\\APP")  # exists: nothing changes
    assert registry.snapshot() == {
        "SOFTWARE": {},
        "SOFTWARE\\Vendor": {},
        "SOFTWARE\\Vendor\\App": {"Name": "two"},
    }
    with pytest.raises(RegistryError, match="has subkeys"):
        registry.delete_key("SOFTWARE\\Vendor")
    registry.delete_key("SOFTWARE\\vendor\\app")
    registry.delete_key("SOFTWARE\\vendor\\app")  # gone: nothing to do
    assert registry.subkeys("SOFTWARE\\Vendor") == []


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("", "has an empty part"),
        ("A\\\\B", "has an empty part"),
        ("A\\", "has an empty part"),
        ("\\A", "has an empty part"),
        ("A\\" + "k" * 256, "longer than 255"),
        ("A\\x\0y", "NUL"),
        (5, "must be text"),
    ],
)
def test_memory_registry_refuses_bad_paths(path: object, fragment: str) -> None:
    registry = MemoryRegistry()
    with pytest.raises(RegistryError, match=fragment):
        registry.create_key(path)  # type: ignore[arg-type]
    assert registry.snapshot() == {}


def test_memory_registry_refuses_bad_values() -> None:
    registry = MemoryRegistry()
    with pytest.raises(RegistryError, match="does not exist"):
        registry.set_value("A", "n", "v")
    registry.create_key("A")
    with pytest.raises(RegistryError, match="without NUL"):
        registry.set_value("A", "n", "a\0b")
    with pytest.raises(RegistryError, match="without NUL"):
        registry.set_value("A", "n", 5)  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="at most 16383"):
        registry.set_value("A", "n" * 16384, "v")
    assert registry.snapshot() == {"A": {}}


class FixedRegistry:
    """A read-only backend with values of any type, as winreg can return them."""

    def __init__(self, tree: dict[str, dict[str, object]]) -> None:
        self.tree = tree

    def subkeys(self, path: str) -> list[str]:
        prefix = path + "\\"
        return [
            k[len(prefix) :]
            for k in self.tree
            if k.startswith(prefix) and "\\" not in k[len(prefix) :]
        ]

    def values(self, path: str) -> dict[str, object] | None:
        return self.tree.get(path)

    def create_key(self, path: str) -> None:
        raise AssertionError("read only")

    def set_value(self, path: str, name: str, value: str) -> None:
        raise AssertionError("read only")

    def delete_key(self, path: str) -> None:
        raise AssertionError("read only")


def test_copy_of_another_backend_keeps_values_of_any_type() -> None:
    source = FixedRegistry(
        {
            SERVICES_KEY: {},
            key(str(SID)): {ELEMENT_NAME: 7},
            key("not-a-guid"): {ELEMENT_NAME: "odd", MARKER_NAME: "hvsock"},
        }
    )
    copy = MemoryRegistry.copy_of(source, SERVICES_KEY)
    copied = copy.snapshot()
    assert {k: v for k, v in copied.items() if k.startswith(SERVICES_KEY)} == source.tree
    parts = SERVICES_KEY.split("\\")
    assert set(copied) - set(source.tree) == {"\\".join(parts[:i]) for i in range(1, len(parts))}
    entries = {e.key: e for e in registered_services(copy)}
    assert entries[str(SID)].name is None  # a DWORD ElementName is no name
    assert entries["not-a-guid"].service_id is None
    assert entries["not-a-guid"].as_dict()["id"] is None
    assert MemoryRegistry.copy_of(source, "SOFTWARE\\Nothing").snapshot() == {}


# -- registering -----------------------------------------------------------------------


def test_register_writes_name_and_marker_and_lists_it() -> None:
    registry = windows_host()
    change = register_service("My agent", 5000, registry=registry)
    assert change == Registration(SID, "My agent")
    assert registry.values(key(str(SID))) == {MARKER_NAME: "hvsock", ELEMENT_NAME: "My agent"}
    entries = registered_services(registry)
    assert [(e.name, e.origin) for e in entries] == [
        ("My agent", "hvsock"),
        ("VM Session Service", "built-in"),
        ("VM Session Service-2", "built-in"),
    ]
    mine = entries[0]
    assert (mine.service_id, mine.port, mine.template, mine.made_by_hvsock, mine.builtin) == (
        SID,
        5000,
        True,
        True,
        False,
    )
    assert mine.as_dict() == {
        "id": str(SID),
        "key": str(SID),
        "name": "My agent",
        "template": True,
        "port": 5000,
        "made_by_hvsock": True,
        "builtin": False,
        "origin": "hvsock",
    }
    assert entries[1].as_dict()["port"] is None


@pytest.mark.parametrize("same_id", [SID, str(SID).upper(), f"{{{SID}}}", "5000", 5000])
def test_register_again_is_a_no_op(same_id: object) -> None:
    registry = windows_host()
    register_service("My agent", SID, registry=registry)
    before = registry.snapshot()
    assert register_service("My agent", same_id, registry=registry) is None
    assert registry.snapshot() == before


def test_an_existing_key_in_another_spelling_is_the_same_service() -> None:
    registry = MemoryRegistry()
    registry.create_key(key(f"{{{str(SID).upper()}}}"))
    registry.set_value(key(f"{{{str(SID).upper()}}}"), ELEMENT_NAME, "My agent")
    assert register_service("My agent", 5000, registry=registry) is None
    with pytest.raises(RegistryError, match="already registered as service 'My agent'"):
        register_service("Other", 5000, registry=registry)


def test_same_id_under_another_name_is_refused_with_what_to_do() -> None:
    registry = windows_host()
    register_service("My agent", 5000, registry=registry)
    before = registry.snapshot()
    with pytest.raises(RegistryError) as info:
        register_service("my agent", 5000, registry=registry)
    message = str(info.value)
    assert "already registered as service 'My agent'" in message
    assert "(vsock port 5000)" in message
    assert "--new" in message
    assert f"hvsock unregister {SID}" in message
    with pytest.raises(RegistryError, match="Windows' built-in service 'VM Session Service'"):
        register_service("mine", VM_SESSION, registry=registry)
    assert registry.snapshot() == before


def test_a_half_written_entry_is_finished_and_a_foreign_one_refused() -> None:
    registry = MemoryRegistry()
    registry.create_key(key(str(SID)))
    registry.set_value(key(str(SID)), MARKER_NAME, "hvsock")  # stopped before ElementName
    assert register_service("My agent", 5000, registry=registry) is not None
    assert registry.values(key(str(SID)))[ELEMENT_NAME] == "My agent"  # type: ignore[index]
    registry.create_key(key(str(RANDOM_SID)))  # another tool's key, no name
    with pytest.raises(RegistryError, match="has a key but no ElementName"):
        register_service("x", RANDOM_SID, registry=registry)


BAD_NAMES = [
    ("", "cannot be empty"),
    ("   ", "cannot be empty"),
    ("x" * 257, "at most 256"),
    ("line\nbreak", "control or invisible character"),
    ("tab\there", "control or invisible character"),
    ("nul\0", "control or invisible character"),
    ("zero\u200bwidth", "control or invisible character"),
    (" padded", "starts or ends with spaces"),
    ("padded ", "starts or ends with spaces"),
    (None, "must be text"),
    (b"bytes", "must be text"),
]


@pytest.mark.parametrize(("name", "fragment"), BAD_NAMES, ids=[repr(b[0])[:20] for b in BAD_NAMES])
def test_bad_names_are_refused_before_anything_is_written(name: object, fragment: str) -> None:
    registry = windows_host()
    before = registry.snapshot()
    with pytest.raises(RegistryError, match=fragment):
        register_service(name, 5000, registry=registry)  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match=fragment):
        Registration(SID, name)  # type: ignore[arg-type]
    assert registry.snapshot() == before


BAD_IDS = [
    ("not-a-guid", AddressError, "is not a GUID"),
    ("00001388-facb-11e6-bd58-64006a7986d", AddressError, "is not a GUID"),
    ("-1", AddressError, "is not a GUID"),
    ("4294967296", AddressError, "out of range"),
    ("9" * 5000, AddressError, "out of range"),
    (-1, AddressError, "out of range"),
    (3.5, RegistryError, "must be a GUID, a port number or a uuid.UUID"),
    (True, RegistryError, "must be a GUID, a port number or a uuid.UUID"),
]


@pytest.mark.parametrize(
    ("service_id", "error", "fragment"), BAD_IDS, ids=[repr(b[0])[:20] for b in BAD_IDS]
)
def test_malformed_ids_are_clear_errors(
    service_id: object, error: type[Exception], fragment: str
) -> None:
    registry = windows_host()
    before = registry.snapshot()
    with pytest.raises(error, match=fragment):
        register_service("x", service_id, registry=registry)
    with pytest.raises(error, match=fragment):
        unregister_service(service_id, registry=registry)
    assert registry.snapshot() == before


def test_register_from_a_service_declaration() -> None:
    registry = MemoryRegistry()
    agent = Service("Guest agent", 5001, handler)
    assert register_service(agent, registry=registry) == Registration(
        service_id_for_port(5001), "Guest agent"
    )
    assert register_service(agent, registry=registry) is None
    assert [e.name for e in registered_services(registry)] == ["Guest agent"]
    with pytest.raises(RegistryError, match="has its own service id"):
        register_service(agent, 5002, registry=registry)
    with pytest.raises(RegistryError, match="needs a service id too"):
        register_service("name only", registry=registry)


# -- removing ------------------------------------------------------------------------


def test_unregister_removes_only_what_hvsock_made() -> None:
    registry = windows_host()
    register_service("My agent", 5000, registry=registry)
    registry.create_key(key(str(RANDOM_SID)))
    registry.set_value(key(str(RANDOM_SID)), ELEMENT_NAME, "Other tool")
    assert unregister_service(SID, registry=registry) == Removal(SID)
    assert unregister_service(SID, registry=registry) is None  # already gone
    with pytest.raises(RegistryError, match=r"'Other tool'.*not registered by hvsock.*--force"):
        unregister_service(RANDOM_SID, registry=registry)
    assert unregister_service(str(RANDOM_SID), force=True, registry=registry) is not None
    assert [e.origin for e in registered_services(registry)] == ["built-in", "built-in"]


@pytest.mark.parametrize("force", [False, True])
def test_built_in_services_are_never_removed(force: bool) -> None:
    registry = windows_host()
    before = registry.snapshot()
    for sid in reg.BUILTIN_SERVICES:
        with pytest.raises(RegistryError, match="built into Windows"):
            unregister_service(sid, force=force, registry=registry)
        with pytest.raises(RegistryError, match="never removes a built-in service"):
            Removal(sid, force)
        with pytest.raises(RegistryError, match="built into Windows"):
            unregister_service(sid, force=force, registry=MemoryRegistry())  # even if absent
    assert registry.snapshot() == before
    # recognised by name too, under an id hvsock does not know
    registry.create_key(key(str(RANDOM_SID)))
    registry.set_value(key(str(RANDOM_SID)), ELEMENT_NAME, "vm session service")
    with pytest.raises(RegistryError, match="built into Windows"):
        unregister_service(RANDOM_SID, force=True, registry=registry)


def test_the_real_registry_is_windows_only() -> None:
    with pytest.raises(UnsupportedError, match="registration_script"):
        registered_services()
    with pytest.raises(UnsupportedError, match="registration_script"):
        register_service("x", 1)
    with pytest.raises(UnsupportedError, match="registration_script"):
        unregister_service(1)


def test_edits_describe_the_change() -> None:
    assert Registration(SID, "n").edits() == (
        RegistryEdit(key(str(SID)), (("CreatedBy", "hvsock"), ("ElementName", "n"))),
    )
    assert Removal(SID).edits() == (RegistryEdit(key(str(SID)), delete=True),)
    with pytest.raises(RegistryError, match="cannot both delete"):
        RegistryEdit("A", (("n", "v"),), delete=True)


# -- properties ------------------------------------------------------------------------

names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=256).filter(
    lambda n: n.isprintable() and n == n.strip() and bool(n)
)
service_ids = st.one_of(st.uuids(), st.integers(0, 0xFFFFFFFF).map(service_id_for_port))


@settings(max_examples=200, deadline=None)
@given(names, service_ids)
def test_register_list_unregister_round_trip(name: str, sid: uuid.UUID) -> None:
    registry = windows_host()
    before = registry.snapshot()
    if sid in reg.BUILTIN_SERVICES or name.casefold() in {
        "vm session service",
        "vm session service-2",
    }:
        return
    assert register_service(name, sid, registry=registry) is not None
    assert register_service(name, sid, registry=registry) is None
    entry = reg.find_service(registered_services(registry), sid)
    assert entry is not None
    assert (entry.name, entry.origin) == (name, "hvsock")
    assert unregister_service(sid, registry=registry) is not None
    assert registry.snapshot() == before


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=300), st.none(), st.integers()), st.text(max_size=60))
def test_arbitrary_input_registers_or_raises_our_errors(name: object, sid: str) -> None:
    registry = MemoryRegistry()
    result = outcome(
        lambda: register_service(name, sid, registry=registry),  # type: ignore[arg-type]
        RegistryError,
        AddressError,
    )
    assert result
    if result != "ok":
        assert registry.snapshot() == {}


# -- the winreg backend, over a fake winreg module --------------------------------------


class FakeWinreg:
    """winreg's interface over a MemoryRegistry; *deny* makes writes fail as for a user
    who is not elevated (ERROR_ACCESS_DENIED is a PermissionError in CPython)."""

    HKEY_LOCAL_MACHINE = object()
    KEY_READ, KEY_WRITE, KEY_SET_VALUE, KEY_WOW64_64KEY, REG_SZ = 0x20019, 0x20006, 2, 0x100, 1

    class Key:
        def __init__(self, path: str) -> None:
            self.path = path

        def __enter__(self) -> FakeWinreg.Key:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def Close(self) -> None:
            return None

    def __init__(self, store: MemoryRegistry, *, deny: bool = False) -> None:
        self.store = store
        self.deny = deny

    def _check(self, root: object, access: int) -> None:
        assert root is self.HKEY_LOCAL_MACHINE
        assert access & self.KEY_WOW64_64KEY, "always the 64-bit view"

    def _write(self) -> None:
        if self.deny:
            raise PermissionError(13, "Access is denied")

    def OpenKey(self, root: object, path: str, reserved: int, access: int) -> Key:
        self._check(root, access)
        if self.store.values(path) is None:
            raise FileNotFoundError(2, "The system cannot find the file specified")
        return self.Key(path)

    def QueryInfoKey(self, key: Key) -> tuple[int, int, int]:
        values = self.store.values(key.path) or {}
        return (len(self.store.subkeys(key.path)), len(values), 0)

    def EnumKey(self, key: Key, index: int) -> str:
        return self.store.subkeys(key.path)[index]

    def EnumValue(self, key: Key, index: int) -> tuple[str, object, int]:
        name, value = list((self.store.values(key.path) or {}).items())[index]
        return (name, value, self.REG_SZ)

    def CreateKeyEx(self, root: object, path: str, reserved: int, access: int) -> Key:
        self._check(root, access)
        self._write()
        self.store.create_key(path)
        return self.Key(path)

    def SetValueEx(self, key: Key, name: str, reserved: int, kind: int, value: str) -> None:
        assert kind == self.REG_SZ
        self._write()
        self.store.set_value(key.path, name, value)

    def DeleteKeyEx(self, root: object, path: str, access: int, reserved: int) -> None:
        self._check(root, access)
        self._write()
        if self.store.values(path) is None:
            raise FileNotFoundError(2, "The system cannot find the file specified")
        if self.store.subkeys(path):
            raise OSError(5, "Access is denied")
        self.store.delete_key(path)


def test_winreg_backend_does_what_the_memory_registry_does() -> None:
    through_winreg, direct = windows_host(), windows_host()
    backend = reg.WinregBackend(FakeWinreg(through_winreg))
    for registry in (backend, direct):
        register_service("My agent", 5000, registry=registry)
        register_service("Other", RANDOM_SID, registry=registry)
        unregister_service(RANDOM_SID, registry=registry)
    assert through_winreg.snapshot() == direct.snapshot()
    assert registered_services(backend) == registered_services(direct)
    assert backend.subkeys("SOFTWARE\\Nothing") == []
    assert backend.values("SOFTWARE\\Nothing") is None
    backend.delete_key("SOFTWARE\\Nothing")  # gone already: nothing to do


def test_winreg_backend_not_elevated_says_to_elevate_or_export() -> None:
    store = windows_host()
    backend = reg.WinregBackend(FakeWinreg(store, deny=True))
    with pytest.raises(PermissionDeniedError) as info:
        register_service("My agent", 5000, registry=backend)
    message = str(info.value)
    assert "access denied" in message
    assert "Run as administrator" in message
    assert "--export ps1" in message
    assert store.snapshot() == windows_host().snapshot()
    assert [e.origin for e in registered_services(backend)] == ["built-in", "built-in"]


def test_winreg_backend_other_errors_are_registry_errors() -> None:
    store = MemoryRegistry()
    store.create_key("A\\B")
    backend = reg.WinregBackend(FakeWinreg(store))
    with pytest.raises(RegistryError, match=r"cannot delete HKLM\\A: Access is denied"):
        backend.delete_key("A")
    with pytest.raises(RegistryError, match=r"cannot write HKLM\\C: The system cannot find"):
        backend.set_value("C", "n", "v")
