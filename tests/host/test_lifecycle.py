"""The one server lifecycle (hvsock._server.lifecycle), the same in every server kind:
the first SIGTERM / SIGINT closes the listener and lets the conversation in flight go
on for the grace period; a second signal cuts it at once; the process exits 0.

Each server runs as the installed ``hvsock`` command with a grace of 600 s, so a
server that waited the grace out instead of taking the second signal fails the
60-second bound by a wide margin.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import hvsock
import hvsock.forwarding
import hvsock.framing
import hvsock.services
from hvsock._core import mux
from hvsock._core.framing import encode_frame

from ..signals import with_default_signals
from ._peers import EchoServer, recv_exactly, wait_for

GRACE = "600"
#: Seconds the server has to exit after the second signal (the grace is 600).
CUT_BOUND = 60.0

#: A conversation on a connected socket: one exchange, which asserts what came back.
Talk = Callable[[socket.socket], None]


def _echo(sock: socket.socket) -> None:
    sock.sendall(b"ping")
    assert recv_exactly(sock, 4) == b"ping"


def _agent_info(sock: socket.socket) -> None:
    reply = hvsock.RpcClient(sock).call("info")
    assert reply["pid"] > 0


def _spawn(argv: list[str], ready: Path) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    proc = subprocess.Popen(
        with_default_signals(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"{argv[1:3]} never became ready: {err.decode()}")
        time.sleep(0.01)
    return proc, json.loads(ready.read_text())


def _refused(address: str) -> bool:
    try:
        hvsock.connect(address, timeout=2).close()
    except (hvsock.NothingListeningError, ConnectionResetError):
        return True
    return False


def _closed(sock: socket.socket) -> bool:
    """True when the peer ended the connection (EOF or a reset)."""
    sock.settimeout(30)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


@pytest.fixture
def echo_target() -> Iterator[str]:
    listener = socket.create_server(("127.0.0.1", 0))
    with EchoServer(listener):
        yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"


SERVERS = ["service", "relay-1-worker", "relay-2-workers", "bench", "agent"]


def _server(
    kind: str, tmp: Path, target: str
) -> tuple[list[str], Callable[[dict[str, object]], str], bytes, Talk]:
    """The command line, where the ready file names the address, the connection's
    opening bytes (the bench's mode byte, the agent's hello) and its conversation."""
    if kind == "service":
        return (
            ["echo-server", "tcp://127.0.0.1:0", "--grace", GRACE],
            lambda info: str(next(iter(info["services"].values()))),  # type: ignore[attr-defined]
            b"",
            _echo,
        )
    if kind.startswith("relay"):
        workers = "1" if kind == "relay-1-worker" else "2"
        return (
            [
                "relay",
                "tcp://127.0.0.1:0",
                target,
                "--grace",
                GRACE,
                "--workers",
                workers,
                "--quiet",
            ],
            lambda info: str(info["listen"]),
            b"",
            _echo,
        )
    if kind == "bench":
        return (
            ["bench", "server", "tcp://127.0.0.1:0", "--grace", GRACE],
            lambda info: str(info["address"]),
            b"e",
            _echo,
        )
    config = tmp / "agent.toml"
    config.write_text(
        f'[agent]\nlisten = "tcp://127.0.0.1:0"\ngrace = {GRACE}\n'
        "[info]\nenabled = true\n[health]\nenabled = false\n"
        "[time]\nenabled = false\n"
    )
    hello = encode_frame(mux.encode_hello("info"), mux.MAX_HELLO)
    return (
        ["agent", "--config", str(config)],
        lambda info: str(info["services"]["hvsock agent"]),  # type: ignore[index]
        hello,
        _agent_info,
    )


@pytest.mark.timeout(240)
@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("kind", SERVERS)
def test_a_second_signal_cuts_the_grace_short(
    kind: str, second: signal.Signals, short_tmp: Path, hvsock_cmd: list[str], echo_target: str
) -> None:
    argv, address_of, opening, talk = _server(kind, short_tmp, echo_target)
    ready = short_tmp / "ready.json"
    proc, info = _spawn([*hvsock_cmd, *argv, "--ready-file", str(ready)], ready)
    try:
        address = address_of(info)
        with hvsock.connect(address, timeout=10) as client:
            client.settimeout(30)
            if opening:
                client.sendall(opening)
                if kind == "agent":
                    answer = hvsock.framing.recv_frame(client, mux.MAX_HELLO)
                    assert answer is not None
                    mux.decode_answer(answer)
            talk(client)
            proc.send_signal(signal.SIGTERM)
            # The listener goes first; the conversation in flight carries on.
            wait_for(lambda: _refused(address), 20, "the listener closing")
            assert proc.poll() is None, "the server did not wait for its connection"
            talk(client)
            cut_at = time.monotonic()
            proc.send_signal(second)
            status = proc.wait(CUT_BOUND)
            assert time.monotonic() - cut_at < CUT_BOUND
            assert _closed(client)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=10)
    assert status == 0, err.decode()


# -- readiness and systemd, the same in every server kind ------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["relay-1-worker", "relay-2-workers", "bench"])
def test_every_server_kind_tells_systemd_ready_then_stopping(
    kind: str, short_tmp: Path, monkeypatch: pytest.MonkeyPatch, echo_target: str
) -> None:
    path = str(short_tmp / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(path)
        notify.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        ready = short_tmp / "ready.json"
        server: hvsock.forwarding.Relay | hvsock.services.BenchServer
        if kind == "bench":
            server = hvsock.services.BenchServer("tcp://127.0.0.1:0", ready_file=str(ready))
        else:
            server = hvsock.forwarding.Relay(
                "tcp://127.0.0.1:0",
                echo_target,
                ready_file=str(ready),
                workers=1 if kind == "relay-1-worker" else 2,
            )
        with server:
            status = notify.recv(1000)
            info = json.loads(ready.read_text())
            address = str(server.address)
        stopping = notify.recv(1000)
    assert info["pid"] == os.getpid()
    if kind == "bench":
        assert info["address"] == address
        assert status == f"READY=1\nSTATUS=serving the benchmark on {address}".encode()
    else:
        assert info["listen"] == address
        assert status == f"READY=1\nSTATUS=relaying {address} to {echo_target}".encode()
    assert stopping == b"STOPPING=1"
