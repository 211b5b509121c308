"""The docs' AF_VSOCK snippets (the KERNEL rows of tests/doc_snippets.py), run in the VM.

Each runs as written except that the CID becomes 1 (loopback, the only CID this
tier connects to) and fixed ports become free ones.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import signal
import socket
import sys
import threading
from pathlib import Path

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
    command = row("hvsock connect vsock://3:22").replace(
        "vsock://3:22", target(vsock_listener.port)
    )

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
    ping = row("hvsock ping vsock://2:7007 -c 100 --json").replace("vsock://2:7007", target(port))
    with Proc(argv(hvsock_cmd, serve)) as server:
        server.wait_stderr("listening on", timeout=SLOW)
        with Proc(argv(hvsock_cmd, ping)) as client:
            client.feed(b"")
            client.wait_ok(SLOW)
            assert json.loads(client.stdout_so_far())["count"] == 100


@pytest.mark.parametrize(
    "command",
    [
        "hvsock relay tcp://127.0.0.1:2222 vsock://3:22",
        "hvsock relay tcp://127.0.0.1:2222 vsock://3:2222",
    ],
)
def test_relay_to_a_guest_as_documented(
    hvsock_cmd: list[str], vsock_listener: Listening, command: str
) -> None:
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


# -- docs/try-out.md: AF_VSOCK on one machine, CID 1 let in with --allow 1 -------------------

TRY_OUT_TEXT = (Path(docs.ROOT) / "docs" / "try-out.md").read_text(encoding="utf-8")


def try_out_commands() -> list[str]:
    """The commands of docs/try-out.md's AF_VSOCK blocks (all but the first, Unix, one)."""
    blocks = [
        b.group(2)
        for b in re.finditer(r"^```(\w*)\n(.*?)^```", TRY_OUT_TEXT, re.S | re.M)
        if b.group(1) == "sh"
    ]
    return [docs.strip_comment(line) for block in blocks[1:] for line in block.splitlines()]


TRY_OUT_VSOCK = try_out_commands()
COVERED = set(TRY_OUT_VSOCK)


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.timeout(1200)  # a dozen CLI starts, each up to a minute under emulation
def test_the_one_machine_try_out_over_vsock_loopback(hvsock_cmd: list[str], tmp_path: Path) -> None:
    assert TRY_OUT_VSOCK[0] == "sudo modprobe vsock_loopback"  # done by scripts/kernel-tests
    ports = {
        ":5000": f":{unused_port()}",
        ":5010": f":{unused_port()}",
        ":7010": f":{unused_port()}",
        ":7000": f":{free_tcp_port()}",
        ":7011": f":{free_tcp_port()}",
        "5002": str(unused_port()),
    }
    kvp_port = ports[":5010"]

    def here(command: str) -> list[str]:
        """*command* with free ports and a temporary directory: the only changes."""
        text = command.replace("/tmp/try", str(tmp_path))
        for fixed, free in ports.items():
            text = text.replace(fixed, free)
        text = text.replace("--vm vsock://local ", f"--vm vsock://local{kvp_port} ")
        words = shlex.split(text.removesuffix("&").strip())
        if words[0] == "python":  # clock.py is in the temporary directory, as written
            return [
                sys.executable,
                *(str(tmp_path / w) if w == "clock.py" else w for w in words[1:]),
            ]
        assert words[0] == "hvsock", command
        return [*hvsock_cmd, *words[1:]]

    blocks = re.finditer(r"^```python\n(# clock\.py\n.*?)^```", TRY_OUT_TEXT, re.S | re.M)
    clock = next(blocks).group(1)
    (tmp_path / "clock.py").write_text(clock.replace("5002", ports["5002"]))

    outputs: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        servers: list[Proc] = []
        for command in TRY_OUT_VSOCK[1:]:
            proc = stack.enter_context(Proc(here(command)))
            if command.endswith("&"):
                proc.wait_stderr("listening on", timeout=SLOW)
                servers.append(proc)
                continue
            proc.feed(b"")
            status = proc.wait(SLOW)
            outputs[command] = proc.stdout_so_far().decode()
            expected = (0, 1) if command.startswith("hvsock doctor") else (0,)
            assert status in expected, f"{command}: exit {status}\n{proc.stderr}"
        for proc in servers:
            proc.popen.send_signal(signal.SIGTERM)
        assert [proc.wait(SLOW) for proc in servers] == [0] * len(servers)

    doctor = next(
        line
        for line in outputs["hvsock doctor vsock://local:5000"].splitlines()
        if " address_cid " in line
    )
    assert doctor.split()[0] == "ok"
    assert "stays in this kernel" in doctor
    for ping in ("hvsock ping vsock://local:5000 -c 10", "hvsock ping tcp://127.0.0.1:7011 -c 10"):
        assert outputs[ping].startswith("10 round trips"), outputs[ping]
    assert outputs["hvsock kvp --vm vsock://local get Greeting"] == "hello\n"
    (clock_line,) = [out for command, out in outputs.items() if command.startswith("python -c")]
    assert "'you_are': 'vsock://1:" in clock_line


def test_every_kernel_row_has_a_test_here() -> None:
    with open(__file__, encoding="utf-8") as f:
        source = f.read()
    assert [c for c in docs.rows(docs.KERNEL) if f'"{c}"' not in source and c not in COVERED] == []
