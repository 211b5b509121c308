"""Finding VMs: parsing what Get-VM, CIM, wslhost.exe and wslinfo print, and resolution.

The programs are answered by a fake runner from the files in tests/fixtures.
"""

from __future__ import annotations

import base64
import json
import sys
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hvsock import (
    AddressError,
    HvsockError,
    HyperVAddress,
    UnreachableError,
    UnsupportedError,
    VsockAddress,
)
from hvsock._core.addresses import NamedVmAddress
from hvsock._errors import VmNotFoundError
from hvsock._windows import vms
from hvsock._windows.vms import (
    CIM_SCRIPT,
    GET_VM_SCRIPT,
    WSLHOST_SCRIPT,
    WSLINFO_ARGV,
    ProcessResult,
    VmInfo,
)

from ..fakes import FakeRunner, failed, fixture, ok, outcome, ps

UBUNTU = uuid.UUID("5d1bf0f4-7a0c-4e35-9f0e-0c3e5b1f2a11")
WIN11 = uuid.UUID("a3c2e1d0-1111-4222-8333-944455556666")
DEBIAN = uuid.UUID("0f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9")
WSL_ID = uuid.UUID("f6446e02-236e-4b24-9916-2d4ad9a1096f")


def text(name: str) -> str:
    return fixture(name).decode("utf-8")


# -- parsers, from recorded output ------------------------------------------------------


def test_get_vm_json() -> None:
    found = vms.parse_get_vm(text("get-vm.json"))
    assert [(vm.name, vm.vm_id, vm.state, vm.running) for vm in found] == [
        ("Ubuntu 24.04", UBUNTU, "Running", True),
        ("win11-dev", WIN11, "Off", False),
        ("Débian/testing 100%", DEBIAN, "RunningCritical", True),
    ]
    assert {vm.source for vm in found} == {"Get-VM"}
    assert not any(vm.is_wsl for vm in found)


def test_get_vm_single_object_with_a_numeric_state() -> None:
    assert vms.parse_get_vm(text("get-vm-single-numeric.json")) == [
        VmInfo("Ubuntu 24.04", UBUNTU, "Running", "Get-VM")
    ]


@pytest.mark.parametrize("output", ["", "   \r\n", "null", "[]", text("get-vm-empty.txt")])
def test_no_vms(output: str) -> None:
    assert vms.parse_get_vm(output) == []
    assert vms.parse_cim(output) == []


def test_cim_json_skips_the_host_and_reads_states() -> None:
    assert vms.parse_cim(text("cim-msvm.json")) == [
        VmInfo("Ubuntu 24.04", UBUNTU, "Running", "CIM"),
        VmInfo("win11-dev", WIN11, "Off", "CIM"),
    ]


@pytest.mark.parametrize(
    ("number", "state"),
    [
        (2, "Running"),
        (3, "Off"),
        (6, "Saved"),
        (9, "Paused"),
        (32773, "Saving"),
        (4242, "state 4242"),
    ],
)
def test_state_numbers(number: int, state: str) -> None:
    item = {"Name": "v", "Id": str(UBUNTU), "State": number}
    assert vms.parse_get_vm(json.dumps(item))[0].state == state


BAD_GET_VM = [
    ("{", "could not read Get-VM's output as JSON"),
    ("Get-VM : something went wrong", "could not read Get-VM's output as JSON"),
    ("[1, 2]", "has int where a VM record belongs"),
    (f'[{{"Name": "v", "Id": "{UBUNTU}"}}]', "lacks 'State'"),
    ('[{"Id": "x", "State": "Off"}]', "lacks 'Name'"),
    ('[{"Name": 5, "Id": "x", "State": "Off"}]', "VM name 5 that is not text"),
    ('[{"Name": "v", "Id": "not-a-guid", "State": "Off"}]', "not a GUID"),
    ('[{"Name": "v", "Id": 12, "State": "Off"}]', "not text"),
    (f'[{{"Name": "v", "Id": "{UBUNTU}", "State": null}}]', "neither a name nor a number"),
    (f'[{{"Name": "v", "Id": "{UBUNTU}", "State": true}}]', "neither a name nor a number"),
    (f'[{{"Name": "v", "Id": "{UBUNTU}", "State": ""}}]', "neither a name nor a number"),
    ("[" * 100_000, "could not read Get-VM's output"),
]


@pytest.mark.parametrize(("output", "fragment"), BAD_GET_VM, ids=[b[1] for b in BAD_GET_VM])
def test_bad_get_vm_output_is_an_hvsock_error(output: str, fragment: str) -> None:
    with pytest.raises(HvsockError, match=fragment):
        vms.parse_get_vm(output)


