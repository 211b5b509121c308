"""Every shell snippet of README.md and docs/*.md that can run here runs, as written.

The table in tests/doc_snippets.py says for each command whether it runs here
(HOST), in the test VM (KERNEL) or not at all (with the reason). Commands run
through bash with the installed ``hvsock`` and ``python`` first on PATH; fixed
paths and ports become temporary ones. Servers (``... &``) run until the recipe
is done, then get SIGTERM and must exit 0 (the documented rule). Where a row says
the runner changes more (an added ``--dir``, a unix:// socket for a vsock one), it
says so in its reason. NOT rows that dial a guest (CID 3) run here too with a unix://
socket for the guest's address, when their reason names the test that does it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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

import hvsock
import hvsock.forwarding
import hvsock.kvp

from .. import doc_snippets as docs
from ._peers import EchoServer, recv_until_eof

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
        (shim / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        (shim / "python").chmod(0o755)
        self.env = dict(
            os.environ, PATH=f"{shim}:{BIN}:{os.environ.get('PATH', '')}", PYTHONUNBUFFERED="1"
        )
        self.servers: list[subprocess.Popen[bytes]] = []
        self.drains: list[threading.Thread] = []

    def run(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.tmp,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def ok(self, command: str, timeout: float = 120) -> str:
        done = self.run(command, timeout)
        assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stderr}"
        return done.stdout

    def start(
        self, command: str, ready: str = "listening on", timeout: float = 30
    ) -> subprocess.Popen[bytes]:
        """A server (``... &`` in the docs): started, and waited for until it is ready."""
        command = command.removesuffix("&").strip()
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=self.tmp,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
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


covers(
    "hvsock service-id 2761",
    "hvsock port 00000ac9-facb-11e6-bd58-64006a7986d3",
    "hvsock addr hvsock://parent/2761",
    "hvsock demo",
)


def test_the_id_and_address_commands(sh: Shell) -> None:
    assert sh.ok(row("hvsock service-id 2761")) == "00000ac9-facb-11e6-bd58-64006a7986d3\n"
    assert sh.ok(row("hvsock port 00000ac9-facb-11e6-bd58-64006a7986d3")) == "2761\n"
    assert "hvsock://parent/2761" in sh.ok(row("hvsock addr hvsock://parent/2761"))
    assert sh.ok(row("hvsock demo")).endswith("ok\n")


covers("hvsock cid", "hvsock doctor vsock://host:5000", "hvsock selftest --json")


@pytest.mark.host_vsock  # doctor and selftest create an AF_VSOCK socket (never connect)
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


covers(
    'hvsock register "My agent" --port 5000',
    "hvsock services",
    "hvsock vms",
    "hvsock connect hvsock://name:MyVM/5000",
)


@pytest.mark.skipif(sys.platform == "win32", reason="on Windows these run for real")
def test_the_windows_commands_explain_themselves_elsewhere(sh: Shell) -> None:
    done = sh.run(row('hvsock register "My agent" --port 5000'))
    assert (done.returncode, "--export ps1" in done.stderr) == (3, True), done.stderr
    for command in ("hvsock services", "hvsock connect hvsock://name:MyVM/5000"):
        done = sh.run(row(command))
        assert done.returncode == 3, (command, done.stderr)
        assert done.stderr.startswith("hvsock: error: "), (command, done.stderr)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the KVM host side")
def test_hvsock_vms_on_linux_lists_this_hosts_vms(sh: Shell) -> None:
    done = sh.run(row("hvsock vms"))
    assert done.returncode == 0, done.stderr
    # A table of what runs here, or which sources were asked and why each found nothing.
    if done.stdout:
        assert done.stdout.split()[:5] == ["NAME", "HYPERVISOR", "STATE", "VSOCK", "SOURCE"]
    else:
        assert done.stderr.startswith("hvsock: no VMs found on this host; sources checked:")


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


covers(
    "hvsock bench server tcp://127.0.0.1:7000 &",
    "hvsock bench client tcp://127.0.0.1:7000",
    "hvsock relay tcp://127.0.0.1:7001 tcp://127.0.0.1:7000 &",
    "hvsock bench client tcp://127.0.0.1:7001 --tests throughput,rtt --duration 5 --json",
)


def test_the_bench_recipe_direct_and_through_a_relay(sh: Shell) -> None:
    server, relay = str(free_port()), str(free_port())

    def ports(command: str) -> str:
        return command.replace(":7000", f":{server}").replace(":7001", f":{relay}")

    sh.start(ports(row("hvsock bench server tcp://127.0.0.1:7000 &")), "listening on")
    direct = sh.ok(
        ports(row("hvsock bench client tcp://127.0.0.1:7000"))
        + " --bytes 8M --count 200 --connections 50 --streams 4",
        timeout=150,
    )
    assert "throughput" in direct
    sh.start(ports(row("hvsock relay tcp://127.0.0.1:7001 tcp://127.0.0.1:7000 &")))
    relayed = sh.ok(
        ports(
            row(
                "hvsock bench client tcp://127.0.0.1:7001 --tests throughput,rtt"
                " --duration 5 --json"
            )
        ).replace("--duration 5", "--duration 1"),
        timeout=60,
    )
    report = json.loads(relayed)
    assert report, relayed
    assert sh.stop_all() == [0, 0]


covers(
    "hvsock echo-server unix:///tmp/echo.sock &",
    "hvsock stress unix:///tmp/echo.sock -n 1000 -P 100 --max-size 256K",
    "hvsock stress unix:///tmp/echo.sock -n 1000 -P 100",
    "replay: hvsock stress unix:///tmp/echo.sock --connections 1 --min-size 0 --max-size "
    "262144 --max-chunk 65536 --seed 4821",
)


def test_the_stress_recipe_and_its_replay_line(sh: Shell) -> None:
    sock = f"unix://{sh.tmp}/echo.sock"

    def here(command: str) -> str:
        return command.replace("unix:///tmp/echo.sock", sock).replace(
            "-n 1000 -P 100", "-n 100 -P 20"
        )

    sh.start(here(row("hvsock echo-server unix:///tmp/echo.sock &")))
    sh.ok(here(row("hvsock stress unix:///tmp/echo.sock -n 1000 -P 100 --max-size 256K")))
    sh.ok(here(row("hvsock stress unix:///tmp/echo.sock -n 1000 -P 100")) + " --max-size 64K")
    replay = row(
        "replay: hvsock stress unix:///tmp/echo.sock --connections 1 --min-size 0 "
        "--max-size 262144 --max-chunk 65536 --seed 4821"
    )
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
    sh.start(
        command.replace("/run/fc/v.sock", str(uds)).replace("127.0.0.1:3128", f"127.0.0.1:{port}")
    )
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
    sh.start(
        command.replace("examples/kv_service.py", shlex.quote(str(example))).replace(
            "/tmp/kv.sock", f"{sh.tmp}/kv.sock"
        ),
        ready="ready",
    )
    assert sh.stop_all() == [0]


covers(
    'hvsock register "My agent" --port 5000 --export ps1 > register-my-agent.ps1',
    'hvsock register "My agent" --port 5000 --export ps1 -o /mnt/c/Users/me/register-my-agent.ps1',
)


def test_the_export_recipes_write_their_scripts(sh: Shell) -> None:
    sh.ok(row('hvsock register "My agent" --port 5000 --export ps1 > register-my-agent.ps1'))
    assert (sh.tmp / "register-my-agent.ps1").read_text().startswith("# Hyper-V socket")
    (sh.tmp / "me").mkdir()
    sh.ok(
        row(
            'hvsock register "My agent" --port 5000 --export ps1 -o '
            "/mnt/c/Users/me/register-my-agent.ps1"
        ).replace("/mnt/c/Users/me", str(sh.tmp / "me"))
    )
    text = (sh.tmp / "me" / "register-my-agent.ps1").read_bytes().decode("utf-8-sig")
    assert ".\\register-my-agent.ps1" in text


def elsewhere(command: str, test: str) -> str:
    """A NOT row (it dials a guest) whose reason says *test* runs it with a unix:// socket."""
    how, why = docs.TABLE[command]
    assert how == docs.NOT, command
    assert f"::{test}" in why, command
    return command


