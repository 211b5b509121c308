"""``hvsock selftest`` on the host: real round trips over Unix/TCP, fake /sys trees, the
Windows steps against in-memory registries and a runner that really imports .reg text.

No AF_VSOCK connect happens here: the Linux loopback step is a fake (a Unix round
trip) unless this machine itself has vsock_loopback, and no echo port is vsock.
"""

from __future__ import annotations

import io
import json
import os
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from hvsock import HvsockError, PermissionDeniedError
from hvsock._cli.main import main
from hvsock._selftest import FAILED, NOT_APPLICABLE, OK, Guest, Host, model, roundtrip, run_selftest
from hvsock._selftest import linux as linux_steps
from hvsock._selftest import windows as win
from hvsock._windows import export as exporting
from hvsock._windows import registry as reg
from hvsock._windows.vms import POWERSHELL, ProcessResult
from hvsock.testing import MemoryRegistry

pytestmark = pytest.mark.timeout(60)


# -- the round trips, over real sockets ------------------------------------------------


@pytest.mark.usefixtures("fd_baseline")
def test_a_unix_round_trip_echoes_64_kib_with_a_half_close_and_removes_its_file(
    short_tmp: Path,
) -> None:
    path = short_tmp / "rt.sock"
    assert roundtrip.round_trip(f"unix://{path}") == f"unix://{path}"
    assert not path.exists()


@pytest.mark.usefixtures("fd_baseline")
def test_a_tcp_round_trip_connects_to_the_port_the_kernel_chose() -> None:
    where = roundtrip.round_trip("tcp://127.0.0.1:0")
    assert where.startswith("tcp://127.0.0.1:")
    assert not where.endswith(":0")


@pytest.mark.usefixtures("fd_baseline")
def test_an_asyncio_round_trip_does_the_same(short_tmp: Path) -> None:
    path = short_tmp / "art.sock"
    assert roundtrip.round_trip_async(f"unix://{path}") == f"unix://{path}"
    assert not path.exists()


@pytest.mark.usefixtures("fd_baseline")
def test_a_round_trip_to_where_nothing_listens_raises_and_leaks_nothing(short_tmp: Path) -> None:
    nowhere = short_tmp / "nobody.sock"
    with pytest.raises(HvsockError, match=r"nothing is listening|No such file|not exist"):
        roundtrip.round_trip(
            f"unix://{short_tmp / 'rt.sock'}",
            lambda actual: roundtrip.parse_address(f"unix://{nowhere}"),
            timeout=5,
        )
    assert not (short_tmp / "rt.sock").exists()


# -- the report model ------------------------------------------------------------------


def test_a_failure_carries_the_windows_error_code_and_the_doctors_advice() -> None:
    exc = OSError(10061, "connection refused")
    exc.winerror = 10061  # type: ignore[attr-defined]  # what Windows' OSError carries
    step = model.failed("hyperv_loopback", "the round trip failed", exc)
    assert step.status == FAILED
    assert step.error_code == 10061
    assert "nothing listens on that service id" in step.advice


def test_a_failure_elsewhere_carries_its_errno_and_name() -> None:
    step = model.failed("host_echo", "no echo", ConnectionRefusedError(111, "refused"))
    assert step.error_code == 111
    assert "[ECONNREFUSED]" in step.summary


# -- the Linux steps with fake /sys trees -----------------------------------------------


def _guest(
    tmp_path: Path, modules: Sequence[str], calls: list[str] | None = None, af_vsock: bool = True
) -> Guest:
    for module in modules:
        (tmp_path / "sys" / "module" / module).mkdir(parents=True)
    (tmp_path / "sys" / "module").mkdir(parents=True, exist_ok=True)

    def fake_loopback() -> str:
        # A real round trip, over a Unix socket instead of AF_VSOCK.
        if calls is not None:
            calls.append("loopback")
        with tempfile.TemporaryDirectory(prefix="hv-", dir="/tmp") as d:
            return roundtrip.round_trip(f"unix://{d}/lo.sock")

    return Guest(root=str(tmp_path), loopback_test=fake_loopback, af_vsock=af_vsock)


def test_without_af_vsock_every_other_step_is_not_applicable(tmp_path: Path) -> None:
    report = run_selftest(platform="linux", guest=_guest(tmp_path, [], af_vsock=False))
    assert report["af_vsock"].status == FAILED
    assert [s.status for s in report.steps[1:]] == [NOT_APPLICABLE] * 4
    assert not report.ok