def test_bad_cim_output() -> None:
    with pytest.raises(HvsockError, match="VM name 7 that is not text"):
        vms.parse_cim(f'[{{"ElementName": 7, "Name": "{UBUNTU}", "EnabledState": 2}}]')
    with pytest.raises(HvsockError, match="lacks 'EnabledState'"):
        vms.parse_cim(f'{{"ElementName": "v", "Name": "{UBUNTU}"}}')


def command_line_table() -> list[tuple[str, uuid.UUID | None]]:
    rows = []
    for line in text("wslhost-command-lines.txt").splitlines():
        command, expected = line.rsplit("\t", 1)
        rows.append((command, None if expected == "-" else uuid.UUID(expected)))
    return rows


@pytest.mark.parametrize(("command", "expected"), command_line_table())
def test_vm_id_from_wslhost_command_lines(command: str, expected: uuid.UUID | None) -> None:
    assert vms.vm_id_from_wslhost(command) == expected


@pytest.mark.parametrize(
    ("command", "fragment"),
    [
        ("wslhost.exe --vm-id", "--vm-id has no value"),
        ("wslhost.exe --vm-id {f6446e02-236e} --handle 1", "is not a GUID"),
        ("wslhost.exe --vm-id=", "is not a GUID"),
        ("wslhost.exe --VM-ID 12", "is not a GUID"),
    ],
)
def test_bad_wslhost_command_lines(command: str, fragment: str) -> None:
    with pytest.raises(HvsockError, match=fragment):
        vms.vm_id_from_wslhost(command)


def test_wslhost_process_list_gives_distinct_ids_and_skips_hidden_ones() -> None:
    assert vms.parse_wslhost(text("wslhost-processes.json")) == [WSL_ID]
    assert vms.parse_wslhost('"wslhost.exe --handle 5"') == []
    with pytest.raises(HvsockError, match="command line 5 that is not text"):
        vms.parse_wslhost("[5]")


def test_split_command_line() -> None:
    assert vms.split_command_line('"C:\\Program Files\\a.exe" x  "y z" "" w"v"u') == [
        "C:\\Program Files\\a.exe",
        "x",
        "y z",
        "",
        "wvu",
    ]
    assert vms.split_command_line("   ") == []


def test_wslinfo_output() -> None:
    assert vms.parse_wslinfo(fixture("wslinfo-vm-id.txt")) == WSL_ID
    assert vms.parse_wslinfo(b"{F6446E02-236E-4B24-9916-2D4AD9A1096F}\r\n") == WSL_ID
    assert vms.parse_wslinfo(f"{WSL_ID}\n".encode("utf-16")) == WSL_ID
    with pytest.raises(VmNotFoundError, match="WSL 1"):
        vms.parse_wslinfo(b"wsl1\n")
    with pytest.raises(VmNotFoundError, match="has no installed distributions"):
        vms.parse_wslinfo(fixture("wsl-no-distribution.utf16le"))
    with pytest.raises(VmNotFoundError, match="not a VM id"):
        vms.parse_wslinfo(b"")


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.lists(
            st.sampled_from(
                [
                    "[",
                    "]",
                    "{",
                    "}",
                    '"Name"',
                    '"Id"',
                    '"State"',
                    ":",
                    ",",
                    "null",
                    "2",
                    '"Running"',
                    f'"{UBUNTU}"',
                    '"x"',
                    '"ElementName"',
                    '"EnabledState"',
                    "true",
                ]
            )
        ).map("".join),
    )
)
def test_arbitrary_output_parses_or_raises_hvsock_error(output: str) -> None:
    for parse in (vms.parse_get_vm, vms.parse_cim, vms.parse_wslhost):
        assert outcome(lambda p=parse: p(output), HvsockError)  # type: ignore[misc]


@settings(max_examples=300, deadline=None)
@given(st.text(), st.binary())
def test_arbitrary_command_lines_and_bytes(command: str, data: bytes) -> None:
    assert outcome(lambda: vms.vm_id_from_wslhost(command), HvsockError)
    assert outcome(lambda: vms.parse_wslinfo(data), HvsockError)
    assert isinstance(vms.decode_output(data), str)


# -- running the programs ------------------------------------------------------------


def test_powershell_argv_encodes_the_script() -> None:
    argv = vms.powershell_argv("Get-VM | ConvertTo-Json 'é'")
    assert argv[:5] == [
        "powershell.exe",
        "-NoLogo",
        "-NoProfile",
        "-NonInteractive",
        "-EncodedCommand",
    ]
    assert base64.b64decode(argv[5]).decode("utf-16-le") == "Get-VM | ConvertTo-Json 'é'"
    # what each script asks for: UTF-8 output, strings for ids and states, a JSON list
    for script in (GET_VM_SCRIPT, CIM_SCRIPT, WSLHOST_SCRIPT):
        assert "[Console]::OutputEncoding = [Text.Encoding]::UTF8" in script
        assert "ConvertTo-Json -Compress -InputObject @(" in script
    assert "[string]$_.Id" in GET_VM_SCRIPT
    assert "[string]$_.State" in GET_VM_SCRIPT


