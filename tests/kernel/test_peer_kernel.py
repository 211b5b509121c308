"""peer_of on a real vsock peer: the CID and port it reports are the connecting
socket's own (issue 25: a CID/port swap passed every other tier)."""

from __future__ import annotations

import hvsock
import hvsock.sockets
from hvsock._server.peers import peer_of

from ._support import CID_LOCAL, Listening, target


def test_a_vsock_peer_is_the_connecting_sockets_cid_and_port(vsock_listener: Listening) -> None:
    listen = hvsock.parse_address("vsock://any:any")
    with hvsock.connect(target(vsock_listener.port), timeout=30) as client:
        vsock_listener.sock.settimeout(30)
        conn, raw = vsock_listener.sock.accept()
        with conn:
            peer = peer_of(conn, raw, listen)
        cid, port = client.getsockname()
    # The client's own name keeps CID any; over vsock_loopback it sends from CID 1.
    sent_from = CID_LOCAL if cid == hvsock.sockets.CID_ANY else cid
    assert port not in (sent_from, hvsock.sockets.PORT_ANY)  # else a swap could not show
    assert peer.cid == sent_from
    address = hvsock.parse_address(peer.address)
    assert isinstance(address, hvsock.VsockAddress)
    assert (address.cid, address.port) == (sent_from, port)
    assert peer.matches(sent_from)
    assert not peer.matches(port)
