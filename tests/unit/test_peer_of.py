"""peer_of's TCP identity: TcpAddress's text form, built without re-validating it."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvsock import TcpAddress
from hvsock._server.peers import peer_of

LISTEN = TcpAddress("127.0.0.1", 1)


@pytest.mark.parametrize(
    "raw", [("127.0.0.1", 5000), ("::1", 22, 0, 0), ("fe80::1%lo", 65535, 0, 1)]
)
def test_tcp_peer_text_is_the_address_text(raw: tuple[object, ...]) -> None:
    with socket.socket() as sock:
        peer = peer_of(sock, raw, LISTEN)
    assert peer.address == str(TcpAddress(str(raw[0]), int(raw[1])))  # type: ignore[call-overload]
    assert peer.host == raw[0]


@given(st.ip_addresses(), st.integers(0, 65535))
def test_any_kernel_given_tcp_peer_reads_as_its_address(ip: object, port: int) -> None:
    with socket.socket() as sock:
        peer = peer_of(sock, (str(ip), port), LISTEN)
    assert peer.address == str(TcpAddress(str(ip), port))
