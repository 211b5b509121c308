"""Every shell snippet of README.md and docs/*.md that can run here runs, as written.

The table in tests/doc_snippets.py says for each command whether it runs here
(HOST), in the test VM (KERNEL) or not at all (with the reason). Commands run
through bash with the installed ``hvsock`` and ``python`` first on PATH; fixed
paths and ports become temporary ones. Servers (``... &``) run until the recipe
is done, then get SIGTERM and must exit 0 (the documented rule).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .. import doc_snippets as docs
from ._peers import recv_until_eof

pytestmark = pytest.mark.timeout(180)

BIN = Path(sys.executable).parent


def test_the_table_lists_every_snippet_and_nothing_else() -> None:
    found = {s.command for s in docs.extract()}
    assert found - set(docs.TABLE) == set(), "new doc snippets: add them to tests/doc_snippets.py"
    assert set(docs.TABLE) - found == set(), "rows for snippets no longer in the docs"
    for command, (how, why) in docs.TABLE.items():
        assert how in (docs.HOST, docs.KERNEL, docs.NOT), command
        assert why.strip(), f"{command!r} needs its reason"


class Shell:
    """Runs doc commands with bash; ``python`` and ``hvsock`` are this venv's."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        shim = tmp / "bin"
        shim.mkdir()
        # A script, not a symlink: a venv's python is found by the path it is run as.
        (shim / "python").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
        (shim / "python").chmod(0o755)
        self.env = dict(os.environ, PATH=f"{shim}:{BIN}:{os.environ.get('PATH', '')}",
                        PYTHONUNBUFFERED="1")
        self.servers: list[subprocess.Popen[bytes]] = []
        self.drains: list[threading.Thread] = []

    def run(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", command], cwd=self.tmp, env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)

    def ok(self, command: str, timeout: float = 120) -> str:
        done = self.run(command, timeout)
        assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stderr}"
        return done.stdout

    def start(self, command: str, ready: str = "listening on",
              timeout: float = 30) -> subprocess.Popen[bytes]:
        """A server (``... &`` in the docs): started, and waited for until it is ready."""
        command = command.removesuffix("&").strip()
        proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.tmp, env=self.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        self.servers.append(proc)
        assert proc.stderr is not None
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stderr.readline().decode()
            if not line:
                break
            lines.append(line)
            if ready in line:
                # Keep draining stderr so a chatty server never blocks on the pipe.
                drain = threading.Thread(target=proc.stderr.read, daemon=True)
                drain.start()
                self.drains.append(drain)
                return proc
        raise AssertionError(f"{command} never said {ready!r}: {lines}")

    def stop_all(self) -> list[int]:
        statuses = []
        for proc in reversed(self.servers):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                statuses.append(proc.wait(30))
            except subprocess.TimeoutExpired:
                proc.kill()
                statuses.append(proc.wait(10))
        self.close()
        return statuses

    def close(self) -> None:
        for proc in self.servers:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        for drain in self.drains:
            drain.join(10)  # ends at EOF, now that the servers are gone
        for proc in self.servers:
            if proc.stderr is not None:
                proc.stderr.close()
        self.servers.clear()
        self.drains.clear()


@pytest.fixture
def sh(short_tmp: Path) -> Iterator[Shell]:
    shell = Shell(short_tmp)
    try:
        yield shell
    finally:
        shell.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def row(command: str) -> str:
    """*command* as the docs have it; fails if the table does not say it runs here."""
    assert docs.TABLE[command][0] == docs.HOST, command
    return command



# -- one test per recipe; together they cover every HOST row -----------------------------

COVERED: set[str] = set()


def covers(*commands: str) -> None:
    COVERED.update(commands)


covers("hvsock service-id 2761", "hvsock port 00000ac9-facb-11e6-bd58-64006a7986d3",
       "hvsock addr hvsock://parent/2761", "hvsock demo")