def doc_block(name: str, lang: str, starts: str) -> str:
    """The first ``lang`` block of docs/*name* whose text starts with *starts*."""
    text = (Path(docs.ROOT) / "docs" / name).read_text(encoding="utf-8")
    for block in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        if block.group(1) == lang and block.group(2).startswith(starts):
            return block.group(2)
    raise AssertionError(f"no {lang} block starting {starts!r} in docs/{name}")


covers("hvsock relay --config relay.toml")


def test_the_relay_config_recipe(sh: Shell) -> None:
    sample = doc_block("port-forwarding.md", "toml", "# relay.toml")
    assert len(hvsock.forwarding.RelayConfig.from_toml(sample, "relay.toml").forwards) == 2
    tcp_port = free_port()
    with (
        EchoServer(socket.create_server(("127.0.0.1", 0))) as tcp_echo,
        EchoServer(unix_listener(sh.tmp / "echo.sock")) as unix_echo,
    ):
        echo_port = tcp_echo.listener.getsockname()[1]
        (sh.tmp / "relay.toml").write_text(
            "workers = 1\nmax_connections = 20\n"
            f'allow_targets = ["unix://{sh.tmp}/*.sock", "tcp://127.0.0.1:*"]\n'
            f'[[forward]]\nlisten = "tcp://127.0.0.1:{tcp_port}"\n'
            f'target = "unix://{sh.tmp}/echo.sock"\nallow = ["127.0.0.1"]\n'
            f'[[forward]]\nlisten = "unix://{sh.tmp}/in.sock"\n'
            f'target = "tcp://127.0.0.1:{echo_port}"\nallow = ["uid:{os.getuid()}"]\n'
        )
        sh.start(row("hvsock relay --config relay.toml"))
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=20) as client:
            client.sendall(b"to the unix echo")
            client.shutdown(socket.SHUT_WR)
            assert recv_until_eof(client) == b"to the unix echo"
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(20)
            client.connect(str(sh.tmp / "in.sock"))
            client.sendall(b"to the tcp echo")
            client.shutdown(socket.SHUT_WR)
            assert recv_until_eof(client) == b"to the tcp echo"
        assert sh.stop_all() == [0]
        assert (tcp_echo.accepted, unix_echo.accepted) == (1, 1)


