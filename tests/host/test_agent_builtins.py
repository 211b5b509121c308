"""The agent hosts the KVP and file-copy built-ins from its config (issue 10, with 9 and 11).

Both speak their own framed protocol, so each gets its own address: the one its section
names, or its well-known port on the agent's address family.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import hvsock
from hvsock._builtin.agent.config import OWN_DEFAULT_PORTS, parse_config
from hvsock._builtin.agent.host import with_port
from hvsock._builtin.kvp.service import KvpClient

from ..agent_thread import AgentThread


def _config(tmp_path: Path, pools: Path, share: Path) -> str:
    return f"""
[agent]
listen = "unix://{tmp_path}/agent.sock"

[kvp]
enabled = true
listen = "unix://{tmp_path}/kvp.sock"
pool_dir = "{pools}"

[cp]
enabled = true
listen = "unix://{tmp_path}/cp.sock"
roots = ["{share}"]
"""


def test_kvp_and_cp_served_by_one_agent(tmp_path: Path, short_tmp: Path) -> None:
    pools, share, here = tmp_path / "pools", tmp_path / "share", tmp_path / "here"
    for d in (pools, share, here):
        d.mkdir()
    (share / "report.bin").write_bytes(bytes(range(256)) * 4096)
    # The sockets in a short directory: tmp_path follows TMPDIR, which may be long.
    config = parse_config(_config(short_tmp, pools, share))
    with AgentThread(config) as agent:
        assert set(agent.agent.own) == {"kvp", "cp"}
        # KVP: the host pushes pool 0 and reads it back through the agent's kvp service.
        with KvpClient(str(agent.agent.own["kvp"])) as kvp:
            kvp.set("Role", "web")
            assert kvp.get("Role", pool=0) == "web"
        assert (pools / ".kvp_pool_0").stat().st_size == 2560
        # File copy: pull the served file, checked end to end.
        result = hvsock.copy(str(agent.agent.own["cp"]), [f":{share}/report.bin"], str(here))
        assert result.files == 1
    pulled = (here / "report.bin").read_bytes()
    assert (
        hashlib.sha256(pulled).digest()
        == hashlib.sha256((share / "report.bin").read_bytes()).digest()
    )


def test_cp_without_roots_is_a_config_error_at_its_line() -> None:
    with pytest.raises(hvsock.ArgumentError, match=r"agent.toml:2: \[cp\] serves only"):
        parse_config("[cp]\nenabled = true\n")


@pytest.mark.parametrize(
    ("shared", "name", "expected"),
    [
        ("vsock://any:5100", "kvp", "vsock://any:5010"),
        ("vsock://any:5100", "cp", "vsock://any:5005"),
        ("tcp://127.0.0.1:5100", "cp", "tcp://127.0.0.1:5005"),
        ("hybrid:///run/fc/v.sock:5100", "kvp", "hybrid:///run/fc/v.sock:5010"),
    ],
)
def test_own_services_default_to_their_well_known_port(
    shared: str, name: str, expected: str
) -> None:
    address = with_port(hvsock.parse_address(shared), OWN_DEFAULT_PORTS[name])
    assert str(address) == expected


def test_a_unix_agent_address_has_no_port_to_derive() -> None:
    with pytest.raises(hvsock.ArgumentError, match="its own listen address"):
        with_port(hvsock.parse_address("unix:///tmp/agent.sock"), 5010)
