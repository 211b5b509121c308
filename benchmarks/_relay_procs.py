"""Helper processes for bench_relay.py (each in its own process, so none shares a GIL).

usage: _relay_procs.py muxer UDS_PATH READY_FILE PORT...

Runs hvsock.testing.HybridVsockMuxer on UDS_PATH until SIGTERM. For each guest
PORT it makes the guest-side socket path and leaves it for another process to
listen on (``hvsock bench server unix://PATH``), then writes READY_FILE: JSON
{"uds": UDS_PATH, "guest_paths": {PORT: PATH}}.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
import threading
from pathlib import Path

from hvsock.testing import HybridVsockMuxer


def main() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
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