def unix_listener(path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()
    return listener


# -- KVP: the pools are files of 2560-byte records (key[512], value[2048]) ------------


def records(path: Path) -> list[tuple[str, str]]:
    """The records of a pool file, read here byte by byte (not through hvsock)."""
    data = path.read_bytes() if path.exists() else b""
    assert len(data) % 2560 == 0, len(data)
    return [
        (
            data[i : i + 512].split(b"\0")[0].decode(),
            data[i + 512 : i + 2560].split(b"\0")[0].decode(),
        )
        for i in range(0, len(data), 2560)
    ]


def record(key: str, value: str) -> bytes:
    return key.encode().ljust(512, b"\0") + value.encode().ljust(2048, b"\0")


covers(
    "hvsock kvp set Role web",
    "hvsock kvp set ProvisioningState ready",
    "hvsock kvp get ProvisioningState",
    "hvsock kvp list",
    "hvsock kvp delete ProvisioningState",
    "hvsock kvp host-info",
    "hvsock kvp --pool auto-external list",
    "hvsock kvp clear --stale",
    "hvsock kvp set Key Value --full",
    "hvsock kvp --dir /tmp/pools list",
    "hvsock kvp --host-pool --pool 3 set HostName h",
)


def test_the_kvp_commands_on_the_pools(sh: Shell) -> None:
    pools = sh.tmp / "hyperv"
    pools.mkdir()

    def kvp(command: str) -> str:
        """*command* with --dir after `hvsock kvp`: the one change these rows make."""
        return row(command).replace("hvsock kvp ", f"hvsock kvp --dir {pools} ", 1)

    guest = pools / ".kvp_pool_1"
    sh.ok(kvp("hvsock kvp set Role web"))
    sh.ok(kvp("hvsock kvp set ProvisioningState ready"))
    assert records(guest) == [("Role", "web"), ("ProvisioningState", "ready")]
    assert sh.ok(kvp("hvsock kvp get ProvisioningState")) == "ready\n"
    with guest.open("ab") as f:  # a duplicate, as cloud-init's appends leave them
        f.write(record("Role", "db"))
    lists = {
        flags: sh.ok(f"{kvp('hvsock kvp list')} {flags}")
        for flags in ("", "--all", "--json", "--all --json")
    }
    assert sorted(lists[""].splitlines()) == ["ProvisioningState=ready", "Role=db"]
    assert lists["--all"].count("Role=") == 2
    pairs = {(i["key"], i["value"]) for i in json.loads(lists["--json"])}
    assert pairs == {("Role", "db"), ("ProvisioningState", "ready")}
    every = [(i["key"], i["value"]) for i in json.loads(lists["--all --json"])]
    assert sorted(every) == [("ProvisioningState", "ready"), ("Role", "db"), ("Role", "web")]
    sh.ok(kvp("hvsock kvp delete ProvisioningState"))
    assert ("ProvisioningState", "ready") not in records(guest)
    assert sh.run(kvp("hvsock kvp get ProvisioningState")).returncode == 1

    long_value = "v" * 2047  # over the safe limit (1022), within the on-disk one
    sh.ok(kvp("hvsock kvp set Key Value --full").replace(" Value ", f" {long_value} "))
    assert ("Key", long_value) in records(guest)
    sh.ok(kvp("hvsock kvp set Key Value --full"))
    assert ("Key", "Value") in records(guest)

    (pools / ".kvp_pool_3").write_bytes(
        record("VirtualMachineName", "web-1") + record("HostName", "hv-01")
    )
    assert "VirtualMachineName=web-1" in sh.ok(kvp("hvsock kvp --pool auto-external list"))
    text = sh.ok(kvp("hvsock kvp host-info"))
    assert "web-1" in text, text
    assert "hv-01" in text, text
    facts = json.loads(sh.ok(kvp("hvsock kvp host-info") + " --json"))
    assert (facts["vm_name"], facts["host_name"]) == ("web-1", "hv-01"), facts

    sh.ok(kvp("hvsock kvp --host-pool --pool 3 set HostName h"))
    assert ("HostName", "h") in records(pools / ".kvp_pool_3")
    os.utime(pools / ".kvp_pool_3", (0, 0))  # 1970: before this boot, so stale
    sh.ok(kvp("hvsock kvp clear --stale"))
    assert records(pools / ".kvp_pool_3") == []
    assert ("Role", "db") in records(guest)  # written this boot: kept

    other = sh.tmp / "pools"
    other.mkdir()
    (other / ".kvp_pool_1").write_bytes(record("Elsewhere", "yes"))
    command = row("hvsock kvp --dir /tmp/pools list").replace("/tmp/pools", str(other))
    assert sh.ok(command) == "Elsewhere=yes\n"


covers("hvsock kvp watch --count 10 --for 60")


def test_kvp_watch_prints_ten_changes_and_stops(sh: Shell) -> None:
    pools = sh.tmp / "hyperv"
    pools.mkdir()
    command = row("hvsock kvp watch --count 10 --for 60").replace(
        "hvsock kvp ", f"hvsock kvp --dir {pools} ", 1
    )
    watch = subprocess.Popen(
        ["bash", "-c", command],
        cwd=sh.tmp,
        env=sh.env,
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    try:
        # A watch reports what changed after it looked first: keep setting new keys
        # (bounded) until it has seen ten and exited.
        for i in range(400):
            hvsock.kvp.open_pool(directory=str(pools)).set(f"K{i}", str(i))
            try:
                status = watch.wait(0.1)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            raise AssertionError("the watch never stopped after 10 changes")
        assert watch.stdout is not None
        lines = watch.stdout.read().splitlines()
    finally:
        if watch.poll() is None:
            watch.kill()
        watch.wait(10)
        if watch.stdout is not None:
            watch.stdout.close()
    assert status == 0
    assert len(lines) == 10, lines
    assert all(re.fullmatch(r"set K(\d+)=\1", line) for line in lines), lines


covers("hvsock kvp serve", "hvsock kvp --vm hybrid:///run/fc/v.sock host-info")


def test_the_kvp_service_recipe(sh: Shell) -> None:
    pools = sh.tmp / "hyperv"
    pools.mkdir()
    service = f"unix://{sh.tmp}/kvp.sock"
    sh.start(
        row("hvsock kvp serve").replace("hvsock kvp ", f"hvsock kvp --dir {pools} ", 1)
        + f" --listen {service} --allow uid:{os.getuid()}"
    )
    (pools / ".kvp_pool_1").write_bytes(record("ProvisioningState", "ready"))

    def vm(command: str) -> str:
        return elsewhere(command, "test_the_kvp_service_recipe").replace("vsock://3", service)

    assert sh.ok(vm("hvsock kvp --vm vsock://3 get ProvisioningState")) == "ready\n"
    assert json.loads(sh.ok(vm("hvsock kvp --vm vsock://3 list --json"))) == [
        {"key": "ProvisioningState", "value": "ready"}
    ]
    sh.ok(vm("hvsock kvp --vm vsock://3 set Role web"))
    assert records(pools / ".kvp_pool_0") == [("Role", "web")]
    sh.ok(vm("hvsock kvp --vm vsock://3 --pool auto-external set VirtualMachineName web-1"))
    assert records(pools / ".kvp_pool_3") == [("VirtualMachineName", "web-1")]

    # Firecracker's side of hybrid vsock: CONNECT <port>, OK, then the guest's socket.
    vmm = unix_listener(sh.tmp / "v.sock")
    vmm.settimeout(30)
    asked: list[bytes] = []

    def play_firecracker() -> None:
        with vmm, vmm.accept()[0] as host, socket.socket(socket.AF_UNIX) as guest:
            host.settimeout(30)
            line = b""
            while not line.endswith(b"\n") and len(line) < 64:
                line += host.recv(1)
            asked.append(line)
            host.sendall(b"OK 1073741824\n")
            guest.settimeout(30)
            guest.connect(f"{sh.tmp}/kvp.sock")
            pump = threading.Thread(target=carry, args=(guest, host), daemon=True)
            pump.start()
            carry(host, guest)
            pump.join(30)

    vmm_thread = threading.Thread(target=play_firecracker, daemon=True)
    vmm_thread.start()
    command = row("hvsock kvp --vm hybrid:///run/fc/v.sock host-info")
    out = sh.ok(command.replace("/run/fc/v.sock", f"{sh.tmp}/v.sock"), timeout=60)
    vmm_thread.join(30)
    assert asked == [b"CONNECT 5010\n"]
    assert "web-1" in out
    assert sh.stop_all() == [0]


def carry(src: socket.socket, dst: socket.socket) -> None:
    """Bytes from *src* to *dst* until EOF, then half-close *dst*."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the other direction closed both: the exchange is over


covers(
    "hvsock agent --listen unix:///tmp/a.sock --enable exec,info",
    "hvsock agent --listen vsock://any:5100 --enable exec,info,health,time",
)


def test_the_agent_recipe(sh: Shell) -> None:
    sample = sh.tmp / "agent.toml"
    sample.write_text(doc_block("agent.md", "toml", "[agent]"))
    done = sh.run(f"hvsock agent --check-config {sample}")
    assert done.returncode == 0, done.stdout + done.stderr

    readme = f"unix://{sh.tmp}/a.sock"
    sh.start(
        row("hvsock agent --listen unix:///tmp/a.sock --enable exec,info").replace(
            "unix:///tmp/a.sock", readme
        )
    )
    assert sh.ok(f"hvsock exec {readme} -- echo through the agent") == "through the agent\n"
    assert sh.run(f"hvsock exec {readme} -- sh -c 'exit 7'").returncode == 7

    agent = f"unix://{sh.tmp}/agent.sock"
    sh.start(
        row("hvsock agent --listen vsock://any:5100 --enable exec,info,health,time").replace(
            "vsock://any:5100", agent
        )
    )

    def here(command: str) -> str:
        return elsewhere(command, "test_the_agent_recipe").replace("vsock://3:5100", agent)

    assert sh.ok(here("hvsock exec vsock://3:5100 -- uname -a")) == sh.ok("uname -a")
    assert (
        sh.ok(here("echo data | hvsock exec vsock://3:5100 -- sha256sum"))
        == hashlib.sha256(b"data\n").hexdigest() + "  -\n"
    )
    done = subprocess.run(
        ["bash", "-c", here("hvsock exec -t vsock://3:5100 -- bash")],
        input="exit 3\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=sh.tmp,
        env=sh.env,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    assert sh.stop_all() == [0, 0]


covers("hvsock cp --serve /srv/www /var/log --listen vsock://any:5005")


def test_the_file_copy_recipe(sh: Shell) -> None:
    www, log = sh.tmp / "srv" / "www", sh.tmp / "var" / "log"
    www.mkdir(parents=True)
    log.mkdir(parents=True)
    (log / "app.log").write_bytes(os.urandom(100_000))
    address = f"unix://{sh.tmp}/cp.sock"
    sh.start(
        row("hvsock cp --serve /srv/www /var/log --listen vsock://any:5005")
        .replace("/srv/www", str(www))
        .replace("/var/log", str(log))
        .replace("vsock://any:5005", address),
        ready="serving",
    )

    def here(command: str) -> str:
        return (
            elsewhere(command, "test_the_file_copy_recipe")
            .replace("vsock://3:5005", address)
            .replace(":/srv/www", f":{www}")
            .replace(":/var/log", f":{log}")
        )

    sh.ok(here("hvsock cp --remote vsock://3:5005 :/var/log/app.log ."))
    assert (sh.tmp / "app.log").read_bytes() == (log / "app.log").read_bytes()

    site = sh.tmp / "site"
    (site / "css").mkdir(parents=True)
    (site / "index.html").write_text("<h1>hi</h1>\n")
    (site / "css" / "a.css").write_bytes(os.urandom(5000))
    os.utime(site / "index.html", (1_000_000_000, 1_000_000_000))
    sh.ok(here("hvsock cp --remote vsock://3:5005 -r ./site :/srv/www"))
    assert (www / "site" / "css" / "a.css").read_bytes() == (site / "css" / "a.css").read_bytes()
    os.utime(www / "site" / "index.html", (1_000_000_000, 1_000_000_000))
    sh.ok(here("hvsock cp --remote vsock://3:5005 -r -p :/srv/www/site ./backup"))
    assert (sh.tmp / "backup" / "index.html").read_text() == "<h1>hi</h1>\n"
    assert (sh.tmp / "backup" / "index.html").stat().st_mtime == 1_000_000_000

    (sh.tmp / "data").mkdir()
    (sh.tmp / "data" / "x").write_bytes(os.urandom(3000))
    sh.ok(here("tar -c data | hvsock cp --remote vsock://3:5005 - :/srv/www/data.tar"))
    listed = sh.ok(f"tar -tf {www / 'data.tar'}")
    assert listed.split() == ["data/", "data/x"]

    out = subprocess.run(
        ["bash", "-c", here("hvsock cp --remote vsock://3:5005 :/var/log/app.log - | less")],
        capture_output=True,
        timeout=60,
        cwd=sh.tmp,
        env=sh.env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == (log / "app.log").read_bytes()

    (sh.tmp / "big.iso").write_bytes(os.urandom(3_000_000))
    sh.ok(here("hvsock cp --remote vsock://3:5005 --resume big.iso :/srv/www/"))
    assert (www / "big.iso").read_bytes() == (sh.tmp / "big.iso").read_bytes()

    os.symlink("index.html", site / "home.html")
    listed = sh.ok(here("hvsock cp -a -v ./site vsock://3:5005:/srv/www"))
    assert f"'./site/home.html' -> ':{www}/site/home.html'" in listed
    assert os.readlink(www / "site" / "home.html") == "index.html"
    (sh.tmp / "app.log").unlink()
    sh.ok(here("hvsock cp vsock://3:5005:/var/log/app.log ."))
    assert (sh.tmp / "app.log").read_bytes() == (log / "app.log").read_bytes()
    assert sh.stop_all() == [0]


TRY_OUT_UNIX = [
    "mkdir -p /tmp/try",
    "hvsock echo-server unix:///tmp/try/echo.sock &",
    "hvsock ping unix:///tmp/try/echo.sock -c 10",
    "hvsock agent --listen unix:///tmp/try/agent.sock --enable exec,info &",
    "hvsock exec unix:///tmp/try/agent.sock -- uname -a",
]
covers(*TRY_OUT_UNIX)


def test_the_one_machine_try_out_over_unix_sockets(sh: Shell) -> None:
    block = doc_block("try-out.md", "sh", "mkdir -p /tmp/try")
    assert [docs.strip_comment(line) for line in block.splitlines()] == TRY_OUT_UNIX
    try_dir = sh.tmp / "try"  # for /tmp/try: the one change

    def here(command: str) -> str:
        return row(command).replace("/tmp/try", str(try_dir))

    outputs = []
    for command in TRY_OUT_UNIX:
        if command.endswith("&"):
            sh.start(here(command))
        else:
            outputs.append(sh.ok(here(command)))
    assert try_dir.is_dir()
    assert outputs[1].startswith(f"10 round trips of 1 byte to unix://{try_dir}/echo.sock\n")
    assert outputs[2] == sh.ok("uname -a")
    assert sh.stop_all() == [0, 0]


def test_every_host_row_has_a_test_above() -> None:
    assert set(docs.rows(docs.HOST)) == COVERED
