"""The installed ``hvsock`` command over real AF_VSOCK: half-close both ways, errors, demo."""

from __future__ import annotations

import json
import re

import pytest

import hvsock

from ._support import (
    CID_LOCAL,
    Listening,
    Proc,
    hash_until_eof,
    payload,
    recv_until_eof,
    send_then_close_write,
    sha256,
    started,
    target,
    unused_port,
)

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(90)]

MiB = 1024 * 1024
EXIT_CONNECT = 4


def test_connect_sends_stdin_then_half_closes_and_prints_the_reply(
    hvsock_cmd: list[str], vsock_listener: Listening
) -> None:
    upload = payload(2 * MiB, seed=11)
    reply_body = payload(300 * 1024, seed=12)

    def serve() -> tuple[str, int]:
        with vsock_listener.accept() as conn:
            # Reads to EOF first: only the client's half-close lets it answer.
            got = hash_until_eof(conn, limit=len(upload))
            conn.sendall(f"{got[0]} {got[1]}\n".encode() + reply_body)
        return got

    server = started(serve)
    with Proc([*hvsock_cmd, "connect", target(vsock_listener.port)]) as client:
        client.feed(upload)
        client.wait_ok(60)
        out = client.stdout_so_far()
    assert server.finish(30) == (sha256(upload), len(upload))
    assert sha256(out) == sha256(f"{sha256(upload)} {len(upload)}\n".encode() + reply_body)


def test_connect_keeps_sending_after_the_server_shuts_its_write_side(
    hvsock_cmd: list[str], vsock_listener: Listening
) -> None:
    first = payload(100 * 1024, seed=21)
    later = payload(1 * MiB, seed=22)
    greeting = payload(200 * 1024, seed=23)

    def serve() -> tuple[str, int]:
        with vsock_listener.accept() as conn:
            conn.sendall(greeting)
            hvsock.close_write(conn)  # done talking, still listening
            return hash_until_eof(conn, limit=len(first) + len(later))

    server = started(serve)
    with Proc([*hvsock_cmd, "connect", target(vsock_listener.port)]) as client:
        client.feed(first, close=False)
        # The server's EOF ends the client's stdout, not the client.
        got = client.wait_stdout_eof(30)
        assert (len(got), sha256(got)) == (len(greeting), sha256(greeting)), client.stderr
        assert client.popen.poll() is None, "hvsock connect quit when the server half-closed"
        client.feed(later)
        client.wait_ok(60)
    assert server.finish(30) == (sha256(first + later), len(first) + len(later))


def test_listen_and_connect_commands_talk_to_each_other(hvsock_cmd: list[str]) -> None:
    to_client = payload(512 * 1024, seed=31)
    to_server = payload(768 * 1024, seed=32)
    with Proc([*hvsock_cmd, "listen", "vsock://any:any"]) as server:
        port = int(server.wait_stderr(r"hvsock: listening on vsock://any:(\d+)").group(1))
        server.feed(to_client)
        with Proc([*hvsock_cmd, "connect", target(port)]) as client:
            client.feed(to_server)
            client.wait_ok(60)
            server.wait_ok(60)
            assert sha256(client.stdout_so_far()) == sha256(to_client)
            assert sha256(server.stdout_so_far()) == sha256(to_server)
        assert f"connection from vsock://{CID_LOCAL}:" in server.stderr


def test_connect_with_nothing_listening_exits_4_and_says_where(hvsock_cmd: list[str]) -> None:
    port = unused_port()
    with Proc([*hvsock_cmd, "connect", target(port), "--timeout", "10"]) as client:
        client.feed(b"")
        status = client.wait(30)
        assert status == EXIT_CONNECT, client.stderr
        assert client.stdout_so_far() == b""
    assert f"port {port}" in client.stderr
    assert "nothing is listening" in client.stderr


def test_listen_exec_serves_one_connection_and_exits(hvsock_cmd: list[str]) -> None:
    data = payload(256 * 1024, seed=41)
    with Proc(
        [*hvsock_cmd, "listen", "vsock://any:any", "--once", "--exec", "tr a-z A-Z"]
    ) as server:
        port = int(server.wait_stderr(r"listening on vsock://any:(\d+)").group(1))
        with hvsock.connect(target(port), timeout=10) as client:
            sender = started(send_then_close_write, client, data)
            assert recv_until_eof(client, limit=len(data)) == data.upper()
            sender.finish(30)
        server.wait_ok(30)


def test_demo_picks_the_vsock_transport(hvsock_cmd: list[str]) -> None:
    with Proc([*hvsock_cmd, "demo"]) as demo:
        demo.feed(b"")
        demo.wait_ok(60)
    text = demo.stdout_so_far().decode()
    assert re.search(r"^transport:\s+vsock\b", text, re.MULTILINE), text
    assert text.endswith("ok\n"), text

    with Proc([*hvsock_cmd, "demo", "--json"]) as demo:
        demo.feed(b"")
        demo.wait_ok(60)
    report = json.loads(demo.stdout_so_far())
    assert report["transport"] == "vsock"
    assert report["address"].startswith("vsock://")


def test_cid_command_prints_1(hvsock_cmd: list[str]) -> None:
    with Proc([*hvsock_cmd, "cid"]) as cid:
        cid.feed(b"")
        cid.wait_ok(30)
    assert cid.stdout_so_far() == b"1\n"
    assert "loopback" in cid.stderr
