"""``hvsock cp`` as a client imports only what a copy needs (issue 11: its start-up
is part of every copy's wall time, and of the benchmark against ``hvsock connect``)."""

from __future__ import annotations

import pytest

from .test_cli_imports import SLOW_STDLIB, run_cli


def test_cp_as_a_client_loads_neither_the_service_nor_asyncio() -> None:
    """No service framework, no asyncio, no thread pool, no tqdm when stderr is not a
    terminal."""
    status, before, after = run_cli(
        "cp", "--timeout", "1", "--remote", "unix:///nonexistent-dir-for-hvsock-test/x", "a", ":b"
    )
    assert status == 4, status
    if "asyncio" in before:
        pytest.skip("`import hvsock` itself still imports asyncio")
    loaded = after - before
    assert "hvsock._builtin.files.client" in loaded
    unwanted = (
        "asyncio",
        "concurrent.futures",
        "hvsock._service",
        "hvsock._server",
        "tqdm",
        "hvsock._builtin.files.server",
        "json",
        *SLOW_STDLIB,
    )
    assert sorted(m for m in loaded if any(m == u or m.startswith(u + ".") for u in unwanted)) == []


def test_copy_result_is_a_plain_record() -> None:
    """CopyResult stopped being a dataclass (start-up); it keeps what users relied on."""
    from hvsock._builtin.files.client import CopyResult

    a = CopyResult("pull", files=2, bytes=10, seconds=2.0)
    assert a == CopyResult("pull", files=2, bytes=10, seconds=2.0)
    assert a != CopyResult("pull", files=3, bytes=10, seconds=2.0)
    assert a != ("pull", 2)
    assert a.as_dict() == {
        "direction": "pull",
        "files": 2,
        "directories": 0,
        "symlinks": 0,
        "skipped": 0,
        "bytes": 10,
        "seconds": 2.0,
        "throughput": 5.0,
        "warnings": [],
    }
    assert eval(repr(a), {"CopyResult": CopyResult}) == a  # our own repr
    a.files += 1  # counted as a copy goes
    assert a.files == 3
    with pytest.raises(TypeError):
        hash(a)
