"""Steps for the socket layer in L2: the CID, the doctor, connects to L1, errors, the CLI."""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import subprocess
import time
from typing import Any

import hvsock
import hvsock.sockets

from . import BACKGROUND, payload, sha256, step

CHUNK = 64 * 1024


@step
def local_cid() -> int:
    return hvsock.sockets.local_cid()


@step
def transports() -> list[str]:
    return list(hvsock.sockets.loaded_vsock_transports())


@step
def doctor(address: str | None = None) -> dict[str, Any]:
    import hvsock.doctor  # on first use: the doctor costs seconds to import in L2

    return hvsock.doctor.diagnose(address).as_dict()


def _recv_all(sock: socket.socket, limit: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    while total <= limit:
        data = sock.recv(CHUNK)
        if not data:
            return b"".join(parts)
        parts.append(data)
        total += len(data)
    raise AssertionError(f"the peer sent more than {limit} bytes")


@step
def echo_through(address: str, size: int, seed: int) -> dict[str, Any]:
    """hvsock.connect to *address* (a listener in L1 that echoes until EOF), send
    payload(size, seed), half-close, read the echo until EOF."""
    data = payload(size, seed)
    with hvsock.connect(address, timeout=30) as sock:
        sock.settimeout(120)
        peer = sock.getpeername()
        sock.sendall(data)
        hvsock.close_write(sock)
        echoed = _recv_all(sock, size)
    return {"sent": sha256(data), "echoed": sha256(echoed), "size": len(echoed), "peer": list(peer)}


@step
async def echo_through_asyncio(address: str, size: int, seed: int) -> dict[str, Any]:
    """As echo_through, with hvsock.open_connection (asyncio streams, write_eof)."""
    data = payload(size, seed)
    reader, writer = await hvsock.open_connection(address, timeout=30)
    try:
        peer = writer.get_extra_info("peername")
        writer.write(data)
        await writer.drain()
        writer.write_eof()
        echoed = await asyncio.wait_for(reader.read(), 120)
    finally:
        writer.close()
        await writer.wait_closed()
    return {"sent": sha256(data), "echoed": sha256(echoed), "size": len(echoed), "peer": list(peer)}


@step
def connect_error(address: str, timeout: float = 10.0) -> dict[str, Any]:
    """What hvsock.connect raises for *address* (where nothing should answer)."""
    started = time.monotonic()
    try:
        sock = hvsock.connect(address, timeout=timeout)
    except OSError as exc:
        return {
            "type": type(exc).__name__,
            "message": str(exc),
            "hvsock_error": isinstance(exc, hvsock.HvsockError),
            "seconds": round(time.monotonic() - started, 2),
        }
    sock.close()
    raise AssertionError(f"connecting to {address} succeeded; nothing should listen there")


@step
def run(argv: list[str], timeout: float = 600.0) -> dict[str, Any]:
    """Run a program in L2 (e.g. the hvsock CLI), with this harness's environment."""
    started = time.monotonic()
    done = subprocess.run(
        argv, capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )
    return {
        "status": done.returncode,
        "stdout": done.stdout.decode(errors="replace"),
        "stderr": done.stderr.decode(errors="replace"),
        "seconds": round(time.monotonic() - started, 1),
    }


@step
def uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


RB_AUTOBOOT = 0x01234567
#: The reboot step's task (a reference, so it is not collected before it runs).
_REBOOTING: list[asyncio.Task[None]] = []


@step
async def reboot() -> int:
    """Reboot L2 once L1 has this answer (it hangs up then); returns pid.

    The always-on echo service stops first, so a client that reaches ECHO_PORT after
    this answer reached the one in L2's next boot.
    """
    await BACKGROUND.pop("echo").stop()
    harness = BACKGROUND["harness"]

    async def once_answered() -> None:
        # Not a fixed delay: a busy L2 may take longer than any to send the answer.
        # L1 reads it, then closes its connection (Guest.reboot); bounded all the same.
        for _ in range(2400):  # 120 s at most
            if not harness.active_connections("harness"):
                break
            await asyncio.sleep(0.05)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.sync()
        libc.reboot(RB_AUTOBOOT)

    _REBOOTING.append(asyncio.create_task(once_answered()))
    return os.getpid()
