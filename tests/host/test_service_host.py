"""ServiceHost over TCP, Unix and hybrid vsock: allowlists, limits, stop, readiness, logs.

For hybrid the service listens where the emulated VMM forwards guest-initiated
connections (``host.add(service, muxer.address(port))``) and clients are the
guest's (``muxer.guest_connect(port)``). Each test runs its own event loop with
``asyncio.run`` (the echo test on uvloop too) and waits on real events (a reply,
EOF, a refused connect, a ready file) with bounded deadlines. The last tests run
the real ``hvsock echo-server`` and ``hvsock ping`` commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

import hvsock
import hvsock.framing
import hvsock.services
import hvsock.sockets
from hvsock.testing import HybridVsockMuxer

from ..signals import with_default_signals
from ..tiers import import_or_fail
from .test_relay import _accept_queue

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
KINDS = ["tcp", "unix", "hybrid"]
FIRST_PORT = 5000
SERVICE_LOG = "hvsock.service"


@pytest.fixture(autouse=True)
def _no_inherited_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under systemd the test run itself may have one; hosts here must not use it.
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)


@pytest.fixture
def muxer(short_tmp: Path) -> Iterator[HybridVsockMuxer]:
    with HybridVsockMuxer(str(short_tmp / "vm.sock")) as m:
        yield m


class Site:
    """Where services listen for one address kind, and how their clients get there."""

    def __init__(self, kind: str, tmp: Path, muxer: HybridVsockMuxer) -> None:
        self.kind = kind
        self.tmp = tmp
        self.muxer = muxer

    def address(self, n: int = 0) -> hvsock.Address:
        if self.kind == "tcp":
            return hvsock.TcpAddress("127.0.0.1", 0)
        if self.kind == "unix":
            return hvsock.UnixAddress(str(self.tmp / f"svc{n}.sock"))
        return self.muxer.address(FIRST_PORT + n)

    @property
    def allowed(self) -> str:
        return "127.0.0.1" if self.kind == "tcp" else f"uid:{os.getuid()}"

    @property
    def denied(self) -> str:
        return "10.0.0.1" if self.kind == "tcp" else f"uid:{os.getuid() + 1}"

    async def open(self, host: hvsock.ServiceHost, name: str) -> Streams:
        addr = host.addresses[name]
        if isinstance(addr, hvsock.HybridAddress):
            sock = self.muxer.guest_connect(addr.port)
            sock.setblocking(False)
            return await asyncio.open_connection(sock=sock)
        return await hvsock.open_connection(addr, timeout=5)

    async def refuses(self, host: hvsock.ServiceHost, name: str) -> bool:
        try:
            _, writer = await self.open(host, name)
        except (hvsock.NothingListeningError, ConnectionResetError):
            return True
        await close(writer)
        return False

    def socket_file(self, host: hvsock.ServiceHost, name: str) -> str | None:
        addr = host.addresses[name]
        if isinstance(addr, hvsock.HybridAddress):
            return addr.listen_path
        return addr.path if isinstance(addr, hvsock.UnixAddress) else None

    def peer_fragment(self, writer: asyncio.StreamWriter) -> str:
        """What the service's log says about the client behind *writer*."""
        if self.kind == "tcp":
            return f"tcp://127.0.0.1:{writer.get_extra_info('sockname')[1]}"
        return f"(pid {os.getpid()}, uid {os.getuid()})"


@pytest.fixture(params=KINDS)
def site(request: pytest.FixtureRequest, short_tmp: Path, muxer: HybridVsockMuxer) -> Site:
    return Site(request.param, short_tmp, muxer)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), 30)


async def read_to_eof(reader: asyncio.StreamReader, timeout: float = 30) -> bytes:
    """What the service sends until it closes; a reset counts as closed."""
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return b""


