"""Plain (thread) handlers: a peer dripping bytes cannot hold a slot (issue 8 defect 3),
and a handler stuck outside socket I/O cannot keep the process alive after SIGTERM
(issue 8 defect 2)."""

from __future__ import annotations

import asyncio
import json
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import hvsock
import hvsock.framing

from ._peers import frame_echo_handler

DRIP_GAP = 0.2  # seconds between bytes: well under the idle timeout
IDLE = 1.0


def drip_until_closed(address: hvsock.Address, frame: bytes) -> float | None:
    """Send *frame* a byte at a time; seconds until the service closed, None if it never
    did before the whole frame went out."""
    with hvsock.connect(address, timeout=5) as sock:
        start = time.monotonic()
        try:
            for byte in frame:
                readable, _, _ = select.select([sock], [], [], DRIP_GAP)
                if readable and sock.recv(1) == b"":
                    return time.monotonic() - start
                sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - start
    return None


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("kind", ["sync", "async", "rpc"])
def test_a_frame_must_arrive_whole_within_the_idle_timeout(kind: str, short_tmp: Path) -> None:
    handler = frame_echo_handler(kind)
    service = hvsock.Service("drip", 6000, handler, limits=hvsock.Limits(idle_timeout=IDLE))
    # 40 bytes at 0.2 s: 8 s to send, each gap far below the 1 s idle timeout.
    frame = hvsock.framing.encode_frame(
        json.dumps({"id": 1, "method": "echo", "params": "x" * 4}).encode().ljust(36)
    )

    async def main() -> float | None:
        host = hvsock.ServiceHost(grace=1)
        host.add(service, hvsock.UnixAddress(str(short_tmp / "s.sock")))
        async with host:
            return await asyncio.to_thread(drip_until_closed, host.addresses["drip"], frame)

    closed_after = asyncio.run(main())
    assert closed_after is not None, "the dripping peer held its connection"
    assert IDLE * 0.8 < closed_after < IDLE + 2.5


SCRIPT = """
import logging, sys, time
import hvsock

logging.basicConfig(level=logging.INFO, stream=sys.stderr)

def stuck(conn):
    conn.recv(1)
    conn.sendall(b"in\\n")
    time.sleep(3600)  # stuck outside socket I/O: shutting the socket down does not stop it

host = hvsock.ServiceHost(grace=0.5, ready_file=sys.argv[2])
host.add(hvsock.Service("stuck", 6000, stuck), "unix://" + sys.argv[1])
host.run()
print("run returned", flush=True)
"""


def test_sigterm_exits_even_with_a_handler_stuck_in_a_sleep(short_tmp: Path) -> None:
    sock_path = short_tmp / "s.sock"
    ready = short_tmp / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), str(sock_path), str(ready)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the host never became ready"
            time.sleep(0.02)
        with hvsock.connect(f"unix://{sock_path}", timeout=5) as client:
            client.settimeout(10)
            client.sendall(b"x")
            assert client.recv(3) == b"in\n"  # the handler is in its sleep now
            proc.send_signal(signal.SIGTERM)
            # grace 0.5 s + at most ABANDON_AFTER for the cancelled handler, with margin
            out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "run returned" in out
    assert "abandoned the handler" in err
