"""register, unregister, services, vms, doctor: in-process through main(), and as a process.

On this Linux machine the registry and PowerShell are absent, so the commands that
need them must say so and point to --export; --export and --dry-run work anywhere.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from hvsock._cli import main as cli
from hvsock._cli.doctor_cmds import print_diagnosis
from hvsock._doctor import diagnose
from hvsock._errors import RegistryError, VmNotFoundError
from hvsock._windows.export import parse_reg
from hvsock._windows.registry import SERVICES_KEY, Registration, RegistryEdit
from hvsock.windows import service_id_for_port

from .._doctor_fakes import tree

SID = service_id_for_port(5000)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(list(argv), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def key(name: str) -> str:
    return f"{SERVICES_KEY}\\{name}"


# -- register ---------------------------------------------------------------------------


def test_register_export_ps1() -> None:
    status, out, err = run("register", "My agent", "--port", "5000", "--export", "ps1")
    assert status == 0
    assert "-Name 'ElementName' -Value 'My agent'" in out
    assert f"New-Item -Path $root -Name '{SID}'" in out
    assert f"'My agent' is service {SID} (vsock port 5000)" in err
    assert "elevated PowerShell" in err


def test_register_export_reg_round_trips() -> None:
    status, out, err = run(
        "register", "My agent", "--service-id", f"{{{str(SID).upper()}}}", "--export", "reg"
    )
    assert status == 0
    assert parse_reg(out) == list(Registration(SID, "My agent").edits())
    assert "reg import" in err


def test_register_new_makes_a_random_id_and_says_it() -> None:
    status, out, err = run("register", "Fresh", "--new", "--export", "reg")
    assert status == 0
    [edit] = parse_reg(out)
    sid = uuid.UUID(edit.key.rsplit("\\", 1)[1])
    assert sid.version == 4
    assert str(sid) in err
    assert run("register", "Fresh", "--new", "--export", "reg")[1] != out


def test_register_output_files_use_the_encodings_windows_wants(short_tmp: Path) -> None:
    reg_file, ps1_file = short_tmp / "s.reg", short_tmp / "s.ps1"
    status, out, err = run(
        "register", "Ünïcode", "--port", "5000", "--export", "reg", "-o", str(reg_file)
    )
    assert (status, out) == (0, "")
    assert f"wrote {reg_file}" in err
    data = reg_file.read_bytes()
    assert data.startswith(b"\xff\xfe")  # UTF-16LE with a BOM, as regedit writes
    text = data.decode("utf-16")
    assert "\r\n" in text
    assert "\n" not in text.replace("\r\n", "")
    assert parse_reg(text) == list(Registration(SID, "Ünïcode").edits())
    assert (
        run("register", "Ünïcode", "--port", "5000", "--export", "ps1", "--output", str(ps1_file))[
            0
        ]
        == 0
    )
    assert ps1_file.read_bytes().startswith(b"\xef\xbb\xbf")  # UTF-8 BOM for PowerShell 5.1
    assert "-Value 'Ünïcode'" in ps1_file.read_text(encoding="utf-8-sig")
    status, _, err = run(
        "register",
        "x",
        "--port",
        "1",
        "--export",
        "reg",
        "-o",
        str(short_tmp / "missing" / "x.reg"),
    )
    assert status == cli.EXIT_ERROR
    assert "cannot write" in err


def test_register_needs_the_registry_or_export() -> None:
    status, out, err = run("register", "My agent", "--port", "5000")
    assert status == cli.EXIT_UNSUPPORTED
    assert out == ""
    assert "--export ps1" in err
    assert "administrator" in err


def test_register_dry_run_shows_what_would_change() -> None:
    status, out, err = run("register", "My agent", "--port", "5000", "--dry-run")
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        f"would create HKLM\\{key(str(SID))} (if missing)",
        "would set CreatedBy = 'hvsock'",
        "would set ElementName = 'My agent'",
    ]
    status, out, _ = run("register", "My agent", "--port", "5000", "--dry-run", "--json")
    [result] = json.loads(out)
    assert result == {
        "service_id": str(SID),
        "name": "My agent",
        "port": 5000,
        "changed": True,
        "dry_run": True,
        "edits": [
            f"would create HKLM\\{key(str(SID))} (if missing)",
            "would set CreatedBy = 'hvsock'",
            "would set ElementName = 'My agent'",
        ],
    }


@pytest.fixture
def services_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module in the current directory that declares services, as a user's would."""
    name = f"declared_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "from hvsock import Service\n"
        "async def handler(conn):\n"
        "    pass\n"
        "agent = Service('Guest agent', 5005, handler)\n"
        "both = [agent, Service('Metrics', '3f9e1a2b-4c5d-4e6f-8a7b-9c0d1e2f3a4b', handler)]\n"
        "not_a_service = 42\n"
    )
    monkeypatch.chdir(tmp_path)
    yield name
    sys.modules.pop(name, None)


