"""KVP on Windows, tested on Linux: the guest's registry pools (in-memory registry) and the
host's CIM-XML items and PowerShell scripts (fixtures written in the documented shape,
not captured on Windows: see tests/fixtures/README.md)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hvsock.kvp as kvp
from hvsock import ArgumentError, HvsockError, KvpError, UnsupportedError, VmNotFoundError
from hvsock._builtin.kvp import hyperv_host as hh
from hvsock._windows.vms import powershell_argv
from hvsock.testing import MemoryRegistry

from ..fakes import FakeRunner, failed, fixture, ok

# -- the guest's registry ---------------------------------------------------------------


def test_registry_pool_keys() -> None:
    registry = MemoryRegistry()
    store = kvp.RegistryKvpStore(registry)
    store.set("State", "ready")
    kvp.RegistryKvpStore(registry, 3, allow_host_pool=True).set("VirtualMachineName", "vm")
    kvp.RegistryKvpStore(registry, "external", allow_host_pool=True).set("Cfg", "1")
    snap = registry.snapshot()
    assert snap[r"SOFTWARE\Microsoft\Virtual Machine\Guest"] == {"State": "ready"}
    assert snap[r"SOFTWARE\Microsoft\Virtual Machine\Guest\Parameter"] == {
        "VirtualMachineName": "vm"
    }
    assert snap[r"SOFTWARE\Microsoft\Virtual Machine\External"] == {"Cfg": "1"}
    # Guest\Parameter is a subkey of Guest, not one of its values.
    assert store.items() == [("State", "ready")]
    assert kvp.registry_host_info(registry).vm_name == "vm"


def test_registry_store_operations() -> None:
    registry = MemoryRegistry()
    store = kvp.RegistryKvpStore(registry)
    assert store.items() == []
    store.update({"a": "1", "B": "2"})
    store.append("a", "3")  # the registry has one value per name
    assert store.as_dict() == {"a": "3", "B": "2"}
    assert store.get("b") == "2"  # names compare without regard to case, as Windows' do
    assert "A" in store
    assert len(store) == 2
    assert store.delete("A") == 1
    assert store.delete("a") == 0
    assert store.clear() == 1
    assert store.items() == []
    assert not store.is_stale()


def test_registry_store_refusals() -> None:
    registry = MemoryRegistry()
    with pytest.raises(ArgumentError, match="--host-pool"):
        kvp.RegistryKvpStore(registry, 0).set("k", "v")
    with pytest.raises(ArgumentError, match="--host-pool"):
        kvp.RegistryKvpStore(registry, 3).clear()
    with pytest.raises(UnsupportedError, match="no registry key"):
        kvp.RegistryKvpStore(registry, 4)
    store = kvp.RegistryKvpStore(registry)
    with pytest.raises(ArgumentError, match="UTF-16 units"):
        store.set("k", "v" * 1023)
    with pytest.raises(ArgumentError, match="NUL"):
        store.update({"ok": "1", "bad": "\0"})
    assert registry.snapshot() == {}  # nothing written
    with pytest.raises(ArgumentError, match="must be text"):
        store.get(3)  # type: ignore[arg-type]


def test_registry_watch_sees_changes() -> None:
    registry = MemoryRegistry()
    store = kvp.RegistryKvpStore(registry)
    changes = store.watch(interval=0.01, timeout=10, max_changes=2)
    store.set("a", "1")
    assert next(changes) == kvp.Change("set", "a", "1", None)
    store.delete("a")
    assert list(changes) == [kvp.Change("delete", "a", None, "1")]


# -- the host's CIM-XML items ------------------------------------------------------------


def test_parse_guest_items_fixture() -> None:
    items = hh.parse_guest_items(fixture("kvp-guest-items.json").decode())
    assert [(i.name, i.data, i.source) for i in items.guest] == [
        ("ProvisioningState", "ready", 1),
        ("Role", "web & api", 1),
        ("Role", "web", 1),
        ("Café", "ünicode ✓", 1),
    ]
    assert items.as_dict() == {"ProvisioningState": "ready", "Role": "web", "Café": "ünicode ✓"}
    assert {i.name for i in items.intrinsic} >= {"FullyQualifiedDomainName", "OSName"}
    assert all(i.source == 2 for i in items.intrinsic)


def test_parse_single_item_unwrapped() -> None:
    items = hh.parse_guest_items(fixture("kvp-guest-items-single.json").decode())
    assert items.guest == (hh.KvpItem("Only", "one", 1),)
    assert items.intrinsic == ()


text_no_controls = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=50)


@settings(max_examples=200, deadline=None)
@given(text_no_controls, text_no_controls, st.integers(0, 4))
def test_instance_xml_round_trip(name: str, data: str, source: int) -> None:
    assert hh.parse_instance(hh.instance_xml(name, data, source)) == hh.KvpItem(name, data, source)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_items_or_only_kvp_error(text: str) -> None:
    try:
        items = hh.parse_guest_items(text)
    except KvpError:
        return
    assert isinstance(items, hh.GuestItems)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("<INSTANCE", "not well-formed"),
        ('<INSTANCE CLASSNAME="Msvm_Other"/>', "not an INSTANCE of Msvm_KvpExchangeDataItem"),
        ('<CLASS CLASSNAME="Msvm_KvpExchangeDataItem"/>', "is a CLASS"),
        ('<INSTANCE CLASSNAME="Msvm_KvpExchangeDataItem"></INSTANCE>', "no Name"),
        (
            '<INSTANCE CLASSNAME="Msvm_KvpExchangeDataItem"><PROPERTY NAME="Name"><VALUE>n</VALUE>'
            '</PROPERTY><PROPERTY NAME="Source"><VALUE>x</VALUE></PROPERTY></INSTANCE>',
            "not a number",
        ),
    ],
)
def test_parse_instance_bad(text: str, error: str) -> None:
    with pytest.raises(KvpError, match=error):
        hh.parse_instance(text)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("not json", "not JSON"),
        ("[1]", "not an object"),
        ('{"GuestExchangeItems": [1]}', "not a list of CIM-XML strings"),
    ],
)
def test_parse_guest_items_bad(text: str, error: str) -> None:
    with pytest.raises(KvpError, match=error):
        hh.parse_guest_items(text)


# -- scripts ---------------------------------------------------------------------------


def test_change_script_batches_of_128_with_job_polling() -> None:
    items = [(f"k{i}", f"v{i}") for i in range(300)]
    script = hh.change_script("add", "My VM", items)
    calls = re.findall(r"\$vmms\.AddKvpItems\(\$vm\[0\], \$items\)", script)
    assert len(calls) == 3  # 128 + 128 + 44
    assert "'AddKvpItems (items 257-300)'" in script
    assert script.count("<INSTANCE CLASSNAME=") == 300
    assert "ReturnValue -eq 4096" in script
    assert "JobState -ne 7" in script
    assert "-Filter 'ElementName=''My VM'''" in script
    assert '<PROPERTY NAME="Source" TYPE="uint16"><VALUE>0</VALUE>' in script


def test_change_script_quotes_names_and_data() -> None:
    script = hh.change_script("set", "it's\\vm", [("k'ey", "<&>")])
    # WQL escapes \ and ' with a backslash; PowerShell doubles the single quote.
    assert r"-Filter 'ElementName=''it\''s\\vm'''" in script
    assert (
        '\'<INSTANCE CLASSNAME="Msvm_KvpExchangeDataItem"><PROPERTY NAME="Data" '
        'TYPE="string"><VALUE>&lt;&amp;&gt;</VALUE></PROPERTY><PROPERTY NAME="Name" '
        "TYPE=\"string\"><VALUE>k''ey</VALUE>" in script
    )
    assert "ModifyKvpItems" in script
    assert "AddKvpItems" in script


def test_change_script_by_vm_id() -> None:
    script = hh.change_script("remove", "{1e8b5e4c-0000-4000-8000-00000000abcd}", [("k", "")])
    assert "Name=''1E8B5E4C-0000-4000-8000-00000000ABCD''" in script
    assert "RemoveKvpItems" in script


@pytest.mark.parametrize(
    ("action", "items", "error"),
    [
        ("upsert", [("k", "v")], "action must be one of"),
        ("add", [("", "v")], "cannot be empty"),
        ("add", [("k", "v" * 1025)], "at most 1024"),
        ("add", [("k\0", "v")], "without NUL"),
    ],
)
def test_change_script_refuses(action: str, items: list[tuple[str, str]], error: str) -> None:
    with pytest.raises(ArgumentError, match=error):
        hh.change_script(action, "vm", items)


def test_change_script_refuses_a_bad_vm() -> None:
    with pytest.raises(ArgumentError, match="a VM must be"):
        hh.change_script("add", " ", [("k", "v")])


def test_read_guest_items_through_a_runner() -> None:
    script = hh.guest_items_script("web")
    runner = FakeRunner({tuple(powershell_argv(script)): ok(fixture("kvp-guest-items.json"))})
    assert hh.read_guest_items("web", runner=runner).as_dict()["Role"] == "web"


def test_read_guest_items_errors() -> None:
    script = hh.guest_items_script("gone")
    runner = FakeRunner(
        {tuple(powershell_argv(script)): failed("hvsock: 0 VMs match 'gone'", returncode=3)}
    )
    with pytest.raises(VmNotFoundError, match="hvsock vms"):
        hh.read_guest_items("gone", runner=runner)
    with pytest.raises(UnsupportedError, match=r"powershell\.exe was not found"):
        hh.read_guest_items("x", runner=FakeRunner())
    script = hh.change_script("add", "vm", [("k", "v")])
    runner = FakeRunner(
        {
            tuple(powershell_argv(script)): failed(
                "AddKvpItems (items 1-1) failed with return value 32773"
            )
        }
    )
    with pytest.raises(HvsockError, match="32773"):
        hh.change_host_items("add", "vm", [("k", "v")], runner=runner)
