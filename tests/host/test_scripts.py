"""scripts/test's machinery (scripts/_tiers.sh): every tier runs whatever failed before,
the summary tells the truth, and the busy pass's CPU hogs never outlive the script;
and the shell scripts are shellcheck-clean."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ..signals import with_default_signals

ROOT = Path(__file__).resolve().parents[2]
SHELL_SCRIPTS = [
    "scripts/test",
    "scripts/_tiers.sh",
    "scripts/_setup.sh",
    "scripts/kernel-tests",
    "scripts/hypervisor-tests",
    "scripts/with-extra-interfaces",
    "scripts/demo",
    "scripts/bench-vm",
    ".ci/run",
]


def _tiers(snippet: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail; . scripts/_tiers.sh; {snippet}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
    )


def _summary(out: str) -> list[str]:
    return out.split("== summary (wall time per tier)\n", 1)[1].splitlines()


def test_a_failed_tier_does_not_stop_the_next_and_the_summary_says_so() -> None:
    done = _tiers(
        'run_tier one sh -c "exit 5"; run_tier two echo ran-two; '
        'run_tier three echo "kernel-tests: SKIPPED (no QEMU here)"; print_summary'
    )
    assert done.returncode == 1, done.stderr
    assert "\nran-two\n" in done.stdout
    lines = _summary(done.stdout)
    assert len(lines) == 4, lines
    assert re.fullmatch(r"  one +\d+ s  FAILED \(exit 5\)", lines[0])
    assert re.fullmatch(r"  two +\d+ s  passed", lines[1])
    assert re.fullmatch(r"  three +\d+ s  skipped: no QEMU here", lines[2])
    assert lines[3] == "test: FAILED: at least one tier failed (see above)"


def test_every_tier_passing_exits_0() -> None:
    done = _tiers("run_tier one true; run_tier two true; note_tier vm 'not run'; print_summary")
    assert done.returncode == 0, done.stderr
    lines = _summary(done.stdout)
    assert [line.split()[0] for line in lines[:3]] == ["one", "two", "vm"]
    assert lines[-1] == "test: every tier that ran passed"


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.skipif(
    not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"),
    reason="needs /proc/PID/task/PID/children to find the hogs' processes",
)
@pytest.mark.parametrize("how", ["end", "SIGTERM", "SIGINT", "SIGKILL"])
def test_the_hogs_stop_on_every_way_out(how: str) -> None:
    # BUSY_HOG_LIMIT bounds them even when nothing can run the traps (SIGKILL); on the
    # other ways out the traps must stop them long before their bound.
    limit, wait = (3, 60) if how == "SIGKILL" else (600, 10)
    env = {**os.environ, "BUSY_HOGS": "2", "BUSY_HOG_LIMIT": str(limit)}
    proc = subprocess.Popen(
        with_default_signals(
            [
                "bash",
                "-c",
                ". scripts/_tiers.sh; start_hogs; "
                'echo "$tier_logs"; echo "${hogs[*]}"; read -r _ || true',
            ]
        ),
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    timeouts: list[int] = []
    spinners: list[int] = []
    try:
        logs = Path(proc.stdout.readline().strip())
        assert logs.is_dir()
        timeouts = [int(p) for p in proc.stdout.readline().split()]
        assert len(timeouts) == 2
        deadline = time.monotonic() + 30
        while len(spinners) < 2 and time.monotonic() < deadline:
            spinners = [c for t in timeouts for c in _children(t)]
            time.sleep(0.02)
        assert len(spinners) == 2, "the hogs never started"
        if how == "end":
            proc.stdin.close()
        else:
            proc.send_signal(getattr(signal, how))
        proc.wait(timeout=30)
        # Gone at once through the traps; after SIGKILL by their own bound (3 s + 5 s).
        assert _wait_gone(timeouts + spinners, wait) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for pid in timeouts + spinners:  # a failed run leaves no spinning process behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.stdout.close()
        if not proc.stdin.closed:
            proc.stdin.close()
    if how == "SIGKILL":
        shutil.rmtree(logs)  # nothing could remove it
    else:  # the traps removed the logs directory too
        assert not logs.exists()
        assert proc.returncode == {"end": 0, "SIGTERM": 143, "SIGINT": -signal.SIGINT}[how]


def test_the_shell_scripts_are_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed on this machine (apt-get install shellcheck)")
    done = subprocess.run(
        [shellcheck, "-x", *SHELL_SCRIPTS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout


def test_the_test_command_explains_itself_and_refuses_unknown_arguments() -> None:
    # Both answer before any set-up (no apt, no pip).
    done = subprocess.run(
        ["bash", "scripts/test", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for word in ("--busy", "--no-vm", "HVSOCK_TEST_SEED", "BUSY_HOG_LIMIT"):
        assert word in done.stdout
    done = subprocess.run(
        ["bash", "scripts/test", "--bsuy"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert "unknown argument --bsuy" in done.stderr
