"""Addresses that name their VM: hvsock://name:<VM>/<service> and hvsock://wsl/<service>.

Parsing is pure; the lookup happens when connecting or listening (test_vms.py has it).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hvsock
from hvsock import (
    AddressError,
    HyperVAddress,
    UnsupportedError,
    _endpoints,
    connect,
    connect_socket,
    describe_address,
    listen,
    parse_address,
    start_server,
)
from hvsock._core.addresses import ADDRESS_TYPES, MAX_VM_NAME, NamedVmAddress
from hvsock._transports import api
from hvsock.windows import service_id_for_port

from ..fakes import outcome

SID_5000 = service_id_for_port(5000)
OTHER_SID = uuid.UUID("3f9e1a2b-4c5d-4e6f-8a7b-9c0d1e2f3a4b")

GOOD = [
    # text, address, canonical text
    ("hvsock://wsl/5000", NamedVmAddress(None, SID_5000), "hvsock://wsl/5000"),
    ("HVSOCK://WSL/0x1388", NamedVmAddress(None, SID_5000), "hvsock://wsl/5000"),
    (
        "hvsock://wsl/00001388-FACB-11E6-BD58-64006A7986D3",
        NamedVmAddress(None, SID_5000),
        "hvsock://wsl/5000",
    ),
    (f"hvsock://wsl/{{{OTHER_SID}}}", NamedVmAddress(None, OTHER_SID), f"hvsock://wsl/{OTHER_SID}"),
    ("hvsock://name:MyVM/5000", NamedVmAddress("MyVM", SID_5000), "hvsock://name:MyVM/5000"),
    ("hvsock://NAME:MyVM/5000", NamedVmAddress("MyVM", SID_5000), "hvsock://name:MyVM/5000"),
    (
        f"hvsock://name:My VM/{OTHER_SID}",
        NamedVmAddress("My VM", OTHER_SID),
        f"hvsock://name:My VM/{OTHER_SID}",
    ),
    (
        "hvsock://name:a%2Fb%25c/1",
        NamedVmAddress("a/b%c", service_id_for_port(1)),
        "hvsock://name:a%2Fb%25c/1",
    ),
    (
        "hvsock://name:a%2fb/1",
        NamedVmAddress("a/b", service_id_for_port(1)),
        "hvsock://name:a%2Fb/1",
    ),
    (
        "hvsock://name:%C3%A9t%C3%A9/1",
        NamedVmAddress("été", service_id_for_port(1)),
        "hvsock://name:été/1",
    ),
    (
        "hvsock://name:Débian 12/1",
        NamedVmAddress("Débian 12", service_id_for_port(1)),
        "hvsock://name:Débian 12/1",
    ),
    # a VM may be called like a keyword: name: makes it a name
    ("hvsock://name:wsl/1", NamedVmAddress("wsl", service_id_for_port(1)), "hvsock://name:wsl/1"),
    (
        "hvsock://name:parent/1",
        NamedVmAddress("parent", service_id_for_port(1)),
        "hvsock://name:parent/1",
    ),
    ("hvsock://name:a:b/1", NamedVmAddress("a:b", service_id_for_port(1)), "hvsock://name:a:b/1"),
    (
        "hvsock://name:x/4294967295",
        NamedVmAddress("x", service_id_for_port(0xFFFFFFFF)),
        "hvsock://name:x/4294967295",
    ),
    (
        "hvsock://name:" + "v" * MAX_VM_NAME + "/1",
        NamedVmAddress("v" * MAX_VM_NAME, service_id_for_port(1)),
        "hvsock://name:" + "v" * MAX_VM_NAME + "/1",
    ),
]


@pytest.mark.parametrize(("text", "address", "canonical"), GOOD, ids=[g[0][:40] for g in GOOD])
def test_parse_and_format(text: str, address: NamedVmAddress, canonical: str) -> None:
    parsed = parse_address(text)
    assert parsed == address
    assert str(parsed) == canonical
    assert parse_address(canonical) == address


BAD = [
    ("hvsock://name:/5000", "VM name is empty"),
    ("hvsock://name:x%2/1", "'%' must start an escape"),
    ("hvsock://name:x%zz/1", "'%' must start an escape"),
    ("hvsock://name:x%/1", "'%' must start an escape"),
    ("hvsock://name:x%FF/1", "not valid text"),
    ("hvsock://name:x\udcff/1", "not valid text"),
    ("hvsock://name:x%0A/1", "control character"),
    ("hvsock://name:x\0/1", "control character"),
    ("hvsock://name:x\ty/1", "control character"),
    ("hvsock://name:" + "v" * (MAX_VM_NAME + 1) + "/1", "at most 256"),
    ("hvsock://name:x", "has no '/<service>'"),
    ("hvsock://name:x/", "service id is empty"),
    ("hvsock://wsl/", "service id is empty"),
    ("hvsock://wsl", "has no '/<service>'"),
    ("hvsock://wsl/4294967296", "out of range"),
    ("hvsock://wsl/not-a-guid", "is not a GUID"),
    ("hvsock://name:x/5000/6", "is not a GUID"),
    ("hvsock://MyVM/5000", "name:MyVM for a VM named so"),
    ("hvsock://wsl2/5000", "wsl (the WSL 2 VM)"),
]


@pytest.mark.parametrize(("text", "fragment"), BAD, ids=[b[0][:40] for b in BAD])
def test_bad_text_is_an_address_error_that_says_why(text: str, fragment: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_address(text)
    assert fragment in str(info.value)
    # every message shows the accepted form, or (for GUIDs) how to write one
    assert "hvsock://<vm>/<service>" in str(info.value) or "xxxxxxxx-xxxx" in str(info.value)


@pytest.mark.parametrize(
    ("vm_name", "service_id", "fragment"),
    [
        (123, SID_5000, "VM name must be a string"),
        ("", SID_5000, "VM name is empty"),
        ("a\nb", SID_5000, "control character"),
        ("x", "not-a-guid", "is not a GUID"),
        ("x", 5000, "must be a uuid.UUID or a GUID string"),
    ],
)
def test_bad_fields_are_address_errors(vm_name: object, service_id: object, fragment: str) -> None:
    with pytest.raises(AddressError, match=fragment):
        NamedVmAddress(vm_name, service_id)  # type: ignore[arg-type]


def test_properties_and_resolution_step() -> None:
    wsl = NamedVmAddress(None, SID_5000)
    named = NamedVmAddress("MyVM", OTHER_SID)
    assert (wsl.is_wsl, wsl.port, wsl.kind) == (True, 5000, "hvsock")
    assert (named.is_wsl, named.port) == (False, None)
    vm_id = uuid.UUID("5d1bf0f4-7a0c-4e35-9f0e-0c3e5b1f2a11")
    assert named.with_vm_id(vm_id) == HyperVAddress(vm_id, OTHER_SID)
    assert NamedVmAddress in ADDRESS_TYPES
    assert parse_address(named) is named
    with pytest.raises(AttributeError, match="immutable"):
        named.vm_name = "other"  # type: ignore[misc]
    assert len({named, NamedVmAddress("MyVM", OTHER_SID), wsl}) == 2


def test_describe_says_the_id_is_looked_up_later() -> None:
    info = describe_address(parse_address("hvsock://name:My%2FVM/5000"))
    assert info["vm_name"] == "My/VM"
    assert info["wsl"] is False
    assert info["vm_id"] is None
    assert "looked up when connecting or listening" in str(info["vm_id_from"])
    assert info["port"] == 5000
    assert info["linux_guest_connects_to"] == "vsock://2:5000"
    info = describe_address(parse_address(f"hvsock://wsl/{OTHER_SID}"))
    assert (info["wsl"], info["template"], info["linux_guest_connects_to"]) == (True, False, None)


# -- properties -------------------------------------------------------------------

vm_names = st.text(
    st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=MAX_VM_NAME
).filter(str.isprintable)
named_addresses = st.builds(
    NamedVmAddress,
    st.one_of(st.none(), vm_names),
    st.one_of(st.uuids(), st.integers(0, 0xFFFFFFFF).map(service_id_for_port)),
)


@settings(max_examples=300, deadline=None)
@given(named_addresses)
def test_format_then_parse_gives_the_same_address(address: NamedVmAddress) -> None:
    assert parse_address(str(address)) == address


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30), st.sampled_from(["", "/", "/5000", "/x", "%", "%2F", "%e9"]))
def test_any_name_text_parses_or_raises_address_error(name: str, tail: str) -> None:
    text = f"hvsock://name:{name}{tail}"

    def parse_and_reparse() -> None:
        address = parse_address(text)
        assert isinstance(address, NamedVmAddress)
        assert parse_address(str(address)) == address

    assert outcome(parse_and_reparse, AddressError)


# -- where resolution happens ---------------------------------------------------------


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("text", ["hvsock://wsl/5000", "hvsock://name:MyVM/5000"])
def test_connect_and_listen_need_af_hyperv_before_looking_anything_up(text: str) -> None:
    # On Linux there is no AF_HYPERV: the error comes before PowerShell would run.
    for call in (lambda: connect(text, timeout=1), lambda: listen(text), lambda: api.connect(text)):
        with pytest.raises(UnsupportedError, match="AF_HYPERV exists only on Windows"):
            call()

    async def both() -> None:
        with pytest.raises(UnsupportedError, match="AF_HYPERV"):
            await connect_socket(text, timeout=1)
        with pytest.raises(UnsupportedError, match="AF_HYPERV"):
            await start_server(lambda r, w: None, text)

    asyncio.run(both())


def test_resolve_leaves_other_addresses_alone() -> None:
    for text in ("vsock://any:5000", "hvsock://parent/5000", "tcp://127.0.0.1:1", "unix:///x"):
        assert _endpoints.resolve(parse_address(text)) == parse_address(text)


def test_the_transports_know_no_vm_names() -> None:
    """Names are looked up one layer up: the transports import nothing of _windows."""
    import subprocess
    import sys

    code = (
        "import sys, hvsock._transports.api, hvsock._transports.dial, hvsock._aio.streams;"
        "print(any(m.startswith('hvsock._windows') for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert out == "False"


def test_listen_checks_its_arguments_before_resolving() -> None:
    with pytest.raises(hvsock.ArgumentError, match="backlog"):
        listen("hvsock://wsl/5000", backlog=-1)


# -- every client dials through _endpoints: a VM name reaches the Windows layer's lookup ----


@pytest.fixture
def fake_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Windows host as far as the name lookup sees it: AF_HYPERV exists, and a
    ``powershell.exe`` on PATH (a real program) answers Get-VM from the fixture and
    logs each run. Returns the log. Connecting to the looked-up VM then fails here
    (Linux has no such socket family): what matters is that the lookup ran."""
    log = tmp_path / "powershell.log"
    fixture = Path(__file__).parent.parent / "fixtures" / "get-vm.json"
    program = tmp_path / "powershell.exe"
    program.write_text(
        f"#!/bin/sh\necho run >> {shlex.quote(str(log))}\ncat {shlex.quote(str(fixture))}\n"
    )
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(socket, "AF_HYPERV", 34, raising=False)
    return log


def _lookups(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.mark.parametrize("client", ["connect", "copy", "exec", "exec_async", "open_connection"])
def test_every_client_looks_a_vm_name_up(fake_windows: Path, client: str, tmp_path: Path) -> None:
    text = "hvsock://name:win11-dev/5000"
    calls = {
        "connect": lambda: hvsock.connect(text, timeout=1),
        "copy": lambda: hvsock.copy(text, str(tmp_path / "x"), ":/tmp/y"),
        "exec": lambda: hvsock.exec(text, ["true"], connect_timeout=1),
        "exec_async": lambda: asyncio.run(hvsock.exec_async(text, ["true"], connect_timeout=1)),
        "open_connection": lambda: asyncio.run(hvsock.open_connection(text, timeout=1)),
    }
    with pytest.raises(hvsock.HvsockError) as info:
        calls[client]()
    # Not the transports' "names a VM: look it up first": the name was looked up.
    assert "names a VM" not in str(info.value)
    assert _lookups(fake_windows) >= 1
