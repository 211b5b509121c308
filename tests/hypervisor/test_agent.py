"""The agent in L2 driven from L1, as a KVM host drives its guest: exec, cp, kvp.

The agent (tests/hypervisor/guest/agent.py) serves exec behind the hello on
vsock://3:5100, cp on 5005 and kvp on 5010, CID 2 allowed: the addresses and
defaults `hvsock agent` uses, over the real virtio-vsock transport.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import hvsock
from hvsock._builtin.kvp.service import KvpClient

from ._support import MIB, guest_address, payload, sha256
from ._vm import BOOT_TIMEOUT, TEST_TIMEOUT, Guest

pytestmark = [pytest.mark.hypervisor, pytest.mark.timeout(TEST_TIMEOUT)]

AGENT = guest_address(5100)
FILES = guest_address(5005)
KVP = guest_address(5010)


@pytest.fixture(scope="module")
def agent(guest: Guest) -> dict[str, Any]:
    """The agent running in L2 (started once; the harness keeps it)."""
    # Its first use imports the agent, exec, cp and kvp in L2: minutes under load.
    where: dict[str, Any] = guest.call("start_agent", timeout=BOOT_TIMEOUT)
    return where


def test_exec_runs_a_command_in_the_guest(agent: dict[str, Any]) -> None:
    result = hvsock.exec(
        AGENT,
        ["/bin/sh", "-c", "cat; echo to-stderr >&2"],
        input=b"from L1 through stdin\n",
        timeout=120,
        connect_timeout=30,
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        b"from L1 through stdin\n",
        b"to-stderr\n",
    )


def test_exec_returns_a_nonzero_exit_status(agent: dict[str, Any]) -> None:
    result = hvsock.exec(
        AGENT, ["/bin/sh", "-c", "echo $$; exit 7"], timeout=120, connect_timeout=30
    )
    assert result.returncode == 7
    assert result.exit_status == 7
    assert int(result.stdout) > 1  # the shell's pid in L2: it really ran there
    with pytest.raises(hvsock.RemoteError):
        hvsock.exec(AGENT, ["/no/such/program"], timeout=120, connect_timeout=30)


def test_copy_pushes_and_pulls_with_equal_checksums(
    guest: Guest, agent: dict[str, Any], tmp_path: Path
) -> None:
    size = 3 * MIB + 12345
    local = tmp_path / "up.bin"
    local.write_bytes(payload(size, seed=51))
    pushed = hvsock.copy(FILES, local, ":up.bin", timeout=30)
    assert pushed.files == 1
    in_guest = guest.call("file_sha256", path=f"{agent['files']}/up.bin")
    assert in_guest == {"sha256": sha256(local.read_bytes()), "size": size}

    written = guest.call("write_file", path=f"{agent['files']}/down.bin", size=size, seed=52)
    back = tmp_path / "down.bin"
    pulled = hvsock.copy(FILES, ":down.bin", back, timeout=30)
    assert pulled.files == 1
    assert sha256(back.read_bytes()) == written == sha256(payload(size, seed=52))
    assert os.path.getsize(back) == size


def test_kvp_host_writes_pool_0_and_reads_pool_1(guest: Guest, agent: dict[str, Any]) -> None:
    guest.call("kvp_write_guest", items={"ProvisioningState": "ready", "from": "L2"})
    with KvpClient(KVP, timeout=60) as kvp:
        kvp.update({"HostName": "l1", "Note": "set from L1"}, pool=0)
        seen = kvp.as_dict(1)
        assert kvp.get("HostName", pool=0) == "l1"
    assert seen == {"ProvisioningState": "ready", "from": "L2"}
    # The guest's own store reads what the host wrote, from the pool file.
    assert guest.call("kvp_read", pool=0) == {"HostName": "l1", "Note": "set from L1"}


def test_exec_lets_in_root_on_l1_only_by_default(guest: Guest) -> None:
    """An agent with exec's default allow (host:privileged): L1's root, connecting from a
    reserved source port, runs commands; L1's nobody is refused, told the rule."""
    from tests.privileged_client import client_script, run_client, source_port

    if os.geteuid() != 0:
        pytest.skip("binding a reserved vsock port and switching to nobody need root")
    address = guest_address(guest.call("start_privileged_exec", timeout=BOOT_TIMEOUT))
    with client_script() as client:
        code, out = run_client(client, address, "true", as_nobody=False)
        assert code == 0, out
        assert source_port(out) <= 1023
        assert "ran as 0" in out
        code, out = run_client(client, address, "try", as_nobody=True)
        assert code == 4, out
        assert source_port(out) > 1023
        assert "host:privileged" in out
        code, out = run_client(client, address, "false", as_nobody=False)
        assert code == 4, out