def test_the_id_and_address_commands(sh: Shell) -> None:
    assert sh.ok(row("hvsock service-id 2761")) == "00000ac9-facb-11e6-bd58-64006a7986d3\n"
    assert sh.ok(row("hvsock port 00000ac9-facb-11e6-bd58-64006a7986d3")) == "2761\n"
    assert "hvsock://parent/2761" in sh.ok(row("hvsock addr hvsock://parent/2761"))
    assert sh.ok(row("hvsock demo")).endswith("ok\n")


covers("hvsock cid", "hvsock doctor vsock://host:5000", "hvsock selftest --json")


def test_the_commands_that_look_but_never_connect(sh: Shell) -> None:
    done = sh.run(row("hvsock cid"))
    assert done.returncode == (0 if os.path.exists("/dev/vsock") else 3), done.stderr
    done = sh.run(row("hvsock doctor vsock://host:5000"))
    assert done.returncode in (0, 1), done.stderr
    assert done.stdout.startswith("hvsock doctor:")
    if os.path.isdir("/sys/module/vsock_loopback"):
        pytest.skip("vsock_loopback here: the selftest's round trip runs in the kernel tier")
    done = sh.run(row("hvsock selftest --json"))
    assert done.returncode == (0 if json.loads(done.stdout)["ok"] else 1), done.stderr


covers("hvsock register \"My agent\" --port 5000", "hvsock services", "hvsock vms",
       "hvsock connect hvsock://name:MyVM/5000")


@pytest.mark.skipif(sys.platform == "win32", reason="on Windows these run for real")
def test_the_windows_commands_explain_themselves_elsewhere(sh: Shell) -> None:
    done = sh.run(row("hvsock register \"My agent\" --port 5000"))
    assert (done.returncode, "--export ps1" in done.stderr) == (3, True), done.stderr
    for command in ("hvsock services", "hvsock vms", "hvsock connect hvsock://name:MyVM/5000"):
        done = sh.run(row(command))
        assert done.returncode == 3, (command, done.stderr)
        assert done.stderr.startswith("hvsock: error: "), (command, done.stderr)


covers("hvsock listen unix:///run/agent.sock --exec 'my-handler'")


def test_listen_exec_runs_the_handler_per_connection(sh: Shell) -> None:
    path = sh.tmp / "agent.sock"
    command = row("hvsock listen unix:///run/agent.sock --exec 'my-handler'")
    sh.start(command.replace("/run/agent.sock", str(path)).replace("my-handler", "tr a-z A-Z"))
    for text in (b"one", b"two"):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(20)
            sock.connect(str(path))
            sock.sendall(text)
            sock.shutdown(socket.SHUT_WR)
            assert recv_until_eof(sock) == text.upper()
    assert sh.stop_all() == [0]
    assert not path.exists()


covers("hvsock bench server tcp://127.0.0.1:7000 &", "hvsock bench client tcp://127.0.0.1:7000",
       "hvsock relay tcp://127.0.0.1:7001 tcp://127.0.0.1:7000 &",
       "hvsock bench client tcp://127.0.0.1:7001 --tests throughput,rtt --duration 5 --json")


def test_the_bench_recipe_direct_and_through_a_relay(sh: Shell) -> None:
    server, relay = str(free_port()), str(free_port())

    def ports(command: str) -> str:
        return command.replace(":7000", f":{server}").replace(":7001", f":{relay}")

    sh.start(ports(row("hvsock bench server tcp://127.0.0.1:7000 &")), "listening on")
    direct = sh.ok(ports(row("hvsock bench client tcp://127.0.0.1:7000")) +
                   " --bytes 8M --count 200 --connections 50 --streams 4", timeout=150)
    assert "throughput" in direct
    sh.start(ports(row("hvsock relay tcp://127.0.0.1:7001 tcp://127.0.0.1:7000 &")))
    relayed = sh.ok(ports(row(
        "hvsock bench client tcp://127.0.0.1:7001 --tests throughput,rtt --duration 5 --json"))
        .replace("--duration 5", "--duration 1"), timeout=60)
    report = json.loads(relayed)
    assert report, relayed
    assert sh.stop_all() == [0, 0]


