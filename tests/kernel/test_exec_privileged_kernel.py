"""The privileged-port rule over real AF_VSOCK (CID 1, vsock_loopback) in the test VM.

An agent whose exec allows only ``local:privileged`` lets in a client that binds a
reserved source port (root), and refuses the same client run as an unprivileged user
(``setpriv`` to nobody), with an error that names the rule.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hvsock._builtin.agent.config import default_config
from hvsock._core.addresses import parse_address
from tests.agent_thread import AgentThread

from ._support import CID_LOCAL, target, unused_port

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(240)]

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


@pytest.fixture
def agent() -> Iterator[str]:
    port = unused_port()
    config = default_config(["exec", "info"])
    config.listen = parse_address(f"vsock://any:{port}")
    config.allow = [CID_LOCAL]  # the shared address; exec narrows it:
    config.services["exec"].allow = ["local:privileged"]
    with AgentThread(config):
        yield target(port)


@pytest.fixture
def client() -> Iterator[Path]:
    # Where user nobody can read it too (pytest's tmp dirs are private to root).
    where = Path("/tmp") / f"hvsock-privileged-client-{os.getpid()}.py"
    where.write_text(CLIENT)
    where.chmod(0o644)
    yield where
    where.unlink()


def _run(client: Path, address: str, mode: str, *, as_nobody: bool) -> tuple[int, str]:
    argv = [sys.executable, str(client), address, mode]
    if as_nobody:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is not installed in the test VM")
        argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          env=env, cwd="/")
    return done.returncode, done.stdout + done.stderr


def test_root_with_a_reserved_port_is_let_in(agent: str, client: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("binding a reserved vsock port needs root (the kernel tier runs as root)")
    code, out = _run(client, agent, "true", as_nobody=False)
    assert code == 0, out
    port = int(out.split("source port ", 1)[1].split()[0])
    assert 512 <= port <= 1023, out
    assert "ran as 0" in out


def test_root_without_a_reserved_port_is_refused_naming_the_rule(agent: str,
                                                                 client: Path) -> None:
    code, out = _run(client, agent, "false", as_nobody=False)
    assert code == 4, out
    assert "local:privileged" in out
    assert "source port <= 1023" in out


def test_an_unprivileged_user_is_refused_naming_the_rule(agent: str, client: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching to nobody needs root")
    # Asking for a reserved port outright: the kernel refuses the bind.
    code, out = _run(client, agent, "true", as_nobody=True)
    assert code == 3, out
    assert "only root" in out
    # Falling back to an ordinary port: the agent refuses, naming the rule.
    code, out = _run(client, agent, "try", as_nobody=True)
    assert code == 4, out
    port = int(out.split("source port ", 1)[1].split()[0])
    assert port > 1023, out
    assert "forbidden" in out
    assert "local:privileged" in out

