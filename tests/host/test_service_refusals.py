"""Refusals the peer can see, rpc methods that outlive their client, results over the
message limit (issue 8 defects 4 and 5, issue 13 item 2)."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import hvsock
import hvsock.forwarding
import hvsock.framing
from hvsock import ArgumentError, NotAllowedError, Peer

from ._peers import frame_echo_handler

KINDS = ["tcp", "unix"]
SERVICE_LOG = "hvsock.service"


def address(kind: str, tmp: Path, n: int = 0) -> hvsock.Address:
    if kind == "tcp":
        return hvsock.TcpAddress("127.0.0.1", 0)
    return hvsock.UnixAddress(str(tmp / f"s{n}.sock"))


def stranger(kind: str) -> str:
    """An allow rule that does not match this test's own connections."""
    return "10.0.0.1" if kind == "tcp" else f"uid:{os.getuid() + 1}"


def run_host(
    services: list[hvsock.Service],
    kind: str,
    tmp: Path,
    client: Callable[[hvsock.ServiceHost], Any],
) -> Any:
    """Serve *services*, run the blocking *client(host)* in a thread, return its result."""

    async def main() -> Any:
        host = hvsock.ServiceHost(grace=1)
        for n, service in enumerate(services):
            host.add(service, address(kind, tmp, n))
        async with host:
            return await asyncio.wait_for(asyncio.to_thread(client, host), 30)

    return asyncio.run(main())


# -- refusals ----------------------------------------------------------------------------


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_rpc_client_is_told_why(kind: str, short_tmp: Path) -> None:
    service = hvsock.Service(
        "rpc", 6000, hvsock.rpc_handler({"add": lambda c, p: sum(p)}), allow={stranger(kind)}
    )
    assert service.framed

    def client(host: hvsock.ServiceHost) -> str:
        with (
            hvsock.RpcClient(hvsock.connect(host.addresses["rpc"], timeout=5)) as rpc,
            pytest.raises(NotAllowedError) as info,
        ):
            rpc.call("add", [1, 2])
        return str(info.value)

    message = run_host([service], kind, short_tmp, client)
    assert "refused by the service's allowlist" in message


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_async_rpc_client_is_told_why(kind: str, short_tmp: Path) -> None:
    service = hvsock.Service(
        "rpc", 6000, hvsock.rpc_handler({"add": lambda c, p: sum(p)}), allow={stranger(kind)}
    )

    async def main() -> str:
        host = hvsock.ServiceHost(grace=1)
        host.add(service, address(kind, short_tmp))
        async with host:
            client = hvsock.AsyncRpcClient(
                *await hvsock.open_connection(host.addresses["rpc"], timeout=5)
            )
            try:
                with pytest.raises(NotAllowedError) as info:
                    await client.call("add", [1, 2])
            finally:
                await client.aclose()
            return str(info.value)

    assert "refused by the service's allowlist" in asyncio.run(main())


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_raw_client_gets_a_clean_close(kind: str, short_tmp: Path) -> None:
    async def handler(conn: hvsock.Connection) -> None:
        await conn.write(b"welcome\n")

    service = hvsock.Service("raw", 6000, handler, allow={stranger(kind)})
    assert not service.framed

    def client(host: hvsock.ServiceHost) -> bytes:
        with hvsock.connect(host.addresses["raw"], timeout=5) as sock:
            sock.settimeout(10)
            # Data the service never reads must not turn the close into a reset.
            sock.sendall(b"hello, are you there?\n" * 100)
            got = b""
            while chunk := sock.recv(4096):  # a reset would raise here
                got += chunk
            return got

    assert run_host([service], kind, short_tmp, client) == b""


def test_an_empty_allowlist_is_refused_as_an_argument() -> None:
    async def handler(conn: hvsock.Connection) -> None:
        return None

    for empty in (set(), [], ()):
        with pytest.raises(ArgumentError, match="allow=None"):
            hvsock.Service("x", 5000, handler, allow=empty)
        with pytest.raises(ArgumentError, match="allow=None"):
            hvsock.forwarding.Relay("tcp://127.0.0.1:0", "tcp://127.0.0.1:9", allow=empty)


def test_a_cid_rule_matches_only_that_cid() -> None:
    three = Peer("vsock://3:1234", cid=3)
    assert three.matches(3)
    assert not three.matches(4)
    assert not three.matches(2)
    assert not three.matches("3")
    assert not Peer("unix:///x (pid 1, uid 3)", uid=3, pid=1).matches(3)
    assert not Peer("tcp://3.0.0.0:1", host="3.0.0.0").matches(3)
    vm = uuid.uuid4()
    assert Peer("hvsock://x/y", vm_id=vm).matches(vm)
    assert not Peer("hvsock://x/y", vm_id=vm).matches(uuid.uuid4())
    assert not Peer("hvsock://x/y", vm_id=vm).matches(3)