covers("hvsock echo-server unix:///tmp/echo.sock &",
       "hvsock stress unix:///tmp/echo.sock -n 1000 -P 100 --max-size 256K",
       "hvsock stress unix:///tmp/echo.sock -n 1000 -P 100",
       "replay: hvsock stress unix:///tmp/echo.sock --connections 1 --min-size 0 --max-size "
       "262144 --max-chunk 65536 --seed 4821")


def test_the_stress_recipe_and_its_replay_line(sh: Shell) -> None:
    sock = f"unix://{sh.tmp}/echo.sock"

    def here(command: str) -> str:
        return (command.replace("unix:///tmp/echo.sock", sock)
                .replace("-n 1000 -P 100", "-n 100 -P 20"))

    sh.start(here(row("hvsock echo-server unix:///tmp/echo.sock &")))
    sh.ok(here(row("hvsock stress unix:///tmp/echo.sock -n 1000 -P 100 --max-size 256K")))
    sh.ok(here(row("hvsock stress unix:///tmp/echo.sock -n 1000 -P 100")) + " --max-size 64K")
    replay = row("replay: hvsock stress unix:///tmp/echo.sock --connections 1 --min-size 0 "
                 "--max-size 262144 --max-chunk 65536 --seed 4821")
    sh.ok(here(replay.removeprefix("replay: ")))
    assert sh.stop_all() == [0]
    assert not (sh.tmp / "echo.sock").exists()


covers("hvsock relay hybrid:///run/fc/v.sock:3128 tcp://127.0.0.1:3128")


def test_a_relay_for_a_firecracker_guest_reaches_a_tcp_service(sh: Shell) -> None:
    echo = socket.create_server(("127.0.0.1", 0))
    echo.settimeout(20)
    port = echo.getsockname()[1]

    def serve() -> None:
        with echo, echo.accept()[0] as conn:
            conn.sendall(recv_until_eof(conn))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    uds = sh.tmp / "v.sock"
    command = row("hvsock relay hybrid:///run/fc/v.sock:3128 tcp://127.0.0.1:3128")
    sh.start(command.replace("/run/fc/v.sock", str(uds)).replace("127.0.0.1:3128",
                                                                 f"127.0.0.1:{port}"))
    # What Firecracker does for a guest connecting to host port 3128: <uds>_3128.
    with socket.socket(socket.AF_UNIX) as guest:
        guest.settimeout(20)
        guest.connect(f"{uds}_3128")
        guest.sendall(b"through the relay")
        guest.shutdown(socket.SHUT_WR)
        assert recv_until_eof(guest) == b"through the relay"
    server.join(20)
    assert sh.stop_all() == [0]


covers("python examples/kv_service.py unix:///tmp/kv.sock")


def test_the_example_service_with_an_address(sh: Shell) -> None:
    command = row("python examples/kv_service.py unix:///tmp/kv.sock")
    example = Path(docs.ROOT) / "examples" / "kv_service.py"
    sh.start(command.replace("examples/kv_service.py", shlex.quote(str(example)))
             .replace("/tmp/kv.sock", f"{sh.tmp}/kv.sock"), ready="ready")
    assert sh.stop_all() == [0]


covers("hvsock register \"My agent\" --port 5000 --export ps1 > register-my-agent.ps1",
       "hvsock register \"My agent\" --port 5000 --export ps1 -o "
       "/mnt/c/Users/me/register-my-agent.ps1")


def test_the_export_recipes_write_their_scripts(sh: Shell) -> None:
    sh.ok(row("hvsock register \"My agent\" --port 5000 --export ps1 > register-my-agent.ps1"))
    assert (sh.tmp / "register-my-agent.ps1").read_text().startswith("# Hyper-V socket")
    (sh.tmp / "me").mkdir()
    sh.ok(row("hvsock register \"My agent\" --port 5000 --export ps1 -o "
              "/mnt/c/Users/me/register-my-agent.ps1")
          .replace("/mnt/c/Users/me", str(sh.tmp / "me")))
    text = (sh.tmp / "me" / "register-my-agent.ps1").read_bytes().decode("utf-8-sig")
    assert ".\\register-my-agent.ps1" in text


def test_every_host_row_has_a_test_above() -> None:
    assert set(docs.rows(docs.HOST)) == COVERED
