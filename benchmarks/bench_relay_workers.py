"""Worker threads or worker processes? The relay's loops measured both ways, in one run.

TCP->TCP through ``hvsock relay`` to a ``hvsock bench server`` (its own process),
measured by ``hvsock bench client`` (its own process): one stream, 16 parallel
streams, and new connections per second with 4 clients at once. Variants:

- ``1 loop``: ``--workers 1`` (the relay before workers);
- ``N threads``: N loops as threads of one process (benchmarks/_relay_procs.py);
- ``N processes``: ``--workers N`` (the design chosen).

    .venv/bin/python benchmarks/bench_relay_workers.py [--workers N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
HVSOCK = [sys.executable, "-m", "hvsock"]
TESTS = {
    "1 stream": ("throughput", {}),
    "16 streams": ("parallel", {"streams": "16"}),
    "conn/s x4": ("connect", {"parallel": "4"}),
}


def start(argv: list[str], ready: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while not os.path.exists(ready):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{argv} did not start")
        time.sleep(0.02)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(address: str, test: str, extra: dict[str, str], duration: float) -> float:
    argv = [
        *HVSOCK,
        "bench",
        "client",
        address,
        "--tests",
        test,
        "--duration",
        str(duration),
        "--json",
        "--no-progress",
    ]
    for key, value in extra.items():
        argv += [f"--{key}", value]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout
    return float(json.loads(out)["results"][0]["value"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=1.5)
    parser.add_argument("--json-out")
    args = parser.parse_args()
    n = args.workers
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="hvbw-") as tmp:
        sink = start(
            [*HVSOCK, "bench", "server", "tcp://127.0.0.1:0", "--ready-file", f"{tmp}/sink.json"],
            f"{tmp}/sink.json",
        )
        target = json.loads(Path(f"{tmp}/sink.json").read_text())["address"]
        variants = {
            "1 loop": [*HVSOCK, "relay", "tcp://127.0.0.1:0", target, "--workers", "1"],
            f"{n} threads": [
                sys.executable,
                str(HERE / "_relay_procs.py"),
                "threads",
                str(n),
                "tcp://127.0.0.1:0",
                target,
            ],
            f"{n} processes": [*HVSOCK, "relay", "tcp://127.0.0.1:0", target, "--workers", str(n)],
        }
        try:
            for name, argv in variants.items():
                ready = f"{tmp}/{name.replace(' ', '_')}.json"
                if argv[1] != str(HERE / "_relay_procs.py"):
                    argv = [
                        *argv,
                        "--quiet",
                        "--idle-timeout",
                        "0",
                        "--max-connections",
                        "5000",
                        "--ready-file",
                        ready,
                    ]
                else:
                    argv = [*argv, ready]
                relay = start(argv, ready)
                address = json.loads(Path(ready).read_text())["listen"]
                try:
                    for label, (test, extra) in TESTS.items():
                        for _ in range(args.rounds):
                            results.setdefault(label, {}).setdefault(name, []).append(
                                measure(address, test, extra, args.duration)
                            )
                finally:
                    stop(relay)
        finally:
            stop(sink)
    report: dict[str, Any] = {
        "workers": n,
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "results": results,
    }
    names = list(next(iter(results.values())))
    print(f"{'figure':<12}" + "".join(f"{v:>16}" for v in names))
    for label, by in results.items():
        print(f"{label:<12}" + "".join(f"{statistics.median(by[v]):>16,.0f}" for v in names))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