# -- rpc: a client that hangs up, a result over the limit ------------------------------------


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("kind", KINDS)
def test_a_client_that_hangs_up_cancels_its_method_and_frees_the_slot(
    kind: str, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SERVICE_LOG)
    cancelled: list[str] = []
    started: list[asyncio.Event] = []

    async def forever(conn: hvsock.Connection, params: Any) -> None:
        started[0].set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(str(conn.peer))
            raise

    service = hvsock.Service(
        "rpc",
        6000,
        hvsock.rpc_handler({"forever": forever, "add": lambda c, p: sum(p)}),
        limits=hvsock.Limits(max_connections=1),
    )

    async def main() -> int:
        started.append(asyncio.Event())
        host = hvsock.ServiceHost(grace=1)
        host.add(service, address(kind, short_tmp))
        async with host:
            first = hvsock.AsyncRpcClient(
                *await hvsock.open_connection(host.addresses["rpc"], timeout=5)
            )
            call = asyncio.create_task(first.call("forever"))
            await asyncio.wait_for(started[0].wait(), 10)
            call.cancel()
            await first.aclose()
            # The only slot is free again: a new client is served.
            second = hvsock.AsyncRpcClient(
                *await hvsock.open_connection(host.addresses["rpc"], timeout=5)
            )
            try:
                return int(await asyncio.wait_for(second.call("add", [2, 3]), 10))
            finally:
                await second.aclose()

    assert asyncio.run(main()) == 5
    assert len(cancelled) == 1
    assert any("hung up while 'forever' ran" in r.getMessage() for r in caplog.records)


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("kind", KINDS)
def test_a_result_over_the_limit_gets_an_error_reply(
    kind: str, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SERVICE_LOG)
    service = hvsock.Service(
        "rpc",
        6000,
        hvsock.rpc_handler({"big": lambda c, p: "x" * 5000, "add": lambda c, p: sum(p)}),
        limits=hvsock.Limits(max_message_size=1024),
    )

    def client(host: hvsock.ServiceHost) -> tuple[str, int]:
        with hvsock.RpcClient(hvsock.connect(host.addresses["rpc"], timeout=5)) as rpc:
            with pytest.raises(hvsock.RemoteError) as info:
                rpc.call("big")
            # The connection stays usable.
            return info.value.code, rpc.call("add", [2, 3])

    code, after = run_host([service], kind, short_tmp, client)
    assert (code, after) == ("result_too_large", 5)
    logged = [r.getMessage() for r in caplog.records if "max_message_size" in r.getMessage()]
    assert len(logged) == 1
    assert "max_frame_size" not in logged[0]


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("style", ["sync", "async", "rpc"])
def test_an_oversized_frame_is_logged_with_the_real_setting(
    style: str, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SERVICE_LOG)

    handler = frame_echo_handler(style)
    service = hvsock.Service("small", 6000, handler, limits=hvsock.Limits(max_message_size=64))

    def client(host: hvsock.ServiceHost) -> bytes:
        with hvsock.connect(host.addresses["small"], timeout=5) as sock:
            sock.settimeout(10)
            sock.sendall(hvsock.framing.encode_frame(b"x" * 100, 1000))
            try:
                return sock.recv(100)
            except ConnectionResetError:
                return b""

    assert run_host([service], "unix", short_tmp, client) == b""
    messages = [r.getMessage() for r in caplog.records]
    assert any("100-byte frame" in m and "max_message_size" in m for m in messages), messages
    assert not any("max_frame_size" in m for m in messages)


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("kind", KINDS)
def test_linger_delivers_everything_though_the_peer_still_sends(kind: str, short_tmp: Path) -> None:
    # The handler ends with a reply far larger than both sockets' buffers still on its
    # way and the client's bytes unread. A close then would reset the connection
    # (the kernel drops the unsent tail on TCP, and a Unix peer reads ECONNRESET);
    # half-closing alone does not help, since the unread bytes are what trigger the
    # reset. Only reading the peer to its EOF (linger's drain) delivers the reply
    # whole and ends with a clean EOF, whatever the timing.
    reply = os.urandom(24 << 20)
    unread = os.urandom(256 << 10)

    async def handler(conn: hvsock.Connection) -> None:
        conn.writer.write(reply)
        await conn.linger(seconds=60)

    service = hvsock.Service("talker", 6000, handler)

    def client(host: hvsock.ServiceHost) -> bytes:
        with hvsock.connect(host.addresses["talker"], timeout=5) as sock:
            sock.settimeout(30)
            sock.sendall(unread)
            got = bytearray()
            while chunk := sock.recv(1 << 16):  # a reset raises ConnectionResetError
                got += chunk
                sock.sendall(b"still talking")  # more the handler never reads
            return bytes(got)

    got = run_host([service], kind, short_tmp, client)
    assert len(got) == len(reply)
    assert got == reply
