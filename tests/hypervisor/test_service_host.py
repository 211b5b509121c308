"""The service framework across the transport: a ServiceHost in L2 reached from L1.

The harness itself is one too (an rpc_handler service allowing CID 2): every step
these tests call went through it.
"""

from __future__ import annotations

import pytest

import hvsock
import hvsock.sockets

from ._support import guest_address, next_port, recv_until_eof
from ._vm import TEST_TIMEOUT, Guest

pytestmark = [pytest.mark.hypervisor, pytest.mark.timeout(TEST_TIMEOUT)]


def _ask(port: int) -> bytes:
    with hvsock.connect(guest_address(port), timeout=30) as sock:
        return recv_until_eof(sock, 100)


def test_allowlist_by_cid_lets_the_host_in(guest: Guest) -> None:
    port = guest.serve("whoami", next_port(), allow=[hvsock.sockets.CID_HOST])
    assert _ask(port) == b"2\n"  # the service saw L1 as CID 2


def test_allowlist_without_the_host_refuses_it(guest: Guest) -> None:
    port = guest.serve("whoami", next_port(), allow=[4, 5])
    assert _ask(port) == b""  # closed before the handler ran


def test_rpc_error_reply_crosses_back(guest: Guest) -> None:
    with pytest.raises(hvsock.RemoteError) as caught:
        guest.call("serve", kind="no such kind", port=next_port())
    assert caught.value.code == "step_failed"
    assert "no such kind" in caught.value.remote_message
