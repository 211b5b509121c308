"""Every VM-tier test carries its tier's marker, so the host tier (`-m "not kernel and
not hypervisor"`) never collects one: a file that forgot its ``pytestmark`` once ran in
the host tier, where CI's HVSOCK_REQUIRE_KERNEL_TIER turns its skip into an error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("tier", ["kernel", "hypervisor"])
def test_the_host_tier_collects_no_vm_test(tier: str) -> None:
    def collected(marks: str) -> list[str]:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                f"tests/{tier}",
                "-m",
                marks,
                "--collect-only",
                "-q",
                "-p",
                "no:cacheprovider",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        return [line for line in done.stdout.splitlines() if line.startswith(f"tests/{tier}/")]

    assert collected(tier), f"no {tier} test collected at all: the check would prove nothing"
    assert collected("not kernel and not hypervisor") == []
