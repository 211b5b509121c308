"""Fixtures for the real-kernel tier, and the guard that keeps it off the development machine.

Safety first: on a machine whose only vsock transport is the virtio guest one, any
AF_VSOCK connect (to CID 1 too) leaves the machine for its hypervisor. So every test
in this directory waits on the session-scoped autouse guard below, which skips the
test (or fails it, with HVSOCK_REQUIRE_KERNEL_TIER set true-ish) unless ``vsock_loopback`` is
loaded; and every connect in this tier goes to CID 1 only. ``scripts/kernel-tests``
boots a throw-away guest, loads the module there and runs this tier inside.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import time
from collections.abc import Iterator

import pytest

from ..tiers import REQUIRE_ENV, skip_or_fail, tier_required
from ._support import LOOPBACK_MODULE, Listening, listening, open_fds

KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cpython-suite",
        type=_suite_choice,
        default="core",
        help="CPython's test_os/test_shutil on the share: 'core', the core file-system "
        "classes (default, CI); 'full', the whole of both modules (hours emulated); or "
        "names of the test package, comma-separated (test_os.WalkTests,test_shutil)",
    )
    parser.addoption(
        "--ansible-playbook",
        action="store_true",
        help="also run the whole ansible-playbook over AF_VSOCK "
        "(test_ansible_playbook_kernel.py: 12-17 minutes in the emulated guest, past "
        "CI's budget; docs/testing.md)",
    )


#: What --cpython-suite takes besides core and full: test package names, e.g.
#: ``test_os.WalkTests.test_walk_prune`` (unittest checks that they exist).
_SUITE_NAME = re.compile(r"test_(os|shutil)(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _suite_choice(value: str) -> str:
    if value in ("core", "full") or all(_SUITE_NAME.fullmatch(n) for n in value.split(",")):
        return value
    raise argparse.ArgumentTypeError(
        f"{value!r}: say core, full, or names such as test_os.WalkTests,test_shutil"
    )


#: --cpython-suite other than core: the suite test's own bound, not the tier's.
_SUITE_TEST = "test_cpython_test_os_and_test_shutil_on_the_mount"
_SUITE_TIMEOUT = 5 * 3600

#: Selected only with --ansible-playbook (deselected, not skipped, without it).
_BY_HAND = ("test_ansible_playbook_kernel.py",)


def _in_tier(item: pytest.Item) -> bool:
    return str(item.path).startswith(KERNEL_DIR + os.sep)


class _Tally:
    """How many kernel-tier tests were collected, selected, and really ran."""

    collected = 0
    selected = 0
    ran: set[str] = set()  # noqa: RUF012 - one tally per session, reset below
    skipped: set[str] = set()  # noqa: RUF012


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("ansible_playbook", False):
        by_hand = [item for item in items if item.path.name in _BY_HAND]
        if by_hand:
            config.hook.pytest_deselected(items=by_hand)
            items[:] = [item for item in items if item.path.name not in _BY_HAND]
    if config.getoption("cpython_suite", "core") != "core":
        for item in items:
            if item.name == _SUITE_TEST:
                item.add_marker(pytest.mark.timeout(_SUITE_TIMEOUT))
    _Tally.collected = sum(1 for item in items if _in_tier(item))
    _Tally.ran, _Tally.skipped = set(), set()


def pytest_collection_finish(session: pytest.Session) -> None:
    _Tally.selected = sum(1 for item in session.items if _in_tier(item))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not report.nodeid.startswith("tests/kernel/"):
        return
    if report.skipped:
        _Tally.skipped.add(report.nodeid)
    elif report.when == "call":
        _Tally.ran.add(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Required, the tier fails when fewer of its tests ran than were selected: a
    skip, a crash before the call, or a test never reached cannot pass as green."""
    if not tier_required() or _Tally.selected == 0:
        return
    missing = _Tally.selected - len(_Tally.ran)
    if missing > 0:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"kernel tier: {len(_Tally.ran)} of {_Tally.selected} selected tests ran "
                f"({_Tally.collected} collected; skipped: {sorted(_Tally.skipped)}); "
                f"{REQUIRE_ENV} requires all of them",
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def _vsock_loopback_or_skip() -> None:
    """No test here may run unless AF_VSOCK to CID 1 stays inside this kernel."""
    if not os.path.isdir(LOOPBACK_MODULE):
        skip_or_fail(
            f"{LOOPBACK_MODULE} does not exist: the real-kernel tier runs only in "
            "the test VM (`bash scripts/kernel-tests`), where vsock_loopback is "
            "loaded; here a vsock connect would leave this machine"
        )


@pytest.fixture(autouse=True)
def _no_fd_leaks(_vsock_loopback_or_skip: None) -> Iterator[None]:
    """Every test, failure paths included, ends with the descriptors it started with."""
    before = open_fds()
    yield
    deadline = time.monotonic() + 10  # threads and children a moment to let go
    leaked: dict[int, str] = {}
    for _ in range(1000):
        leaked = {fd: what for fd, what in open_fds().items() if fd not in before}
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not leaked, f"file descriptors leaked: {leaked}"


@pytest.fixture
def vsock_listener() -> Iterator[Listening]:
    """A listener on ``vsock://any:any``; ``.port`` is the port the kernel chose."""
    with listening() as server:
        yield server


@pytest.fixture(scope="session")
def socat() -> str:
    """Path of the socat binary (Debian's 1.7.4 speaks VSOCK-LISTEN / VSOCK-CONNECT)."""
    path = shutil.which("socat") or ("/usr/bin/socat" if os.path.exists("/usr/bin/socat") else None)
    if path is None:
        skip_or_fail("socat is not installed (apt-get install socat)")
    assert path is not None
    return path