def hyperv_host(
    *,
    get_vm: ProcessResult | BaseException | None = None,
    cim: ProcessResult | BaseException | None = None,
    wslhost: ProcessResult | BaseException | None = None,
    wslinfo: ProcessResult | BaseException | None = None,
) -> FakeRunner:
    """A fake Windows host: Get-VM works, WSL runs, unless told otherwise."""
    answers = {
        ps(GET_VM_SCRIPT): get_vm or ok(fixture("get-vm.json")),
        ps(CIM_SCRIPT): cim or ok(fixture("cim-msvm.json")),
        ps(WSLHOST_SCRIPT): wslhost or ok(fixture("wslhost-processes.json")),
    }
    if wslinfo is not None:
        answers[WSLINFO_ARGV] = wslinfo
    return FakeRunner(answers)


def test_discover_lists_hyperv_and_wsl_without_starting_anything() -> None:
    runner = hyperv_host(wslinfo=ok(fixture("wslinfo-vm-id.txt")))
    found = vms.discover_vms(runner)
    assert [(vm.name, vm.vm_id, vm.source) for vm in found.vms] == [
        ("Ubuntu 24.04", UBUNTU, "Get-VM"),
        ("win11-dev", WIN11, "Get-VM"),
        ("Débian/testing 100%", DEBIAN, "Get-VM"),
        ("WSL", WSL_ID, "wslhost.exe"),
    ]
    assert found.vms[-1].is_wsl
    assert found.vms[-1].as_dict() == {
        "name": "WSL",
        "id": str(WSL_ID),
        "state": "Running",
        "running": True,
        "wsl": True,
        "source": "wslhost.exe",
    }
    assert found.problems == ()
    assert WSLINFO_ARGV not in runner.calls  # listing never starts WSL
    assert ps(CIM_SCRIPT) not in runner.calls  # Get-VM worked


@pytest.mark.parametrize(
    ("stderr", "fragment"),
    [
        ("get-vm-not-installed.stderr.txt", "Get-VM is not installed"),
        ("get-vm-access-denied.stderr.txt", "Hyper-V Administrators"),
    ],
)
def test_get_vm_failing_falls_back_to_cim(stderr: str, fragment: str) -> None:
    runner = hyperv_host(get_vm=failed(fixture(stderr)))
    found = vms.discover_vms(runner)
    assert [(vm.name, vm.source) for vm in found.vms] == [
        ("Ubuntu 24.04", "CIM"),
        ("win11-dev", "CIM"),
        ("WSL", "wslhost.exe"),
    ]
    assert len(found.problems) == 1
    assert found.problems[0].startswith("Get-VM: ")
    assert fragment in found.problems[0]


def test_both_sources_failing_says_why_for_each() -> None:
    runner = hyperv_host(
        get_vm=failed(fixture("get-vm-access-denied.stderr.txt")),
        cim=failed(fixture("cim-invalid-namespace.stderr.txt")),
        wslhost=ok("[]"),
    )
    found = vms.discover_vms(runner)
    assert found.vms == ()
    assert [p.split(":")[0] for p in found.problems] == ["Get-VM", "CIM", "wslhost.exe"]
    assert "Hyper-V is not enabled" in found.problems[1]
    assert "WSL is not running" in found.problems[2]


def test_unreadable_output_and_unknown_errors_become_problems() -> None:
    runner = hyperv_host(get_vm=ok("<html>"), cim=failed(b""), wslhost=TimeoutError("slow"))
    found = vms.discover_vms(runner)
    assert found.vms == ()
    assert "could not read Get-VM's output" in found.problems[0]
    assert "it failed and printed nothing" in found.problems[1]
    assert "powershell.exe could not run: slow" in found.problems[2]


def test_no_powershell_is_unsupported_and_says_where_to_run() -> None:
    with pytest.raises(UnsupportedError, match=r"powershell\.exe was not found"):
        vms.discover_vms(FakeRunner())


# -- resolution ---------------------------------------------------------------------


def test_resolve_a_named_vm_any_case() -> None:
    runner = hyperv_host()
    assert vms.resolve_address("hvsock://name:ubuntu 24.04/5000", runner) == HyperVAddress.for_port(
        UBUNTU, 5000
    )
    assert vms.resolve_address(
        "hvsock://name:D%C3%A9bian%2Ftesting 100%25/5000", runner
    ) == HyperVAddress.for_port(DEBIAN, 5000)
    assert ps(WSLHOST_SCRIPT) not in runner.calls


