"""The asyncio layer over TCP, Unix and hybrid vsock, on asyncio's default loop and on uvloop.

Hybrid vsock runs in both directions against hvsock.testing.HybridVsockMuxer:
``hybrid-connect`` dials a guest listener through the VMM socket (open_connection
does the CONNECT/OK handshake), ``hybrid-listen`` serves guest-initiated
connections on ``<uds_path>_<port>`` (start_server).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import hvsock
import hvsock.sockets
from hvsock.testing import HybridVsockMuxer

from ..attempts import connects_to
from ..tiers import import_or_fail

T = TypeVar("T")
Runner = Callable[[Coroutine[Any, Any, T]], T]
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Callback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

GUEST_PORT = 5000
KINDS = ["tcp", "unix", "hybrid-connect", "hybrid-listen"]


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner[Any]:
    """Runs a coroutine on a fresh loop of each kind: ``run(main())``."""
    if request.param == "asyncio":
        return asyncio.run
    uvloop = import_or_fail("uvloop")
    # uvloop opens a process-wide pipe pair with its first loop and keeps it;
    # open it here, before any test's fd baseline is taken.
    uvloop.run(asyncio.sleep(0))
    runner: Runner[Any] = uvloop.run
    return runner


@pytest.fixture
def muxer(short_tmp: Path) -> Iterator[HybridVsockMuxer]:
    with HybridVsockMuxer(str(short_tmp / "vm.sock")) as m:
        yield m


class Endpoint:
    """One kind of server and the matching client, both through hvsock where it can."""

    def __init__(self, kind: str, tmp: Path, muxer: HybridVsockMuxer) -> None:
        self.kind = kind
        self.muxer = muxer
        self.address: hvsock.Address = muxer.address(GUEST_PORT)
        if kind == "tcp":
            self.address = hvsock.TcpAddress("127.0.0.1", 0)
        elif kind == "unix":
            self.address = hvsock.UnixAddress(str(tmp / "s.sock"))

    async def serve(self, callback: Callback) -> asyncio.Server:
        if self.kind == "hybrid-connect":
            listener = self.muxer.guest_listen(GUEST_PORT)
            listener.setblocking(False)
            return await asyncio.start_server(callback, sock=listener)
        server = await hvsock.start_server(callback, self.address)
        if self.kind == "tcp":
            self.address = hvsock.TcpAddress("127.0.0.1", server.sockets[0].getsockname()[1])
        return server

    async def open(self) -> Streams:
        if self.kind == "hybrid-listen":
            sock = self.muxer.guest_connect(GUEST_PORT)
            sock.setblocking(False)
            return await asyncio.open_connection(sock=sock)
        return await hvsock.open_connection(self.address, timeout=5)

    async def close(self, server: asyncio.Server) -> None:
        server.close()
        await server.wait_closed()
        if self.kind != "hybrid-connect":
            hvsock.sockets.remove_socket_file(self.address)


@pytest.fixture(params=KINDS)
def endpoint(request: pytest.FixtureRequest, short_tmp: Path, muxer: HybridVsockMuxer) -> Endpoint:
    return Endpoint(request.param, short_tmp, muxer)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


def test_each_runner_runs_its_own_loop(run: Runner[Any]) -> None:
    async def main() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    assert run(main()) == ("asyncio" if run is asyncio.run else "uvloop")


# -- data both ways ------------------------------------------------------------------


@pytest.mark.usefixtures("fd_baseline")
def test_echo_1mib_checked(endpoint: Endpoint, run: Runner[Any]) -> None:
    payload = os.urandom(1024 * 1024)

    async def main() -> bytes:
        server = await endpoint.serve(_echo)
        try:
            reader, writer = await endpoint.open()

            async def send() -> None:
                for i in range(0, len(payload), 100_000):
                    writer.write(payload[i : i + 100_000])
                    await writer.drain()
                writer.write_eof()

            try:
                _, echoed = await asyncio.wait_for(asyncio.gather(send(), reader.read()), 20)
            finally:
                await _close(writer)
            return echoed
        finally:
            await endpoint.close(server)

    echoed = run(main())
    assert len(echoed) == len(payload)
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


@pytest.mark.usefixtures("fd_baseline")
def test_write_eof_half_closes(endpoint: Endpoint, run: Runner[Any]) -> None:
    """After write_eof the server reads EOF, and its answer still reaches us."""
    payload = os.urandom(200_000)

    async def digest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # to EOF
        writer.write(f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode())
        await _close(writer)

    async def main() -> tuple[bool, bytes]:
        server = await endpoint.serve(digest)
        try:
            reader, writer = await endpoint.open()
            try:
                can = writer.can_write_eof()
                writer.write(payload)
                await writer.drain()
                writer.write_eof()
                answer = await asyncio.wait_for(reader.read(), 10)
            finally:
                await _close(writer)
            return can, answer
        finally:
            await endpoint.close(server)

    can, answer = run(main())
    assert can
    assert answer == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}".encode()


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("kind", ["tcp", "unix", "hybrid-connect"])
def test_connect_socket_is_a_nonblocking_socket_with_nothing_eaten(
    kind: str, short_tmp: Path, muxer: HybridVsockMuxer, run: Runner[Any]
) -> None:
    """The peer speaks first; for hybrid its bytes follow OK at once and must be kept."""
    endpoint = Endpoint(kind, short_tmp, muxer)

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"GREETING\n")
        await _close(writer)

    async def main() -> tuple[bool, bool, bytes]:
        server = await endpoint.serve(greet)
        try:
            loop = asyncio.get_running_loop()
            sock = await hvsock.connect_socket(endpoint.address, timeout=5)
            with sock:
                is_socket = type(sock) is socket.socket
                blocking = sock.getblocking()
                got = b""
                for _ in range(100):
                    chunk = await asyncio.wait_for(loop.sock_recv(sock, 100), 5)
                    if not chunk:
                        break
                    got += chunk
            return is_socket, blocking, got
        finally:
            await endpoint.close(server)

    is_socket, blocking, got = run(main())
    assert is_socket
    assert not blocking
    assert got == b"GREETING\n"


# -- errors, retries, timeouts ---------------------------------------------------------


def _free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("kind", ["tcp", "unix", "hybrid", "hybrid-no-vmm"])
def test_nothing_listening(
    kind: str, short_tmp: Path, muxer: HybridVsockMuxer, run: Runner[Any]
) -> None:
    address, fragment = {
        "tcp": (f"tcp://127.0.0.1:{_free_tcp_port()}", "nothing is listening"),
        "unix": (f"unix://{short_tmp}/none.sock", "socket file does not exist"),
        "hybrid": (str(muxer.address(4)), "nothing in the guest listens on port 4"),
        "hybrid-no-vmm": (f"hybrid://{short_tmp}/none.sock:4", "socket file does not exist"),
    }[kind]

    async def main() -> None:
        await hvsock.open_connection(address, timeout=5)

    start = time.monotonic()
    with pytest.raises(hvsock.NothingListeningError, match=fragment) as info:
        run(main())
    assert time.monotonic() - start < 4
    assert isinstance(info.value, ConnectionRefusedError)


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("kind", ["unix", "hybrid"])
def test_retries_wait_for_a_late_listener(
    kind: str, short_tmp: Path, muxer: HybridVsockMuxer, run: Runner[Any]
) -> None:
    address: hvsock.Address = (
        hvsock.UnixAddress(str(short_tmp / "late.sock"))
        if kind == "unix"
        else muxer.address(GUEST_PORT)
    )
    late: list[socket.socket] = []

    async def start_listening() -> None:
        # Listen once the second attempt began: the first surely found nobody, so a
        # connect that does not retry fails here whatever the machine's speed.
        if await asyncio.to_thread(attempts.reached, 2):
            late.append(
                hvsock.listen(address) if kind == "unix" else muxer.guest_listen(GUEST_PORT)
            )

    async def main() -> None:
        listening = asyncio.create_task(start_listening())
        try:
            _, writer = await hvsock.open_connection(
                address, timeout=1, retries=400, retry_wait=0.05
            )
            await _close(writer)
        finally:
            attempts.stop()  # the connect gave up early: the listener need not wait
            await listening

    # A hybrid dial's attempts are connects to the VMM's socket (the muxer's).
    path = address.path if isinstance(address, hvsock.UnixAddress) else address.uds_path
    try:
        with connects_to(path) as attempts:
            run(main())
    finally:
        for sock in late:
            sock.close()
        if kind == "unix":
            hvsock.sockets.remove_socket_file(address)


@pytest.mark.usefixtures("fd_baseline")
def test_retries_give_up_after_the_count(short_tmp: Path, run: Runner[Any]) -> None:
    async def main() -> None:
        await hvsock.open_connection(
            f"unix://{short_tmp}/never.sock", timeout=1, retries=3, retry_wait=0.05
        )

    with (
        connects_to(f"{short_tmp}/never.sock") as attempts,
        pytest.raises(hvsock.NothingListeningError),
    ):
        run(main())
    # The retries happened, and stopped; each pause at least its wait (the exact
    # schedule is tests/unit/test_retry_waits.py's: a busy machine stretches sleeps).
    assert len(attempts.times) == 4
    pauses = [b - a for a, b in zip(attempts.times[:-1], attempts.times[1:], strict=True)]
    assert all(p >= w - 0.005 for p, w in zip(pauses, (0.05, 0.1, 0.2), strict=True)), pauses


def test_permanent_errors_are_not_retried(run: Runner[Any]) -> None:
    if hvsock.sockets.has_hyperv():
        pytest.skip("this Python has AF_HYPERV")

    async def main() -> None:
        await hvsock.open_connection("hvsock://parent/5000", retries=1, retry_wait=30)

    start = time.monotonic()
    with pytest.raises(hvsock.UnsupportedError, match="Hyper-V sockets are not available"):
        run(main())
    # A retry would wait 30 s; the margin is for a loaded machine.
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"retries": -1}, "retries"),
        ({"retry_wait": -0.1}, "retry_wait"),
        ({"buffer_size": 0}, "buffer size"),
    ],
)
def test_bad_arguments_are_address_errors(
    kwargs: dict[str, Any], fragment: str, short_tmp: Path
) -> None:
    async def main() -> None:
        await hvsock.open_connection(f"unix://{short_tmp}/x.sock", **kwargs)

    with pytest.raises(hvsock.ArgumentError, match=fragment):
        asyncio.run(main())


@pytest.mark.usefixtures("fd_baseline")
def test_silent_vmm_times_out(short_tmp: Path, run: Runner[Any]) -> None:
    """A VMM socket that takes the connection (backlog) but never answers CONNECT."""
    path = str(short_tmp / "silent.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as vmm:
        vmm.bind(path)
        vmm.listen(4)

        async def main() -> None:
            await hvsock.open_connection(hvsock.HybridAddress(path, 52), timeout=0.5)

        start = time.monotonic()
        with pytest.raises(hvsock.ConnectTimeoutError, match="did not answer CONNECT 52"):
            run(main())
        # Above: a busy machine's margin, still under the 10 s default a timeout
        # that was not passed on would give.
        assert 0.4 < time.monotonic() - start < 8
        # The VMM got the request, and then EOF: the timed-out socket was closed.
        vmm.settimeout(5)
        conn, _ = vmm.accept()
        with conn:
            conn.settimeout(5)
            received = b""
            while chunk := conn.recv(100):
                received += chunk
    assert received == b"CONNECT 52\n"


@pytest.mark.usefixtures("fd_baseline")
def test_unix_full_backlog_times_out_clearly(short_tmp: Path, run: Runner[Any]) -> None:
    """A listener that never accepts: connects beyond its backlog time out, as in sync."""
    address = hvsock.UnixAddress(str(short_tmp / "full.sock"))

    async def main(pending: list[socket.socket]) -> hvsock.ConnectTimeoutError | None:
        for _ in range(10):  # Linux queues backlog + 1; the rest must wait
            try:
                pending.append(await hvsock.connect_socket(address, timeout=0.2))
            except hvsock.ConnectTimeoutError as exc:
                return exc
        return None

    pending: list[socket.socket] = []
    with hvsock.listen(address, backlog=0):
        try:
            error = run(main(pending))
            # Whatever connect_socket returned is really connected.
            peers = [sock.getpeername() for sock in pending]
        finally:
            for sock in pending:
                sock.close()
    hvsock.sockets.remove_socket_file(address)
    assert error is not None
    assert "backlog" in str(error)
    assert 1 <= len(pending) < 10
    assert peers == [address.path] * len(pending)


@pytest.mark.usefixtures("fd_baseline")
def test_cancelling_a_pending_connect_closes_its_socket(short_tmp: Path, run: Runner[Any]) -> None:
    """Cancel while the VMM sits on the CONNECT line: the VMM then reads EOF."""
    path = str(short_tmp / "slow.sock")

    async def main() -> bytes:
        got_connect = asyncio.Event()
        after: list[bytes] = []
        done = asyncio.Event()

        async def slow_vmm(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            line = await reader.readline()
            got_connect.set()
            after.append(line + await reader.read())  # EOF once the client closes
            done.set()
            await _close(writer)

        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(4)
        listener.setblocking(False)
        server = await asyncio.start_server(slow_vmm, sock=listener)
        try:
            task = asyncio.create_task(
                hvsock.open_connection(hvsock.HybridAddress(path, 52), timeout=None)
            )
            await asyncio.wait_for(got_connect.wait(), 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(done.wait(), 5)
        finally:
            server.close()
            await server.wait_closed()
        return after[0]

    try:
        assert run(main()) == b"CONNECT 52\n"
    finally:
        os.unlink(path)


@pytest.mark.usefixtures("fd_baseline")
def test_cancelling_during_retries(short_tmp: Path, run: Runner[Any]) -> None:
    path = str(short_tmp / "never.sock")

    async def main() -> float:
        task = asyncio.create_task(
            hvsock.open_connection(f"unix://{path}", timeout=30, retries=1000, retry_wait=0.02)
        )
        # A few attempts failed and retry waits began (the third attempt started).
        with connects_to(path) as attempts:
            task.add_done_callback(lambda _: attempts.stop())  # it gave up: no wait
            await asyncio.to_thread(attempts.wait, 3, "the connect retrying")
        start = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - start

    # Far under the 30 s timeout and the retries' 20 s: the cancel did it, not a timer.
    assert run(main()) < 10


# -- start_server ----------------------------------------------------------------------


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("kind", ["unix", "hybrid"])
def test_start_server_socket_file(
    kind: str, short_tmp: Path, muxer: HybridVsockMuxer, run: Runner[Any]
) -> None:
    """Private by default, left behind by close (as documented), AddressInUse while live."""
    address: hvsock.UnixAddress | hvsock.HybridAddress = (
        hvsock.UnixAddress(str(short_tmp / "srv.sock"))
        if kind == "unix"
        else muxer.address(GUEST_PORT)
    )
    path = address.path if isinstance(address, hvsock.UnixAddress) else address.listen_path

    async def main() -> int:
        server = await hvsock.start_server(_echo, address)
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
            with pytest.raises(hvsock.AddressInUseError, match="already listens"):
                await hvsock.start_server(_echo, address)
        finally:
            server.close()
            await server.wait_closed()
        return mode

    assert run(main()) == 0o600
    assert os.path.exists(path)
    hvsock.sockets.remove_socket_file(address)
    assert not os.path.exists(path)


@pytest.mark.usefixtures("fd_baseline")
def test_start_server_tcp_address_in_use(run: Runner[Any]) -> None:
    async def main() -> None:
        server = await hvsock.start_server(_echo, "tcp://127.0.0.1:0")
        try:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(hvsock.AddressInUseError, match="already in use"):
                await hvsock.start_server(_echo, f"tcp://127.0.0.1:{port}")
        finally:
            server.close()
            await server.wait_closed()

    run(main())
