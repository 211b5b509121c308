"""Addresses that name a VM of a KVM host: vsock://name:<VM>:<port> and
hybrid://name:<VM>:<port>; and the choice of the VM among what the host's sources
found (pure: the discovery itself is tests/host/test_kvm_hosts.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hvsock import (
    AddressError,
    HybridAddress,
    NamedHybridAddress,
    NamedVsockAddress,
    UnreachableError,
    VsockAddress,
    describe_address,
    parse_address,
)
from hvsock._core.addresses import MAX_VM_NAME
from hvsock._core.vmconfig import CLOUD_HYPERVISOR, FIRECRACKER, QEMU, VsockDevice
from hvsock._kvm.vms import HostDiscovery, HostVm, SourceReport, choose_host_vm, merge


@pytest.mark.parametrize(
    ("text", "address", "canonical"),
    [
        ("vsock://name:web1:5100", NamedVsockAddress("web1", 5100), "vsock://name:web1:5100"),
        ("VSOCK://NAME:web1:0x13ec", NamedVsockAddress("web1", 5100), "vsock://name:web1:5100"),
        ("vsock://name:a:b:1", NamedVsockAddress("a:b", 1), "vsock://name:a:b:1"),
        ("vsock://name:a%2Fb%25c:1", NamedVsockAddress("a/b%c", 1), "vsock://name:a%2Fb%25c:1"),
        ("vsock://name:a/b:1", NamedVsockAddress("a/b", 1), "vsock://name:a%2Fb:1"),
        ("vsock://name:any:1", NamedVsockAddress("any", 1), "vsock://name:any:1"),
        ("vsock://name:Débian 12:1", NamedVsockAddress("Débian 12", 1), "vsock://name:Débian 12:1"),
        ("hybrid://name:fc1:52", NamedHybridAddress("fc1", 52), "hybrid://name:fc1:52"),
        (
            "hybrid://Name:fc1:4294967295",
            NamedHybridAddress("fc1", 0xFFFFFFFF),
            "hybrid://name:fc1:4294967295",
        ),
        # a relative socket path that starts with name: is written ./name:...
        (
            "hybrid://./name:x.sock:52",
            HybridAddress("./name:x.sock", 52),
            "hybrid://./name:x.sock:52",
        ),
    ],
)
def test_parse_and_format(text: str, address: object, canonical: str) -> None:
    parsed = parse_address(text)
    assert parsed == address
    assert str(parsed) == canonical
    assert parse_address(canonical) == address


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("vsock://name:", "has no ':<port>' after the VM name"),
        ("vsock://name:web1", "has no ':<port>' after the VM name"),
        ("vsock://name::5", "VM name is empty"),
        ("vsock://name:web1:", "port is missing"),
        ("vsock://name:web1:any", "port 'any' is not a number"),
        ("vsock://name:web1:4294967296", "out of range"),
        ("vsock://name:we\tb1:5", "control character"),
        ("vsock://name:x%zz:5", "'%' must start an escape"),
        ("vsock://name:" + "v" * (MAX_VM_NAME + 1) + ":5", "at most 256"),
        ("hybrid://name:fc1", "has no ':<port>' after the VM name"),
        ("hybrid://name::52", "VM name is empty"),
    ],
)
def test_bad_names_are_address_errors(text: str, fragment: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_address(text)
    assert fragment in str(info.value)
    assert "name:web1" in str(info.value) or "name:fc1" in str(info.value)  # the form


def test_a_relative_socket_path_starting_with_name_is_refused() -> None:
    with pytest.raises(AddressError, match=r"write the relative path as \./name:x"):
        HybridAddress("name:x", 52)


def test_with_cid_with_uds_path_and_describe() -> None:
    assert NamedVsockAddress("web1", 5100).with_cid(3) == VsockAddress(3, 5100)
    assert NamedHybridAddress("fc1", 52).with_uds_path("/run/v.sock") == HybridAddress(
        "/run/v.sock", 52
    )
    info = describe_address(parse_address("vsock://name:web1:5100"))
    assert (info["kind"], info["vm_name"], info["port"]) == ("vsock", "web1", 5100)
    assert "CID" in str(info["looked_up"])
    with pytest.raises(AttributeError, match="immutable"):
        NamedVsockAddress("a", 1).port = 2  # type: ignore[misc]
    assert NamedVsockAddress("a", 1) != NamedHybridAddress("a", 1)


vm_names = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=40
).filter(str.isprintable)


@settings(max_examples=300)
@given(vm_names, st.integers(0, 0xFFFFFFFF), st.booleans())
def test_round_trip(name: str, port: int, hybrid: bool) -> None:
    address = NamedHybridAddress(name, port) if hybrid else NamedVsockAddress(name, port)
    assert parse_address(str(address)) == address


# -- choosing the VM ---------------------------------------------------------------------------

WEB1 = HostVm("web1", QEMU, "running", VsockDevice(3, auto=True), "virsh")
DB1 = HostVm("db1", QEMU, "shut off", VsockDevice(42), "virsh")
BUILD = HostVm("build", QEMU, "shut off", VsockDevice(None, auto=True), "virsh")
LEGACY = HostVm("legacy", QEMU, "running", None, "virsh")
FC1 = HostVm(
    "fc1",
    FIRECRACKER,
    "Running",
    VsockDevice(3, "/run/fc/v.sock"),
    "firecracker API /run/fc/api.sock",
    100,
)
FC_UNASKED = HostVm("fc2", FIRECRACKER, "unknown", None, "/proc/101", 101)
CH1 = HostVm("ch1", CLOUD_HYPERVISOR, "Running", VsockDevice(5, "/run/ch/v.sock"), "/proc/102", 102)


def found(*vms: HostVm) -> HostDiscovery:
    return HostDiscovery(tuple(vms), (SourceReport("virsh", found=len(vms)),))


def test_choose_by_name() -> None:
    host = found(WEB1, DB1, BUILD, LEGACY, FC1, FC_UNASKED, CH1)
    assert choose_host_vm(host, NamedVsockAddress("web1", 1)) is WEB1
    assert choose_host_vm(host, NamedVsockAddress("WEB1", 1)) is WEB1  # any case
    assert choose_host_vm(host, NamedHybridAddress("fc1", 1)) is FC1
    assert choose_host_vm(host, NamedHybridAddress("ch1", 1)) is CH1


@pytest.mark.parametrize(
    ("address", "error", "fragments"),
    [
        (
            NamedVsockAddress("nope", 1),
            AddressError,
            [
                "no VM on this host is named 'nope'",
                "'build', 'ch1', 'db1', 'fc1', 'fc2', 'legacy'",
                "`hvsock vms`",
            ],
        ),
        (NamedVsockAddress("db1", 1), UnreachableError, ["'db1' is shut off", "virsh start db1"]),
        (NamedVsockAddress("build", 1), UnreachableError, ["'build' is shut off"]),
        (
            NamedVsockAddress("legacy", 1),
            UnreachableError,
            ["no vsock device", "<vsock model='virtio'>"],
        ),
        (NamedVsockAddress("fc1", 1), AddressError, ["hybrid://name:fc1:1"]),
        (NamedHybridAddress("web1", 1), AddressError, ["vsock://name:web1:1"]),
        (NamedHybridAddress("fc2", 1), UnreachableError, ["API could not be asked"]),
    ],
)
def test_what_cannot_be_chosen_says_why(
    address: NamedVsockAddress | NamedHybridAddress, error: type[Exception], fragments: list[str]
) -> None:
    host = found(WEB1, DB1, BUILD, LEGACY, FC1, FC_UNASKED, CH1)
    with pytest.raises(error) as info:
        choose_host_vm(host, address)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_an_ambiguous_name_lists_each_vm() -> None:
    other = HostVm("web1", QEMU, "running", VsockDevice(9), "/proc/77", 77)
    with pytest.raises(AddressError) as info:
        choose_host_vm(found(WEB1, other), NamedVsockAddress("web1", 1))
    message = str(info.value)
    assert "2 VMs are named 'web1'" in message
    assert "cid 3, from virsh" in message
    assert "cid 9, from /proc/77" in message


def test_nothing_found_says_which_sources_were_asked() -> None:
    empty = HostDiscovery(
        (),
        (
            SourceReport("virsh", unavailable="not installed"),
            SourceReport("/proc", unavailable="no VMM among 3"),
        ),
    )
    with pytest.raises(AddressError) as info:
        choose_host_vm(empty, NamedVsockAddress("web1", 1))
    assert "virsh: not installed; /proc: no VMM among 3" in str(info.value)


def test_merge_joins_one_vm_seen_twice_and_keeps_others_apart() -> None:
    process = HostVm("web1", QEMU, "running", VsockDevice(3), "/proc/50", 50)
    twin = HostVm("web1", QEMU, "running", VsockDevice(4), "/proc/51", 51)
    merged = merge([WEB1, process, twin, LEGACY])
    assert [vm.source for vm in merged] == ["virsh, /proc/50", "/proc/51", "virsh"]
    assert merged[0].pid == 50
    assert merged[0].cid == 3
