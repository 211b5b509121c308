"""The docs' AF_VSOCK snippets (the KERNEL rows of tests/doc_snippets.py), run in the VM.

Each runs as written except that the CID becomes 1 (loopback, the only CID this
tier connects to) and fixed ports become free ones.
"""

from __future__ import annotations

import json
import shlex
import socket
import threading

import pytest

import hvsock

from .. import doc_snippets as docs
from ._support import (
    Listening,
    Proc,
    recv_until_eof,
    send_then_close_write,
    started,
    target,
    unused_port,
)

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(600)]

#: Seconds for a CLI process to start and answer: under software emulation on a
#: loaded machine, starting Python with hvsock alone can take a minute or more.
SLOW = 300.0

def row(command: str) -> str:
    assert docs.TABLE[command][0] == docs.KERNEL, command
    return command


def argv(hvsock_cmd: list[str], command: str) -> list[str]:
    words = shlex.split(command)
    assert words[0] == "hvsock", command
    return [*hvsock_cmd, *words[1:]]


def test_connect_as_documented(hvsock_cmd: list[str], vsock_listener: Listening) -> None:
    command = row("hvsock connect vsock://3:22").replace("vsock://3:22",
                                                         target(vsock_listener.port))

    def serve() -> bytes:
        with vsock_listener.accept(SLOW) as conn:
            got = recv_until_eof(conn, limit=1024)
            conn.sendall(got[::-1])
            return got

    server = started(serve)
    with Proc(argv(hvsock_cmd, command)) as client:
        client.feed(b"stdin to the socket")
        client.wait_ok(SLOW)
        assert client.stdout_so_far() == b"tekcos eht ot nidts"
    assert server.finish(SLOW) == b"stdin to the socket"


def test_listen_as_documented(hvsock_cmd: list[str]) -> None:
    port = unused_port()
    command = row("hvsock listen vsock://any:5000").replace(":5000", f":{port}")
    with Proc(argv(hvsock_cmd, command)) as server:
        server.wait_stderr(rf"listening on vsock://any:{port}", timeout=SLOW)
        server.feed(b"from the listener")
        with hvsock.connect(target(port), timeout=30) as client:
            sender = started(send_then_close_write, client, b"to the listener")
            assert recv_until_eof(client, limit=1024) == b"from the listener"
            sender.finish(30)
        server.wait_ok(SLOW)
        assert server.stdout_so_far() == b"to the listener"


def test_echo_server_and_ping_as_documented(hvsock_cmd: list[str]) -> None:
    port = unused_port()
    serve = row("hvsock echo-server vsock://any:7007").replace(":7007", f":{port}")
    ping = row("hvsock ping vsock://2:7007 -c 100 --json").replace("vsock://2:7007",
                                                                 target(port))
    with Proc(argv(hvsock_cmd, serve)) as server:
        server.wait_stderr("listening on", timeout=SLOW)
        with Proc(argv(hvsock_cmd, ping)) as client:
            client.feed(b"")
            client.wait_ok(SLOW)
            assert json.loads(client.stdout_so_far())["count"] == 100


@pytest.mark.parametrize("command", ["hvsock relay tcp://127.0.0.1:2222 vsock://3:22",
                                     "hvsock relay tcp://127.0.0.1:2222 vsock://3:2222"])
def test_relay_to_a_guest_as_documented(hvsock_cmd: list[str], vsock_listener: Listening,
                                        command: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        tcp_port = probe.getsockname()[1]
    vsock_target = target(vsock_listener.port)
    text = row(command).replace("127.0.0.1:2222", f"127.0.0.1:{tcp_port}")
    text = text.replace("vsock://3:2222", vsock_target).replace("vsock://3:22", vsock_target)

    def echo() -> None:
        with vsock_listener.accept(SLOW) as conn:
            conn.sendall(recv_until_eof(conn, limit=1024))

    server = threading.Thread(target=echo, daemon=True)
    server.start()
    with Proc(argv(hvsock_cmd, text)) as relay:
        relay.wait_stderr("listening on", timeout=SLOW)
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=30) as client:
            client.sendall(b"ssh would talk here")
            client.shutdown(socket.SHUT_WR)
            assert recv_until_eof(client, limit=1024) == b"ssh would talk here"
    server.join(SLOW)


def test_every_kernel_row_has_a_test_here() -> None:
    with open(__file__, encoding="utf-8") as f:
        source = f.read()
    assert [c for c in docs.rows(docs.KERNEL) if f'"{c}"' not in source] == []
