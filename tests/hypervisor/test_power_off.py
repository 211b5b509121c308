"""A fault a real hypervisor adds: the guest is powered off in the middle of transfers.

L1's side must get a clear error or EOF in bounded time (no hang), keep no descriptor
(the autouse fd check), and new connects must fail with hvsock's errors. Runs last:
L2 stays off.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

import hvsock
import hvsock.forwarding

from ._support import MIB, guest_address, next_port
from ._vm import TEST_TIMEOUT, Guest

pytestmark = [pytest.mark.hypervisor, pytest.mark.timeout(TEST_TIMEOUT)]

NOTICE_TIMEOUT = 60.0


def _read_until_cut(sock: socket.socket) -> tuple[str, float]:
    """Read until the transfer ends; (how it ended, seconds). Never more than a minute."""
    sock.settimeout(NOTICE_TIMEOUT)
    started = time.monotonic()
    for _ in range(1_000_000):
        try:
            if not sock.recv(256 * 1024):
                return "eof", time.monotonic() - started
        except TimeoutError:
            return "hang", time.monotonic() - started
        except OSError as exc:
            return type(exc).__name__, time.monotonic() - started
    return "endless", time.monotonic() - started


def _read_some(sock: socket.socket, size: int) -> None:
    sock.settimeout(120)
    got = 0
    while got < size:
        chunk = sock.recv(256 * 1024)
        assert chunk, "the stream ended before the power-off"
        got += len(chunk)


def test_power_off_mid_transfer(guest: Guest) -> None:
    direct_port = guest.serve("stream", next_port())
    relayed_port = guest.serve("stream", next_port())
    ended = threading.Event()
    records: list[hvsock.forwarding.ConnectionRecord] = []

    def on_close(record: hvsock.forwarding.ConnectionRecord) -> None:
        records.append(record)
        ended.set()

    with (
        hvsock.forwarding.Relay(
            "tcp://127.0.0.1:0", guest_address(relayed_port), on_close=on_close
        ) as relay,
        hvsock.connect(guest_address(direct_port), timeout=30) as direct,
    ):
        address = relay.address
        assert isinstance(address, hvsock.TcpAddress)
        with socket.create_connection(("127.0.0.1", address.port), timeout=60) as relayed:
            _read_some(direct, MIB)
            _read_some(relayed, MIB)
            guest.power_off()  # mid-transfer: both streams are still sending
            direct_end, direct_s = _read_until_cut(direct)
            relayed_end, relayed_s = _read_until_cut(relayed)
        assert ended.wait(NOTICE_TIMEOUT), "the relay never ended the connection"
    guest.note(
        f"power-off: direct read ended by {direct_end} after {direct_s:.1f} s, "
        f"relayed by {relayed_end} after {relayed_s:.1f} s; relay record: {records[0]}"
    )
    assert direct_end in ("ConnectionResetError", "eof"), direct_end
    assert relayed_end in ("ConnectionResetError", "eof"), relayed_end
    assert records[0].end in ("target reset", "closed"), records[0]

    # The guest is gone: a new connect fails with one of hvsock's errors, in bounded time.
    started = time.monotonic()
    with pytest.raises(hvsock.HvsockError) as caught:
        hvsock.connect(guest_address(direct_port), timeout=10)
    assert time.monotonic() - started < 30
    guest.note(f"power-off: a new connect raised {type(caught.value).__name__}: {caught.value}")
