"""The unit and host tiers never create AF_VSOCK sockets unless HVSOCK_HOST_VSOCK is set
(tests/conftest.py in the test process, tests/vsock_guard/ in child Pythons)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import (
    AF_VSOCK,
    GUARD_DIR,
    HOST_VSOCK_ENV,
    VsockGuardError,
    _Guard,
    _host_vsock_allowed,
)

ROOT = Path(__file__).resolve().parents[2]
PROBE_ENV = "HVSOCK_GUARD_PROBE"

needs_guard = pytest.mark.skipif(
    _host_vsock_allowed(), reason=f"{HOST_VSOCK_ENV}=1 here: the guard is off"
)
probe_only = pytest.mark.skipif(
    os.environ.get(PROBE_ENV) != "1", reason=f"run by test_vsock_guard.py itself with {PROBE_ENV}=1"
)


@needs_guard
def test_creating_one_in_the_test_process_raises() -> None:
    try:
        with pytest.raises(VsockGuardError, match="HVSOCK_HOST_VSOCK"):
            socket.socket(AF_VSOCK, socket.SOCK_STREAM)
    finally:
        _Guard.attempts.clear()  # this test's attempt was the point, not a leak
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM):
        pass  # other families are untouched


@needs_guard
def test_a_child_python_is_stopped_at_its_first_af_vsock_socket() -> None:
    code = (
        "import socket, sys\nprint('before', flush=True)\n"
        "socket.socket(40, socket.SOCK_STREAM)\nprint('after')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout) == (97, "before\n"), done.stderr
    assert "created an AF_VSOCK socket in the unit/host tier" in done.stderr
    assert "HVSOCK_HOST_VSOCK=1" in done.stderr


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (HOST_VSOCK_ENV, "HVSOCK_IN_TEST_VM")}
    env[PROBE_ENV] = "1"
    # Without the child-Python guard, which would end this pytest at once: the test
    # process's own guard is what the probe is for.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p) != GUARD_DIR
    )
    return subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-p", "no:cacheprovider", "-rs", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.timeout(240)
def test_a_test_that_swallows_the_error_still_fails() -> None:
    done = _probe("-k", "probe_swallows")
    assert done.returncode == 1, done.stdout
    assert "created AF_VSOCK sockets" in done.stdout
    assert "1 error" in done.stdout  # at teardown: the test itself hid it


@pytest.mark.timeout(240)
def test_a_host_vsock_test_skips_saying_how_to_run_it() -> None:
    done = _probe("-k", "probe_marked")
    assert done.returncode == 0, done.stdout
    assert "1 skipped" in done.stdout
    assert f"set {HOST_VSOCK_ENV}=1 to run it here" in done.stdout


@probe_only
def test_probe_swallows() -> None:
    with contextlib.suppress(Exception):
        socket.socket(AF_VSOCK, socket.SOCK_STREAM).close()


@probe_only
@pytest.mark.host_vsock
def test_probe_marked() -> None:
    raise AssertionError("a host_vsock test ran without HVSOCK_HOST_VSOCK")
