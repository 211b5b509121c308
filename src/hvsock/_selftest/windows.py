"""The self-test's steps on a Windows (Hyper-V) host.

Everything it creates is undone on every way out (a failed step, an exception,
Ctrl-C): the temporary service registration, the scratch registry key under
HKEY_CURRENT_USER that the exports are imported into, the temporary files. The
cleanup itself is a step, so a leftover is reported, not hidden.

The logic is pure around a few seams (registries, a program runner, the socket
round trips), so the host tests drive it on Linux with
:class:`hvsock.testing.MemoryRegistry` and real Unix-socket round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import secrets
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .._core import ids
from .._core.addresses import HyperVAddress
from .._errors import HvsockError, PermissionDeniedError, UnsupportedError
from .._transports.features import has_hyperv
from .._windows import export as exporting
from .._windows import registry as reg
from .._windows import vms as vmlib
from . import roundtrip
from .model import Step, failed, not_applicable, ok

STEPS = (
    "af_hyperv",
    "register",
    "hyperv_loopback",
    "hyperv_asyncio",
    "export_reg",
    "export_ps1",
    "vms",
    "cleanup",
)
HKCU = "HKEY_CURRENT_USER"
#: Where the scratch keys go, under HKEY_CURRENT_USER (no elevation needed there).
SCRATCH_PARENT = "Software"
RUN_TIMEOUT = 60.0

#: A round trip on the loopback partition for a service id; returns where it connected.
LoopbackTest = Callable[[uuid.UUID], str]


class Rebased:
    """A registry backend that keeps the services key somewhere else: paths below
    :data:`hvsock._windows.registry.SERVICES_KEY` go below *base* in *backend*.
    So registration code writes a scratch key exactly as it would write the real one.
    """

    def __init__(self, backend: reg.RegistryBackend, base: str) -> None:
        self.backend = backend
        self.base = base

    def _map(self, path: str) -> str:
        prefix = reg.SERVICES_KEY.casefold()
        if path.casefold() == prefix:
            return self.base
        if path.casefold().startswith(prefix + "\\"):
            return self.base + path[len(prefix) :]
        raise HvsockError(
            f"the self-test's scratch registry holds only the services key, not {path[:80]!r}"
        )

    def subkeys(self, path: str) -> list[str]:
        return self.backend.subkeys(self._map(path))

    def values(self, path: str) -> dict[str, object] | None:
        return self.backend.values(self._map(path))

    def create_key(self, path: str) -> None:
        self.backend.create_key(self._map(path))

    def set_value(self, path: str, name: str, value: str) -> None:
        self.backend.set_value(self._map(path), name, value)

    def delete_key(self, path: str) -> None:
        self.backend.delete_key(self._map(path))


def delete_tree(backend: reg.RegistryBackend, path: str) -> None:
    """Remove *path* and every key below it (nothing when it does not exist)."""
    for child in backend.subkeys(path):
        delete_tree(backend, f"{path}\\{child}")
    backend.delete_key(path)


def rebase_reg(text: str, base: str) -> str:
    """A .reg export that writes below ``HKEY_CURRENT_USER\\<base>`` instead of the
    services key (the text is otherwise byte for byte what the user would import)."""
    return text.replace(f"{reg.HKLM}\\{reg.SERVICES_KEY}", f"{HKCU}\\{base}")


def rebase_ps1(text: str, base: str) -> str:
    """A .ps1 export whose ``$root`` is ``HKCU:\\<base>`` instead of the services key."""
    real = exporting.ps_quote("HKLM:\\" + reg.SERVICES_KEY)
    if real not in text:
        raise HvsockError("the .ps1 export does not name the services key as expected")
    return text.replace(real, exporting.ps_quote(f"HKCU:\\{base}"))


def _real_loopback(service_id: uuid.UUID) -> str:  # pragma: no cover - Windows only
    return roundtrip.round_trip(HyperVAddress(ids.LOOPBACK, service_id))


def _real_proactor(service_id: uuid.UUID) -> str:  # pragma: no cover - Windows only
    factory = getattr(asyncio, "ProactorEventLoop", None)
    return roundtrip.round_trip_async(HyperVAddress(ids.LOOPBACK, service_id), loop_factory=factory)


def _machine_hive(name: str) -> reg.RegistryBackend:  # pragma: no cover - Windows only
    winreg = importlib.import_module("winreg")
    return reg.WinregBackend(
        winreg,
        getattr(winreg, name),
        name.replace("HKEY_LOCAL_MACHINE", "HKLM").replace("HKEY_CURRENT_USER", "HKCU"),
    )


@dataclass(frozen=True)
class Host:
    """Where the Windows steps act. None: this machine's (registry, programs, sockets);
    tests pass in-memory registries, a fake runner and round trips over Unix sockets.
    """

    #: The registry the services key lives in (HKEY_LOCAL_MACHINE).
    registry: reg.RegistryBackend | None = None
    #: A registry the scratch keys go in (HKEY_CURRENT_USER).
    scratch: reg.RegistryBackend | None = None
    runner: vmlib.Runner | None = None
    loopback_test: LoopbackTest | None = None
    asyncio_test: LoopbackTest | None = None
    #: Whether Python has AF_HYPERV; None: ask the socket module.
    af_hyperv: bool | None = None


class _Run:
    """One run of the Windows steps: what they made, undone in reverse order."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.runner: vmlib.Runner = host.runner or vmlib.run_process
        self.cleanups = contextlib.ExitStack()
        self.cleanup_problems: list[str] = []
        self.tag = secrets.token_hex(4)
        self.service_id = uuid.uuid4()
        self.name = f"hvsock selftest {self.tag}"
        self.registered: dict[str, object] | None = None

    def undo(self, what: str, action: Callable[[], object]) -> None:
        def run() -> None:
            try:
                action()
            except Exception as exc:  # reported as the cleanup step, never hidden
                self.cleanup_problems.append(f"{what}: {exc}")

        self.cleanups.callback(run)

    def scratch_dir(self) -> str:
        tmp = tempfile.TemporaryDirectory(prefix="hvsock-selftest-")
        self.undo(f"remove {tmp.name}", tmp.cleanup)
        return tmp.name


