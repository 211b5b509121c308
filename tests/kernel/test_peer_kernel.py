"""peer_of on a real vsock peer: the CID and port it reports are the connecting
socket's own (issue 25: a CID/port swap passed every other tier)."""

from __future__ import annotations

import hvsock
from hvsock._server.peers import peer_of

from ._support import Listening, target


def test_a_vsock_peer_is_the_connecting_sockets_cid_and_port(
        vsock_listener: Listening) -> None:
    listen = hvsock.parse_address("vsock://any:any")
    with hvsock.connect(target(vsock_listener.port), timeout=30) as client:
        vsock_listener.sock.settimeout(30)
        conn, raw = vsock_listener.sock.accept()
        with conn:
            peer = peer_of(conn, raw, listen)
        cid, port = client.getsockname()
    assert port != cid  # else a swap could not show
    assert peer.cid == cid
    address = hvsock.parse_address(peer.address)
    assert isinstance(address, hvsock.VsockAddress)
    assert (address.cid, address.port) == (cid, port)
    assert peer.matches(cid)
    assert not peer.matches(port)
