"""The privileged-port rule over real AF_VSOCK (CID 1, vsock_loopback) in the test VM.

An agent whose exec allows only ``local:privileged`` lets in a client that binds a
reserved source port (root), and refuses the same client run as an unprivileged user
(``setpriv`` to nobody), with an error that names the rule.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hvsock._builtin.agent.config import default_config
from hvsock._core.addresses import parse_address
from tests.agent_thread import AgentThread
from tests.privileged_client import client_script, run_as, run_client, source_port

from ._support import CID_LOCAL, target, unused_port

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(240)]


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
    with client_script() as where:
        yield where


def test_root_with_a_reserved_port_is_let_in(agent: str, client: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("binding a reserved vsock port needs root (the kernel tier runs as root)")
    code, out = run_client(client, agent, "true", as_nobody=False)
    assert code == 0, out
    port = source_port(out)
    assert 512 <= port <= 1023, out
    assert "ran as 0" in out


def test_root_without_a_reserved_port_is_refused_naming_the_rule(agent: str, client: Path) -> None:
    code, out = run_client(client, agent, "false", as_nobody=False)
    assert code == 4, out
    assert "local:privileged" in out
    assert "source port <= 1023" in out


def test_an_unprivileged_user_is_refused_naming_the_rule(agent: str, client: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching to nobody needs root")
    # Asking for a reserved port outright: the kernel refuses the bind.
    code, out = run_client(client, agent, "true", as_nobody=True)
    assert code == 3, out
    assert "only root" in out
    # Falling back to an ordinary port: the agent refuses, naming the rule.
    code, out = run_client(client, agent, "try", as_nobody=True)
    assert code == 4, out
    port = source_port(out)
    assert port > 1023, out
    assert "forbidden" in out
    assert "local:privileged" in out


def _hvsock_exec(agent: str, *extra: str, as_nobody: bool) -> subprocess.CompletedProcess[str]:
    """`hvsock exec` itself (its default: a reserved source port when it may bind one)."""
    return run_as(
        [sys.executable, "-m", "hvsock", "exec", *extra, agent, "--", "id", "-u"],
        as_nobody=as_nobody,
    )


def test_hvsock_exec_as_root_binds_a_reserved_port_by_default(agent: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("binding a reserved vsock port needs root (the kernel tier runs as root)")
    done = _hvsock_exec(agent, as_nobody=False)
    assert (done.returncode, done.stdout) == (0, "0\n"), done.stderr
    # Without the reserved port, the same root client is refused by the same rule.
    done = _hvsock_exec(agent, "--no-privileged-port", as_nobody=False)
    assert done.returncode != 0
    assert "local:privileged" in done.stderr, done.stderr


def test_hvsock_exec_as_nobody_is_refused_naming_the_rule(agent: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching to nobody needs root")
    done = _hvsock_exec(agent, as_nobody=True)
    assert done.returncode != 0
    assert done.stdout == ""
    assert "local:privileged" in done.stderr, done.stderr
    assert "source port <= 1023" in done.stderr, done.stderr
    # Asking for the reserved port outright fails before any connect, and says why.
    done = _hvsock_exec(agent, "--privileged-port", as_nobody=True)
    assert done.returncode == 6, done.stderr
    assert "only root" in done.stderr, done.stderr
