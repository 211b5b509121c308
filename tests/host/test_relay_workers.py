"""The relay with several worker processes, its memory budget, retries, target rules and
its config file. Behaviour only: every wait is on an event, a record or a counter."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import hvsock
import hvsock.forwarding
import hvsock.sockets
from hvsock._cli import main as cli
from hvsock._relay import Relay, RelayConfig
from hvsock._relay.config import parse_toml
from hvsock._relay.datapath import MIN_READ

from ._peers import EchoServer, recv_exactly, recv_until_eof, running_relay, wait_for
from .test_relay import RelayProcess, _refused, _sees_reset_or_eof

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="worker processes need fork")


def _tcp_target() -> tuple[socket.socket, hvsock.Address]:
    sock = hvsock.listen("tcp://127.0.0.1:0")
    return sock, hvsock.sockets.listener_address(sock, "tcp://127.0.0.1:0")


def _echo(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    assert recv_exactly(sock, len(data)) == data


# -- workers share one relay --------------------------------------------------------------------
# (The connection limit shared by workers: test_relay.py's back-pressure test, workers=2.)
@pytest.mark.usefixtures("fd_baseline")
def test_statistics_and_records_are_summed_over_workers() -> None:
    tl, taddr = _tcp_target()
    with EchoServer(tl), running_relay("tcp://127.0.0.1:0", taddr, workers=2) as relay:
        assert relay.relay.workers == 2
        for i in range(12):
            with hvsock.connect(relay.address) as c:
                _echo(c, b"z" * (i + 1))
                c.shutdown(socket.SHUT_WR)
                assert recv_until_eof(c) == b""
        records = relay.wait_records(12)
        stats = relay.relay.stats()
    assert stats.accepted == stats.ended == 12
    assert stats.bytes_up == stats.bytes_down == sum(range(1, 13))
    assert stats.active == 0
    assert sorted(r.bytes_up for r in records) == list(range(1, 13))
    assert len({r.id for r in records}) == 12  # ids unique across workers


@pytest.mark.usefixtures("fd_baseline")
def test_stop_with_workers_lets_connections_finish_then_ends_them_all() -> None:
    tl, taddr = _tcp_target()
    with EchoServer(tl), running_relay("tcp://127.0.0.1:0", taddr, workers=2, grace=30) as relay:
        clients = [hvsock.connect(relay.address) for _ in range(4)]
        for c in clients:
            _echo(c, b"a")
        relay.relay.request_stop()
        wait_for(lambda: _refused(relay.address), what="every worker's listener closing")
        for c in clients:  # still served within the grace
            _echo(c, b"b")
        clients[0].shutdown(socket.SHUT_WR)
        assert recv_until_eof(clients[0]) == b""
        relay.relay.request_stop(0)  # a second, shorter request cuts the rest at once
        assert relay.relay._served.wait(10)
        for c in clients[1:]:
            assert _sees_reset_or_eof(c) in ("reset", "eof")
        records = relay.wait_records(4)
        for c in clients:
            c.close()
    # (A probe above may have slipped in before the listeners closed: it carried nothing.)
    ends = sorted(r.end for r in records if r.bytes_up)
    assert ends == ["closed", "stopped", "stopped", "stopped"]


@pytest.mark.usefixtures("fd_baseline")
def test_cli_workers_ready_file_and_sigterm_twice(hvsock_cmd: list[str], short_tmp: Path) -> None:
    tl, taddr = _tcp_target()
    ready = short_tmp / "ready.json"
    with EchoServer(tl):
        proc = RelayProcess(
            [
                *hvsock_cmd,
                "relay",
                "tcp://127.0.0.1:0",
                str(taddr),
                "--workers",
                "2",
                "--json",
                "--ready-file",
                str(ready),
                "--grace",
                "30",
            ]
        )
        try:
            wait_for(ready.exists, 20, "the ready file")
            info = json.loads(ready.read_text())
            # Written once every worker is up: each is a live child of the relay.
            assert info["workers"] == 2
            assert len(info["worker_pids"]) == 2
            kids = Path(f"/proc/{proc.proc.pid}/task/{proc.proc.pid}/children").read_text()
            assert sorted(int(p) for p in kids.split()) == sorted(info["worker_pids"])
            clients = [hvsock.connect(info["listen"]) for _ in range(6)]
            for c in clients:
                _echo(c, b"1")
            proc.proc.send_signal(signal.SIGTERM)
            proc.wait_line(lambda s: "stopping" in s)
            wait_for(lambda: _refused(info["listen"]), what="the listeners closing")
            for c in clients:  # in the grace period every worker still serves
                _echo(c, b"2")
            proc.proc.send_signal(signal.SIGTERM)  # the second: cut now
            for c in clients:
                assert _sees_reset_or_eof(c) in ("reset", "eof")
                c.close()
            assert proc.proc.wait(20) == 0
            ends = [json.loads(line) for line in proc.lines if '"connection"' in line]
            # One line per connection (probes above may add empty ones).
            assert sorted(e["end"] for e in ends if e["bytes_up"]) == ["stopped"] * 6
        finally:
            proc.close()


# -- memory budget --------------------------------------------------------------------------------
class Source:
    """A target that sends *size* bytes of a known pattern to each connection, then closes;
    ``blocked`` is set once every one of *n* connections has been refused a send."""

    def __init__(self, listener: socket.socket, n: int, size: int) -> None:
        self.listener, self.n, self.size = listener, n, size
        self.pattern = bytes(range(256)) * (size // 256)
        self._blocked: set[int] = set()
        self.blocked = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._serve, args=(i,), daemon=True) for i in range(n)
        ]
        for t in self._threads:
            t.start()

    def _serve(self, i: int) -> None:
        conn, _ = self.listener.accept()
        with conn:
            # A small, fixed send buffer: the kernel's autotuning would otherwise let a
            # few connections absorb megabytes, and whether they block would depend on
            # the memory pressure earlier tests left behind.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
            conn.setblocking(False)
            view = memoryview(self.pattern)
            deadline = time.monotonic() + 60
            while view and time.monotonic() < deadline:
                try:
                    view = view[conn.send(view[: 256 * 1024]) :]
                except BlockingIOError:
                    with self._lock:
                        self._blocked.add(i)
                        if len(self._blocked) == self.n:
                            self.blocked.set()
                    conn.settimeout(1.0)
                    with contextlib.suppress(TimeoutError):
                        view = view[conn.send(view[: 256 * 1024]) :]
                    conn.setblocking(False)

    def join(self) -> None:
        for t in self._threads:
            t.join(30)


@pytest.mark.parametrize(("data_path", "workers"), [("copy", 1), ("auto", 1), ("copy", 2)])
def test_stalled_readers_stay_within_the_buffer_budget(data_path: str, workers: int) -> None:
    n, size, budget = 12, 16 << 20, 256 << 10
    tl, taddr = _tcp_target()
    # Fixed socket buffers on the relay too (no autotuning): what the sources can push
    # before they block is then bounded by the relay's own buffering, which is what this
    # test measures.
    with (
        tl,
        running_relay(
            "tcp://127.0.0.1:0",
            taddr,
            max_buffer_memory=budget,
            data_path=data_path,
            workers=workers,
            buffer_size=64 << 10,
        ) as relay,
    ):
        source = Source(tl, n, size)
        clients = [hvsock.connect(relay.address, buffer_size=64 << 10) for _ in range(n)]
        # The targets fill the clients' sockets, then the relay's buffers: it holds
        # bytes for most directions (each at least a small read) ...
        assert source.blocked.wait(30), "the targets never filled the relay"
        wait_for(
            lambda: relay.relay.stats().buffered >= (n - 4) * MIN_READ,
            30,
            "the stalled directions holding their reads",
        )
        stats = relay.relay.stats()
        # The budget, plus at most one small read per stalled direction (with
        # workers, each has its share of the budget: the sum is the same).
        assert stats.buffered <= budget + n * MIN_READ, stats
        assert stats.buffered_peak <= budget + n * MIN_READ, stats
        # The clients read now: every byte arrives, in order.
        for c in clients:
            with c:
                assert recv_until_eof(c, size) == source.pattern
        source.join()
        relay.wait_records(n)
        assert relay.relay.stats().buffered == 0


def test_buffer_budget_is_checked() -> None:
    with pytest.raises(hvsock.ArgumentError, match="max_buffer_memory"):
        Relay("tcp://127.0.0.1:0", "tcp://127.0.0.1:1", max_buffer_memory=10)
    with pytest.raises(hvsock.ArgumentError, match="workers"):
        Relay("tcp://127.0.0.1:0", "tcp://127.0.0.1:1", workers=0)


# -- retries --------------------------------------------------------------------------------------
@pytest.mark.usefixtures("fd_baseline")
def test_retries_wait_for_a_target_that_starts_late(short_tmp: Path) -> None:
    path = short_tmp / "late.sock"
    with (
        running_relay("tcp://127.0.0.1:0", f"unix://{path}", retries=20) as relay,
        hvsock.connect(relay.address) as client,
    ):
        client.sendall(b"early")
        late = hvsock.listen(f"unix://{path}")  # only now does the target listen
        with EchoServer(late):
            assert recv_exactly(client, 5) == b"early"
            client.shutdown(socket.SHUT_WR)
            assert recv_until_eof(client) == b""
            (record,) = relay.wait_records(1)
    assert record.end == "closed"


# -- target rules ---------------------------------------------------------------------------------
def test_allow_target_refuses_a_target_outside_the_rules() -> None:
    with pytest.raises(hvsock.ArgumentError, match="not allowed by the allow-target rules"):
        Relay(
            "tcp://127.0.0.1:0",
            "tcp://127.0.0.1:22",
            allow_targets=["tcp://10.0.0.0/8:*", "vsock://3:*"],
        )
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(
        [
            "relay",
            "tcp://127.0.0.1:0",
            "tcp://192.168.1.5:443",
            "--allow-target",
            "tcp://192.168.0.0/24:443",
        ],
        out=out,
        err=err,
    )
    assert status == cli.EXIT_USAGE
    assert "not allowed" in err.getvalue()


@pytest.mark.parametrize(
    ("rules", "target"),
    [
        (["tcp://127.0.0.0/8:*"], "tcp://127.0.0.1:22"),
        (["tcp://*.example.com:443"], "tcp://kms.example.com:443"),
        (["tcp://[::1]:80"], "tcp://[::1]:80"),
        (["vsock://3:*"], "vsock://3:5000"),
        (["unix:///run/app/*.sock"], "unix:///run/app/a.sock"),
    ],
)
def test_allow_target_lets_matching_targets_through(rules: list[str], target: str) -> None:
    relay = Relay("tcp://127.0.0.1:0", target, allow_targets=rules)
    assert str(relay.target) == target


@pytest.mark.parametrize(
    ("rule", "fragment"),
    [
        ("10.0.0.0/8", "address pattern"),
        ("ftp://x:1", "unknown scheme"),
        ("tcp://10.0.0.0/33:1", "network"),
        ("tcp://host", "tcp://HOST:PORT"),
        ("tcp://host:99999", "1..65535"),
        (7, "address pattern"),
    ],
)
def test_bad_allow_target_rules(rule: object, fragment: str) -> None:
    with pytest.raises(hvsock.ArgumentError, match=fragment):
        Relay("tcp://127.0.0.1:0", "tcp://127.0.0.1:1", allow_targets=[rule])  # type: ignore[list-item]


# -- relay.toml -----------------------------------------------------------------------------------
@pytest.fixture
def two_targets() -> Iterator[tuple[hvsock.Address, hvsock.Address]]:
    (ta, aa), (tb, ab) = _tcp_target(), _tcp_target()
    with EchoServer(ta), EchoServer(tb):
        yield aa, ab


@pytest.mark.usefixtures("fd_baseline")
def test_config_file_serves_two_forwards_each_with_its_allowlist(
    two_targets: tuple[hvsock.Address, hvsock.Address], hvsock_cmd: list[str], short_tmp: Path
) -> None:
    a, b = two_targets
    config = short_tmp / "relay.toml"
    config.write_text(f"""# two forwards, one relay
