"""The KVP service over real AF_VSOCK (CID 1, vsock_loopback) in the test VM.

The guest side keeps its pools in files in the daemon's format; the "host" side (here a
client on the loopback transport, so its CID is 1) reads pool 1 and pushes pools 0 and 3.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest

import hvsock
import hvsock.kvp as kvp

from ._support import CID_LOCAL, Proc, target, unused_port

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(240)]


def test_kvp_service_over_vsock(tmp_path: Path) -> None:
    port = unused_port()
    guest = kvp.open_pool(directory=tmp_path)
    guest.set("GuestIp", "10.0.0.7")
    service = kvp.kvp_service(port=port, pool_dir=tmp_path, allow={CID_LOCAL})
    host = hvsock.ServiceHost(grace=2)
    host.add(service, f"vsock://any:{port}")

    def host_side() -> dict[str, Any]:
        with kvp.KvpClient(target(port), timeout=30, retries=3) as client:
            client.update(
                {"HostName": "kvm-host", "VirtualMachineName": "vm3"}, kvp.Pool.AUTO_EXTERNAL
            )
            client.set("Role", "db")
            return {
                "get": client.get("GuestIp"),
                "items": client.items(),
                "facts": client.host_info(),
            }

    async def run() -> dict[str, Any]:
        async with host:
            return await asyncio.to_thread(host_side)

    seen = asyncio.run(run())
    assert seen["get"] == "10.0.0.7"
    assert seen["items"] == [("GuestIp", "10.0.0.7")]
    assert seen["facts"].vm_name == "vm3"
    assert kvp.host_info(tmp_path).host_name == "kvm-host"
    assert kvp.open_pool(0, directory=tmp_path).items() == [("Role", "db")]


def test_kvp_service_lets_only_the_host_in_by_default(tmp_path: Path) -> None:
    port = unused_port()
    host = hvsock.ServiceHost(grace=2)
    host.add(kvp.kvp_service(port=port, pool_dir=tmp_path), f"vsock://any:{port}")

    def denied() -> str:
        with (
            kvp.KvpClient(target(port), timeout=30) as client,
            pytest.raises(hvsock.HvsockError) as info,
        ):
            client.items()
        return str(info.value)

    async def run() -> str:
        async with host:
            return await asyncio.to_thread(denied)

    message = asyncio.run(run())
    assert "refused by the service's allowlist" in message
    assert "is not in it" in message  # the service names the refused peer


@pytest.mark.timeout(600)
def test_kvp_cli_serve_and_vm(tmp_path: Path, hvsock_cmd: list[str]) -> None:
    # Python starts slowly under emulation: generous per-step waits, two CLI processes.
    port = unused_port()
    kvp.open_pool(directory=tmp_path).set("FromGuest", "yes")
    with Proc(
        [
            *hvsock_cmd,
            "kvp",
            "serve",
            "--listen",
            f"vsock://any:{port}",
            "--dir",
            str(tmp_path),
            "--allow",
            str(CID_LOCAL),
        ]
    ) as server:
        server.wait_stderr(r"hvsock: listening on vsock://", timeout=300)
        vm = f"vsock://{CID_LOCAL}:{port}"
        with kvp.KvpClient(vm, timeout=60) as client:
            client.set("VirtualMachineName", "vm-cli", kvp.Pool.AUTO_EXTERNAL)
        with Proc([*hvsock_cmd, "kvp", "--vm", vm, "host-info", "--json"]) as info:
            info.wait_ok(300)
            assert json.loads(info.wait_stdout_eof(30))["vm_name"] == "vm-cli"
        server.popen.send_signal(signal.SIGTERM)
        assert server.wait(120) in (0, 143)
    assert kvp.host_info(tmp_path).vm_name == "vm-cli"
