"""tests/signals.py: a child a test signals starts with SIGINT, SIGQUIT and SIGTERM at
their defaults even when the test run ignores them (a script's background job)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..signals import with_default_signals

ROOT = Path(__file__).resolve().parents[2]

# Starts argv with SIGINT and SIGQUIT ignored, as `cmd &` in a script does.
IGNORING = (
    "import os, signal, sys\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGQUIT, signal.SIG_IGN)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)
REPORT = (
    "import signal\n"
    "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler,"
    " signal.getsignal(signal.SIGQUIT) == signal.SIG_DFL,"
    " signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)\n"
)


def _run_ignoring(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", IGNORING, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_an_ignored_sigint_is_inherited_without_it() -> None:
    done = _run_ignoring([sys.executable, "-c", REPORT])
    assert done.stdout.split() == ["False", "False", "True"], done.stderr


def test_the_wrapped_child_has_the_defaults_back() -> None:
    done = _run_ignoring(with_default_signals([sys.executable, "-c", REPORT]))
    assert done.stdout.split() == ["True", "True", "True"], done.stderr


@pytest.mark.timeout(240)
def test_the_ctrl_c_test_passes_in_a_run_that_ignores_sigint() -> None:
    done = _run_ignoring(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/host/test_cli.py::test_listen_stdio_ctrl_c",
        ],
        timeout=200,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
