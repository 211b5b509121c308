"""The harness: L2's one long-lived Python process (`python -S -m` this module).

Started by L2's /init. It imports every step module of this package, hosts the steps
as an RPC service on vsock port HARNESS_PORT (CID 2, the host, only) and an echo
service on ECHO_PORT, then tells L1 it is ready by connecting to vsock://2:READY_PORT
and sending one JSON line (its start-up times). It serves until L2 powers off.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import pkgutil
import sys

import hvsock
import hvsock.sockets

# The echo service's own module, not hvsock.services (which loads every service we ship):
# each import costs seconds in L2.
from hvsock._builtin.echo import echo_service

from . import (
    BACKGROUND,
    ECHO_PORT,
    HARNESS_PORT,
    READY_PORT,
    STEPS,
    as_rpc_method,
)


def load_steps() -> None:
    """Import every module of this package: each registers its steps and service kinds."""
    package = sys.modules[__package__]
    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "harness":
            importlib.import_module(f"{__package__}.{info.name}")


def uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def process_started() -> float:
    """L2's uptime when this process started (field 22 of /proc/self/stat, in ticks)."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def announce(times: dict[str, float]) -> None:
    """Tell L1 the harness serves: a guest->host connect, retried while L1 gets ready."""
    line = (json.dumps(times) + "\n").encode()
    with hvsock.connect(f"vsock://host:{READY_PORT}", timeout=10, retries=20) as sock:
        sock.sendall(line)


async def main() -> None:
    load_steps()
    host = hvsock.ServiceHost(grace=1)
    host.add(
        hvsock.Service(
            "harness",
            HARNESS_PORT,
            hvsock.rpc_handler({n: as_rpc_method(f) for n, f in STEPS.items()}),
            allow={hvsock.sockets.CID_HOST},
            limits=hvsock.Limits(idle_timeout=None),
        ),
        f"vsock://any:{HARNESS_PORT}",
    )
    echo = hvsock.ServiceHost(grace=1)
    echo.add(echo_service(ECHO_PORT), f"vsock://any:{ECHO_PORT}")
    await host.start()
    await echo.start()
    BACKGROUND["echo"] = echo
    BACKGROUND["harness"] = host  # the reboot step watches L1 hang up
    now = uptime()
    times = {
        "l2_uptime_at_python_start": round(process_started(), 1),
        "python_start_to_ready_s": round(now - process_started(), 1),
        "l2_uptime_at_ready": round(now, 1),
    }
    print(f"harness: ready, serving {sorted(STEPS)}; {times}", flush=True)
    await asyncio.to_thread(announce, times)
    await host.wait_stopped()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="harness: %(name)s: %(message)s")
    asyncio.run(main())
