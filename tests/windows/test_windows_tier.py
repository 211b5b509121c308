"""The Windows tier: the real registry, reg.exe, PowerShell, AF_HYPERV and the proactor loop.

Skipped (with the reason) everywhere but Windows; .github/workflows/windows.yml runs
it on windows-latest. NONE OF THIS HAS RUN YET: it was written on Linux, where the
project is built, from the documentation of each Windows piece.

Every registry write goes to a scratch key under HKEY_CURRENT_USER (no elevation
needed) through :class:`hvsock._selftest.windows.Rebased`, and is removed after.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import secrets
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hvsock import HvsockError
from hvsock._core import ids
from hvsock._core.addresses import HyperVAddress
from hvsock._selftest import OK, roundtrip, run_selftest
from hvsock._selftest import windows as win
from hvsock._transports.features import has_hyperv
from hvsock._windows import export as exporting
from hvsock._windows import registry as reg

pytestmark = [pytest.mark.windows, pytest.mark.timeout(120)]

HKCU_NAME = "HKCU"


@pytest.fixture
def winreg() -> Any:
    return importlib.import_module("winreg")


@pytest.fixture
def scratch(winreg: Any) -> Iterator[tuple[reg.WinregBackend, str]]:
    """A real HKCU backend and a fresh key below Software, removed afterwards."""
    backend = reg.WinregBackend(winreg, winreg.HKEY_CURRENT_USER, HKCU_NAME)
    base = f"Software\\hvsock-test-{secrets.token_hex(4)}"
    backend.create_key(base)
    try:
        yield backend, base
    finally:
        win.delete_tree(backend, base)
        assert backend.values(base) is None


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_winreg_backend_registers_lists_and_removes_in_a_real_key(
    scratch: tuple[reg.WinregBackend, str],
) -> None:
    backend, base = scratch
    services = win.Rebased(backend, f"{base}\\services")
    services.create_key(reg.SERVICES_KEY)
    sid = uuid.uuid4()
    assert reg.register_service("hvsock tier", sid, registry=services) is not None
    assert reg.register_service("hvsock tier", sid, registry=services) is None
    [entry] = reg.registered_services(services)
    assert (entry.service_id, entry.name, entry.made_by_hvsock) == (sid, "hvsock tier", True)
    assert reg.unregister_service(sid, registry=services) is not None
    assert reg.registered_services(services) == []


def test_a_reg_export_round_trips_through_reg_import_and_reg_export(
    scratch: tuple[reg.WinregBackend, str], tmp_path: Path
) -> None:
    _backend, base = scratch
    change = reg.Registration(ids.service_id_for_port(5000), "hvsock 'tier' \"quoted\"")
    text = win.rebase_reg(exporting.registration_script([change], "reg"), f"{base}\\reg")
    imported = tmp_path / "in.reg"
    imported.write_text(text, encoding="utf-16", newline="\r\n")
    done = _run(["reg", "import", str(imported)])
    assert done.returncode == 0, done.stderr
    exported = tmp_path / "out.reg"
    key = f"HKCU\\{base}\\reg\\{change.service_id}"
    done = _run(["reg", "export", key, str(exported), "/y"])
    assert done.returncode == 0, done.stderr
    edits = exporting.parse_reg(exported.read_text(encoding="utf-16").replace(win.HKCU, reg.HKLM))
    [edit] = [e for e in edits if e.values]
    assert dict(edit.values) == dict(change.edits()[0].values)


def _powershell(script: Path, *, what_if: bool) -> subprocess.CompletedProcess[str]:
    run = f"$WhatIfPreference = ${str(what_if).lower()}; & '{script}'"
    return _run(
        [
            "powershell.exe",
            "-NoLogo",
            "-NoProfile",
            "-NonInteractive",
            "-ExecutionPolicy",
            "Bypass",
            "-Command",
            run,
        ]
    )


def test_the_ps1_export_with_whatif_changes_nothing_and_without_it_registers(
    scratch: tuple[reg.WinregBackend, str], tmp_path: Path
) -> None:
    backend, base = scratch
    services = win.Rebased(backend, f"{base}\\ps1")
    services.create_key(reg.SERVICES_KEY)
    sid = uuid.uuid4()
    script = tmp_path / "register.ps1"
    text = exporting.registration_script([reg.Registration(sid, "hvsock ps1")], "ps1")
    script.write_text(win.rebase_ps1(text, f"{base}\\ps1"), encoding="utf-8-sig", newline="\r\n")
    done = _powershell(script, what_if=True)
    assert done.returncode == 0, done.stderr
    assert reg.registered_services(services) == []
    done = _powershell(script, what_if=False)
    assert done.returncode == 0, done.stderr
    [entry] = reg.registered_services(services)
    assert (entry.service_id, entry.name, entry.made_by_hvsock) == (sid, "hvsock ps1", True)
    removal = exporting.registration_script([reg.Removal(sid)], "ps1")
    script.write_text(win.rebase_ps1(removal, f"{base}\\ps1"), encoding="utf-8-sig", newline="\r\n")
    done = _powershell(script, what_if=False)
    assert done.returncode == 0, done.stderr
    assert reg.registered_services(services) == []


def _hyperv_or_skip() -> None:
    if not has_hyperv():
        pytest.skip(f"Python {sys.version_info[:2]} has no AF_HYPERV (needs 3.12+)")
    try:
        socket.socket(socket.AF_HYPERV, socket.SOCK_STREAM, 1).close()  # type: ignore[attr-defined]
    except OSError as exc:
        pytest.skip(f"the Hyper-V socket provider is not installed here: {exc}")


def test_an_af_hyperv_socket_can_be_made() -> None:
    _hyperv_or_skip()
    with socket.socket(socket.AF_HYPERV, socket.SOCK_STREAM, 1) as sock:  # type: ignore[attr-defined]
        assert sock.family == socket.AF_HYPERV  # type: ignore[attr-defined]


def test_a_hyperv_loopback_round_trip_with_half_close() -> None:
    _hyperv_or_skip()
    address = HyperVAddress(ids.LOOPBACK, uuid.uuid4())
    try:
        assert roundtrip.round_trip(address) == str(address)
    except HvsockError as exc:
        if getattr(exc.__cause__, "winerror", None) == 10047:  # WSAEAFNOSUPPORT
            pytest.skip(f"no Hyper-V loopback partition here: {exc}")
        raise


def test_the_proactor_loop_round_trips_over_tcp() -> None:
    assert isinstance(asyncio.ProactorEventLoop(), asyncio.AbstractEventLoop)  # type: ignore[attr-defined]
    assert roundtrip.round_trip_async(
        "tcp://127.0.0.1:0",
        loop_factory=asyncio.ProactorEventLoop,  # type: ignore[attr-defined]
    ).startswith("tcp://127.0.0.1:")


def test_the_proactor_loop_round_trips_over_hyperv_loopback() -> None:
    _hyperv_or_skip()
    address = HyperVAddress(ids.LOOPBACK, uuid.uuid4())
    assert roundtrip.round_trip_async(address, loop_factory=asyncio.ProactorEventLoop) == str(
        address
    )  # type: ignore[attr-defined]


def test_the_selftest_runs_every_step_and_leaves_nothing(
    winreg: Any, scratch: tuple[reg.WinregBackend, str]
) -> None:
    backend, _base = scratch
    before = backend.subkeys("Software")
    report = run_selftest(platform="win32")
    assert report["cleanup"].status == OK, report["cleanup"]
    assert report["export_reg"].status == OK, report["export_reg"]
    assert backend.subkeys("Software") == before
    temp = os.environ.get("TEMP", "")
    assert not [n for n in os.listdir(temp) if n.startswith("hvsock-selftest-")]