def windows_steps(host: Host) -> Iterator[Step]:
    """Run the Windows steps, yielding each as it ends. Never raises for a failed step.

    Whatever happens (Ctrl-C included), closing or exhausting the generator removes
    the temporary registration, the scratch keys and the files; the last step,
    ``cleanup``, says whether that worked.
    """
    run = _Run(host)
    with run.cleanups:
        have = has_hyperv() if host.af_hyperv is None else host.af_hyperv
        if have:
            yield ok("af_hyperv", "socket.AF_HYPERV exists")
        else:
            yield failed(
                "af_hyperv",
                "this Python has no socket.AF_HYPERV",
                advice="AF_HYPERV needs CPython 3.12 or newer on Windows",
            )
        yield _register(run)
        if have:
            yield _round_trip(
                "hyperv_loopback",
                run,
                host.loopback_test or _real_loopback,
                "a blocking listener and client",
            )
            yield _round_trip(
                "hyperv_asyncio",
                run,
                host.asyncio_test or _real_proactor,
                "an asyncio client on the proactor loop and a listener",
            )
        else:
            yield not_applicable("hyperv_loopback", "needs AF_HYPERV (see af_hyperv)")
            yield not_applicable("hyperv_asyncio", "needs AF_HYPERV (see af_hyperv)")
        scratch = _scratch(run)
        if isinstance(scratch, Step):
            yield scratch
            yield not_applicable("export_ps1", "no scratch registry key (see export_reg)")
        else:
            yield _export_reg(run, scratch)
            yield _export_ps1(run, scratch)
        yield _vms(run)
    yield (
        failed("cleanup", "something was left behind: " + "; ".join(run.cleanup_problems))
        if run.cleanup_problems
        else ok("cleanup", "the temporary registration, scratch keys and files are gone")
    )


def _register(run: _Run) -> Step:
    try:
        registry = run.host.registry or _machine_hive("HKEY_LOCAL_MACHINE")
        reg.register_service(run.name, run.service_id, registry=registry)
    except PermissionDeniedError as exc:
        return not_applicable(
            "register",
            f"not elevated ({exc}); run `hvsock selftest` from "
            "an elevated prompt to test registration",
        )
    except (HvsockError, OSError) as exc:
        return failed("register", f"registering {run.service_id} failed", exc)
    run.undo(
        f"unregister {run.service_id}",
        lambda: reg.unregister_service(run.service_id, registry=registry),
    )
    found = registry.values(reg.service_key(str(run.service_id)))
    run.registered = dict(found or {})
    return ok("register", f"registered {run.name!r} as {run.service_id} (removed at the end)")


def _round_trip(name: str, run: _Run, test: LoopbackTest, who: str) -> Step:
    try:
        where = test(run.service_id)
    except (HvsockError, OSError) as exc:
        return failed(
            name, f"the round trip on {HyperVAddress(ids.LOOPBACK, run.service_id)} failed", exc
        )
    return ok(name, f"{who} on {where} exchanged 64 KiB each way, with a half-close")


@dataclass(frozen=True)
class _Scratch:
    registry: reg.RegistryBackend
    base: str
    expected: dict[str, object]
    files: str
    service_id: uuid.UUID