max_connections = 100
allow_targets = ["tcp://127.0.0.0/8:*"]

[[forward]]
listen = "tcp://127.0.0.1:0"
target = "{a}"
allow = ["127.0.0.1"]

[[forward]]
listen = "tcp://127.0.0.1:0"
target = "{b}"
allow = ["192.0.2.1"]   # nobody here
""")
    ready = short_tmp / "ready.json"
    proc = RelayProcess(
        [
            *hvsock_cmd,
            "relay",
            "--config",
            str(config),
            "--workers",
            "2",
            "--json",
            "--ready-file",
            str(ready),
        ]
    )
    try:
        wait_for(ready.exists, 20, "the ready file")
        forwards = json.loads(ready.read_text())["forwards"]
        assert [f["target"] for f in forwards] == [str(a), str(b)]
        with hvsock.connect(forwards[0]["listen"]) as c:
            _echo(c, b"allowed")
        with hvsock.connect(forwards[1]["listen"]) as c:
            assert _sees_reset_or_eof(c) in ("reset", "eof")
        denied = json.loads(proc.wait_line(lambda s: '"denied"' in s))
        assert denied["target"] == str(b)
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(20) == 0
    finally:
        proc.close()


def test_config_file_settings_and_command_line_overrides() -> None:
    text = (
        'workers = 3\nmax_connections = 5\n[[forward]]\nlisten = "tcp://127.0.0.1:0"\n'
        'target = "vsock://3:22"\nallow = [2, "uid:1000"]\n'
    )
    config = hvsock.forwarding.RelayConfig.from_toml(text, "r.toml", max_connections=7)
    assert isinstance(config, RelayConfig)
    assert (config.workers, config.max_connections) == (3, 7)
    assert config.forwards[0].allow == frozenset({2, "uid:1000"})


BAD_CONFIGS = [
    ('[[forward]]\nlisten = "tcp://127.0.0.1:0"\ntarget = \n', "r.toml:3:", "value"),
    (
        'max_conections = 5\n[[forward]]\nlisten = "tcp://127.0.0.1:0"\ntarget = "tcp://1.2.3.4:5"\n',
        "r.toml:1:",
        "unknown setting 'max_conections'",
    ),
    (
        '# c\n\nmax_connections = 0\n[[forward]]\nlisten = "tcp://127.0.0.1:0"\n'
        'target = "tcp://1.2.3.4:5"\n',
        "r.toml:3:",
        "max_connections",
    ),
    (
        '[[forward]]\nlisten = "tcp://127.0.0.1:0"\ntarget = "tcp://1.2.3.4:5"\n\n[[forward]]\n'
        'listen = "tcp://127.0.0.1:0"\ntarget = "ftp://nope"\n',
        "r.toml:7:",
        "scheme",
    ),
    (
        '[[forward]]\nlisten = "tcp://127.0.0.1:0"\ntarget = "tcp://1.2.3.4:5"\n'
        '[[forward]]\nlisten = "tcp://127.0.0.1:0"\n',
        "r.toml:4:",
        "no target",
    ),
    (
        'allow_targets = ["vsock://3:*"]\n[[forward]]\nlisten = "tcp://127.0.0.1:0"\n'
        'target = "tcp://1.2.3.4:5"\n',
        "r.toml:4:",
        "not allowed",
    ),
    (
        '[[forward]]\nlisten = "tcp://127.0.0.1:0"\ntarget = "tcp://1.2.3.4:5"\n'
        'allow = ["uid:x"]\n',
        "r.toml:4:",
        "uid",
    ),
    (
        '[[forward]]\nlisten = "tcp://127.0.0.1:0"\ntarget = "tcp://1.2.3.4:5"\ncolour = 1\n',
        "r.toml:4:",
        "unknown forward key",
    ),
    ("workers = 2\n", "r.toml:", "no [[forward]]"),
    (
        'workers = "many"\n[[forward]]\nlisten = "tcp://127.0.0.1:0"\ntarget = "tcp://1.2.3.4:5"\n',
        "r.toml:1:",
        "workers",
    ),
]


@pytest.mark.parametrize(("text", "where", "fragment"), BAD_CONFIGS)
def test_bad_config_files_name_the_line(text: str, where: str, fragment: str) -> None:
    with pytest.raises(hvsock.ArgumentError) as info:
        parse_toml(text, "r.toml")
    assert str(info.value).startswith(where)
    assert fragment in str(info.value)


def test_cli_bad_config_file_exits_2_with_the_line(short_tmp: Path) -> None:
    path = short_tmp / "relay.toml"
    path.write_text(
        '[[forward]]\nlisten = "tcp://127.0.0.1:0"\ntarget = "tcp://1.2.3.4:5"\n'
        'allow = "everyone"\n'
    )
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["relay", "--config", str(path)], out=out, err=err) == cli.EXIT_USAGE
    assert f"{path}:4:" in err.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert (
        cli.main(["relay", "--config", str(short_tmp / "missing.toml")], out=out, err=err)
        == cli.EXIT_USAGE
    )
    assert "cannot read --config" in err.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert (
        cli.main(["relay", "tcp://127.0.0.1:0", "--config", str(path)], out=out, err=err)
        == cli.EXIT_USAGE
    )
    assert "not on the command line" in err.getvalue()
