"""Shared fixtures: open-fd accounting and short temp dirs for Unix socket paths."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


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
    deadline = time.monotonic() + 3
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``windows`` skip, saying so, everywhere but Windows."""
    if sys.platform == "win32":
        return
    skip = pytest.mark.skip(reason=f"needs Windows (this is {sys.platform}): the Windows "
                            "tier runs in .github/workflows/windows.yml")
    for item in items:
        if item.get_closest_marker("windows") is not None:
            item.add_marker(skip)
