"""``hvsock cp`` as a client imports only what a copy needs (issue 11: its start-up
is part of every copy's wall time, and of the benchmark against ``hvsock connect``)."""

from __future__ import annotations

import pytest

from .test_cli_imports import SLOW_STDLIB, run_cli


def test_cp_as_a_client_loads_neither_the_service_nor_asyncio() -> None:
    """No service framework, no asyncio, no thread pool, no tqdm when stderr is not a
    terminal."""
    status, before, after = run_cli("cp", "--timeout", "1", "--remote",
                                    "unix:///nonexistent-dir-for-hvsock-test/x", "a", ":b")
    assert status == 4, status
    if "asyncio" in before:
        pytest.skip("`import hvsock` itself still imports asyncio")
    loaded = after - before
    assert "hvsock._builtin.files.client" in loaded
    unwanted = ("asyncio", "concurrent.futures", "hvsock._service", "hvsock._server", "tqdm",
                "hvsock._builtin.files.server", "json", *SLOW_STDLIB)
    assert sorted(m for m in loaded if any(m == u or m.startswith(u + ".")
                                           for u in unwanted)) == []