def _scratch(run: _Run) -> _Scratch | Step:
    """A scratch key under HKCU with the registration as the backend writes it."""
    base = f"{SCRATCH_PARENT}\\hvsock-selftest-{run.tag}"
    try:
        scratch = run.host.scratch or _machine_hive("HKEY_CURRENT_USER")
        run.undo(f"delete {HKCU}\\{base}", lambda: delete_tree(scratch, base))
        written = Rebased(scratch, f"{base}\\backend")
        written.create_key(reg.SERVICES_KEY)
        reg.register_service(run.name, run.service_id, registry=written)
        expected = written.values(reg.service_key(str(run.service_id))) or {}
        files = run.scratch_dir()
    except (HvsockError, OSError) as exc:
        return failed("export_reg", f"the scratch key {HKCU}\\{base} could not be written", exc)
    if run.registered is not None and run.registered != expected:
        return failed(
            "export_reg",
            f"the scratch key holds {expected}, the real "
            f"registration {run.registered}: the backend wrote two different things",
        )
    return _Scratch(scratch, base, dict(expected), files, run.service_id)


def _compare(name: str, scratch: _Scratch, where: str, how: str) -> Step:
    try:
        got = Rebased(scratch.registry, f"{scratch.base}\\{where}").values(
            reg.service_key(str(scratch.service_id))
        )
    except (HvsockError, OSError) as exc:
        return failed(name, f"reading back what {how} wrote failed", exc)
    if got != scratch.expected:
        return failed(name, f"{how} wrote {got}, the registry backend {scratch.expected}")
    return ok(
        name,
        f"{how} wrote the same values as the registry backend "
        f"({', '.join(sorted(scratch.expected))})",
    )


def _run_program(name: str, argv: list[str], run: _Run) -> Step | None:
    try:
        result = run.runner(argv, RUN_TIMEOUT)
    except FileNotFoundError:
        return not_applicable(name, f"{argv[0]} is not on PATH")
    except (TimeoutError, OSError) as exc:
        return failed(name, f"{argv[0]} did not run", exc)
    if result.returncode != 0:
        said = (
            vmlib.decode_output(result.stderr).strip() or vmlib.decode_output(result.stdout).strip()
        )
        return failed(name, f"`{' '.join(argv[:2])} ...` exited {result.returncode}: {said[:500]}")
    return None


def _export_reg(run: _Run, scratch: _Scratch) -> Step:
    text = exporting.registration_script([reg.Registration(run.service_id, run.name)], "reg")
    path = os.path.join(scratch.files, "selftest.reg")
    # regedit's own format: UTF-16 with a BOM, CRLF (as `hvsock register -o` writes).
    with open(path, "w", encoding="utf-16", newline="\r\n") as f:
        f.write(rebase_reg(text, f"{scratch.base}\\reg"))
    problem = _run_program("export_reg", ["reg", "import", path], run)
    return problem or _compare("export_reg", scratch, "reg", "`reg import` of the .reg export")


def _export_ps1(run: _Run, scratch: _Scratch) -> Step:
    text = exporting.registration_script([reg.Registration(run.service_id, run.name)], "ps1")
    path = os.path.join(scratch.files, "selftest.ps1")
    try:
        Rebased(scratch.registry, f"{scratch.base}\\ps1").create_key(reg.SERVICES_KEY)
        with open(path, "w", encoding="utf-8-sig", newline="\r\n") as f:
            f.write(rebase_ps1(text, f"{scratch.base}\\ps1"))
    except (HvsockError, OSError) as exc:
        return failed("export_ps1", "the script could not be prepared", exc)
    problem = _run_program(
        "export_ps1",
        [
            vmlib.POWERSHELL,
            "-NoLogo",
            "-NoProfile",
            "-NonInteractive",
            "-ExecutionPolicy",
            "Bypass",
            "-File",
            path,
        ],
        run,
    )
    return problem or _compare("export_ps1", scratch, "ps1", "PowerShell running the .ps1 export")


def _vms(run: _Run) -> Step:
    try:
        found = vmlib.discover_vms(run.host.runner)
    except UnsupportedError as exc:
        return not_applicable("vms", str(exc))
    except (HvsockError, OSError) as exc:
        return failed("vms", "the VMs could not be listed", exc)
    names = ", ".join(f"{vm.name} {vm.vm_id} ({vm.state})" for vm in found.vms) or "none"
    problems = [p for p in found.problems if p != vmlib.WSL_NOT_RUNNING]
    wsl = [vm for vm in found.vms if vm.is_wsl]
    wsl_text = f"; WSL's VM id {wsl[0].vm_id}" if wsl else "; WSL is not running"
    if problems and not found.vms:
        return failed("vms", "no VM source answered", advice="; ".join(problems))
    return ok(
        "vms", f"VMs: {names}{wsl_text}" + (f" (notes: {'; '.join(problems)})" if problems else "")
    )
