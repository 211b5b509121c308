"""Interop with a vsock program nobody here wrote: Debian's socat (VSOCK-LISTEN / VSOCK-CONNECT).

socat's ``-t 10``: after one direction ends, socat waits up to 10 s of silence
for the other one (its default 0.5 s could cut an echo short under emulation).
socat announces its listener at ``-d -d`` ("listening on AF=40 ..."); the tests
wait for that line, and for hvsock's "listening on", instead of sleeping.
"""

from __future__ import annotations

import pytest

from ._support import Proc, payload, sha256, target, unused_port

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(90)]

MiB = 1024 * 1024


def test_hvsock_connect_to_a_socat_echo_server(hvsock_cmd: list[str], socat: str) -> None:
    data = payload(1 * MiB, seed=51)
    port = unused_port()
    with Proc(
        [socat, "-d", "-d", "-t", "10", f"VSOCK-LISTEN:{port},reuseaddr", "EXEC:cat"]
    ) as server:
        server.wait_stderr(rf"listening on AF=40 .*port:{port}\b")
        with Proc([*hvsock_cmd, "connect", target(port)]) as client:
            client.feed(data)
            client.wait_ok(60)
            echoed = client.stdout_so_far()
        server.wait_ok(30)
    assert (sha256(echoed), len(echoed)) == (sha256(data), len(data))


def test_socat_connect_to_hvsock_listen_exec(hvsock_cmd: list[str], socat: str) -> None:
    data = payload(1 * MiB, seed=52)
    with Proc([*hvsock_cmd, "listen", "vsock://any:any", "--once", "--exec", "cat"]) as server:
        port = int(server.wait_stderr(r"hvsock: listening on vsock://any:(\d+)").group(1))
        with Proc([socat, "-t", "10", "-", f"VSOCK-CONNECT:1:{port}"]) as client:
            client.feed(data)
            client.wait_ok(60)
            echoed = client.stdout_so_far()
        server.wait_ok(30)
    assert (sha256(echoed), len(echoed)) == (sha256(data), len(data))


def test_socat_connect_to_hvsock_listen_stdio_both_ways(hvsock_cmd: list[str], socat: str) -> None:
    to_socat = payload(600 * 1024, seed=53)
    to_hvsock = payload(900 * 1024, seed=54)
    with Proc([*hvsock_cmd, "listen", "vsock://any:any"]) as server:
        port = int(server.wait_stderr(r"hvsock: listening on vsock://any:(\d+)").group(1))
        server.feed(to_socat)
        with Proc([socat, "-t", "10", "-", f"VSOCK-CONNECT:1:{port}"]) as client:
            client.feed(to_hvsock)
            client.wait_ok(60)
            server.wait_ok(60)
            got_by_socat = client.stdout_so_far()
        got_by_hvsock = server.stdout_so_far()
    assert sha256(got_by_socat) == sha256(to_socat)
    assert sha256(got_by_hvsock) == sha256(to_hvsock)
    assert "connection from vsock://1:" in server.stderr
