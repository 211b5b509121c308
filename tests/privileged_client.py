"""A client of the exec agent that connects with or without a reserved vsock source
port, run as root or as nobody: the privileged-port rule's tests in the real-kernel
and hypervisor tiers share it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

#: A client written against the wire protocol: connect (with the reserved-port option
#: given as argv[2]), hello, START `id -u`, print what happened.
CLIENT = r"""
import sys

import hvsock
from hvsock._core import exec_proto as ep, mux
from hvsock._core.framing import encode_frame
from hvsock._service.frames import recv_frame

address, mode = sys.argv[1], sys.argv[2]
reserved = {"true": True, "try": "try", "false": False}[mode]
try:
    sock = hvsock.connect(address, timeout=30, reserved_port=reserved)
except hvsock.PermissionDeniedError as exc:
    print(f"connect refused: {exc}", flush=True)
    sys.exit(3)
print(f"source port {sock.getsockname()[1]}", flush=True)
sock.settimeout(60)
sock.sendall(encode_frame(mux.encode_hello("exec"), mux.MAX_HELLO))
try:
    mux.decode_answer(recv_frame(sock, mux.MAX_HELLO))
except hvsock.RemoteError as exc:
    print(f"refused: {exc}", flush=True)
    sys.exit(4)
sock.sendall(ep.frame(ep.Start(("id", "-u"))))
out = b""
while True:
    event = ep.decode(recv_frame(sock, ep.MAX_FRAME))
    if isinstance(event, ep.Output):
        out += event.data
    elif isinstance(event, ep.Exit):
        break
print(f"ran as {out.decode().strip()}", flush=True)
"""


@contextmanager
def client_script() -> Iterator[Path]:
    """CLIENT written where user nobody can read it too (pytest's tmp dirs are root's)."""
    where = Path("/tmp") / f"hvsock-privileged-client-{os.getpid()}.py"
    where.write_text(CLIENT)
    where.chmod(0o644)
    try:
        yield where
    finally:
        where.unlink()


def run_as(argv: list[str], *, as_nobody: bool) -> subprocess.CompletedProcess[str]:
    """Run *argv* (with this interpreter's sys.path), as nobody when *as_nobody*."""
    if as_nobody:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is not installed here")
        argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
        cwd="/",
        stdin=subprocess.DEVNULL,
    )


def run_client(client: Path, address: str, mode: str, *, as_nobody: bool) -> tuple[int, str]:
    """Run the client (*mode*: "true", "try" or "false"); (exit code, its output)."""
    done = run_as([sys.executable, str(client), address, mode], as_nobody=as_nobody)
    return done.returncode, done.stdout + done.stderr


def source_port(out: str) -> int:
    return int(out.split("source port ", 1)[1].split()[0])
