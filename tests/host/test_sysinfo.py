"""info, health and time behind the agent's service hello, over a real Unix socket."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hvsock
import hvsock.framing
from hvsock._builtin import sysinfo
from hvsock._builtin.agent.config import default_config
from hvsock._core import mux
from hvsock._core.addresses import parse_address
from tests.agent_thread import AgentThread

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def address(short_tmp: Path) -> Iterator[str]:
    config = default_config()  # info, health, time: the defaults
    config.listen = parse_address(f"unix://{short_tmp}/agent.sock")
    with AgentThread(config) as running:
        yield running.address()


def rpc(address: str, service: str) -> hvsock.RpcClient:
    sock = hvsock.connect(address)
    sock.settimeout(30)
    hvsock.framing.send_frame(sock, mux.encode_hello(service))
    mux.decode_answer(hvsock.framing.recv_frame(sock) or b"")
    return hvsock.RpcClient(sock)


def test_info_reports_this_machine(address: str) -> None:
    with rpc(address, "info") as client:
        info = client.call("info")
    assert info["hostname"] == socket.gethostname()
    assert info["agent_version"] == hvsock.__version__
    assert info["os"]["kernel-release"]
    assert "lo" in {i["name"] for i in info["interfaces"]}
    assert info["uptime"] > 0


def test_exec_is_off_by_default(address: str) -> None:
    with pytest.raises(hvsock.RemoteError) as err:
        hvsock.exec(address, ["true"])
    assert err.value.code == "unknown_service"


def test_health_report_status_and_watch(address: str) -> None:
    with rpc(address, "health") as host, rpc(address, "health") as app:
        before = host.call("status")["version"]
        seen: list[Any] = []
        watcher = threading.Thread(
            target=lambda: seen.append(host.call("watch", {"after": before, "timeout": 30}))
        )
        watcher.start()
        app.call("report", {"name": "web", "state": "healthy", "message": "200 OK"})
        watcher.join(30)
        assert seen[0]["apps"]["web"]["state"] == "healthy"
        assert seen[0]["version"] == before + 1
        with pytest.raises(hvsock.RemoteError, match="state must be one of"):
            app.call("report", {"name": "web", "state": "fine"})
        with pytest.raises(hvsock.RemoteError, match="bad_request"):
            app.call("watch", {"after": "x"})


def test_time_now_and_set_off_by_default(address: str) -> None:
    with rpc(address, "time") as client:
        now = client.call("now")
        assert abs(now["realtime_ns"] - time.time_ns()) < 60e9
        with pytest.raises(hvsock.RemoteError) as err:
            client.call("set", {"realtime_ns": time.time_ns()})
    assert err.value.code == "disabled"


def test_time_set_when_enabled_with_a_step_limit(short_tmp: Path) -> None:
    steps: list[int] = []
    service = sysinfo.time_service(allow_set=True, max_step=5.0, set_clock=steps.append)
    path = f"unix://{short_tmp}/t.sock"

    host = hvsock.ServiceHost()
    host.add(service, path)

    async def run() -> tuple[Any, BaseException | None]:
        async with host:
            reader, writer = await hvsock.open_connection(path)
            client = hvsock.AsyncRpcClient(reader, writer)
            target = time.time_ns() + 1_000_000_000
            ok = await client.call("set", {"realtime_ns": target})
            try:
                await client.call("set", {"realtime_ns": target + 3600 * 10**9})
                refused = None
            except hvsock.RemoteError as exc:
                refused = exc
            await client.aclose()
            return ok, refused

    ok, refused = asyncio.run(run())
    assert "realtime_ns" in ok
    assert len(steps) == 1
    assert isinstance(refused, hvsock.RemoteError)
    assert refused.code == "refused"
