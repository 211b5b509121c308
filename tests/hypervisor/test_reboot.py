"""A fault a real hypervisor adds: the guest reboots while a host client retries."""

from __future__ import annotations

import threading
import time

import pytest

import hvsock

from ._support import MIB, guest_address, payload, recv_until_eof, sha256, started
from ._vm import BOOT_TIMEOUT, TEST_TIMEOUT, Guest
from .guest import ECHO_PORT

pytestmark = [pytest.mark.hypervisor, pytest.mark.timeout(TEST_TIMEOUT + BOOT_TIMEOUT)]


def _echo(sock_address: str, data: bytes, retries: int) -> tuple[bytes, float]:
    begun = time.monotonic()
    # retry_wait doubles up to 5 s; each attempt waits up to 5 s: ~10 s an attempt at
    # most, so *retries* bounds the whole wait.
    with hvsock.connect(sock_address, timeout=5, retries=retries, retry_wait=0.5) as sock:
        connected = time.monotonic() - begun
        sock.sendall(data)
        hvsock.close_write(sock)
        return recv_until_eof(sock, len(data)), connected


def test_client_retries_through_a_guest_reboot(guest: Guest) -> None:
    data = payload(MIB, 7)
    before, _ = _echo(guest_address(ECHO_PORT), data, retries=0)
    assert sha256(before) == sha256(data)
    uptime_before = guest.call("uptime")

    rebooting = threading.Event()
    reboot = started(guest.reboot, rebooting.set)
    assert rebooting.wait(120), "L2 did not take the reboot request"
    # L2's echo service is gone now, and back only once L2 booted again: the client
    # must retry (nothing listening, then timeouts while L2 is down) until it is.
    client = started(_echo, guest_address(ECHO_PORT), data, int(BOOT_TIMEOUT / 5))
    after, waited = client.finish(BOOT_TIMEOUT)
    record = reboot.finish(BOOT_TIMEOUT)
    assert sha256(after) == sha256(data)
    assert guest.call("uptime") < uptime_before + waited  # a new boot answered
    guest.note(f"reboot: client reconnected after {waited:.1f} s; {record}")
