"""Shared fixtures: open-fd accounting, short temp dirs for Unix socket paths, and the
guard that keeps the unit and host tiers off AF_VSOCK."""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from .tiers import is_true

#: Set true-ish to let unit/host tests create and bind AF_VSOCK sockets on this machine.
HOST_VSOCK_ENV = "HVSOCK_HOST_VSOCK"
AF_VSOCK = 40  # Linux's value; socket.AF_VSOCK is missing on other systems
TESTS_DIR = Path(__file__).resolve().parent
VM_TIERS = (TESTS_DIR / "kernel", TESTS_DIR / "hypervisor")
GUARD_DIR = TESTS_DIR / "vsock_guard"


class VsockGuardError(RuntimeError):
    """Not an OSError, so no ``except OSError`` in the code under test can hide it."""


class _Guard:
    """The test process's half of the AF_VSOCK guard (child Pythons get the other half,
    tests/vsock_guard/sitecustomize.py, through PYTHONPATH)."""

    active = False
    attempts: list[str] = []  # noqa: RUF012 - one per process


def _audit(event: str, args: tuple[object, ...]) -> None:
    # An audit hook sees every socket the process creates, whatever module made it,
    # with no patching of the stdlib or of hvsock.
    if _Guard.active and event == "socket.__new__" and len(args) > 1 and args[1] == AF_VSOCK:
        _Guard.attempts.append(repr(args[1:]))
        raise VsockGuardError(
            "this unit/host test created an AF_VSOCK socket on this machine, whose vsock "
            "may lead to a real hypervisor: mark it @pytest.mark.host_vsock (runs only "
            f"with {HOST_VSOCK_ENV}=1) or move it to tests/kernel"
        )


def _host_vsock_allowed() -> bool:
    return is_true(os.environ.get(HOST_VSOCK_ENV)) or is_true(os.environ.get("HVSOCK_IN_TEST_VM"))


def _in_vm_tier(item: pytest.Item) -> bool:
    return any(item.path.is_relative_to(tier) for tier in VM_TIERS)


def pytest_configure(config: pytest.Config) -> None:
    if sys.platform.startswith("linux") and not _host_vsock_allowed():
        sys.addaudithook(_audit)
        # Child Pythons (the CLI as a subprocess) load the same guard at start-up.
        parts = [str(GUARD_DIR), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        os.environ["PYTHONPATH"] = os.pathsep.join(parts)


_CALL_REPORT = pytest.StashKey[pytest.TestReport]()


class _Spawned:
    """Whether the running test started a process (the ``subprocess.Popen`` audit event)."""

    flag = False


def _audit_spawns(event: str, args: tuple[object, ...]) -> None:
    if event == "subprocess.Popen":
        _Spawned.flag = True


sys.addaudithook(_audit_spawns)


@pytest.fixture(autouse=True)
def _leftovers_stay_with_their_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that drops a Popen whose child still runs, or a failed test's leftovers:
    collected later, their ResourceWarning would fail whichever test the collector
    happened to run in (a Hypothesis test then shows an internal error), in a random
    order a different one each time. Collect now, so the warning lands in this test."""
    _Spawned.flag = False
    yield
    call = request.node.stash.get(_CALL_REPORT, None)
    failed = call is not None and call.failed
    if failed:
        # pytest keeps the failure's traceback (for post-mortem debugging) until the
        # next failure; its frames hold the test's objects, which would then be
        # collected in some later test. Let them go now.
        sys.last_type = sys.last_value = sys.last_traceback = None
        if hasattr(sys, "last_exc"):
            sys.last_exc = None
    if _Spawned.flag or failed:
        gc.collect()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_CALL_REPORT] = report
    return report


@pytest.fixture(autouse=True)
def _no_af_vsock_here(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a unit/host test that creates an AF_VSOCK socket, even if the code under
    test caught the error (kernel and hypervisor tiers, and HVSOCK_HOST_VSOCK=1, excepted)."""
    if _host_vsock_allowed() or _in_vm_tier(request.node):
        yield
        return
    _Guard.attempts.clear()
    _Guard.active = True
    try:
        yield
    finally:
        _Guard.active = False
    call = request.node.stash.get(_CALL_REPORT, None)
    if _Guard.attempts and not (call is not None and call.failed):
        pytest.fail(
            f"created AF_VSOCK sockets {_Guard.attempts} in the unit/host tier: mark "
            f"the test @pytest.mark.host_vsock (runs with {HOST_VSOCK_ENV}=1) or move "
            "it to tests/kernel",
            pytrace=False,
        )


def open_fds() -> set[int]:
    """Open descriptors, less the one listdir itself used to read /proc/self/fd."""
    listed = {int(fd) for fd in os.listdir("/proc/self/fd")}
    return {fd for fd in listed if _is_open(fd)}


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def fd_baseline() -> Iterator[None]:
    """Fail the test if it leaves file descriptors open (threads get a moment to close)."""
    before = open_fds()
    yield
    deadline = time.monotonic() + 10  # only a leak waits it out
    leaked = open_fds() - before
    while leaked and time.monotonic() < deadline:
        time.sleep(0.02)
        leaked = open_fds() - before
    details = {fd: _describe(fd) for fd in leaked}
    assert not leaked, f"file descriptors leaked: {details}"


def _describe(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir with a short path: Unix socket paths must fit in 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="hv-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def hvsock_cmd() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m hvsock``."""
    script = Path(sys.executable).with_name("hvsock")
    return [str(script)] if script.exists() else [sys.executable, "-m", "hvsock"]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/kernel and tests/hypervisor carries its tier's marker (a file
    that forgot its ``pytestmark`` would otherwise run in the host tier, where CI makes a
    VM test that cannot run fail); tryfirst, so ``-m`` sees the marker. Tests marked
    ``windows`` skip, saying so, everywhere but Windows; tests marked
    ``host_vsock`` skip unless HVSOCK_HOST_VSOCK is set."""
    skip_vsock = pytest.mark.skip(
        reason=f"creates or binds AF_VSOCK sockets on this machine, whose vsock may lead to a "
        f"real hypervisor: set {HOST_VSOCK_ENV}=1 to run it here (the kernel tier covers it)"
    )
    skip_windows = pytest.mark.skip(
        reason=f"needs Windows (this is {sys.platform}): the "
        "Windows tier runs in .github/workflows/windows.yml"
    )
    for item in items:
        for tier in VM_TIERS:
            if item.path.is_relative_to(tier) and item.get_closest_marker(tier.name) is None:
                item.add_marker(tier.name)
        if item.get_closest_marker("windows") is not None and sys.platform != "win32":
            item.add_marker(skip_windows)
        if _host_vsock_allowed():
            continue
        if item.get_closest_marker("host_vsock") is not None:
            item.add_marker(skip_vsock)