def test_no_transport_fails_and_says_which_module_to_load_for_which_hypervisor(
    tmp_path: Path,
) -> None:
    report = run_selftest(platform="linux", guest=_guest(tmp_path, []))
    step = report["vsock_transports"]
    assert step.status == FAILED
    assert "`modprobe hv_sock` (Hyper-V)" in step.advice
    assert "`modprobe vmw_vsock_virtio_transport`" in step.advice


def test_loopback_only_runs_the_loopback_round_trip_but_fails_the_guest_transport(
    tmp_path: Path,
) -> None:
    calls: list[str] = []
    report = run_selftest(platform="linux", guest=_guest(tmp_path, ["vsock_loopback"], calls))
    assert calls == ["loopback"]
    assert report["vsock_loopback"].status == OK
    assert report["vsock_transports"].status == FAILED
    assert "none reaches a host" in report["vsock_transports"].summary


def test_a_guest_transport_without_loopback_never_tries_the_round_trip(tmp_path: Path) -> None:
    calls: list[str] = []
    report = run_selftest(
        platform="linux", guest=_guest(tmp_path, ["vmw_vsock_virtio_transport"], calls)
    )
    assert calls == []
    assert report["vsock_transports"].status == OK
    assert report["vsock_loopback"].status == NOT_APPLICABLE
    assert "would leave this machine" in report["vsock_loopback"].summary


def test_no_vsock_device_fails_the_cid_step_with_how_to_load_one(tmp_path: Path) -> None:
    report = run_selftest(platform="linux", guest=_guest(tmp_path, ["hv_sock"]))
    step = report["local_cid"]
    assert step.status == FAILED
    assert "modprobe" in step.summary
    assert step.error_code == 2


def test_the_real_loopback_step_refuses_without_vsock_loopback_on_this_machine() -> None:
    if os.path.isdir("/sys/module/vsock_loopback"):
        pytest.skip("this machine has vsock_loopback: the kernel tier covers the real step")
    with pytest.raises(HvsockError, match="would leave"):
        linux_steps.loopback_round_trip()


