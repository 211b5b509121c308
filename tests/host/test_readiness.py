"""Readiness shared by every server (hvsock._server.lifecycle): a ready file that cannot
be written fails with the path the user gave, before anything is bound, and leaves no
socket file behind (issue 8 defect 7)."""

from __future__ import annotations

import asyncio
import io
import json
import os
from pathlib import Path

import pytest

import hvsock
from hvsock import ArgumentError, HvsockError
from hvsock._builtin.bench import BenchServer
from hvsock._cli import main as cli
from hvsock._server.lifecycle import check_ready_file, write_ready_file


def test_relay_with_a_ready_file_in_a_missing_directory(short_tmp: Path) -> None:
    sock = short_tmp / "relay.sock"
    ready = "/missing-hvsock-dir/r.json"
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(
        ["relay", f"unix://{sock}", "tcp://127.0.0.1:9", "--ready-file", ready], out=out, err=err
    )
    assert status == cli.EXIT_USAGE
    assert ready in err.getvalue()
    assert ".ready-" not in err.getvalue()
    assert "does not exist" in err.getvalue()
    assert not sock.exists()
    assert os.listdir(short_tmp) == []


def test_echo_server_with_a_ready_file_in_a_missing_directory(short_tmp: Path) -> None:
    sock = short_tmp / "echo.sock"
    err = io.StringIO()
    status = cli.main(
        ["echo-server", f"unix://{sock}", "--ready-file", str(short_tmp / "no" / "r.json")],
        out=io.StringIO(),
        err=err,
    )
    assert status == cli.EXIT_USAGE
    assert str(short_tmp / "no" / "r.json") in err.getvalue()
    assert os.listdir(short_tmp) == []


def test_bench_server_checks_its_ready_file_when_made(short_tmp: Path) -> None:
    with pytest.raises(ArgumentError, match="does not exist"):
        BenchServer(f"unix://{short_tmp}/b.sock", ready_file=str(short_tmp / "no" / "r.json"))
    assert os.listdir(short_tmp) == []


def test_a_write_that_fails_late_names_the_path_and_unbinds(short_tmp: Path) -> None:
    # The directory exists when the host is made and is gone when it is ready.
    directory = short_tmp / "d"
    directory.mkdir()
    ready = directory / "r.json"
    host = hvsock.ServiceHost(ready_file=str(ready))

    async def echo(conn: hvsock.Connection) -> None:
        return None

    sock = short_tmp / "s.sock"
    host.add(hvsock.Service("x", 5000, echo), f"unix://{sock}")
    directory.rmdir()
    with pytest.raises(HvsockError) as info:
        asyncio.run(host.start())
    assert str(ready) in str(info.value)
    assert ".ready-" not in str(info.value)
    assert not sock.exists()


def test_check_ready_file_accepts_a_writable_place(short_tmp: Path) -> None:
    path = str(short_tmp / "r.json")
    assert check_ready_file(path) == path
    assert check_ready_file(None) is None
    write_ready_file(path, {"pid": 1})
    assert json.loads(Path(path).read_text()) == {"pid": 1}
    with pytest.raises(ArgumentError, match="is a directory"):
        check_ready_file(str(short_tmp))
    with pytest.raises(ArgumentError):
        check_ready_file("")


def test_stop_signals_call_back_and_restore_the_previous_handlers() -> None:
    import signal
    import threading

    from hvsock._server.lifecycle import loop_stop_signals, stop_signals

    before = signal.getsignal(signal.SIGTERM)
    calls: list[str] = []
    with stop_signals(lambda: calls.append("sync")):
        signal.raise_signal(signal.SIGTERM)
    assert calls == ["sync"]
    assert signal.getsignal(signal.SIGTERM) == before

    async def main() -> None:
        stopped = asyncio.Event()
        with loop_stop_signals(asyncio.get_running_loop(), stopped.set):
            threading.Thread(target=signal.raise_signal, args=(signal.SIGINT,)).start()
            await asyncio.wait_for(stopped.wait(), 10)

    asyncio.run(main())
    assert signal.getsignal(signal.SIGTERM) == before