async def until(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def until_async(
    predicate: Callable[[], Awaitable[bool]], what: str, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def records(caplog: pytest.LogCaptureFixture, name: str, fragment: str) -> list[logging.LogRecord]:
    """Records of service *name*'s own logger whose message holds *fragment*."""
    return [
        r
        for r in caplog.records
        if r.name == f"{SERVICE_LOG}.{name}" and fragment in r.getMessage()
    ]


async def echo(conn: hvsock.Connection) -> None:
    while data := await conn.read():
        await conn.write(data)


def sync_echo(conn: hvsock.SyncConnection) -> None:
    while data := conn.recv():
        conn.sendall(data)


async def frame_upper(conn: hvsock.Connection) -> None:
    while (frame := await conn.read_frame()) is not None:
        await conn.write_frame(frame.upper())


def sync_frame_upper(conn: hvsock.SyncConnection) -> None:
    while (frame := conn.recv_frame()) is not None:
        conn.send_frame(frame.upper())


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


async def frame_roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> bytes:
    writer.write(frame(payload))
    await writer.drain()
    return await asyncio.wait_for(hvsock.framing.read_frame(reader), 30) or b""


# -- serving, identity, several services -----------------------------------------------


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def runner(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    if request.param == "asyncio":
        return asyncio.run
    uvloop = import_or_fail("uvloop")
    # uvloop keeps a process-wide pipe pair from its first loop: open it here,
    # before fd_baseline counts (a module fixture is set up first).
    uvloop.run(asyncio.sleep(0))
    run: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    return run


@pytest.mark.usefixtures("fd_baseline")
def test_builtin_echo_checked_payload(
    runner: Callable[[Coroutine[Any, Any, None]], None], site: Site
) -> None:
    payload = os.urandom(512 * 1024)
    echoed: list[bytes] = []

    async def main() -> None:
        service = hvsock.services.echo_service(FIRST_PORT)
        host = hvsock.ServiceHost(grace=1)
        host.add(service, site.address())
        async with host:
            reader, writer = await site.open(host, service.name)

            async def send() -> None:
                writer.write(payload)
                await writer.drain()
                writer.write_eof()

            try:
                _, back = await asyncio.wait_for(asyncio.gather(send(), reader.read()), 20)
                echoed.append(back)
            finally:
                await close(writer)

    runner(main())
    assert hashlib.sha256(echoed[0]).digest() == hashlib.sha256(payload).digest()


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("style", ["async", "sync"])
def test_handler_gets_peer_and_service(site: Site, style: str) -> None:
    seen: list[tuple[hvsock.Peer, hvsock.Service, str]] = []

    async def handler(conn: hvsock.Connection) -> None:
        seen.append((conn.peer, conn.service, threading.current_thread().name))
        await conn.write(f"{conn.service.name}|{conn.peer}\n".encode())

    def sync_handler(conn: hvsock.SyncConnection) -> None:
        seen.append((conn.peer, conn.service, threading.current_thread().name))
        conn.sendall(f"{conn.service.name}|{conn.peer}\n".encode())

    service = hvsock.Service("who", 6000, handler if style == "async" else sync_handler)
    lines: list[bytes] = []

    async def main() -> None:
        host = hvsock.ServiceHost(grace=1)
        host.add(service, site.address())
        async with host:
            reader, writer = await site.open(host, "who")
            try:
                lines.append(await asyncio.wait_for(reader.readline(), 5))
                lines.append(site.peer_fragment(writer).encode())
            finally:
                await close(writer)

    asyncio.run(main())
    peer, got_service, thread = seen[0]
    assert got_service is service
    assert lines[0] == f"who|{peer}\n".encode()
    assert lines[1].decode() in str(peer)
    if site.kind == "tcp":
        assert peer.host == "127.0.0.1"
        assert peer.uid is None
    else:
        assert (peer.uid, peer.pid) == (os.getuid(), os.getpid())
        assert peer.host is None
    assert thread.startswith("hvsock-handler") == (style == "sync")


@pytest.mark.usefixtures("fd_baseline")
def test_one_host_several_services_each_on_its_own_address(
    short_tmp: Path, muxer: HybridVsockMuxer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SERVICE_LOG)
    sites = {kind: Site(kind, short_tmp, muxer) for kind in KINDS}
    ready = short_tmp / "ready.json"
    answers: dict[str, bytes] = {}

    def upper(conn: hvsock.SyncConnection) -> None:
        while data := conn.recv():
            conn.sendall(data.upper())

    services = {
        "tcp": hvsock.services.echo_service(7, name="echo"),
        "unix": hvsock.Service("upper", 8, upper),
        "hybrid": hvsock.Service("rpc", 9, hvsock.rpc_handler({"add": lambda c, p: sum(p)})),
    }

    async def main() -> None:
        host = hvsock.ServiceHost(grace=1, ready_file=str(ready))
        for kind, service in services.items():
            host.add(service, sites[kind].address())
        async with host:
            reader, writer = await sites["tcp"].open(host, "echo")
            answers["echo"] = await roundtrip(reader, writer, b"ping")
            await close(writer)
            reader, writer = await sites["unix"].open(host, "upper")
            answers["upper"] = await roundtrip(reader, writer, b"shout")
            await close(writer)
            reader, writer = await sites["hybrid"].open(host, "rpc")
            client = hvsock.AsyncRpcClient(reader, writer)
            answers["rpc"] = str(await client.call("add", [1, 2, 3])).encode()
            await client.aclose()
            addresses = {name: str(addr) for name, addr in host.addresses.items()}
        assert json.loads(ready.read_text()) == {"pid": os.getpid(), "services": addresses}

    asyncio.run(main())
    assert answers == {"echo": b"ping", "upper": b"SHOUT", "rpc": b"6"}
    for name in ("echo", "upper", "rpc"):
        assert records(caplog, name, "listening on"), f"no 'listening on' log for {name}"
    assert not os.path.exists(short_tmp / "svc0.sock")


@pytest.mark.usefixtures("fd_baseline")
def test_start_failure_closes_what_it_opened(short_tmp: Path) -> None:
    taken = hvsock.UnixAddress(str(short_tmp / "taken.sock"))
    first = hvsock.UnixAddress(str(short_tmp / "first.sock"))

    async def main() -> None:
        host = hvsock.ServiceHost()
        host.add(hvsock.services.echo_service(7, name="first"), first)
        host.add(hvsock.services.echo_service(8, name="second"), taken)
        with pytest.raises(hvsock.AddressInUseError, match="already listens"):
            await host.start()

    with hvsock.listen(taken):
        asyncio.run(main())
        assert os.path.exists(taken.path), "another process's socket file was removed"
    assert not os.path.exists(first.path)
    hvsock.sockets.remove_socket_file(taken)


# -- the allowlist ---------------------------------------------------------------------


@pytest.mark.usefixtures("fd_baseline")
def test_allowlist_denies_before_the_handler(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=SERVICE_LOG)
    reached: list[str] = []

    async def handler(conn: hvsock.Connection) -> None:
        reached.append(conn.service.name)
        await conn.write(b"welcome\n")

    guarded = hvsock.Service("guarded", 6000, handler, allow={site.denied})
    friendly = hvsock.Service("friendly", 6001, handler, allow={site.allowed, 3})
    results: dict[str, bytes] = {}
    fragments: list[str] = []

    async def main() -> None:
        host = hvsock.ServiceHost(grace=1)
        host.add(guarded, site.address(0))
        host.add(friendly, site.address(1))
        async with host:
            for name in ("guarded", "friendly", "guarded"):
                reader, writer = await site.open(host, name)
                try:
                    results[name] = await read_to_eof(reader)
                    fragments.append(site.peer_fragment(writer))
                finally:
                    await close(writer)

    asyncio.run(main())
    assert results == {"guarded": b"", "friendly": b"welcome\n"}
    assert reached == ["friendly"]
    denied = records(caplog, "guarded", "not in the allowlist")
    assert len(denied) == 2
    assert all(r.levelno == logging.WARNING for r in denied)
    assert fragments[0] in denied[0].getMessage()
    assert not records(caplog, "friendly", "not in the allowlist")


# -- limits ----------------------------------------------------------------------------


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("style", ["async", "sync"])
def test_back_pressure_at_the_connection_limit(site: Site, style: str) -> None:
    """At the limit the host stops accepting; the next client waits, is not dropped."""

    async def handler(conn: hvsock.Connection) -> None:
        await conn.write(b"hi")
        await conn.read()  # until the client says bye (or leaves)

    def sync_handler(conn: hvsock.SyncConnection) -> None:
        conn.sendall(b"hi")
        conn.recv(10)

    service = hvsock.Service(
        "limited",
        6000,
        handler if style == "async" else sync_handler,
        limits=hvsock.Limits(max_connections=2, idle_timeout=10),
    )
    # An echo on the same host: a round trip through it makes the host's loop go round.
    probe = hvsock.Service("probe", 6001, echo)
    observed: dict[str, object] = {}

    async def main() -> None:
        host = hvsock.ServiceHost(grace=1)
        host.add(service, site.address())
        host.add(probe, site.address(1))
        async with host:
            probe_reader, probe_writer = await site.open(host, "probe")
            clients = [await site.open(host, "limited") for _ in range(3)]
            try:
                for reader, _ in clients[:2]:
                    assert await asyncio.wait_for(reader.readexactly(2), 30) == b"hi"
                # The third waits in the backlog. No fixed wait decides it: once the
                # kernel has it queued (a Unix connect returns queued; TCP's queue is
                # read from /proc), two round trips through the probe make the host's
                # loop go round twice, and an accept loop still watching its listener
                # would have taken the third (and counted it) in that time.
                address = host.addresses["limited"]
                if isinstance(address, hvsock.TcpAddress):
                    await until(
                        lambda: _accept_queue(address.port) == 1, "the third in the accept queue"
                    )
                for ping in (b"1", b"2"):
                    assert await roundtrip(probe_reader, probe_writer, ping) == ping
                if isinstance(address, hvsock.TcpAddress):
                    observed["queued"] = _accept_queue(address.port)
                observed["active"] = host.active_connections("limited")
                clients[0][1].write(b"bye")
                await clients[0][1].drain()
                observed["first closed"] = await read_to_eof(clients[0][0])
                observed["third"] = await asyncio.wait_for(clients[2][0].readexactly(2), 30)
                observed["second still"] = not clients[1][0].at_eof()
            finally:
                for _, writer in [*clients, (probe_reader, probe_writer)]:
                    await close(writer)

    asyncio.run(main())
    queued = {"queued": 1} if site.kind == "tcp" else {}
    assert observed == {
        **queued,
        "active": 2,
        "first closed": b"",
        "third": b"hi",
        "second still": True,
    }


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("style", ["async", "sync"])
def test_idle_timeout_closes_only_the_silent_peer(
    site: Site, style: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SERVICE_LOG)
    service = hvsock.Service(
        "idle",
        6000,
        echo if style == "async" else sync_echo,
        limits=hvsock.Limits(idle_timeout=1.5),
    )
    observed: dict[str, object] = {}

    async def main() -> None:
        host = hvsock.ServiceHost(grace=1)
        host.add(service, site.address())
        async with host:
            start = time.monotonic()  # before the connect: the timer starts after it
            silent_reader, silent_writer = await site.open(host, "idle")
            chatty_reader, chatty_writer = await site.open(host, "idle")
            try:
                closed = asyncio.create_task(read_to_eof(silent_reader))
                echoes = []
                # Talk until the silent one is closed (bounded), each pause 0.05 s: 30
                # times under the timeout, a margin a busy machine cannot eat.
                for i in range(400):
                    await asyncio.sleep(0.05)
                    echoes.append(await roundtrip(chatty_reader, chatty_writer, b"%d" % i))
                    if closed.done():
                        break
                observed["silent got"] = await closed
                observed["silent closed in time"] = 1.4 < time.monotonic() - start < 20
                observed["chatty echoes"] = len(echoes) >= 10 and echoes == [
                    b"%d" % i for i in range(len(echoes))
                ]
                observed["chatty still"] = await roundtrip(chatty_reader, chatty_writer, b"x")
                observed["fragment"] = site.peer_fragment(silent_writer)
            finally:
                await close(silent_writer)
                await close(chatty_writer)

    asyncio.run(main())
    fragment = observed.pop("fragment")
    assert observed == {
        "silent got": b"",
        "silent closed in time": True,
        "chatty echoes": True,
        "chatty still": b"x",
    }
    idle = records(caplog, "idle", "idle")
    assert len(idle) == 1, [r.getMessage() for r in caplog.records]
    assert str(fragment) in idle[0].getMessage()
    assert "1.5 s" in idle[0].getMessage()


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("style", ["async", "sync"])
def test_total_timeout_ends_even_a_busy_connection(site: Site, style: str) -> None:
    service = hvsock.Service(
        "total",
        6000,
        echo if style == "async" else sync_echo,
        limits=hvsock.Limits(idle_timeout=None, total_timeout=1.5),
    )
    observed: dict[str, object] = {}

    async def main() -> None:
        host = hvsock.ServiceHost(grace=1)
        host.add(service, site.address())
        async with host:
            start = time.monotonic()  # before the connect: the timer starts after it
            reader, writer = await site.open(host, "total")
            echoes = 0
            try:
                for i in range(400):  # at most ~20 s of chatting
                    writer.write(b"%03d" % i)
                    await writer.drain()
                    data = await asyncio.wait_for(reader.read(3), 5)
                    if not data:
                        break
                    echoes += 1
                    await asyncio.sleep(0.05)
            except ConnectionError:
                pass
            finally:
                await close(writer)
            # 1.5 s gives even a busy machine time for a few echoes first.
            observed["elapsed ok"] = 1.4 < time.monotonic() - start < 20
            observed["echoed some"] = echoes >= 3

    asyncio.run(main())
    assert observed == {"elapsed ok": True, "echoed some": True}


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("style", ["async", "sync"])
def test_oversized_frame_closes_that_connection_only(
    site: Site, style: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SERVICE_LOG)
    service = hvsock.Service(
        "frames",
        6000,
        frame_upper if style == "async" else sync_frame_upper,
        limits=hvsock.Limits(max_message_size=64),
    )
    observed: dict[str, object] = {}

    async def main() -> None:
        host = hvsock.ServiceHost(grace=1)
        host.add(service, site.address())
        async with host:
            good_reader, good_writer = await site.open(host, "frames")
            bad_reader, bad_writer = await site.open(host, "frames")
            try:
                observed["at limit"] = await frame_roundtrip(good_reader, good_writer, b"a" * 64)
                observed["fragment"] = site.peer_fragment(bad_writer)
                bad_writer.write(frame(b"b" * 65))
                await bad_writer.drain()
                observed["bad got"] = await read_to_eof(bad_reader)
                observed["good still"] = await frame_roundtrip(good_reader, good_writer, b"ok")
            finally:
                await close(good_writer)
                await close(bad_writer)
            reader, writer = await site.open(host, "frames")
            observed["new client"] = await frame_roundtrip(reader, writer, b"new")
            await close(writer)

    asyncio.run(main())
    fragment = observed.pop("fragment")
    assert observed == {
        "at limit": b"A" * 64,
        "bad got": b"",
        "good still": b"OK",
        "new client": b"NEW",
    }
    errors = records(caplog, "frames", "65-byte frame, over the 64-byte limit")
    assert len(errors) == 1
    assert errors[0].levelno == logging.WARNING
    assert str(fragment) in errors[0].getMessage()


MALFORMED = {
    "not json": (frame(b"\xffnot json"), "not UTF-8 JSON"),
    "json array": (frame(b"[1, 2]"), "must be a JSON object"),
    "response, not request": (frame(b'{"id": 1, "result": 2}'), "expected a request"),
    "bad id": (frame(b'{"id": -1, "method": "add"}'), "request id must be"),
    "cut in header": (b"\x00\x00", "middle of a frame header"),
    "cut in body": (b"\x00\x00\x00\x0a{}", "(2 of 10 bytes)"),
}


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_frame_is_a_protocol_error(
    site: Site, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SERVICE_LOG)
    data, message = MALFORMED[case]
    service = hvsock.Service("rpc", 6000, hvsock.rpc_handler({"add": lambda c, p: sum(p)}))
    observed: dict[str, object] = {}

    async def main() -> None:
        host = hvsock.ServiceHost(grace=1)
        host.add(service, site.address())
        async with host:
            reader, writer = await site.open(host, "rpc")
            good = hvsock.AsyncRpcClient(*await site.open(host, "rpc"))
            try:
                writer.write(data)
                await writer.drain()
                if case.startswith("cut"):
                    writer.write_eof()
                observed["bad got"] = await read_to_eof(reader)
                observed["good still"] = await good.call("add", [2, 3])
            finally:
                await close(writer)
                await good.aclose()

    asyncio.run(main())
    assert observed == {"bad got": b"", "good still": 5}
    logged = records(caplog, "rpc", message)
    assert len(logged) == 1, [r.getMessage() for r in caplog.records]
    assert logged[0].levelno == logging.WARNING
    assert "closed" in logged[0].getMessage()


@pytest.mark.usefixtures("fd_baseline")
def test_rpc_errors_keep_the_connection(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=SERVICE_LOG)

    def find(conn: hvsock.Connection, params: Any) -> Any:
        raise hvsock.RemoteError("not_found", f"no {params}")

    async def peer(conn: hvsock.Connection, params: Any) -> Any:
        return conn.peer.uid if conn.peer.uid is not None else conn.peer.host

    methods = {"find": find, "peer": peer, "crash": lambda c, p: 1 / 0}
    service = hvsock.Service("rpc", 6000, hvsock.rpc_handler(methods))
    errors: list[tuple[str, str]] = []
    answers: list[Any] = []

    async def main() -> None:
        host = hvsock.ServiceHost(grace=1)
        host.add(service, site.address())
        async with host:
            client = hvsock.AsyncRpcClient(*await site.open(host, "rpc"))
            try:
                for method in ("find", "nope", "crash"):
                    with pytest.raises(hvsock.RemoteError) as info:
                        await client.call(method, "x")
                    errors.append((info.value.code, info.value.remote_message))
                answers.append(await client.call("peer"))
            finally:
                await client.aclose()

    asyncio.run(main())
    assert errors == [
        ("not_found", "no x"),
        ("unknown_method", "no method 'nope'; known: crash, find, peer"),
        ("internal_error", "method 'crash' failed"),
    ]
    assert answers == ["127.0.0.1" if site.kind == "tcp" else os.getuid()]
    crashed = records(caplog, "rpc", "method 'crash' failed for peer")
    assert len(crashed) == 1
    assert crashed[0].exc_info is not None
    assert crashed[0].exc_info[0] is ZeroDivisionError


# -- failures and slow peers stay with their own connection ----------------------------


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("style", ["async", "sync"])
def test_raising_handler_is_logged_and_closes_only_its_connection(
    site: Site, style: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SERVICE_LOG)

    async def handler(conn: hvsock.Connection) -> None:
        while line := await conn.readline():
            if line == b"boom\n":
                raise RuntimeError("handler blew up")
            await conn.write(line)

    def sync_handler(conn: hvsock.SyncConnection) -> None:
        while data := conn.recv():
            if data == b"boom\n":
                raise RuntimeError("handler blew up")
            conn.sendall(data)

    service = hvsock.Service("fragile", 6000, handler if style == "async" else sync_handler)
    observed: dict[str, object] = {}

    async def main() -> None:
        host = hvsock.ServiceHost(grace=1)
        host.add(service, site.address())
        async with host:
            good_reader, good_writer = await site.open(host, "fragile")
            bad_reader, bad_writer = await site.open(host, "fragile")
            try:
                observed["good before"] = await roundtrip(good_reader, good_writer, b"one\n")
                observed["fragment"] = site.peer_fragment(bad_writer)
                bad_writer.write(b"boom\n")
                await bad_writer.drain()
                observed["bad got"] = await read_to_eof(bad_reader)
                observed["good after"] = await roundtrip(good_reader, good_writer, b"two\n")
            finally:
                await close(good_writer)
                await close(bad_writer)

    asyncio.run(main())
    fragment = observed.pop("fragment")
    assert observed == {"good before": b"one\n", "bad got": b"", "good after": b"two\n"}
    failed = records(caplog, "fragile", "handler failed for peer")
    assert len(failed) == 1
    assert failed[0].levelno == logging.ERROR
    assert str(fragment) in failed[0].getMessage()
    assert failed[0].exc_info is not None
    assert failed[0].exc_info[0] is RuntimeError


@pytest.mark.usefixtures("fd_baseline")
def test_handler_raising_timeout_error_is_a_handler_failure(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A TimeoutError of the handler's own is not "over the total timeout"."""
    caplog.set_level(logging.INFO, logger=SERVICE_LOG)

    async def handler(conn: hvsock.Connection) -> None:
        await asyncio.wait_for(conn.read(), 0.05)  # the client stays silent

    service = hvsock.Service("impatient", 6000, handler, limits=hvsock.Limits(idle_timeout=None))
    got: list[bytes] = []

    async def main() -> None:
        host = hvsock.ServiceHost(grace=1)
        host.add(service, hvsock.UnixAddress(str(short_tmp / "svc.sock")))
        async with host:
            reader, writer = await hvsock.open_connection(host.addresses["impatient"])
            got.append(await read_to_eof(reader))
            await close(writer)

    asyncio.run(main())
    assert got == [b""]
    failed = records(caplog, "impatient", "handler failed for peer")
    assert len(failed) == 1
    assert failed[0].exc_info is not None
    assert issubclass(failed[0].exc_info[0], TimeoutError)  # type: ignore[arg-type]
    assert not records(caplog, "impatient", "total timeout")


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("style", ["async", "sync"])
def test_slow_client_does_not_block_others(site: Site, style: str) -> None:
    service = hvsock.Service(
        "frames",
        6000,
        frame_upper if style == "async" else sync_frame_upper,
        limits=hvsock.Limits(idle_timeout=60),
    )
    observed: dict[str, object] = {}

    async def main() -> None:
        host = hvsock.ServiceHost(grace=1)
        host.add(service, site.address())
        async with host:
            slow_reader, slow_writer = await site.open(host, "frames")
            fast_reader, fast_writer = await site.open(host, "frames")
            try:
                # Half a frame, then nothing: its handler waits for the rest.
                slow_writer.write(frame(b"0123456789")[:7])
                await slow_writer.drain()
                # No clock: a host the slow client blocked would answer none of these
                # until the rest of its frame came, which is sent only after them.
                answers = [
                    await frame_roundtrip(fast_reader, fast_writer, b"x%d" % i) for i in range(50)
                ]
                observed["fast"] = answers == [b"X%d" % i for i in range(50)]
                slow_writer.write(frame(b"0123456789")[7:])
                await slow_writer.drain()
                observed["slow"] = await asyncio.wait_for(hvsock.framing.read_frame(slow_reader), 5)
            finally:
                await close(slow_writer)
                await close(fast_writer)

    asyncio.run(main())
    assert observed == {"fast": True, "slow": b"0123456789"}


# -- stopping ------------------------------------------------------------------------


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("style", ["async", "sync"])
def test_graceful_stop_lets_in_flight_requests_finish(
    site: Site, style: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SERVICE_LOG)
    started = threading.Event()
    # The handler finishes only when the test lets it, after it saw the refusal: no
    # handler outruns a slow listener close on a busy machine.
    release = threading.Event()
    finished: list[bytes] = []

    async def handler(conn: hvsock.Connection) -> None:
        request = await conn.readline()
        started.set()
        await asyncio.to_thread(release.wait, 60)
        await conn.write(b"done: " + request)
        finished.append(request)

    def sync_handler(conn: hvsock.SyncConnection) -> None:
        request = b""
        while not request.endswith(b"\n") and (data := conn.recv(100)):
            request += data
        started.set()
        release.wait(60)
        conn.sendall(b"done: " + request)
        finished.append(request)

    service = hvsock.Service("slow", 6000, handler if style == "async" else sync_handler)
    observed: dict[str, object] = {}

    async def main() -> None:
        host = hvsock.ServiceHost(grace=60)  # stop() returns once the handler did
        host.add(service, site.address())
        await host.start()
        path = site.socket_file(host, "slow")
        reader, writer = await site.open(host, "slow")
        try:
            writer.write(b"work\n")
            await writer.drain()
            await until(started.is_set, "the handler to start")
            stopping = asyncio.create_task(host.stop())
            # New connections are refused while the in-flight one still runs.
            await until_async(lambda: site.refuses(host, "slow"), "the listener to close")
            observed["in flight at refusal"] = host.active_connections("slow")
            release.set()
            observed["reply"] = await asyncio.wait_for(reader.readline(), 30)
            await asyncio.wait_for(stopping, 30)
        finally:
            release.set()
            await close(writer)
        observed["path"] = path

    asyncio.run(main())
    path = observed.pop("path")
    assert observed == {"in flight at refusal": 1, "reply": b"done: work\n"}
    assert path is None or not os.path.exists(str(path))
    assert finished == [b"work\n"]
    assert not [r for r in caplog.records if "cancel" in r.getMessage()]


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("style", ["async", "sync"])
def test_stop_cancels_handlers_after_the_grace_period(
    site: Site, style: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SERVICE_LOG)
    started = threading.Event()

    async def handler(conn: hvsock.Connection) -> None:
        started.set()
        await conn.read()  # the client never sends

    def sync_handler(conn: hvsock.SyncConnection) -> None:
        started.set()
        conn.recv(10)

    service = hvsock.Service(
        "stuck",
        6000,
        handler if style == "async" else sync_handler,
        limits=hvsock.Limits(idle_timeout=None),
    )
    observed: dict[str, object] = {}

    async def main() -> None:
        host = hvsock.ServiceHost(grace=10)
        host.add(service, site.address())
        async with host:
            reader, writer = await site.open(host, "stuck")
            try:
                await until(started.is_set, "the handler to start")
                start = time.monotonic()
                await asyncio.wait_for(host.stop(grace=0.2), 8)
                observed["stop took"] = 0.15 < time.monotonic() - start < 6
                observed["client got"] = await read_to_eof(reader)
                observed["active"] = host.active_connections("stuck")
            finally:
                await close(writer)

    asyncio.run(main())
    assert observed == {"stop took": True, "client got": b"", "active": 0}
    assert records(caplog, "stuck", "cancelled connection from")
    assert [
        r
        for r in caplog.records
        if r.name == SERVICE_LOG
        and "cancelled 1 connection(s) after the grace period" in r.getMessage()
    ]


@pytest.mark.usefixtures("fd_baseline")
def test_request_stop_from_a_handler_ends_serve(site: Site) -> None:
    ready = site.tmp / "ready.json"
    host = hvsock.ServiceHost(grace=2, ready_file=str(ready))

    async def handler(conn: hvsock.Connection) -> None:
        await conn.write(b"bye\n")
        host.request_stop()

    host.add(hvsock.Service("stopper", 6000, handler), site.address())
    got: list[bytes] = []

    async def main() -> None:
        serving = asyncio.create_task(host.serve(handle_signals=False))
        await until(ready.exists, "the host to be ready")
        reader, writer = await site.open(host, "stopper")
        try:
            got.append(await asyncio.wait_for(reader.readline(), 5))
            await asyncio.wait_for(serving, 5)
        finally:
            await close(writer)
        await asyncio.wait_for(host.wait_stopped(), 1)

    asyncio.run(main())
    assert got == [b"bye\n"]


# -- readiness ---------------------------------------------------------------------------


@pytest.fixture
def notify_socket(short_tmp: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(short_tmp / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield sock, path


@pytest.mark.usefixtures("fd_baseline")
def test_ready_file_sd_notify_and_log_line(
    short_tmp: Path,
    notify_socket: tuple[socket.socket, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=SERVICE_LOG)
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    ready = short_tmp / "state" / "ready.json"
    ready.parent.mkdir()
    address = hvsock.UnixAddress(str(short_tmp / "svc.sock"))
    observed: dict[str, object] = {}

    async def main() -> None:
        host = hvsock.ServiceHost(grace=1, ready_file=str(ready))
        host.add(hvsock.services.echo_service(7, name="echo"), address)
        host.add(hvsock.services.echo_service(8, name="echo tcp"), "tcp://127.0.0.1:0")
        await host.start()
        try:
            observed["notified"] = sock.recv(1000)
            observed["ready file"] = json.loads(ready.read_text())
            observed["tcp"] = str(host.addresses["echo tcp"])
            observed["ready dir"] = sorted(os.listdir(ready.parent))
        finally:
            await host.stop()
        observed["stopping"] = sock.recv(1000)

    asyncio.run(main())
    tcp = observed.pop("tcp")
    assert tcp != "tcp://127.0.0.1:0"
    assert observed == {
        "notified": b"READY=1\nSTATUS=serving echo, echo tcp",
        "ready file": {"pid": os.getpid(), "services": {"echo": str(address), "echo tcp": tcp}},
        "ready dir": ["ready.json"],  # written atomically: no temp file left
        "stopping": b"STOPPING=1",
    }
    ready_lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == SERVICE_LOG and r.getMessage().startswith("ready:")
    ]
    assert ready_lines == [f"ready: echo on {address}, echo tcp on {tcp}"]


@pytest.mark.usefixtures("fd_baseline")
def test_unreachable_notify_socket_is_a_warning_not_a_failure(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SERVICE_LOG)
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_tmp / "nobody-here"))
    got: list[bytes] = []

    async def main() -> None:
        host = hvsock.ServiceHost(grace=1)
        host.add(hvsock.services.echo_service(7), hvsock.UnixAddress(str(short_tmp / "svc.sock")))
        async with host:
            reader, writer = await hvsock.open_connection(host.addresses["hvsock echo"])
            got.append(await roundtrip(reader, writer, b"still serving"))
            await close(writer)

    asyncio.run(main())
    assert got == [b"still serving"]
    assert [
        r
        for r in caplog.records
        if r.name == SERVICE_LOG
        and r.levelno == logging.WARNING
        and "could not notify systemd" in r.getMessage()
    ]


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_takes_an_environ_mapping(
    abstract: bool, notify_socket: tuple[socket.socket, str]
) -> None:
    from hvsock._server.lifecycle import sd_notify

    sock, path = notify_socket
    if abstract:
        name = f"hvsock-notify-{os.getpid()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract_sock:
            abstract_sock.bind("\0" + name)
            abstract_sock.settimeout(5)
            assert sd_notify("READY=1", {"NOTIFY_SOCKET": "@" + name}) is True
            assert abstract_sock.recv(100) == b"READY=1"
        return
    assert sd_notify("READY=1\nSTATUS=x", {"NOTIFY_SOCKET": path}) is True
    assert sock.recv(100) == b"READY=1\nSTATUS=x"
    assert sd_notify("READY=1", {}) is False
    assert sd_notify("READY=1", {"NOTIFY_SOCKET": ""}) is False


# -- logging -------------------------------------------------------------------------------


@pytest.mark.usefixtures("fd_baseline")
def test_each_service_logs_to_its_own_logger_with_the_peer(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=SERVICE_LOG)
    peers: list[str] = []

    async def main() -> None:
        host = hvsock.ServiceHost(grace=1)
        host.add(hvsock.services.echo_service(7, name="alpha"), site.address(0))
        host.add(hvsock.services.echo_service(8, name="beta"), site.address(1))
        async with host:
            for name in ("alpha", "beta"):
                reader, writer = await site.open(host, name)
                await roundtrip(reader, writer, b"hello")
                peers.append(site.peer_fragment(writer))
                await close(writer)

    asyncio.run(main())
    for name, fragment in zip(("alpha", "beta"), peers, strict=True):
        connected = records(caplog, name, "connection from")
        assert len(connected) == 1
        assert fragment in connected[0].getMessage()
        assert records(caplog, name, "listening on")
    assert not [
        r
        for r in caplog.records
        if r.name.startswith(f"{SERVICE_LOG}.")
        and r.name not in (f"{SERVICE_LOG}.alpha", f"{SERVICE_LOG}.beta")
    ]


# -- the real commands: echo-server under signals, ping against it ------------------------


def _start_echo_server(
    hvsock_cmd: list[str], address: str, tmp: Path, *extra: str
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``hvsock echo-server``; return it and its address once its ready file exists."""
    ready = tmp / "ready.json"
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    # Tests send it SIGINT and SIGTERM: at their defaults even if this run ignores them.
    proc = subprocess.Popen(
        with_default_signals(
            [*hvsock_cmd, "echo-server", address, "--ready-file", str(ready), *extra]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"echo-server never became ready: {err.decode()}")
        time.sleep(0.01)
    services = json.loads(ready.read_text())["services"]
    return proc, next(iter(services.values()))


@pytest.mark.parametrize(
    ("kind", "sig"), [("unix", signal.SIGTERM), ("hybrid", signal.SIGTERM), ("tcp", signal.SIGINT)]
)
def test_echo_server_stops_gracefully_on_a_signal_mid_conversation(
    kind: str, sig: signal.Signals, short_tmp: Path, muxer: HybridVsockMuxer, hvsock_cmd: list[str]
) -> None:
    address = {
        "unix": f"unix://{short_tmp}/echo.sock",
        "tcp": "tcp://127.0.0.1:0",
        "hybrid": f"hybrid://{muxer.uds_path}:7",
    }[kind]
    proc, actual = _start_echo_server(hvsock_cmd, address, short_tmp, "--grace", "10")
    parsed = hvsock.parse_address(actual)
    try:
        client = (
            muxer.guest_connect(7)
            if isinstance(parsed, hvsock.HybridAddress)
            else hvsock.connect(parsed, timeout=5)
        )
        with client:
            client.settimeout(5)
            client.sendall(b"one")
            assert client.recv(10) == b"one"
            proc.send_signal(sig)
            # The listener goes first; the conversation in flight carries on.
            deadline = time.monotonic() + 30
            while not _refused(parsed, muxer):
                assert time.monotonic() < deadline, "the listener never closed"
                time.sleep(0.02)
            assert proc.poll() is None
            client.sendall(b"two")
            assert client.recv(10) == b"two"
        status = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=10)
    assert status == 0, err.decode()
    assert f"listening on {actual}" in err.decode()
    if isinstance(parsed, hvsock.UnixAddress):
        assert not os.path.exists(parsed.path)
    if isinstance(parsed, hvsock.HybridAddress):
        assert not os.path.exists(parsed.listen_path)


def _refused(address: hvsock.Address, muxer: HybridVsockMuxer) -> bool:
    try:
        if isinstance(address, hvsock.HybridAddress):
            muxer.guest_connect(address.port).close()
        else:
            hvsock.connect(address, timeout=1).close()
    except (hvsock.NothingListeningError, ConnectionResetError):
        return True
    return False


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:0", "unix://{tmp}/echo.sock"])
def test_ping_against_echo_server_processes(
    address: str, short_tmp: Path, hvsock_cmd: list[str]
) -> None:
    proc, actual = _start_echo_server(hvsock_cmd, address.format(tmp=short_tmp), short_tmp)
    try:
        result = subprocess.run(
            [*hvsock_cmd, "ping", actual, "-c", "25", "-s", "64", "--json"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
    assert result.returncode == 0, result.stderr.decode()
    stats = json.loads(result.stdout)
    assert stats["count"] == 25
    assert stats["size"] == 64
    assert stats["address"] == actual
    assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    assert stats["min_ms"] <= stats["mean_ms"] <= stats["max_ms"]
    assert status == 0


def test_active_connections_of_an_unknown_service_is_a_key_error() -> None:
    host = hvsock.ServiceHost()
    host.add(hvsock.services.echo_service(), "tcp://127.0.0.1:0")
    assert host.active_connections("hvsock echo") == 0
    with pytest.raises(KeyError, match="no service named 'nope'"):
        host.active_connections("nope")
