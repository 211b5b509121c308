"""The socket layer on a real virtio-vsock transport: L2 (CID 3) and L1 (its host, CID 2)."""

from __future__ import annotations

import asyncio

import pytest

import hvsock

from ._support import (
    MIB,
    guest_address,
    listening_echo,
    next_port,
    payload,
    recv_until_eof,
    sha256,
)
from ._vm import TEST_TIMEOUT, Guest

pytestmark = [pytest.mark.hypervisor, pytest.mark.timeout(TEST_TIMEOUT)]


def test_guest_cid_is_3(guest: Guest) -> None:
    assert guest.call("local_cid") == 3


def test_guest_has_the_virtio_transport(guest: Guest) -> None:
    assert "vmw_vsock_virtio_transport" in guest.call("transports")


def test_doctor_in_guest_sees_virtio_and_the_host(guest: Guest) -> None:
    port = next_port()
    found = guest.call("doctor", address=f"vsock://host:{port}")
    checks = {c["name"]: c for c in found["checks"]}
    assert found["ok"], found
    assert checks["vsock_transports"]["status"] == "ok"
    assert "vmw_vsock_virtio_transport" in checks["vsock_transports"]["summary"]
    assert checks["local_cid"]["summary"].startswith("CID 3")
    assert "virtio" in checks["hyperv_guest"]["summary"]
    assert checks["address_cid"] == {
        "name": "address_cid",
        "status": "ok",
        "summary": "CID 2: this VM's host",
        "fix": "",
    }


@pytest.mark.parametrize("host", ["host", "2"])
@pytest.mark.parametrize("step", ["echo_through", "echo_through_asyncio"])
def test_guest_to_host_with_half_close(guest: Guest, host: str, step: str) -> None:
    port = next_port()
    listener, echo = listening_echo(port)
    with listener:
        got = guest.call(step, address=f"vsock://{host}:{port}", size=MIB, seed=port)
        seen = echo.finish(60)
    assert got["size"] == MIB
    assert got["echoed"] == got["sent"] == sha256(payload(MIB, port))
    assert seen["sha256"] == got["sent"]
    assert seen["peer"][0] == 3  # L1 sees the guest's CID
    assert got["peer"] == [2, port]


def test_host_to_guest_with_half_close(guest: Guest) -> None:
    port = guest.serve("echo", next_port())
    data = payload(2 * MIB, port)
    with hvsock.connect(guest_address(port), timeout=30) as sock:
        assert sock.getpeername() == (3, port)
        sock.sendall(data)
        hvsock.close_write(sock)  # L2 still answers after our EOF
        echoed = recv_until_eof(sock, 2 * MIB)
    assert sha256(echoed) == sha256(data)


def test_host_to_guest_asyncio(guest: Guest) -> None:
    port = guest.serve("echo", next_port())
    data = payload(MIB, port)

    async def run() -> bytes:
        reader, writer = await hvsock.open_connection(guest_address(port), timeout=30)
        try:
            writer.write(data)
            await writer.drain()
            writer.write_eof()
            return await asyncio.wait_for(reader.read(), 120)
        finally:
            writer.close()
            await writer.wait_closed()

    assert sha256(asyncio.run(run())) == sha256(data)


def test_guest_to_host_no_listener(guest: Guest) -> None:
    got = guest.call("connect_error", address=f"vsock://host:{next_port()}")
    assert got["type"] == "NothingListeningError", got
    assert got["hvsock_error"]
    assert got["seconds"] < 10  # a refusal, not a timeout


def test_host_to_guest_no_listener(guest: Guest) -> None:
    with pytest.raises(hvsock.NothingListeningError):
        hvsock.connect(guest_address(next_port()), timeout=10)


def test_cli_in_guest_says_cid_3(guest: Guest) -> None:
    # The installed console script, as users run it (slow in L2: Python starts anew).
    hvsock_cli = f"{guest.project}/.venv/bin/hvsock"
    done = guest.call("run", argv=[hvsock_cli, "cid"], timeout=600)
    assert done["status"] == 0, done
    assert done["stdout"] == "3\n"
    assert "this VM's CID" in done["stderr"]
    guest.note(f"hvsock cid in L2: {done['seconds']} s")
