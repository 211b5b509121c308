"""Remote exec through the agent over real AF_VSOCK (CID 1, vsock_loopback) in the test VM."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

import hvsock
from hvsock._builtin.agent.config import default_config
from hvsock._core.addresses import parse_address
from tests.agent_thread import AgentThread, process_gone, wait_for

from ._support import target, unused_port

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(240)]


@pytest.fixture
def agent() -> Iterator[str]:
    port = unused_port()
    config = default_config(["exec", "info"])
    config.listen = parse_address(f"vsock://any:{port}")
    # The peers here come from CID 1 (loopback), not the host's CID 2; exec takes no
    # [agent] allow, so it is opted in for any source port here (the privileged rule
    # has its own tests, test_exec_privileged_kernel.py).
    config.allow = [1]
    config.services["exec"].allow = [1]
    with AgentThread(config):
        yield target(port)


def test_exec_streams_and_exit_status(agent: str) -> None:
    result = hvsock.exec(agent, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")


def test_cat_carries_8_mib(agent: str) -> None:
    data = os.urandom(8 << 20)
    result = hvsock.exec(agent, ["cat"], input=data)
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()


def test_timeout_kills_a_program_ignoring_sigterm(agent: str) -> None:
    result = hvsock.exec(
        agent, ["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"], timeout=0.5
    )
    assert result.timed_out
    assert result.signal == signal.SIGKILL


def test_many_sessions_at_once(agent: str) -> None:
    async def main() -> list[hvsock.ExecResult]:
        return await asyncio.gather(
            *(hvsock.exec_async(agent, ["echo", str(i)]) for i in range(32))
        )

    assert [r.stdout for r in asyncio.run(main())] == [f"{i}\n".encode() for i in range(32)]


def test_vanished_client_gets_its_group_killed(agent: str) -> None:
    from hvsock._builtin.exec.client import ExecSession, make_start
    from hvsock._core import exec_proto as ep

    session = ExecSession.open(agent, make_start(["sleep", "1000"]))
    session.sock.settimeout(60)
    events: list[ep.Event] = []
    while not any(isinstance(e, ep.Started) for e in events):
        events += session.feed(session.sock.recv(65536))
    pid = next(e.pid for e in events if isinstance(e, ep.Started))
    session.close()
    wait_for(lambda: process_gone(pid), "the command to be killed", timeout=30)


def test_cli_exec_over_vsock(agent: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hvsock", "exec", agent, "--", "sh", "-c", "cat; exit 4"],
        input=b"abc",
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stdout) == (4, b"abc")


def test_host_only_default_refuses_cid_1() -> None:
    port = unused_port()
    config = default_config(["exec"])
    config.listen = parse_address(f"vsock://any:{port}")  # default allow: CID 2 only
    with AgentThread(config), pytest.raises(hvsock.HvsockError):
        hvsock.exec(target(port), ["true"])
