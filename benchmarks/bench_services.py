"""The service framework's costs, each as a ratio against a baseline in the same run.

- 1-byte round trip through an hvsock asyncio service (ServiceHost + echo_service)
  vs a plain blocking-socket echo server (thread per connection). Target <= 1.5x.
- Framed requests per second, on 1 connection and on 100: an hvsock rpc_handler
  method vs a stdlib asyncio server echoing the same frames (no JSON).
- Python heap per idle connection with 1000 open (tracemalloc in the server):
  hvsock Connection vs stdlib asyncio streams. Target < 64 KiB each.

Servers run in their own processes (benchmarks/_server.py) over Unix sockets;
clients run here. Absolute numbers depend on the machine; ratios are the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import _report

import hvsock
import hvsock.framing

HERE = Path(__file__).resolve().parent
ROUND_TRIPS = 5000
REQUESTS_ONE = 5000
REQUESTS_EACH_OF_100 = 100
IDLE = 1000
REQUEST = hvsock.framing.encode_frame(
    hvsock.framing.encode_message(hvsock.framing.Request(1, "echo", {"x": "y"}))
)


@contextlib.contextmanager
def server(mode: str, trace: bool = False) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="hvbs-", dir="/tmp") as d:
        ready = f"{d}/ready"
        args = [sys.executable, str(HERE / "_server.py"), mode, d, ready] + (
            ["trace"] if trace else []
        )
        with subprocess.Popen(args) as proc:
            deadline = time.monotonic() + 20
            while not os.path.exists(ready):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{mode} server did not start")
                time.sleep(0.01)
            try:
                yield d
            finally:
                proc.terminate()
                proc.wait(10)


def unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def round_trip_us(d: str) -> float:
    with unix(f"{d}/echo.sock") as sock:
        times = []
        for _ in range(ROUND_TRIPS):
            start = time.perf_counter()
            sock.sendall(b"x")
            sock.recv(1)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def requests_one(d: str) -> float:
    with unix(f"{d}/rpc.sock") as sock:
        start = time.perf_counter()
        for _ in range(REQUESTS_ONE):
            sock.sendall(REQUEST)
            if hvsock.framing.recv_frame(sock) is None:
                raise SystemExit("server closed")
        return REQUESTS_ONE / (time.perf_counter() - start)


async def _requests_many(d: str) -> float:
    async def client() -> None:
        reader, writer = await asyncio.open_unix_connection(f"{d}/rpc.sock")
        for _ in range(REQUESTS_EACH_OF_100):
            writer.write(REQUEST)
            await writer.drain()
            await hvsock.framing.read_frame(reader)
        writer.close()
        await writer.wait_closed()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(100)))
    return 100 * REQUESTS_EACH_OF_100 / (time.perf_counter() - start)


def stats(d: str) -> tuple[int, int]:
    with unix(f"{d}/stats.sock") as sock:
        heap, idle = sock.makefile().readline().split()
    return int(heap), int(idle)


def heap_per_idle_connection(d: str) -> float:
    before, _ = stats(d)
    socks = [unix(f"{d}/idle.sock") for _ in range(IDLE)]
    try:
        deadline = time.monotonic() + 30
        while (now := stats(d))[1] < IDLE:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {now[1]} idle connections accepted")
            time.sleep(0.05)
        return (now[0] - before) / IDLE
    finally:
        for s in socks:
            s.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows: list[dict[str, object]] = []

    def row(*fields: object, **kw: str) -> None:
        rows.append(_report.row(*fields, **kw))  # type: ignore[arg-type]

    # Alternate servers over several rounds and keep medians, so drift hits both.
    try:
        import uvloop  # noqa: F401

        loops = ["", "-uvloop"]
    except ImportError:
        loops = [""]
    rtt: dict[str, list[float]] = {f"{k}{lp}": [] for k in ("hvsock", "stdlib") for lp in loops}
    rtt["blocking"] = []
    one: dict[str, list[float]] = {"hvsock": [], "stdlib": []}
    many: dict[str, list[float]] = {"hvsock": [], "stdlib": []}
    for _ in range(3):
        for mode in rtt:
            with server(mode) as d:
                rtt[mode].append(round_trip_us(d))
        for mode in ("stdlib", "hvsock"):
            with server(mode) as d:
                one[mode].append(requests_one(d))
                many[mode].append(asyncio.run(_requests_many(d)))
    med = statistics.median
    for lp in loops:
        name = "asyncio" if not lp else "uvloop"
        row(
            f"1-byte round trip ({name})",
            "us",
            med(rtt[f"hvsock{lp}"]),
            med(rtt["blocking"]),
            "blocking-socket echo server",
            "<= 1.5",
        )
        row(
            f"1-byte round trip ({name})",
            "us",
            med(rtt[f"hvsock{lp}"]),
            med(rtt[f"stdlib{lp}"]),
            f"stdlib {name} echo server",
        )
    row(
        "framed requests/s, 1 connection",
        "req/s",
        med(one["hvsock"]),
        med(one["stdlib"]),
        "stdlib asyncio frame echo (no JSON)",
    )
    row(
        "framed requests/s, 100 connections",
        "req/s",
        med(many["hvsock"]),
        med(many["stdlib"]),
        "stdlib asyncio frame echo (no JSON)",
    )
    heap = {}
    for mode in ("stdlib", "hvsock"):
        with server(mode, trace=True) as d:
            heap[mode] = heap_per_idle_connection(d)
    row(
        "Python heap per idle connection (1000)",
        "bytes",
        heap["hvsock"],
        heap["stdlib"],
        "stdlib asyncio streams",
        "< 65536 bytes",
    )

    _report.emit(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
