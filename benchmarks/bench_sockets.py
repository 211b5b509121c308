"""What hvsock's socket layer costs over plain stdlib sockets (ratios in one run)."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import _report

import hvsock
from hvsock.testing import HybridVsockMuxer

CONNECTS = 2000
STREAM_BYTES = 128 * 1024 * 1024
CHUNK = 256 * 1024
ROUNDS = 5


def accept_forever(listener: socket.socket, sink: bool) -> threading.Thread:
    def run() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if sink:
                threading.Thread(target=drain, args=(conn,), daemon=True).start()
            else:
                conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def drain(conn: socket.socket) -> None:
    with conn, contextlib.suppress(OSError):  # connect-rate clients hang up at once
        buf = bytearray(CHUNK)
        while conn.recv_into(buf):
            pass
        conn.sendall(b"k")


def rate(fn: Callable[[], socket.socket], n: int = CONNECTS) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn().close()
    return n / (time.perf_counter() - start)


def throughput(fn: Callable[[], socket.socket], nbytes: int = STREAM_BYTES) -> float:
    block = os.urandom(CHUNK)
    with fn() as sock:
        start = time.perf_counter()
        sent = 0
        while sent < nbytes:
            sock.sendall(block)
            sent += len(block)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b"k"
        return sent / (time.perf_counter() - start) / 1e6


def raw_unix(path: str) -> Callable[[], socket.socket]:
    def connect() -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        return s

    return connect


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows: list[dict[str, object]] = []

    def row(
        name: str,
        unit: str,
        ours_fn: Callable[[], float],
        base_fn: Callable[[], float],
        baseline: str,
    ) -> None:
        # Alternate the two, ROUNDS times, and compare medians: drifts in machine
        # load then hit both sides alike.
        ours_runs, base_runs = [], []
        for _ in range(ROUNDS):
            base_runs.append(base_fn())
            ours_runs.append(ours_fn())
        ours, base = statistics.median(ours_runs), statistics.median(base_runs)
        rows.append(_report.row(name, unit, ours, base, baseline))

    with tempfile.TemporaryDirectory(prefix="hvb-", dir="/tmp") as tmp:
        # Unix connect rate.
        path = f"{tmp}/u.sock"
        listener = hvsock.listen(f"unix://{path}", backlog=1024)
        accept_forever(listener, sink=False)
        row(
            "connect+close, unix",
            "conn/s",
            lambda: rate(lambda: hvsock.connect(f"unix://{path}")),
            lambda: rate(raw_unix(path)),
            "socket.connect",
        )
        listener.close()

        # TCP connect rate.
        listener = hvsock.listen("tcp://127.0.0.1:0", backlog=1024)
        port = listener.getsockname()[1]
        accept_forever(listener, sink=False)
        row(
            "connect+close, tcp",
            "conn/s",
            lambda: rate(lambda: hvsock.connect(f"tcp://127.0.0.1:{port}")),
            lambda: rate(lambda: socket.create_connection(("127.0.0.1", port))),
            "socket.create_connection",
        )
        listener.close()

        # Hybrid: handshake through the emulated muxer vs a raw connect to the guest side.
        with HybridVsockMuxer(f"{tmp}/vm.sock") as muxer:
            guest = muxer.guest_listen(52, backlog=1024)
            accept_forever(guest, sink=True)
            guest_path = guest.getsockname()
            row(
                "connect+close, hybrid (emulated muxer)",
                "conn/s",
                lambda: rate(lambda: hvsock.connect(muxer.address(52)), n=300),
                lambda: rate(raw_unix(guest_path), n=300),
                "raw unix connect to the guest listener",
            )
            row(
                "throughput, hybrid (emulated muxer)",
                "MB/s",
                lambda: throughput(lambda: hvsock.connect(muxer.address(52))),
                lambda: throughput(raw_unix(guest_path)),
                "direct unix socket",
            )
            guest.close()

        path = f"{tmp}/t.sock"
        listener = hvsock.listen(f"unix://{path}")
        accept_forever(listener, sink=True)
        row(
            "throughput, unix",
            "MB/s",
            lambda: throughput(lambda: hvsock.connect(f"unix://{path}")),
            lambda: throughput(raw_unix(path)),
            "socket.connect",
        )
        listener.close()

    _report.emit(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
