"""The relay's per-connection fast path: accept batches, TCP_NODELAY from the listener, a
connect that completes at once, chunk-sized send buffers into Unix sockets, and the
busy-poll's look at the machine's load. Behaviour only, with real sockets and files."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

import pytest

import hvsock
import hvsock.sockets
from hvsock._relay import Relay
from hvsock._relay import dial as relay_dial
from hvsock._relay._poll import SPARE_CPU_EVERY, SpareCpu
from hvsock._relay.config import Forward
from hvsock._relay.datapath import widen, widen_pays
from hvsock._relay.loop import ACCEPT_BATCH, Listening, _nodelay

from ._peers import EchoServer, recv_exactly, wait_for


def _echo_target() -> EchoServer:
    return EchoServer(hvsock.listen("tcp://127.0.0.1:0"))


def _address(server: EchoServer) -> hvsock.Address:
    return hvsock.sockets.listener_address(server.listener, "tcp://127.0.0.1:0")


# -- accepting ------------------------------------------------------------------------------------
@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("limit", [1000, 3])
def test_clients_queued_before_the_loop_runs_are_all_served(limit: int) -> None:
    """More clients than one accept batch wait in the backlog; every one is relayed,
    and at a connection limit below the batch the rest wait their turn."""
    clients_n = ACCEPT_BATCH * 2 + 3
    with _echo_target() as server:
        relay = Relay(
            "tcp://127.0.0.1:0", _address(server), max_connections=limit, backlog=clients_n
        )
        relay.start()
        clients = [hvsock.connect(relay.address, timeout=10) for _ in range(clients_n)]
        runner = threading.Thread(target=relay.serve)
        runner.start()
        try:
            for i, client in enumerate(clients):
                client.sendall(b"%d" % i)
                assert recv_exactly(client, len(b"%d" % i)) == b"%d" % i
                client.close()
            wait_for(lambda: relay.stats().ended == clients_n, what="every connection ended")
            assert relay.stats().accepted == clients_n
        finally:
            for client in clients:
                client.close()
            relay.request_stop(0)
            runner.join(10)


# -- TCP_NODELAY ----------------------------------------------------------------------------------
@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("listener_has_it", [True, False])
def test_accepted_clients_get_nodelay_once_the_listener_tells_whether_it_is_inherited(
    listener_has_it: bool,
) -> None:
    listener = hvsock.listen("tcp://127.0.0.1:0")
    address = hvsock.sockets.listener_address(listener, "tcp://127.0.0.1:0")
    try:
        listening = Listening(listener, Forward(address, address), address)
        if not listener_has_it:  # a system whose accepted sockets do not inherit it
            listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        for n in range(2):
            with socket.create_connection(("127.0.0.1", address.port)):  # type: ignore[union-attr]
                accepted, _ = listener.accept()
                with accepted:
                    _nodelay(listening, accepted)
                    assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            inherited = listening.nodelay_inherited
            assert inherited is not None
            if sys.platform.startswith("linux"):
                assert inherited is listener_has_it
            if n == 0:
                first = inherited
            assert inherited is first  # decided by the first client, kept after
    finally:
        listener.close()


# -- dialling ------------------------------------------------------------------------------------
@pytest.mark.usefixtures("fd_baseline")
def test_a_loopback_connect_comes_back_connected_without_a_driver() -> None:
    with _echo_target() as server:
        dialled = relay_dial.dial(_address(server), timeout=5, buffer_size=None)
        assert isinstance(dialled, socket.socket)  # no generator to step
        with dialled:
            dialled.setblocking(True)
            dialled.sendall(b"ping")
            assert recv_exactly(dialled, 4) == b"ping"


def test_dial_on_loop_is_asked_once_per_forward() -> None:
    tcp = hvsock.TcpAddress("127.0.0.1", 1)
    assert relay_dial.on_loop(tcp, timeout=1)
    assert not relay_dial.on_loop(tcp, timeout=1, retries=2)  # its pauses need a thread
    with pytest.raises(hvsock.ArgumentError):
        relay_dial.on_loop(tcp, timeout=-1)


# -- send buffers of Unix sockets spliced into ---------------------------------------------------
def test_widen_gives_a_unix_socket_a_chunk_sized_send_buffer() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        before = a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        widen(a, 4 * before)
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) > before
        assert widen_pays(a)
    with socket.socket() as tcp:
        assert not widen_pays(tcp)  # TCP sizes its own buffers (autotuning)


@pytest.mark.usefixtures("fd_baseline")
def test_a_relay_into_a_unix_target_moves_a_large_payload_intact(short_tmp: Path) -> None:
    path = str(short_tmp / "echo.sock")
    payload = bytes(range(256)) * 12_000  # 3 MB: several chunks each way
    with (
        EchoServer(hvsock.listen(f"unix://{path}")),
        Relay("tcp://127.0.0.1:0", f"unix://{path}", data_path="splice") as relay,
    ):
        with hvsock.connect(relay.address, timeout=10) as client:
            sender = threading.Thread(target=client.sendall, args=(payload,))
            sender.start()
            got = recv_exactly(client, len(payload), timeout=30)
            sender.join(10)
        assert got == payload


# -- the busy-poll's look at the load -------------------------------------------------------------
def test_spare_cpu_reads_the_runnable_count_against_the_cpus(tmp_path: Path) -> None:
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.52 0.58 0.59 3/250 12345\n")
    spare = SpareCpu(str(loadavg), cpus=2)
    try:
        assert spare(0.0) is False  # 3 runnable on 2 CPUs: no spin
        loadavg.write_text("0.52 0.58 0.59 2/250 12345\n")
        assert spare(SPARE_CPU_EVERY / 2) is False  # not looked at again so soon
        assert spare(SPARE_CPU_EVERY * 2) is True
    finally:
        spare.close()


@pytest.mark.parametrize("text", ["", "garbage\n", "1 2 3 x/y 5\n"])
def test_spare_cpu_spins_as_configured_when_the_load_cannot_be_read(
    tmp_path: Path, text: str
) -> None:
    loadavg = tmp_path / "loadavg"
    loadavg.write_text(text)
    spare = SpareCpu(str(loadavg), cpus=1)
    try:
        assert spare(0.0) is True
    finally:
        spare.close()
    missing = SpareCpu(str(tmp_path / "absent"), cpus=1)
    assert missing(0.0) is True
    missing.close()
