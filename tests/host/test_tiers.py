"""HVSOCK_REQUIRE_KERNEL_TIER: any true-ish value turns the kernel tier's skips into failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..tiers import REQUIRE_ENV, is_true

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "Yes", "on", " on "])
def test_true_ish_values_count(value: str) -> None:
    assert is_true(value)


@pytest.mark.parametrize("value", [None, "", "0", "false", "no", "off", "2", "y"])
def test_other_values_do_not(value: str | None) -> None:
    assert not is_true(value)


def _kernel_tier(value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != REQUIRE_ENV}
    if value is not None:
        env[REQUIRE_ENV] = value
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/kernel/test_selftest_kernel.py",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "loopback_round_trip",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.timeout(240)
def test_the_kernel_tier_fails_instead_of_skipping_when_required() -> None:
    if os.path.isdir("/sys/module/vsock_loopback"):
        pytest.skip("vsock_loopback is loaded here: the tier would really run")
    # Only the guard runs (it fails or skips before any test body): no vsock connect.
    skipped = _kernel_tier(None)
    assert skipped.returncode == 0, skipped.stdout
    assert "skipped" in skipped.stdout
    required = _kernel_tier("yes")
    assert required.returncode == 1, required.stdout
    assert f"{REQUIRE_ENV} requires this to run" in required.stdout
    assert "kernel tier: 0 of 1 selected tests ran" in required.stdout
