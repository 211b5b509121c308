"""The hypervisor tier: fixtures in L1 around the nested guest L2, and the guard that
keeps this tier off any machine but L1.

``scripts/hypervisor-tests`` boots L1 with vng, loads ``vhost_vsock`` there and runs
this tier with ``HVSOCK_HV_STATE`` (the initramfs and logs) and ``HVSOCK_HV_KERNEL``
set. Here, a vsock connect to CID 3 goes through vhost to L2 and nowhere else: the
guard requires ``vhost_vsock`` loaded and no guest transport of L1's own (on a machine
with ``vmw_vsock_virtio_transport`` a connect would leave for its real hypervisor).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ._vm import Guest

REQUIRE_ENV = "HVSOCK_REQUIRE_KERNEL_TIER"
HOST_MODULE = "/sys/module/vhost_vsock"
GUEST_TRANSPORTS = (
    "/sys/module/vmw_vsock_virtio_transport",
    "/sys/module/hv_sock",
    "/sys/module/vmw_vsock_vmci_transport",
)
#: Tests in these modules change L2 for good (reboot, power-off): they run last.
LAST = ("test_reboot", "test_power_off")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.stem
        return LAST.index(name) + 1 if name in LAST else 0

    items.sort(key=rank)  # stable: the files' own order otherwise


def _skip_or_fail(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1 requires this tier to run)", pytrace=False)
    pytest.skip(reason)


def _in_l1() -> str | None:
    """None when this is L1 of scripts/hypervisor-tests, else why not."""
    if not os.path.isdir(HOST_MODULE):
        return (
            f"{HOST_MODULE} does not exist: the hypervisor tier runs only in the test VM "
            "(`bash scripts/hypervisor-tests`)"
        )
    for module in GUEST_TRANSPORTS:
        if os.path.isdir(module):
            return f"{module} is loaded: a vsock connect here could leave this machine"
    for name in ("HVSOCK_HV_STATE", "HVSOCK_HV_KERNEL"):
        if not os.environ.get(name):
            return f"{name} is not set: run the tier with scripts/hypervisor-tests"
    return None


def _record(line: str) -> None:
    state = os.environ.get("HVSOCK_HV_STATE")
    if state:
        with open(Path(state) / "times", "a") as f:
            f.write(line + "\n")


@pytest.fixture(scope="session")
def guest() -> Iterator[Guest]:
    """L2, booted once for the session (its harness ready); powered off at the end."""
    why = _in_l1()
    if why:
        _skip_or_fail(why)
    l2 = Guest(Path(os.environ["HVSOCK_HV_STATE"]), os.environ["HVSOCK_HV_KERNEL"])
    try:
        record = l2.boot()
        _record("l2_boot " + " ".join(f"{k}={v}" for k, v in record.items()))
        yield l2
    finally:
        for record in l2.boots[1:]:
            _record("l2_reboot " + " ".join(f"{k}={v}" for k, v in record.items()))
        l2.close()


def open_fds() -> dict[int, str]:
    found: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return found


@pytest.fixture(autouse=True)
def _no_fd_leaks(guest: Guest) -> Iterator[None]:
    """Every test ends with the descriptors it started with (the guest's own aside)."""
    before = open_fds()
    yield
    deadline = time.monotonic() + 5
    leaked: dict[int, str] = {}
    for _ in range(500):
        owned = guest.owned_fds()
        leaked = {
            fd: what for fd, what in open_fds().items() if fd not in before and fd not in owned
        }
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not leaked, f"file descriptors leaked: {leaked}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    passed = len(terminalreporter.stats.get("passed", []))
    _record(f"passed {passed}")
