"""The QGA-compatible service against the real qemu-ga (Debian qemu-guest-agent), both over
Unix sockets, plus what qemu-ga cannot do: several clients at once."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import hvsock
from hvsock._builtin.agent.config import default_config
from hvsock._builtin.qga import qga_service
from hvsock._core.addresses import parse_address
from tests.agent_thread import AgentThread, wait_for
from tests.qga_conformance import QgaClient, compare, run_session

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def shutdowns() -> list[str]:
    return []


@pytest.fixture
def ours(short_tmp: Path, shutdowns: list[str]) -> Iterator[str]:
    config = default_config(["qga"])
    config.listen = parse_address(f"unix://{short_tmp}/agent.sock")
    config.services["qga"].listen = parse_address(f"unix://{short_tmp}/qga.sock")
    with AgentThread(config, qga_shutdown=shutdowns.append):
        yield str(short_tmp / "qga.sock")


@pytest.fixture
def real_qga(short_tmp: Path) -> Iterator[str]:
    binary = shutil.which("qemu-ga") or "/usr/sbin/qemu-ga"
    if not Path(binary).exists():
        pytest.skip("qemu-ga is not installed (Debian package qemu-guest-agent)")
    state = short_tmp / "qga-state"
    state.mkdir()
    path = short_tmp / "real-qga.sock"
    proc = subprocess.Popen([binary, "-m", "unix-listen", "-p", str(path), "-t", str(state),
                             "-f", str(state / "pid")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_for(path.exists, "qemu-ga's socket", timeout=30)
        yield str(path)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def _client(path: str) -> QgaClient:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    return QgaClient(sock)


def test_answers_match_real_qemu_ga(real_qga: str, ours: str, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    theirs_client, ours_client = _client(real_qga), _client(ours)
    with theirs_client.sock, ours_client.sock:
        theirs = run_session(theirs_client, str(tmp_path / "a"))
        mine = run_session(ours_client, str(tmp_path / "b"))
    assert theirs["ping"] == {"return": {}}  # the real agent really answered
    assert compare(theirs, mine) == []
    # The comparison bites: a wrong value, and a wrong shape, are both reported.
    assert compare(theirs, {**mine, "sync": {"return": 41}})
    assert compare(theirs, {**mine, "exec with output": (None, {"return": {}}, None)})
    assert (tmp_path / "b" / "qga-file.txt").read_bytes() == b"hello world"


def test_several_clients_at_once(ours: str) -> None:
    clients = [_client(ours) for _ in range(12)]
    try:
        for i, c in enumerate(clients):
            c.send({"execute": "guest-sync", "arguments": {"id": i}})
        assert [c.answer()[1] for c in clients] == [{"return": i} for i in range(12)]
    finally:
        for c in clients:
            c.sock.close()


def test_shutdown_is_injected_and_answers_nothing(ours: str, shutdowns: list[str]) -> None:
    with _client(ours).sock as sock:
        client = QgaClient(sock)
        client.send({"execute": "guest-shutdown", "arguments": {"mode": "reboot"}})
        # No answer for guest-shutdown (success-response false): the ping's is next.
        assert client.call({"execute": "guest-ping", "id": 1}) == {"return": {}, "id": 1}
    assert shutdowns == ["reboot"]


def test_block_list(short_tmp: Path) -> None:
    config = default_config(["qga"])
    config.listen = parse_address(f"unix://{short_tmp}/a.sock")
    config.services["qga"].listen = parse_address(f"unix://{short_tmp}/q.sock")
    config.services["qga"].options["block"] = ["guest-exec", "guest-shutdown"]
    with AgentThread(config), _client(str(short_tmp / "q.sock")).sock as sock:
        client = QgaClient(sock)
        answer = client.call({"execute": "guest-exec", "arguments": {"path": "true"}})
        assert answer["error"]["class"] == "CommandNotFound"
        assert "disabled" in answer["error"]["desc"]
        info = client.call({"execute": "guest-info"})["return"]["supported_commands"]
        assert {c["name"]: c["enabled"] for c in info}["guest-exec"] is False


def test_unknown_command_in_lists_is_an_argument_error() -> None:
    with pytest.raises(hvsock.ArgumentError, match="guest-nope"):
        qga_service(block=["guest-nope"])
