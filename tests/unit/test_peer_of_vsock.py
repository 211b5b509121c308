"""peer_of's vsock identity: the CID is the first field accept() gives, the port the
second (issue 25: a swap of the two passed the unit and host tiers). The kernel tier
checks it against a real connecting socket (tests/kernel/test_peer_kernel.py)."""

from __future__ import annotations

import socket

from hypothesis import given
from hypothesis import strategies as st

from hvsock import VsockAddress
from hvsock._server.peers import peer_of

LISTEN = VsockAddress(0xFFFFFFFF, 5000)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_a_vsock_peer_has_the_cid_and_port_accept_gave(cid: int, port: int) -> None:
    with socket.socket() as sock:  # not read for vsock: the identity is in the tuple
        peer = peer_of(sock, (cid, port), LISTEN)
    assert peer.cid == cid
    assert peer.address == str(VsockAddress(cid, port))
    assert peer.matches(cid)
    assert peer.matches(port) is (port == cid)