def test_register_from_service_declarations(services_module: str) -> None:
    status, out, _ = run("register", "--from", f"{services_module}:agent", "--export", "reg")
    assert status == 0
    assert parse_reg(out) == list(Registration(service_id_for_port(5005), "Guest agent").edits())
    status, out, err = run("register", "--from", f"{services_module}:both", "--export", "reg")
    assert status == 0
    assert [edit.values[1][1] for edit in parse_reg(out)] == ["Guest agent", "Metrics"]
    assert "3f9e1a2b-4c5d-4e6f-8a7b-9c0d1e2f3a4b" in err
    status, out, _ = run("register", "--from", f"{services_module}:both", "--dry-run", "--json")
    assert [r["name"] for r in json.loads(out)] == ["Guest agent", "Metrics"]


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("no_colon", "--from takes MODULE:NAME"),
        (":agent", "--from takes MODULE:NAME"),
        ("no_such_module_here:agent", "cannot import 'no_such_module_here'"),
        ("{mod}:missing", "has no 'missing'"),
        ("{mod}:not_a_service", "is not a hvsock.Service"),
    ],
)
def test_register_from_bad_specs(services_module: str, spec: str, fragment: str) -> None:
    status, out, err = run(
        "register", "--from", spec.format(mod=services_module), "--export", "reg"
    )
    assert status == cli.EXIT_USAGE
    assert out == ""
    assert fragment in err


BAD_ARGS = [
    (["register"], cli.EXIT_USAGE, "one of the arguments"),
    (["register", "x"], cli.EXIT_USAGE, "one of the arguments"),
    (["register", "--port", "1"], cli.EXIT_USAGE, "give the service's NAME"),
    (["register", "x", "--port", "1", "--new"], cli.EXIT_USAGE, "not allowed with"),
    (["register", "x", "--port", "-1"], cli.EXIT_USAGE, "usage"),
    (["register", "x", "--port", "4294967296"], cli.EXIT_USAGE, "out of range"),
    (["register", "x", "--service-id", "nope", "--export", "reg"], cli.EXIT_USAGE, "is not a GUID"),
    (["register", "x", "--from", "m:a", "--export", "reg"], cli.EXIT_USAGE, "drop NAME"),
    (
        ["register", " x", "--port", "1", "--export", "ps1"],
        cli.EXIT_REGISTRY,
        "starts or ends with spaces",
    ),
    (
        ["register", "a\tb", "--port", "1", "--export", "ps1"],
        cli.EXIT_REGISTRY,
        "control or invisible character",
    ),
    (["register", "x" * 257, "--port", "1", "--export", "ps1"], cli.EXIT_REGISTRY, "at most 256"),
    (["register", "x", "--port", "1", "--export", "bat"], cli.EXIT_USAGE, "invalid choice"),
    (
        ["register", "x", "--port", "1", "--export", "reg", "--dry-run"],
        cli.EXIT_USAGE,
        "not allowed with",
    ),
    (
        ["register", "x", "--port", "1", "-o", "f.reg"],
        cli.EXIT_USAGE,
        "--output goes with --export",
    ),
    (["unregister"], cli.EXIT_USAGE, "required"),
    (["unregister", "nope"], cli.EXIT_USAGE, "is not a GUID"),
    (["unregister", "99999999999"], cli.EXIT_USAGE, "out of range"),
    (["unregister", "5000", "--export", "reg"], cli.EXIT_REGISTRY, "add --force"),
    (
        ["unregister", "999E53D4-3D5C-4C3E-8779-BED06EC056E1", "--export", "ps1"],
        cli.EXIT_REGISTRY,
        "never removes a built-in service",
    ),
    (["unregister", "5000", "-o", "x"], cli.EXIT_USAGE, "--output goes with --export"),
    (["doctor", "vsock://nowhere:1"], cli.EXIT_USAGE, "unknown CID"),
    (["doctor", "a", "b"], cli.EXIT_USAGE, "unrecognized arguments"),
    (["vms", "--all"], cli.EXIT_USAGE, "unrecognized arguments"),
]


@pytest.mark.parametrize(
    ("argv", "status", "fragment"), BAD_ARGS, ids=[" ".join(b[0])[:40] for b in BAD_ARGS]
)
def test_bad_arguments_say_why(argv: list[str], status: int, fragment: str) -> None:
    got, out, err = run(*argv)
    assert got == status
    assert out == ""
    assert fragment in err


# -- unregister ---------------------------------------------------------------------------


def test_unregister_export() -> None:
    status, out, _ = run("unregister", "5000", "--export", "ps1")
    assert status == 0
    assert "Remove-Item -LiteralPath $key" in out
    assert "CreatedBy -cne 'hvsock'" in out
    status, out, _ = run("unregister", str(SID), "--export", "reg", "--force")
    assert status == 0
    assert parse_reg(out) == [RegistryEdit(key(str(SID)), delete=True)]


