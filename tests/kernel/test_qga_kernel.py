"""QGA conformance over real AF_VSOCK: the real qemu-ga (`-m vsock-listen`) and hvsock's QGA
service answer the same requests over vsock CID 1 inside the test VM."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hvsock._builtin.agent.config import default_config
from hvsock._core.addresses import parse_address
from tests.agent_thread import AgentThread
from tests.qga_conformance import QgaClient, compare, compare_interfaces, run_session

from ._support import CID_LOCAL, unused_port
from .conftest import skip_or_fail

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(240)]


def _connect(port: int, timeout: float = 30) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        try:
            sock.connect((CID_LOCAL, port))  # CID 1 only: stays inside this kernel
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def real_qga() -> Iterator[int]:
    binary = shutil.which("qemu-ga") or "/usr/sbin/qemu-ga"
    if not Path(binary).exists():
        skip_or_fail("qemu-ga is not installed (Debian package qemu-guest-agent)")
    port = unused_port()
    with tempfile.TemporaryDirectory() as state:
        proc = subprocess.Popen(
            [
                binary,
                "-m",
                "vsock-listen",
                "-p",
                f"{CID_LOCAL}:{port}",
                "-t",
                state,
                "-f",
                f"{state}/pid",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield port
        finally:
            proc.terminate()
            proc.wait(30)


@pytest.fixture
def ours() -> Iterator[int]:
    port = unused_port()
    config = default_config(["qga"])
    config.listen = parse_address(f"vsock://any:{unused_port()}")
    config.allow = [CID_LOCAL]
    # QGA runs commands: it takes no [agent] allow (its default is root on the host).
    config.services["qga"].allow = [CID_LOCAL]
    config.services["qga"].listen = parse_address(f"vsock://any:{port}")
    with AgentThread(config, qga_shutdown=lambda mode: None):
        yield port


def test_answers_match_real_qemu_ga_over_vsock(real_qga: int, ours: int, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with _connect(real_qga) as a, _connect(ours) as b:
        theirs = run_session(QgaClient(a), str(tmp_path / "a"))
        mine = run_session(QgaClient(b), str(tmp_path / "b"))
    assert theirs["ping"] == {"return": {}}
    assert compare(theirs, mine) == []
    with _connect(real_qga) as a, _connect(ours) as b:
        assert compare_interfaces(QgaClient(a), QgaClient(b)) == []


def test_several_vsock_clients_at_once(ours: int) -> None:
    socks = [_connect(ours) for _ in range(8)]
    try:
        clients = [QgaClient(s) for s in socks]
        for i, c in enumerate(clients):
            c.send({"execute": "guest-sync", "arguments": {"id": i}})
        assert [c.answer()[1] for c in clients] == [{"return": i} for i in range(8)]
    finally:
        for s in socks:
            s.close()