@pytest.fixture
def tcp_echo() -> Iterator[str]:
    """A plain TCP echo server (what `hvsock echo-server` does), for the echo step."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    stop = threading.Event()

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            while not stop.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()
    thread.join(10)


def test_the_echo_step_pings_the_server_it_is_given(tmp_path: Path, tcp_echo: str) -> None:
    report = run_selftest(platform="linux", guest=_guest(tmp_path, ["hv_sock"]), echo=tcp_echo)
    assert report["host_echo"].status == OK
    assert report["host_echo"].summary.startswith(f"3 echoes of 1024 bytes from {tcp_echo}")


def test_the_echo_step_fails_with_advice_when_nothing_answers(
    tmp_path: Path, short_tmp: Path
) -> None:
    report = run_selftest(
        platform="linux",
        guest=_guest(tmp_path, ["hv_sock"]),
        echo=f"unix://{short_tmp / 'none.sock'}",
    )
    step = report["host_echo"]
    assert step.status == FAILED
    assert "hvsock echo-server" in step.advice


def test_another_platform_gets_one_not_applicable_step() -> None:
    report = run_selftest(platform="darwin")
    assert [(s.name, s.status) for s in report.steps] == [("platform", NOT_APPLICABLE)]


# -- the Windows steps, on in-memory registries ------------------------------------------


class FakeWindows:
    """``reg import`` for real (.reg text parsed and applied to the scratch hive);
    PowerShell either missing or doing what the .ps1 says to its $root."""

    def __init__(
        self,
        scratch: MemoryRegistry,
        *,
        powershell: bool = False,
        tamper: bool = False,
        reg_fails: bool = False,
    ) -> None:
        self.scratch = scratch
        self.powershell = powershell
        self.tamper = tamper
        self.reg_fails = reg_fails
        self.calls: list[str] = []

    def __call__(self, argv: Sequence[str], timeout: float) -> ProcessResult:
        self.calls.append(argv[0])
        if argv[:2] == ["reg", "import"]:
            if self.reg_fails:
                return ProcessResult(1, b"", b"ERROR: Error accessing the registry.")
            with open(argv[2], encoding="utf-16") as f:
                text = f.read()
            # parse_reg reads HKLM only: the scratch hive stands in for HKCU here.
            edits = exporting.parse_reg(text.replace(win.HKCU, reg.HKLM))
            if self.tamper:
                edits = [
                    reg.RegistryEdit(e.key, tuple((n, v + "!") for n, v in e.values)) for e in edits
                ]
            reg.apply_edits(self.scratch, edits)
            return ProcessResult(0, b"The operation completed successfully.")
        if argv[0] == POWERSHELL and "-File" in argv and self.powershell:
            with open(argv[argv.index("-File") + 1], encoding="utf-8-sig") as f:
                script = f.read()
            root = script.split("$root = '", 1)[1].split("'", 1)[0]
            assert root.startswith("HKCU:\\Software\\hvsock-selftest-")
            sid = script.split("$key = Join-Path $root '", 1)[1].split("'", 1)[0]
            name = script.split(f"-Name '{reg.ELEMENT_NAME}' -Value '", 1)[1].split("'", 1)[0]
            key = root.removeprefix("HKCU:\\") + "\\" + sid
            self.scratch.create_key(key)
            self.scratch.set_value(key, reg.MARKER_NAME, reg.MARKER_VALUE)
            self.scratch.set_value(key, reg.ELEMENT_NAME, name)
            return ProcessResult(0, b"registered")
        raise FileNotFoundError(argv[0])


def _machine() -> MemoryRegistry:
    registry = MemoryRegistry()
    registry.create_key(reg.SERVICES_KEY)
    return registry


def _unix_round_trip(service_id: uuid.UUID) -> str:
    with tempfile.TemporaryDirectory(prefix="hv-", dir="/tmp") as d:
        return roundtrip.round_trip(f"unix://{d}/{service_id.hex[:8]}.sock")


def _unix_async_round_trip(service_id: uuid.UUID) -> str:
    with tempfile.TemporaryDirectory(prefix="hv-", dir="/tmp") as d:
        return roundtrip.round_trip_async(f"unix://{d}/{service_id.hex[:8]}.sock")


def _host(
    registry: reg.RegistryBackend, scratch: MemoryRegistry, runner: FakeWindows, **kwargs: object
) -> Host:
    options: dict[str, object] = {
        "loopback_test": _unix_round_trip,
        "asyncio_test": _unix_async_round_trip,
        "af_hyperv": True,
    }
    options.update(kwargs)
    return Host(registry=registry, scratch=scratch, runner=runner, **options)  # type: ignore[arg-type]


def _selftest_dirs() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("hvsock-selftest-")}


def test_every_windows_step_runs_and_nothing_is_left_behind() -> None:
    machine, scratch = _machine(), MemoryRegistry()
    runner = FakeWindows(scratch, powershell=True)
    dirs = _selftest_dirs()
    report = run_selftest(platform="win32", host=_host(machine, scratch, runner))
    statuses = {s.name: s.status for s in report.steps}
    assert [s.name for s in report.steps] == list(win.STEPS)
    assert statuses == {**dict.fromkeys(win.STEPS, OK), "vms": NOT_APPLICABLE}, report
    assert "ElementName" in report["export_reg"].summary
    assert machine.subkeys(reg.SERVICES_KEY) == []
    assert scratch.subkeys("Software") == []
    assert _selftest_dirs() == dirs
    assert report.ok


def test_a_reg_import_that_writes_something_else_fails_the_comparison() -> None:
    scratch = MemoryRegistry()
    report = run_selftest(
        platform="win32", host=_host(_machine(), scratch, FakeWindows(scratch, tamper=True))
    )
    step = report["export_reg"]
    assert step.status == FAILED
    assert "the registry backend" in step.summary
    assert scratch.subkeys("Software") == []


def test_a_failing_reg_import_reports_what_reg_said() -> None:
    scratch = MemoryRegistry()
    report = run_selftest(
        platform="win32", host=_host(_machine(), scratch, FakeWindows(scratch, reg_fails=True))
    )
    assert report["export_reg"].status == FAILED
    assert "Error accessing the registry" in report["export_reg"].summary
    assert report["export_ps1"].status == NOT_APPLICABLE  # no PowerShell here
    assert scratch.subkeys("Software") == []


class ReadOnlyRegistry(MemoryRegistry):
    def create_key(self, path: str) -> None:
        raise PermissionDeniedError(f"cannot create HKLM\\{path}: access denied", errno=13)


def test_without_elevation_the_registration_step_is_not_applicable_and_says_why() -> None:
    readonly = ReadOnlyRegistry()
    scratch = MemoryRegistry()
    report = run_selftest(platform="win32", host=_host(readonly, scratch, FakeWindows(scratch)))
    step = report["register"]
    assert step.status == NOT_APPLICABLE
    assert "elevated prompt" in step.summary
    assert report["export_reg"].status == OK  # the scratch key needs no elevation
    assert report["cleanup"].status == OK


def test_without_af_hyperv_the_round_trips_are_not_applicable() -> None:
    scratch = MemoryRegistry()
    report = run_selftest(
        platform="win32", host=_host(_machine(), scratch, FakeWindows(scratch), af_hyperv=False)
    )
    assert report["af_hyperv"].status == FAILED
    assert report["hyperv_loopback"].status == NOT_APPLICABLE
    assert report["hyperv_asyncio"].status == NOT_APPLICABLE


def test_a_failed_round_trip_carries_its_windows_error_code() -> None:
    def refused(service_id: uuid.UUID) -> str:
        exc = ConnectionRefusedError(10061, "refused")
        exc.winerror = 10061  # type: ignore[attr-defined]
        raise exc

    scratch = MemoryRegistry()
    report = run_selftest(
        platform="win32",
        host=_host(_machine(), scratch, FakeWindows(scratch), loopback_test=refused),
    )
    step = report["hyperv_loopback"]
    assert (step.status, step.error_code) == (FAILED, 10061)
    assert "WSAECONNREFUSED" in step.advice


def test_ctrl_c_in_the_middle_still_removes_the_registration_and_scratch_keys() -> None:
    def interrupted(service_id: uuid.UUID) -> str:
        raise KeyboardInterrupt

    machine, scratch = _machine(), MemoryRegistry()
    seen: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_selftest(
            platform="win32",
            on_step=lambda s: seen.append(s.name),
            host=_host(machine, scratch, FakeWindows(scratch), asyncio_test=interrupted),
        )
    assert seen == ["af_hyperv", "register", "hyperv_loopback"]
    assert machine.subkeys(reg.SERVICES_KEY) == []


class UndeletableScratch(MemoryRegistry):
    def delete_key(self, path: str) -> None:
        raise PermissionDeniedError(f"cannot delete HKCU\\{path}: access denied", errno=13)


def test_a_leftover_is_reported_as_a_failed_cleanup_step() -> None:
    scratch = UndeletableScratch()
    report = run_selftest(platform="win32", host=_host(_machine(), scratch, FakeWindows(scratch)))
    step = report["cleanup"]
    assert step.status == FAILED
    assert "left behind" in step.summary
    assert "hvsock-selftest-" in step.summary


def test_rebasing_the_exports_moves_only_the_services_key() -> None:
    change = reg.Registration(uuid.UUID(int=5), "x")
    rebased = win.rebase_reg(exporting.registration_script([change], "reg"), "Software\\t")
    assert "HKEY_LOCAL_MACHINE" not in rebased
    assert f"[HKEY_CURRENT_USER\\Software\\t\\{change.service_id}]" in rebased
    ps1 = win.rebase_ps1(exporting.registration_script([change], "ps1"), "Software\\t")
    assert "$root = 'HKCU:\\Software\\t'" in ps1
    with pytest.raises(HvsockError, match="does not name the services key"):
        win.rebase_ps1("Write-Output 1", "Software\\t")


def test_the_rebased_backend_refuses_paths_outside_the_services_key() -> None:
    rebased = win.Rebased(MemoryRegistry(), "Software\\t")
    with pytest.raises(HvsockError, match="only the services key"):
        rebased.create_key("SOFTWARE\\Other")


# -- the command ---------------------------------------------------------------------


def test_the_command_prints_a_json_report_with_every_linux_step() -> None:
    if os.path.isdir("/sys/module/vsock_loopback"):
        pytest.skip("vsock_loopback here: the kernel tier runs the real command")
    out, err = io.StringIO(), io.StringIO()
    status = main(["selftest", "--json"], out=out, err=err)
    report = json.loads(out.getvalue())
    names = [s["name"] for s in report["steps"]]
    if not hasattr(socket, "AF_VSOCK"):
        pytest.skip("no AF_VSOCK in this Python")
    assert names == list(linux_steps.STEPS)
    assert status == (0 if report["ok"] else 1)


def test_the_command_prints_a_line_per_step_and_a_summary() -> None:
    if os.path.isdir("/sys/module/vsock_loopback"):
        pytest.skip("vsock_loopback here: the kernel tier runs the real command")
    out = io.StringIO()
    main(["selftest"], out=out, err=io.StringIO())
    lines = out.getvalue().splitlines()
    assert lines[0] == "hvsock selftest"
    assert any(line.split()[1:2] == ["af_vsock"] for line in lines[1:])
    assert lines[-1].endswith("not applicable")


@pytest.mark.parametrize("port", ["-1", "x", "4294967296"])
def test_a_bad_port_is_a_usage_error(port: str) -> None:
    err = io.StringIO()
    assert main(["selftest", "--port", port], out=io.StringIO(), err=err) == 2
    assert "selftest" in err.getvalue()


# -- the host echo server's form, per hypervisor (issue 19) -------------------------------


def _with(
    root: Path, *, dmi: str | None = None, vmbus: bool = False, osrelease: str | None = None
) -> Path:
    if dmi is not None:
        (root / "sys" / "class" / "dmi" / "id").mkdir(parents=True)
        (root / "sys" / "class" / "dmi" / "id" / "sys_vendor").write_text(dmi + "\n")
    if vmbus:
        (root / "sys" / "bus" / "vmbus").mkdir(parents=True)
    if osrelease is not None:
        (root / "proc" / "sys" / "kernel").mkdir(parents=True)
        (root / "proc" / "sys" / "kernel" / "osrelease").write_text(osrelease + "\n")
    return root


@pytest.mark.parametrize(
    ("modules", "extra", "wanted", "not_wanted"),
    [
        (
            ["vmw_vsock_virtio_transport"],
            {"dmi": "QEMU"},
            "on the KVM/QEMU host (vhost_vsock loaded): `hvsock echo-server vsock://any:N`",
            ["hvsock://", "hybrid://"],
        ),
        (
            ["vmw_vsock_virtio_transport"],
            {"dmi": "Cloud Hypervisor"},
            "`hvsock echo-server hybrid://<the VM's vsock socket>:N`",
            ["hvsock://", "vsock://any"],
        ),
        (
            ["vmw_vsock_virtio_transport"],
            {},  # Firecracker: no DMI, so either virtio host
            "`hvsock echo-server hybrid://<the VM's vsock socket>:N`",
            ["hvsock://"],
        ),
        (
            ["hv_sock"],
            {"vmbus": True},
            "`hvsock echo-server hvsock://<this VM's id>/N`",
            ["vsock://any", "hybrid://"],
        ),
        (
            ["hv_sock"],
            {"vmbus": True, "osrelease": "5.15.153.1-microsoft-standard-WSL2"},
            "`hvsock echo-server hvsock://wsl/N`",
            ["vsock://any", "hybrid://"],
        ),
        (
            ["vmw_vsock_vmci_transport"],
            {},
            "on the VMware host: `hvsock echo-server vsock://any:N`",
            ["hvsock://", "hybrid://"],
        ),
        (
            ["vsock_loopback"],
            {},
            "CID 2 is this machine): `hvsock echo-server vsock://any:N`",
            ["hvsock://", "hybrid://"],
        ),
    ],
)
def test_the_host_echo_advice_gives_the_form_of_the_detected_hypervisor(
    tmp_path: Path, modules: list[str], extra: dict[str, Any], wanted: str, not_wanted: list[str]
) -> None:
    guest = _guest(_with(tmp_path, **extra), modules)
    step = run_selftest(platform="linux", guest=guest)["host_echo"]
    assert step.status == NOT_APPLICABLE
    assert wanted in step.summary
    for form in not_wanted:
        assert form not in step.summary


def test_a_failed_host_echo_in_a_kvm_guest_gives_the_kvm_form(
    tmp_path: Path, short_tmp: Path
) -> None:
    guest = _guest(_with(tmp_path, dmi="QEMU"), ["vmw_vsock_virtio_transport"])
    step = run_selftest(platform="linux", guest=guest, echo=f"unix://{short_tmp / 'none.sock'}")[
        "host_echo"
    ]
    assert step.status == FAILED
    assert "`hvsock echo-server vsock://any:N`" in step.advice
    assert "hvsock://" not in step.advice
    assert "registered" not in step.advice
