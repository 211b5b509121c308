"""Helper processes for bench_relay.py (each in its own process, so none shares a GIL).

usage: _relay_procs.py muxer UDS_PATH READY_FILE PORT...
       _relay_procs.py threads N LISTEN TARGET READY_FILE
       _relay_procs.py connect

muxer: runs hvsock.testing.HybridVsockMuxer on UDS_PATH until SIGTERM. For each guest
PORT it makes the guest-side socket path and leaves it for another process to
listen on (``hvsock bench server unix://PATH``), then writes READY_FILE: JSON
{"uds": UDS_PATH, "guest_paths": {PORT: PATH}}.

threads: the relay with N event loops as threads of one process, sharing its
listener (the design worker processes were measured against; private API, for
bench_relay_workers.py only). Writes READY_FILE {"listen": ...}; SIGTERM stops it.

connect: one client of bench_relay.py's connection-rate figure with several clients
(each its own process, so the clients measure the relay and not their shared
interpreter lock). Started once and reused (a Python start-up in the test VM, over
9p, takes many seconds). Prints "started"; then for each JSON request line
{"address", "handshake", "duration"}: prints "ready", waits for "go", connects,
sends and reads one byte and closes for DURATION seconds, and prints JSON
{"count", "seconds"} (or {"error"}). Ends at EOF on stdin.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
import threading
from pathlib import Path


def threads(n: int, listen: str, target: str, ready: str) -> int:
    from hvsock._relay import Relay
    from hvsock._relay.loop import Listening, Loop

    relay = Relay(listen, target, max_connections=100_000, idle_timeout=None)
    relay.start()
    assert relay._loop is not None
    main_loop = relay._loop
    listenings = [
        Listening(sock, forward, address) for sock, forward, address, _owned in relay._listeners
    ]
    extra = [
        Loop(relay.config, listenings, slots=main_loop._slots, stats=[0] * 9, on_close=None)
        for _ in range(n - 1)
    ]
    runners = [threading.Thread(target=loop.run, daemon=True) for loop in extra]
    for t in runners:
        t.start()

    def stop(*_: object) -> None:
        for loop in (main_loop, *extra):
            loop.request_stop(0)

    signal.signal(signal.SIGTERM, stop)
    Path(ready).write_text(json.dumps({"listen": str(relay.address)}))
    relay.serve(handle_signals=False)  # SIGTERM is ours: it stops every loop
    for t in runners:
        t.join(10)
    return 0


def connect_client() -> int:
    """Runs one client of the connection-rate figure per request on stdin, until EOF."""
    from bench_relay import connector

    import hvsock
    from hvsock._builtin import bench

    print("started", flush=True)
    while line := sys.stdin.readline():
        request = json.loads(line)
        dial = connector(request["address"], request["handshake"])
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 1  # the benchmark gave up on this run
        try:
            result = bench.connect_rate(
                request["address"], duration=request["duration"], connect=dial
            )
        except (OSError, hvsock.HvsockError) as exc:
            print(json.dumps({"error": str(exc)[:300]}), flush=True)
            continue
        print(json.dumps({"count": result.details["count"], "seconds": result.seconds}), flush=True)
    return 0


def main() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if sys.argv[1] == "connect":
        return connect_client()
    if sys.argv[1] == "threads":
        return threads(int(sys.argv[2]), *sys.argv[3:6])
    from hvsock.testing import HybridVsockMuxer

    kind, uds, ready, *ports = sys.argv[1:]
    assert kind == "muxer", kind
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with HybridVsockMuxer(uds) as muxer:
        paths = {}
        for port in ports:
            # guest_listen makes the path the muxer dials for this port; a bench
            # server in another process then listens there (replacing the stale file).
            with muxer.guest_listen(int(port)) as probe:
                paths[port] = probe.getsockname()
        Path(ready).write_text(json.dumps({"uds": uds, "guest_paths": paths}))
        while not stop.wait(0.2):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