def test_unregister_without_registry_and_dry_run() -> None:
    status, _, err = run("unregister", "5000")
    assert status == cli.EXIT_UNSUPPORTED
    assert "--export ps1" in err
    status, out, err = run("unregister", "5000", "--dry-run")
    assert (status, out) == (0, "")
    assert "is not registered; nothing to do" in err
    status, out, _ = run("unregister", "5000", "--dry-run", "--json")
    assert json.loads(out) == {
        "service_id": str(SID),
        "changed": False,
        "dry_run": True,
        "edits": [],
    }


# -- listings and doctor -------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["services"], ["services", "--json"]])
def test_services_needs_the_registry(argv: list[str]) -> None:
    status, out, err = run(*argv)
    assert (status, out) == (cli.EXIT_UNSUPPORTED, "")
    assert "the Windows registry is not here" in err
    assert "--export" not in err


def test_vms_on_linux_lists_the_kvm_hosts_vms(tmp_path: Path) -> None:
    """Off Windows, `hvsock vms` is the KVM host's listing, not a PowerShell refusal
    (tests/host/test_kvm_hosts.py has it in full)."""
    proc = tmp_path / "proc"
    (proc / "7").mkdir(parents=True)
    (proc / "7" / "cmdline").write_bytes(
        b"qemu-system-x86_64\0-name\0vm7\0-device\0vhost-vsock-pci,guest-cid=7\0"
    )
    status, out, err = run("vms", "--json", "--proc", str(proc))
    assert status == cli.EXIT_OK, err
    found = json.loads(out)
    # (libvirt's VMs too, on a machine with virsh: only the fake process is checked)
    assert ("vm7", 7, f"{proc}/7") in [(vm["name"], vm["cid"], vm["source"]) for vm in found["vms"]]
    assert "powershell" not in err


def test_doctor_prints_each_check_and_sums_up(tmp_path: Path) -> None:
    # A fake machine: the host tier makes no real AF_VSOCK socket. The command itself
    # runs on the real kernel in tests/kernel/test_doctor_cli_kernel.py.
    report = diagnose("vsock://any:5000", machine=tree(tmp_path), platform="linux")
    out = io.StringIO()
    print_diagnosis(report, out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("hvsock doctor: linux, Python ")
    assert lines[0].endswith("address vsock://any:5000")
    assert any(line.split()[:2] == ["ok", "af_vsock"] for line in lines)
    assert (
        "  not applicable (Windows host only): af_hyperv, registry, hyperv_loopback, "
        "vms, service_registered, address_vm" in lines
    )
    failed = sum(check.status == "fail" for check in report.checks)
    assert lines[-1].startswith(f"{failed} failed, ")


def test_doctor_fix_lines_for_cid_1_without_the_loopback_transport(tmp_path: Path) -> None:
    report = diagnose("vsock://local:5000", machine=tree(tmp_path), platform="linux")
    assert report.address == "vsock://1:5000"
    assert report["address_cid"].status == "fail"
    assert report.ok is False
    out = io.StringIO()
    print_diagnosis(report, out)
    assert "fix: `sudo modprobe vsock_loopback`" in out.getvalue()


def test_named_vm_addresses_on_the_command_line() -> None:
    status, out, _ = run("addr", "--json", "hvsock://name:My%2FVM/5000")
    assert status == 0
    assert json.loads(out)["vm_name"] == "My/VM"
    status, _, err = run("connect", "hvsock://wsl/5000")
    assert status == cli.EXIT_UNSUPPORTED
    assert "AF_HYPERV" in err
    status, _, err = run("addr", "hvsock://name:/5000")
    assert (status, "VM name is empty" in err) == (cli.EXIT_USAGE, True)


def test_exit_codes_of_the_new_errors() -> None:
    assert cli.exit_code_for(RegistryError("x")) == cli.EXIT_REGISTRY == 8
    assert cli.exit_code_for(VmNotFoundError("x")) == cli.EXIT_CONNECT


@pytest.mark.parametrize("command", ["register", "unregister", "services", "vms", "doctor"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(command, "--help")[0] == 0
    assert "usage: hvsock " + command in capsys.readouterr().out


# -- as a real process, once ---------------------------------------------------------------


def test_as_a_real_process(hvsock_cmd: list[str]) -> None:
    done = subprocess.run(
        [*hvsock_cmd, "register", "My agent", "--port", "5000", "--export", "reg"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert parse_reg(done.stdout) == list(Registration(SID, "My agent").edits())
    done = subprocess.run(
        [*hvsock_cmd, "services"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == cli.EXIT_UNSUPPORTED
    # `services` has no --export: it must not suggest one (issue 13 item 8).
    assert "--export" not in done.stderr
    assert "run `hvsock services` on the Hyper-V host" in done.stderr


@pytest.mark.host_vsock  # the real doctor creates an AF_VSOCK socket here
def test_doctor_as_a_real_process(hvsock_cmd: list[str]) -> None:
    done = subprocess.run(
        [*hvsock_cmd, "doctor", "--json"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode in (0, 1)
    assert json.loads(done.stdout)["platform"].startswith("linux")