def test_resolve_wsl_from_wslhost() -> None:
    runner = hyperv_host()
    assert vms.resolve_address(
        NamedVmAddress(None, vms.ids.service_id_for_port(22)), runner
    ) == HyperVAddress.for_port(WSL_ID, 22)
    assert runner.calls == [ps(WSLHOST_SCRIPT)]


def test_resolve_wsl_falls_back_to_wslinfo_which_may_start_it() -> None:
    runner = hyperv_host(wslhost=ok("[]"), wslinfo=ok(fixture("wslinfo-vm-id.txt")))
    assert vms.resolve_address("hvsock://wsl/22", runner) == HyperVAddress.for_port(WSL_ID, 22)
    assert runner.calls == [ps(WSLHOST_SCRIPT), WSLINFO_ARGV]


@pytest.mark.parametrize(
    ("wslinfo", "fragment"),
    [
        (None, "wsl.exe was not found: WSL is not installed"),
        (failed(fixture("wsl-no-distribution.utf16le")), "has no installed distributions"),
        (ok("wsl1\n"), "WSL 1"),
        (PermissionError(13, "denied"), "wsl.exe could not run"),
    ],
)
def test_resolve_wsl_not_found_says_why(
    wslinfo: ProcessResult | BaseException | None, fragment: str
) -> None:
    runner = hyperv_host(wslhost=ok("[]"), wslinfo=wslinfo)
    with pytest.raises(VmNotFoundError, match="WSL 2's VM was not found") as info:
        vms.resolve_address("hvsock://wsl/22", runner)
    assert fragment in str(info.value)
    assert "start WSL" in str(info.value)


def test_several_wsl_vms_are_ambiguous() -> None:
    other = uuid.UUID(int=7)
    lines = json.dumps([f"wslhost.exe --vm-id {{{WSL_ID}}}", f"wslhost.exe --vm-id {other}"])
    with pytest.raises(AddressError, match="several WSL VMs"):
        vms.resolve_address("hvsock://wsl/22", hyperv_host(wslhost=ok(lines)))


def test_resolve_errors() -> None:
    runner = hyperv_host()
    with pytest.raises(VmNotFoundError, match="no Hyper-V VM is named 'nope'") as info:
        vms.resolve_address("hvsock://name:nope/22", runner)
    assert "'Ubuntu 24.04', 'win11-dev'" in str(info.value)  # the names there are
    with pytest.raises(UnreachableError, match="'win11-dev' is Off, not running") as stopped:
        vms.resolve_address("hvsock://name:win11-dev/22", runner)
    assert "Start-VM -Name 'win11-dev'" in str(stopped.value)
    # WSL's entry is not a Hyper-V VM named "WSL"
    with pytest.raises(VmNotFoundError):
        vms.choose_vm(vms.discover_vms(runner).vms, "WSL")
    twins = json.dumps(
        [
            {"Name": "twin", "Id": str(UBUNTU), "State": "Running"},
            {"Name": "TWIN", "Id": str(WIN11), "State": "Running"},
        ]
    )
    with pytest.raises(AddressError, match="2 VMs are named 'twin'"):
        vms.resolve_address("hvsock://name:twin/22", hyperv_host(get_vm=ok(twins)))


def test_resolve_when_vms_cannot_be_listed() -> None:
    runner = hyperv_host(
        get_vm=failed(fixture("get-vm-access-denied.stderr.txt")), cim=failed("Access denied")
    )
    with pytest.raises(VmNotFoundError, match="could not look up VM 'x'") as info:
        vms.resolve_vm_id("x", runner)
    assert "Hyper-V Administrators" in str(info.value)
    with pytest.raises(UnsupportedError):
        vms.resolve_vm_id("x", FakeRunner())


def test_resolve_runs_nothing_for_other_addresses() -> None:
    runner = FakeRunner()
    for address in ("vsock://any:5000", "hvsock://parent/5000", VsockAddress(3, 1)):
        assert vms.resolve_address(address, runner) is not None
    assert runner.calls == []


def test_the_real_runner_runs_programs() -> None:
    done = vms.run_process(
        [
            sys.executable,
            "-c",
            "import os, sys; sys.stdout.write(os.environ['WSL_UTF8']); sys.exit(3)",
        ],
        30,
    )
    assert done == ProcessResult(3, b"1", b"")
    with pytest.raises(FileNotFoundError):
        vms.run_process(["/nonexistent/powershell.exe"], 5)
    with pytest.raises(TimeoutError, match=r"did not finish within 0\.2 s"):
        vms.run_process([sys.executable, "-c", "import time; time.sleep(5)"], 0.2)
