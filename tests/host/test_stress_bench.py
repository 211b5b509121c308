"""``hvsock stress`` and ``hvsock bench``: the library functions and the commands.

Stress must pass against an honest echo server (directly and through the relay)
and fail against a deliberately corrupting one, naming the corrupted connection's
index and seed; replaying that seed reproduces the same connection. Bench results
are checked for shape and for the protocol's own checks, never for speed.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import select
import socket
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import hvsock
import hvsock.sockets
from hvsock._builtin import bench, stress
from hvsock._cli import main as cli
from hvsock._cli.progress import wanted

from ._peers import EchoServer, running_relay


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(list(argv), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def echo() -> Iterator[tuple[EchoServer, str]]:
    listener = hvsock.listen("tcp://127.0.0.1:0")
    address = str(hvsock.sockets.listener_address(listener, "tcp://127.0.0.1:0"))
    with EchoServer(listener) as server:
        yield server, address


@pytest.fixture
def corrupting_echo() -> Iterator[tuple[EchoServer, str]]:
    """Flips one byte of the echo of the third connection it accepts (index 2)."""
    listener = hvsock.listen("tcp://127.0.0.1:0")
    address = str(hvsock.sockets.listener_address(listener, "tcp://127.0.0.1:0"))
    with EchoServer(listener, corrupt=lambda n: n == 2) as server:
        yield server, address


# -- stress -----------------------------------------------------------------------------------
def test_plan_is_reproducible_from_the_connection_seed() -> None:
    a = stress.plan(1000, 7, 0, 100_000, 4096)
    b = stress.plan(1007, 0, 0, 100_000, 4096)
    assert (a.seed, a.size, a.chunks) == (b.seed, b.size, b.chunks)
    assert stress.payload(a) == stress.payload(b)
    assert sum(a.chunks) == a.size
    assert all(1 <= c <= 4096 for c in a.chunks)
    assert stress.plan(1000, 8, 0, 100_000, 4096).size != a.size or stress.payload(
        stress.plan(1000, 8, 0, 100_000, 4096)
    ) != stress.payload(a)


@pytest.mark.usefixtures("fd_baseline")
def test_stress_passes_against_an_echo_server(echo: tuple[EchoServer, str]) -> None:
    server, address = echo
    seen: list[tuple[int, int | None]] = []
    result = stress.stress(
        address,
        connections=40,
        parallel=8,
        min_size=0,
        max_size=200_000,
        max_chunk=30_000,
        seed=5,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert result.ok, result.failures
    assert result.bytes_sent == result.bytes_received > 0
    assert server.accepted == 40
    assert seen[-1] == (40, 40)
    expected = sum(stress.plan(5, i, 0, 200_000, 30_000).size for i in range(40))
    assert result.bytes_sent == expected


@pytest.mark.usefixtures("fd_baseline")
def test_stress_through_the_relay_with_sync_start(echo: tuple[EchoServer, str]) -> None:
    _, address = echo
    with running_relay("tcp://127.0.0.1:0", address) as relay:
        result = stress.stress(
            relay.address, connections=50, parallel=50, max_size=100_000, seed=9, sync_start=True
        )
        records = relay.wait_records(50)
    assert result.ok, result.failures
    assert {r.end for r in records} == {"closed"}
    assert sum(r.bytes_up for r in records) == result.bytes_sent


@pytest.mark.usefixtures("fd_baseline")
def test_corrupting_server_fails_the_right_connection(
    corrupting_echo: tuple[EchoServer, str],
) -> None:
    _, address = corrupting_echo
    # One at a time, so the server's accept order is the connection index.
    result = stress.stress(
        address, connections=6, parallel=1, min_size=1000, max_size=50_000, seed=1234
    )
    assert not result.ok
    (failure,) = result.failures
    assert failure.index == 2
    assert failure.seed == 1234 + 2
    assert failure.size == stress.plan(1234, 2, 1000, 50_000, stress.DEFAULT_MAX_CHUNK).size
    assert failure.sent == failure.received == failure.size
    assert failure.sent_sha256 != failure.received_sha256
    assert "differs" in failure.error
    assert f"--seed {failure.seed}" in str(failure)


@pytest.mark.usefixtures("fd_baseline")
def test_cli_stress_exit_status_and_replay(corrupting_echo: tuple[EchoServer, str]) -> None:
    _, address = corrupting_echo
    status, out, _ = run(
        "stress",
        address,
        "-n",
        "5",
        "-P",
        "1",
        "--min-size",
        "1K",
        "--max-size",
        "20K",
        "--seed",
        "77",
        "--no-progress",
    )
    assert status == 1
    assert "4/5 connections ok" in out
    assert "FAILED connection 2 (seed 79," in out
    replay = next(line.split("replay: ", 1)[1] for line in out.splitlines() if "replay:" in line)
    assert replay == (
        f"hvsock stress {address} --connections 1 --min-size 1024 "
        "--max-size 20480 --max-chunk 65536 --seed 79"
    )
    # The replay sends exactly what connection 2 sent (this server only corrupts
    # its third connection, so the replay, its sixth, passes).
    status, out, _ = run(*replay.split()[1:], "--json", "--no-progress")
    assert status == 0
    result = json.loads(out)
    expected = stress.plan(77, 2, 1024, 20480, 65536).size
    assert (result["ok"], result["bytes_sent"], result["seed"]) == (True, expected, 79)


@pytest.mark.usefixtures("fd_baseline")
def test_cli_stress_json_failure_carries_seed_and_replay(
    corrupting_echo: tuple[EchoServer, str],
) -> None:
    _, address = corrupting_echo
    status, out, _ = run(
        "stress",
        address,
        "-n",
        "3",
        "-P",
        "1",
        "--max-size",
        "4K",
        "--min-size",
        "1",
        "--seed",
        "10",
        "--json",
    )
    assert status == 1
    result = json.loads(out)
    assert result["ok"] is False
    (failure,) = result["failures"]
    assert (failure["index"], failure["seed"]) == (2, 12)
    assert failure["replay"].endswith("--seed 12")


@pytest.mark.usefixtures("fd_baseline")
def test_stress_reports_connect_errors_not_raises() -> None:
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = stress.stress(f"tcp://127.0.0.1:{port}", connections=3, parallel=2, seed=1)
    assert len(result.failures) == 3
    assert all("nothing is listening" in f.error for f in result.failures)


@pytest.mark.usefixtures("fd_baseline")
def test_stress_times_out_a_server_that_never_answers() -> None:
    listener = hvsock.listen("tcp://127.0.0.1:0")
    address = hvsock.sockets.listener_address(listener, "tcp://127.0.0.1:0")
    accepted: list[socket.socket] = []

    def accept_and_ignore() -> None:
        try:
            while True:
                accepted.append(listener.accept()[0])
        except OSError:
            return

    thread = threading.Thread(target=accept_and_ignore, daemon=True)
    thread.start()
    try:
        result = stress.stress(
            address, connections=2, parallel=2, min_size=10, max_size=10, timeout=0.5, seed=3
        )
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(5)
        for s in accepted:
            s.close()
    assert [f.index for f in result.failures] == [0, 1]
    assert all("timed out" in f.error for f in result.failures)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("connections", 0),
        ("parallel", 0),
        ("min_size", -1),
        ("max_chunk", 0),
        ("timeout", 0),
        ("seed", -1),
        ("hold", -1),
    ],
)
def test_stress_bad_options(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        stress.stress("tcp://127.0.0.1:1", **{option: value})


def test_cli_stress_max_below_min_is_usage() -> None:
    status, _, err = run("stress", "tcp://127.0.0.1:1", "--min-size", "10", "--max-size", "5")
    assert status == cli.EXIT_USAGE
    assert "--max-size" in err


# -- bench ------------------------------------------------------------------------------------
@pytest.fixture(params=["tcp", "unix"])
def bench_server(request: pytest.FixtureRequest, short_tmp: Path) -> Iterator[hvsock.Address]:
    address = "tcp://127.0.0.1:0" if request.param == "tcp" else f"unix://{short_tmp}/b.sock"
    with bench.BenchServer(address) as server:
        yield server.address


@pytest.mark.usefixtures("fd_baseline")
def test_bench_measurements_direct_and_through_the_relay(bench_server: hvsock.Address) -> None:
    with running_relay("tcp://127.0.0.1:0", bench_server) as relay:
        for address in (bench_server, relay.address):
            seen: list[tuple[int, int | None]] = []
            t = bench.throughput(
                address,
                total_bytes=5_000_000,
                buffer_size=100_000,
                progress=lambda d, n, seen=seen: seen.append((d, n)),
            )
            assert (t.unit, t.details["bytes"], t.details["streams"]) == ("MB/s", 5_000_000, 1)
            assert t.value > 0
            assert seen[-1] == (5_000_000, 5_000_000)
            p = bench.throughput(address, total_bytes=1_000_003, streams=4)
            assert (p.test, p.details["bytes"]) == ("throughput x4", 1_000_003)
            r = bench.round_trip(address, count=50)
            assert (r.unit, r.details["count"]) == ("us", 50)
            assert r.details["min_us"] <= r.value <= r.details["max_us"]
            c = bench.connect_rate(address, count=30, parallel=3)
            assert (c.unit, c.details["count"]) == ("conn/s", 30)
        records = relay.wait_records(1 + 4 + 1 + 30)
    assert {rec.end for rec in records} == {"closed"}


@pytest.mark.usefixtures("fd_baseline")
def test_bench_duration_bound(bench_server: hvsock.Address) -> None:
    result = bench.round_trip(bench_server, duration=0.2)
    assert result.details["count"] > 0
    result = bench.connect_rate(bench_server, duration=0.2)
    assert result.details["count"] > 0


@pytest.mark.usefixtures("fd_baseline")
def test_bench_client_against_a_non_bench_server_is_a_protocol_error(
    echo: tuple[EchoServer, str],
) -> None:
    _, address = echo
    with pytest.raises(hvsock.ProtocolError, match="counted"):
        bench.throughput(address, total_bytes=100_000, timeout=5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "either"),
        ({"total_bytes": 1, "duration": 1.0}, "either"),
        ({"total_bytes": 0}, "total_bytes"),
        ({"duration": -1.0}, "duration"),
        ({"total_bytes": 1, "streams": 0}, "streams"),
        ({"total_bytes": 1, "buffer_size": 0}, "buffer_size"),
    ],
)
def test_bench_bad_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bench.throughput("tcp://127.0.0.1:1", **kwargs)  # type: ignore[arg-type]


@pytest.mark.usefixtures("fd_baseline")
def test_cli_bench_client_json_and_table(bench_server: hvsock.Address) -> None:
    status, out, _ = run(
        "bench",
        "client",
        str(bench_server),
        "--json",
        "--bytes",
        "2M",
        "--count",
        "20",
        "--connections",
        "10",
        "--streams",
        "3",
    )
    assert status == 0
    results = json.loads(out)["results"]
    assert [r["test"] for r in results] == [
        "throughput",
        "throughput x3",
        "round trip",
        "connect rate",
    ]
    assert results[0]["bytes"] == 2 << 20
    status, out, _ = run(
        "bench",
        "client",
        str(bench_server),
        "--tests",
        "rtt,connect",
        "--duration",
        "0.1",
        "--no-progress",
    )
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["test", "value", "unit"]
    assert [line.split()[0] for line in lines[1:]] == ["round", "connect"]


def test_cli_bench_bad_test_name() -> None:
    status, _, err = run("bench", "client", "tcp://127.0.0.1:1", "--tests", "speed")
    assert status == cli.EXIT_USAGE
    assert "unknown test" in err


def test_format_table_aligns_columns() -> None:
    rows = [
        bench.BenchResult("throughput", "x", 1234.5, "MB/s", 1.0, {"bytes": 10}),
        bench.BenchResult("round trip", "x", 7.0, "us", 0.5),
    ]
    lines = bench.format_table(rows).splitlines()
    assert lines[1].index("1234.5") == lines[2].index("7") == lines[0].index("value")


# -- progress: drawn on a terminal only (issue 19) ----------------------------------------------
def _stderr_of(argv: list[str], on_a_terminal: bool) -> str:
    """Run the installed command; its stderr a pipe or a real PTY; what it wrote there."""
    master = slave = -1
    if on_a_terminal:
        master, slave = os.openpty()
        # 24x80, as a terminal has: a new PTY is 0x0, and tqdm fits its bar to 0 columns.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave if on_a_terminal else subprocess.PIPE,
    )
    if not on_a_terminal:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        return err.decode(errors="replace")
    os.close(slave)
    seen = bytearray()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed its end
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    return seen.decode(errors="replace")


def _drawn_on_a_terminal_only(argv: list[str], label: str) -> None:
    pytest.importorskip("tqdm")  # the bar; without it the same rule holds for plain lines
    piped = _stderr_of(argv, on_a_terminal=False)
    assert "\r" not in piped
    assert label not in piped
    assert label in _stderr_of(argv, on_a_terminal=True)


def test_stress_progress_is_drawn_on_a_terminal_only(
    echo: tuple[EchoServer, str], hvsock_cmd: list[str]
) -> None:
    _drawn_on_a_terminal_only(
        [*hvsock_cmd, "stress", echo[1], "-n", "20", "-P", "2", "--max-size", "4K"], "connections"
    )


def test_bench_progress_is_drawn_on_a_terminal_only(
    bench_server: hvsock.Address, hvsock_cmd: list[str]
) -> None:
    _drawn_on_a_terminal_only(
        [*hvsock_cmd, "bench", "client", str(bench_server), "--tests", "rtt", "--count", "50"],
        "round trips",
    )


def test_the_progress_rule_is_the_terminal_and_the_switch() -> None:
    assert not wanted(io.StringIO(), off=False)
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as terminal:
        assert wanted(terminal, off=False)
        assert not wanted(terminal, off=True)
    os.close(master)
