"""Start-up cost: `import hvsock` and short `hvsock` commands vs `python -c "import socket"`.

`hvsock connect` runs as an SSH ProxyCommand and in scripts, where start-up is paid on
every call. Each command runs N times, alternating with the baseline in the same run;
the figure is the median wall time, and the ratio is to the baseline's median
(target: <= 2x for `--version` and `connect`). Nothing connects over AF_VSOCK: the
connect figures dial a Unix socket file that does not exist (exit status 4), and a
Unix listener here that accepts and closes at once (the whole ProxyCommand path).

hvsock's bytecode cache is written first (``_report.write_bytecode_cache``), as an
install does: the baseline reads the standard library's cached bytecode.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import _report

#: Runs per command (bounded: each is well under a second).
DEFAULT_RUNS = 21


def hvsock_command() -> list[str]:
    script = Path(sys.executable).with_name("hvsock")
    return [str(script)] if script.exists() else [sys.executable, "-m", "hvsock"]


def wall(argv: list[str], expect: int) -> float:
    # A blocking wait, not subprocess.run(timeout=...): with a timeout, subprocess polls
    # with sleeps that double from 0.5 ms to 50 ms, so every figure would be rounded up
    # to 32 or 64 ms. A timer kills a process that hangs instead.
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    watchdog = threading.Timer(30, proc.kill)
    watchdog.start()
    try:
        returncode = proc.wait()
    finally:
        watchdog.cancel()
    took = time.perf_counter() - start
    if returncode != expect:
        raise SystemExit(f"{argv} exited {returncode}, expected {expect}")
    return took


@contextlib.contextmanager
def closing_listener(path: str) -> Iterator[None]:
    """A Unix listener that accepts and closes every connection, until the run ends:
    `hvsock connect` then runs its whole ProxyCommand path (connect, copy both ways,
    EOF) with nothing to move."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("-n", "--runs", type=int, default=DEFAULT_RUNS)
    args = parser.parse_args()
    runs = max(3, min(args.runs, 201))
    hv = hvsock_command()
    _report.write_bytecode_cache()
    with (
        tempfile.TemporaryDirectory(prefix="hv-bench-") as tmp,
        closing_listener(os.path.join(tmp, "closes.sock")),
    ):
        missing = f"unix://{os.path.join(tmp, 'nobody.sock')}"
        closes = f"unix://{os.path.join(tmp, 'closes.sock')}"
        commands: dict[str, tuple[list[str], int]] = {
            "baseline": ([sys.executable, "-c", "import socket"], 0),
            "import hvsock": ([sys.executable, "-c", "import hvsock"], 0),
            "hvsock --version": ([*hv, "--version"], 0),
            "hvsock connect --help": ([*hv, "connect", "--help"], 0),
            "hvsock connect (nothing listening)": ([*hv, "connect", missing, "--timeout", "1"], 4),
            "hvsock connect (to a listener that closes)": ([*hv, "connect", closes], 0),
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for argv, expect in commands.values():
            wall(argv, expect)  # warm the page cache and .pyc files once
        for _ in range(runs):
            # Interleaved, so a machine that slows down mid-run slows every figure alike.
            for name, (argv, expect) in commands.items():
                times[name].append(wall(argv, expect))
    base = statistics.median(times["baseline"]) * 1000
    rows = []
    for name in commands:
        if name == "baseline":
            continue
        ours = statistics.median(times[name]) * 1000
        target = "<= 2x" if name.startswith(("hvsock --version", "hvsock connect")) else ""
        rows.append(
            _report.row(
                f"{name} (median of {runs})", "ms", ours, base, 'python -c "import socket"', target
            )
        )
    _report.emit(rows, args.json)


if __name__ == "__main__":
    main()
