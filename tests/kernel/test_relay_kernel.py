"""The relay over real AF_VSOCK (inside the test VM, vsock_loopback, CID 1 only).

Payloads exact through tcp->vsock, vsock->vsock and vsock->tcp relays on both data
paths (splice and copy), half-close carried both ways over vsock, a vsock target
that is down, and the commands end to end (``hvsock relay`` + ``hvsock stress``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator

import pytest

import hvsock
import hvsock.sockets
from hvsock._relay.datapath import SPLICE_WORKS

from ..host._peers import EchoServer, recv_exactly, recv_until_eof, running_relay, sha
from ._support import Proc, target, unused_port

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]

DATA_PATHS = ["splice", "copy"] if SPLICE_WORKS else ["copy"]
MiB = 1 << 20


@pytest.fixture
def vsock_echo() -> Iterator[str]:
    """An echo server on vsock; the address clients (and relays) dial: CID 1."""
    listener = hvsock.listen("vsock://any:any")
    with EchoServer(listener):
        yield target(listener.getsockname()[1])


@pytest.fixture
def tcp_echo() -> Iterator[str]:
    listener = hvsock.listen("tcp://127.0.0.1:0")
    with EchoServer(listener):
        yield str(hvsock.sockets.listener_address(listener, "tcp://127.0.0.1:0"))


def _client_address(relay_address: hvsock.Address) -> str:
    """How a client reaches the relay: vsock listeners through CID 1."""
    if isinstance(relay_address, hvsock.VsockAddress):
        return target(relay_address.port)
    return str(relay_address)


def _echo_through(address: str, data: bytes) -> bytes:
    with hvsock.connect(address) as client:

        def send() -> None:
            client.sendall(data)
            client.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        got = recv_until_eof(client, limit=len(data) + 1, timeout=60)
        sender.join(60)
    return got


@pytest.mark.parametrize("data_path", DATA_PATHS)
@pytest.mark.parametrize("listen", ["tcp://127.0.0.1:0", "vsock://any:any"])
def test_relay_to_vsock_payload_exact(vsock_echo: str, listen: str, data_path: str) -> None:
    data = os.urandom(2 * MiB + 333)
    with running_relay(listen, vsock_echo, data_path=data_path) as relay:
        got = _echo_through(_client_address(relay.address), data)
        (record,) = relay.wait_records(1, timeout=60)
    assert (len(got), sha(got)) == (len(data), sha(data))
    assert (record.end, record.bytes_up, record.bytes_down) == ("closed", len(data), len(data))


def test_vsock_listener_shared_by_worker_processes(vsock_echo: str) -> None:
    """Two workers accept from one AF_VSOCK listener (EPOLLEXCLUSIVE); every
    connection is served exactly, and the records come back summed."""
    with running_relay("vsock://any:any", vsock_echo, workers=2) as relay:
        for i in range(8):
            data = os.urandom(100_000 + i)
            assert sha(_echo_through(_client_address(relay.address), data)) == sha(data)
        records = relay.wait_records(8, timeout=60)
        stats = relay.relay.stats()
    assert [r.end for r in records] == ["closed"] * 8
    assert stats.accepted == stats.ended == 8


@pytest.mark.parametrize("data_path", DATA_PATHS)
def test_vsock_to_tcp_payload_exact(tcp_echo: str, data_path: str) -> None:
    data = os.urandom(MiB + 77)
    with running_relay("vsock://any:any", tcp_echo, data_path=data_path) as relay:
        got = _echo_through(_client_address(relay.address), data)
        relay.wait_records(1, timeout=60)
    assert sha(got) == sha(data)


@pytest.mark.parametrize("data_path", DATA_PATHS)
def test_half_close_both_ways_over_vsock(data_path: str) -> None:
    request, reply = os.urandom(300_000), os.urandom(500_000)
    with (
        hvsock.listen("vsock://any:any") as tl,
        running_relay("vsock://any:any", target(tl.getsockname()[1]), data_path=data_path) as relay,
    ):
        # The client half-closes first; the target answers after that EOF.
        with hvsock.connect(_client_address(relay.address)) as client:
            tl.settimeout(30)
            server, _ = tl.accept()
            with server:
                client.sendall(request)
                client.shutdown(socket.SHUT_WR)
                assert recv_until_eof(server, timeout=60) == request
                server.sendall(reply)
                server.shutdown(socket.SHUT_WR)
                assert recv_until_eof(client, timeout=60) == reply
        # The target half-closes first; the client still sends after that EOF.
        with hvsock.connect(_client_address(relay.address)) as client:
            server, _ = tl.accept()
            with server:
                server.sendall(reply)
                server.shutdown(socket.SHUT_WR)
                assert recv_until_eof(client, timeout=60) == reply
                client.sendall(request)
                assert recv_exactly(server, len(request), timeout=60) == request
                client.shutdown(socket.SHUT_WR)
                assert recv_until_eof(server, timeout=60) == b""
        records = relay.wait_records(2, timeout=60)
    assert [r.end for r in records] == ["closed", "closed"]


def test_vsock_target_down_closes_the_client() -> None:
    with running_relay("tcp://127.0.0.1:0", target(unused_port())) as relay:
        with hvsock.connect(relay.address) as client:
            client.settimeout(30)
            with contextlib.suppress(ConnectionResetError):  # reset, or plain EOF
                assert client.recv(1) == b""
        (record,) = relay.wait_records(1, timeout=30)
    assert record.end == "target down"
    assert record.error is not None
    assert "nothing is listening" in record.error


def test_cli_relay_and_stress_over_vsock(hvsock_cmd: list[str], vsock_echo: str) -> None:
    with Proc([*hvsock_cmd, "relay", "vsock://any:any", vsock_echo]) as relay:
        port = int(relay.wait_stderr(r"listening on vsock://any:(\d+)").group(1))
        with Proc(
            [
                *hvsock_cmd,
                "stress",
                target(port),
                "-n",
                "20",
                "-P",
                "10",
                "--max-size",
                "100K",
                "--seed",
                "3",
                "--no-progress",
            ]
        ) as stress:
            stress.feed(b"")
            stress.wait_ok(90)
            assert b"20/20 connections ok" in stress.stdout_so_far()
        relay.popen.terminate()
        assert relay.wait(30) == 0
    assert relay.stderr.count("closed, up") == 20
