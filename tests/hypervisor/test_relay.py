"""hvsock.forwarding.Relay on L1 forwarding TCP into L2: an SSH-style byte stream to a
guest service."""

from __future__ import annotations

import socket
import threading

import pytest

import hvsock
import hvsock.forwarding

from ._support import MIB, guest_address, next_port, payload, recv_until_eof, sha256
from ._vm import TEST_TIMEOUT, Guest

pytestmark = [pytest.mark.hypervisor, pytest.mark.timeout(TEST_TIMEOUT)]


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    out = b""
    while len(out) < size:
        chunk = sock.recv(size - len(out))
        if not chunk:
            raise AssertionError(f"EOF after {len(out)} of {size} bytes")
        out += chunk
    return out


def test_tcp_relay_into_guest(guest: Guest) -> None:
    port = guest.serve("echo", next_port())
    records: list[hvsock.forwarding.ConnectionRecord] = []
    closed = threading.Event()

    def on_close(record: hvsock.forwarding.ConnectionRecord) -> None:
        records.append(record)
        closed.set()

    bulk = payload(4 * MIB, port)
    with hvsock.forwarding.Relay(
        "tcp://127.0.0.1:0", guest_address(port), on_close=on_close
    ) as relay:
        address = relay.address
        assert isinstance(address, hvsock.TcpAddress)
        tcp_port = address.port
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=60) as client:
            # Interactive first: small lines answered one at a time, as a shell would.
            for i in range(20):
                line = f"keystroke {i}\n".encode()
                client.sendall(line)
                assert _recv_exactly(client, len(line)) == line
            # Then a bulk copy (scp-style), half-closed, the rest read back.
            client.sendall(bulk)
            client.shutdown(socket.SHUT_WR)
            rest = recv_until_eof(client, 8 * MIB)
        assert closed.wait(60), "the relay never logged the connection's end"
    assert sha256(rest) == sha256(bulk)
    assert len(records) == 1
    assert (records[0].end, records[0].bytes_up, records[0].bytes_down) == (
        "closed",
        len(bulk) + sum(len(f"keystroke {i}\n") for i in range(20)),
        len(bulk) + sum(len(f"keystroke {i}\n") for i in range(20)),
    )
