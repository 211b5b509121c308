"""Fixtures for the real-kernel tier, and the guard that keeps it off the development machine.

Safety first: on a machine whose only vsock transport is the virtio guest one, any
AF_VSOCK connect (to CID 1 too) leaves the machine for its hypervisor. So every test
in this directory waits on the session-scoped autouse guard below, which skips the
test (or fails it, with HVSOCK_REQUIRE_KERNEL_TIER=1) unless ``vsock_loopback`` is
loaded; and every connect in this tier goes to CID 1 only. ``scripts/kernel-tests``
boots a throw-away guest, loads the module there and runs this tier inside.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator

import pytest

from ._support import LOOPBACK_MODULE, Listening, listening, open_fds

REQUIRE_ENV = "HVSOCK_REQUIRE_KERNEL_TIER"


def tier_required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def skip_or_fail(reason: str) -> None:
    """Skip normally; fail when the tier was required (CI, and inside the test VM)."""
    if tier_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1 requires this tier to run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def _vsock_loopback_or_skip() -> None:
    """No test here may run unless AF_VSOCK to CID 1 stays inside this kernel."""
    if not os.path.isdir(LOOPBACK_MODULE):
        skip_or_fail(f"{LOOPBACK_MODULE} does not exist: the real-kernel tier runs only in "
                     "the test VM (`bash scripts/kernel-tests`), where vsock_loopback is "
                     "loaded; here a vsock connect would leave this machine")


@pytest.fixture(autouse=True)
def _no_fd_leaks(_vsock_loopback_or_skip: None) -> Iterator[None]:
    """Every test, failure paths included, ends with the descriptors it started with."""
    before = open_fds()
    yield
    deadline = time.monotonic() + 3  # threads and children a moment to let go
    leaked: dict[int, str] = {}
    for _ in range(300):
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
    path = shutil.which("socat") or ("/usr/bin/socat" if os.path.exists("/usr/bin/socat")
                                     else None)
    if path is None:
        skip_or_fail("socat is not installed (apt-get install socat)")
    assert path is not None
    return path
