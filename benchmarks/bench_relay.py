"""hvsock relay against socat and against no relay at all, path by path, in one run.

For each path, three ways to reach the same benchmark server (``hvsock bench
server``, its own process):

- direct: the client connects to the server itself (no relay);
- socat:  ``socat <LISTEN>,fork,reuseaddr <CONNECT>`` in between;
- hvsock: ``hvsock relay LISTEN TARGET`` in between.

Figures (medians over --rounds, the three variants alternating so drifts in
machine load hit all alike): single-stream throughput, 16 parallel streams, new
connections per second (connect, one byte each way, close; one client, and four
client processes at once), 1-byte round trip,
the relay's peak RSS while 1000 connections run at once through it (a
``stress`` run with checked payloads: the mismatches are reported too), and its
RSS while 1000 clients that never read hold connections whose targets keep
sending ("stalled RSS"; a checked stress run of 100 reading clients goes on
meanwhile, and its mismatches are reported). hvsock's memory is summed over its
worker processes (RSS; PSS beside it); socat's is its processes' PSS.

Paths: host (default) TCP->TCP, TCP->Unix, TCP->hybrid (through the emulated
muxer of hvsock.testing, in its own process); --vm (inside the QEMU test VM,
see scripts/bench-vm) TCP->vsock and vsock->vsock over real AF_VSOCK to CID 1.

socat cannot speak hybrid vsock's CONNECT handshake, so on the hybrid path it
relays to the VMM socket and the client sends the handshake through it.

    .venv/bin/python benchmarks/bench_relay.py            # table
    .venv/bin/python benchmarks/bench_relay.py --json     # JSON
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _report

import hvsock
import hvsock.sockets
from hvsock._builtin import bench, stress
from hvsock._core import handshake

HERE = Path(__file__).resolve().parent
VARIANTS = ("direct", "socat", "hvsock")
FIGURES = (
    "throughput",
    "throughput x16",
    "connect rate",
    "connect rate x4",
    "round trip",
    "peak RSS",
    "stalled RSS",
)
UNITS = {
    "throughput": "MB/s",
    "throughput x16": "MB/s",
    "connect rate": "conn/s",
    "connect rate x4": "conn/s",
    "round trip": "us",
    "peak RSS": "MB",
    "stalled RSS": "MB",
}
RSS_FIGURES = ("peak RSS", "stalled RSS")
# Targets on host paths: (figure, against, min ratio) or, for round trip, max ratio.
# (issue 14's targets, on the 2-vCPU machine)
HOST_TARGETS = {
    "throughput": [("socat", 1.8), ("direct", 0.5)],
    "throughput x16": [("socat", 1.5), ("direct", 0.45)],
    "connect rate x4": [("socat", 3.0)],
    "round trip": [("socat", 1.0)],  # hvsock/socat <= 1.0 (lower is better)
}
VM_TARGETS = {"throughput x16": [("socat", 1.5)]}
#: Where a path's target differs (issue 14: splice reaches further into Unix sockets).
PATH_TARGETS = {"tcp->unix": {"throughput x16": [("socat", 3.0), ("direct", 0.8)]}}


def targets_for(path: str, vm: bool) -> dict[str, list[tuple[str, float]]]:
    return {**(VM_TARGETS if vm else HOST_TARGETS), **PATH_TARGETS.get(path, {})}


RSS_LIMIT_MB = 150
#: Extra `hvsock relay` options (--relay-args), for trying settings.
RELAY_ARGS: list[str] = []


@dataclass
class Route:
    """One path: how each variant is reached, and what to tear down after."""

    name: str
    direct: str  # the bench server's address, as a client dials it
    relay_target: str  # what `hvsock relay` dials
    socat_listen: str  # socat's listen spec (":PORT" is appended)
    socat_target: str
    listen_kind: str  # "tcp" or "vsock": what the relays listen on
    client_handshake: int | None = None  # hybrid port the client sends via socat
    addresses: dict[str, str] = field(default_factory=dict)
    log: str | None = None  # the hvsock relay's stderr (--quiet: problems only)


def machine() -> dict[str, Any]:
    """_report.machine(), plus what this comparison needs: CPU model, memory, socat."""
    info: dict[str, Any] = dict(_report.machine())
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        info["memory"] = f"{kb / 2**20:.0f} GiB"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["socat", "-V"], capture_output=True, text=True, timeout=10).stdout
        info["socat"] = next(
            (
                ln.split("version", 1)[1].split()[0]
                for ln in out.splitlines()
                if "socat version" in ln
            ),
            "",
        )
    info["in_test_vm"] = os.environ.get("HVSOCK_IN_TEST_VM") == "1"
    return info


# -- processes --------------------------------------------------------------------------------
class Procs:
    """Child processes, all stopped (TERM, then KILL) on exit."""

    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self._n = 0

    def start(
        self, argv: list[str], ready: str | None = None, timeout: float = 60, log: str | None = None
    ) -> subprocess.Popen[bytes]:
        with open(log or os.devnull, "wb") as err:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
        self.procs.append(proc)
        if ready is not None:
            deadline = time.monotonic() + timeout
            while not os.path.exists(ready):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{argv} did not start")
                time.sleep(0.01)
        return proc

    def ready_file(self) -> str:
        self._n += 1
        return f"{self.tmp}/ready{self._n}.json"

    def hvsock(
        self, *args: str, log: str | None = None
    ) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        ready = self.ready_file()
        proc = self.start(
            [sys.executable, "-m", "hvsock", *args, "--ready-file", ready], ready, log=log
        )
        return proc, json.loads(Path(ready).read_text())

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_vsock_port() -> int:
    with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as s:
        s.bind((hvsock.sockets.CID_ANY, hvsock.sockets.PORT_ANY))
        return int(s.getsockname()[1])


def wait_listening(connect: Callable[[], socket.socket], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            connect().close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def vsock_client_address(address: str) -> str:
    """A vsock listener's address as a client in the VM dials it: CID 1 (loopback)."""
    parsed = hvsock.parse_address(address)
    if isinstance(parsed, hvsock.VsockAddress):
        return f"vsock://1:{parsed.port}"
    return address


# -- connectors -------------------------------------------------------------------------------
def connector(address: str, handshake_port: int | None) -> Callable[[], socket.socket]:
    """A blocking connect to *address*; through socat on the hybrid path, plus the handshake."""
    if handshake_port is None:
        return lambda: hvsock.connect(address)

    def connect() -> socket.socket:
        sock = hvsock.connect(address)
        sock.sendall(handshake.encode_connect(handshake_port))
        line = b""
        while not line.endswith(b"\n"):
            byte = sock.recv(1)
            if not byte:
                sock.close()
                raise ConnectionError("the VMM closed during the handshake")
            line += byte
        handshake.parse_ok(line)
        return sock

    return connect


def async_connector(address: str, handshake_port: int | None) -> Callable[[], Any]:
    """For stress: connect, (handshake,) then pick the bench server's echo mode."""
    sync = connector(address, handshake_port)

    async def connect() -> socket.socket:
        loop = asyncio.get_running_loop()
        if handshake_port is None:
            sock = await hvsock.connect_socket(address, timeout=30)
        else:
            sock = await loop.run_in_executor(None, sync)
            sock.setblocking(False)
        await loop.sock_sendall(sock, bench.ECHO)
        return sock

    return connect


# -- measuring ---------------------------------------------------------------------------------
class ClientPool:
    """Client processes for the connection rate with several clients at once.

    Processes, not threads: threads of one client process share its interpreter
    lock, and at thousands of connections per second that lock, not the relay,
    sets the figure (measured: 4 threads gave hvsock 1.2-1.6x socat where 4
    processes gave 2.7-3.4x on the same relays). Started once and reused: a Python
    start-up in the test VM takes seconds.
    """

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.procs: list[subprocess.Popen[str]] = []

    def _start(self) -> None:
        argv = [sys.executable, str(HERE / "_relay_procs.py"), "connect"]
        self.procs = [
            subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(self.clients)
        ]
        self._expect("started")

    def _expect(self, word: str) -> None:
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != word:
                raise OSError(f"a connect-rate client said {line[:200]!r}, not {word!r}")

    def _send(self, line: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(line + "\n")
            proc.stdin.flush()

    def connect_rate(
        self, address: str, handshake_port: int | None, *, duration: float
    ) -> bench.BenchResult:
        """Every client connects for *duration* s, started together; OSError if one failed."""
        if not self.procs:
            self._start()
        self._send(
            json.dumps({"address": address, "handshake": handshake_port, "duration": duration})
        )
        self._expect("ready")  # each has its connector: all start at once
        self._send("go")
        results = []
        for proc in self.procs:
            assert proc.stdout is not None
            results.append(json.loads(proc.stdout.readline()))
        failed = [r["error"] for r in results if "error" in r]
        if failed:
            raise OSError(
                f"{len(failed)} of {len(self.procs)} connect-rate clients failed: {failed[0]}"
            )
        count = sum(int(r["count"]) for r in results)
        seconds = max(float(r["seconds"]) for r in results)
        return bench.BenchResult(
            "connect rate",
            address,
            round(count / seconds, 1),
            "conn/s",
            round(seconds, 4),
            {"count": count, "parallel": len(self.procs), "clients": "processes"},
        )

    def close(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            with contextlib.suppress(OSError):
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def rss_of(pids: list[int]) -> tuple[float, float]:
    """(summed RSS, summed PSS) in MB of *pids* now."""
    rss = pss = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return rss / 1024, pss / 1024


def children(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def stress_sampled(
    address: str,
    handshake_port: int | None,
    relay_pid: int | None,
    samples: list[tuple[float, float, int]],
    **options: Any,
) -> stress.StressResult:
    """A checked stress run (*options* are stress_async's) while the relay's memory
    (its processes' RSS and PSS) is sampled into *samples* every 0.1 s."""
    stop = [False]

    async def sampler() -> None:
        while not stop[0] and relay_pid is not None:
            pids = [relay_pid, *children(relay_pid)]
            samples.append((*rss_of(pids), len(pids)))
            await asyncio.sleep(0.1)

    async def main() -> stress.StressResult:
        task = asyncio.ensure_future(sampler())
        try:
            return await stress.stress_async(
                address, timeout=120, connect=async_connector(address, handshake_port), **options
            )
        finally:
            stop[0] = True
            await task

    return asyncio.run(main())


def measure_rss(
    address: str, handshake_port: int | None, conns: int, variant: str, relay_pid: int | None
) -> dict[str, Any]:
    """Run *conns* checked connections at once; the relay's peak memory meanwhile."""
    samples: list[tuple[float, float, int]] = []
    result = stress_sampled(
        address,
        handshake_port,
        relay_pid,
        samples,
        connections=conns,
        parallel=conns,
        min_size=1024,
        max_size=64 * 1024,
        seed=20240,
        sync_start=True,
        hold=1.0,
    )
    out: dict[str, Any] = {
        "connections": conns,
        "mismatches": len(result.failures),
        "failures": [str(f) for f in result.failures[:5]],
    }
    _memory(out, samples, variant)
    return out


def _memory(out: dict[str, Any], samples: list[tuple[float, float, int]], variant: str) -> None:
    if samples:
        if variant == "hvsock":
            # The relay process and its workers, RSS summed (shared pages counted
            # once per process: the conservative figure the target is set on).
            out["value"] = round(max(r for r, _, _ in samples), 1)
            out["pss_sum"] = round(max(p for _, p, _ in samples), 1)
            out["processes"] = max(n for _, _, n in samples)
        else:
            # socat forks a process per connection: their memory summed (PSS
            # splits shared pages fairly; RSS would count them once per process).
            out["value"] = round(max((p for _, p, _ in samples), default=0.0), 1)
            out["rss_sum"] = round(max((r for r, _, _ in samples), default=0.0), 1)
            out["processes"] = max((n for _, _, n in samples), default=0)


def measure_stalled(
    address: str, handshake_port: int | None, conns: int, variant: str, relay_pid: int | None
) -> dict[str, Any]:
    """*conns* clients that send (echo mode) and never read, so the server's echo
    stalls at the relay; meanwhile 100 checked connections that do read."""
    samples: list[tuple[float, float, int]] = []
    connect = connector(address, handshake_port)
    stalled: list[socket.socket] = []
    sent = 0
    try:
        for _ in range(conns):
            sock = connect()
            sock.sendall(bench.ECHO)
            sock.setblocking(False)
            stalled.append(sock)
        block = b"\xa5" * 65536
        deadline = time.monotonic() + 20
        progress = True
        while progress and time.monotonic() < deadline:
            progress = False
            for sock in stalled:
                for _ in range(8):
                    try:
                        n = sock.send(block)
                    except OSError:  # full (BlockingIOError), or gone
                        break
                    sent += n
                    progress = True
            if relay_pid is not None:
                pids = [relay_pid, *children(relay_pid)]
                samples.append((*rss_of(pids), len(pids)))
        result = stress_sampled(
            address,
            handshake_port,
            relay_pid,
            samples,
            connections=100,
            parallel=100,
            min_size=1024,
            max_size=256 * 1024,
            seed=20241,
        )
    finally:
        for sock in stalled:
            sock.close()
    out: dict[str, Any] = {
        "connections": conns,
        "stalled_bytes_sent": sent,
        "mismatches": len(result.failures),
        "failures": [str(f) for f in result.failures[:5]],
    }
    _memory(out, samples, variant)
    return out


def run_path(
    path: Route,
    procs: Procs,
    pool: ClientPool,
    *,
    rounds: int,
    duration: float,
    conns: int,
    progress: Callable[[str], None],
    figures: tuple[str, ...] = FIGURES,
) -> dict[str, Any]:
    results: dict[str, dict[str, list[float]]] = {f: {v: [] for v in VARIANTS} for f in FIGURES}
    extra: dict[str, Any] = {}

    def client(variant: str) -> tuple[str, int | None]:
        address = path.addresses[variant]
        hs = path.client_handshake if variant == "socat" else None
        return address, hs

    measures: list[tuple[str, Callable[[str, int | None], bench.BenchResult]]] = [
        (
            "throughput",
            lambda a, hs: bench.throughput(a, duration=duration, connect=connector(a, hs)),
        ),
        (
            "throughput x16",
            lambda a, hs: bench.throughput(
                a, duration=duration, streams=16, connect=connector(a, hs)
            ),
        ),
        (
            "connect rate",
            lambda a, hs: bench.connect_rate(a, duration=duration, connect=connector(a, hs)),
        ),
        ("connect rate x4", lambda a, hs: pool.connect_rate(a, hs, duration=duration)),
        (
            "round trip",
            lambda a, hs: bench.round_trip(a, duration=duration, connect=connector(a, hs)),
        ),
    ]
    errors: list[dict[str, Any]] = []
    for figure, measure in measures:
        if figure not in figures:
            continue
        for r in range(rounds):
            for variant in VARIANTS:
                progress(f"{path.name}: {figure}, {variant}, round {r + 1}/{rounds}")
                address, hs = client(variant)
                try:
                    results[figure][variant].append(measure(address, hs).value)
                except (OSError, hvsock.HvsockError) as exc:
                    # Reported, not fatal: a failed run is a finding of its own.
                    errors.append(
                        {
                            "figure": figure,
                            "variant": variant,
                            "round": r + 1,
                            "error": str(exc)[:300],
                        }
                    )
    stalled_extra: dict[str, Any] = {}
    for variant in VARIANTS:
        address, hs = client(variant)
        pid = path.addresses.get(f"{variant}_pid")
        if "peak RSS" in figures:
            progress(f"{path.name}: {conns} connections at once, {variant}")
            rss = measure_rss(address, hs, conns, variant, int(pid) if pid else None)
            extra[variant] = rss
            if "value" in rss:
                results["peak RSS"][variant].append(rss["value"])
        if variant == "direct" or "stalled RSS" not in figures:
            continue  # no relay: nothing to measure
        progress(f"{path.name}: {conns} stalled clients, {variant}")
        time.sleep(1.0)  # let the previous figure's connections drain
        st = measure_stalled(address, hs, conns, variant, int(pid) if pid else None)
        stalled_extra[variant] = st
        if "value" in st:
            results["stalled RSS"][variant].append(st["value"])
    table: dict[str, Any] = {}
    for figure in FIGURES:
        medians = {
            v: (round(statistics.median(xs), 2) if xs else None)
            for v, xs in results[figure].items()
        }
        table[figure] = {"unit": UNITS[figure], **medians, "runs": results[figure]}
    table["peak RSS"]["detail"] = extra
    table["stalled RSS"]["detail"] = stalled_extra
    table["errors"] = errors
    if path.log is not None and os.path.exists(path.log):
        lines = Path(path.log).read_text(errors="replace").splitlines()
        table["relay_problems"] = {"count": len(lines), "first": lines[:5]}
    return table


def ratios(
    table: dict[str, Any], targets: dict[str, list[tuple[str, float]]]
) -> list[dict[str, Any]]:
    rows = []
    for figure in FIGURES:
        entry = table[figure]
        ours = entry["hvsock"]
        row: dict[str, Any] = {
            "figure": figure,
            "unit": entry["unit"],
            "direct": entry["direct"],
            "socat": entry["socat"],
            "hvsock": ours,
        }
        for against in ("direct", "socat"):
            base = entry[against]
            row[f"vs_{against}"] = round(ours / base, 3) if ours is not None and base else None
        checks = []
        for against, bound in targets.get(figure, []):
            value = row[f"vs_{against}"]
            if value is None:
                continue
            lower_is_better = figure == "round trip"
            met = value <= bound if lower_is_better else value >= bound
            checks.append(
                {
                    "against": against,
                    "bound": bound,
                    "rule": f"{'<=' if lower_is_better else '>='} {bound}x {against}",
                    "met": met,
                }
            )
        if figure in RSS_FIGURES and ours is not None:
            detail = entry.get("detail", {})
            mism = detail.get("hvsock", {}).get("mismatches", 0)
            checks.append(
                {
                    "rule": f"< {RSS_LIMIT_MB} MB, 0 mismatches",
                    "met": ours < RSS_LIMIT_MB and mism == 0,
                }
            )
            row["mismatches"] = {v: d.get("mismatches") for v, d in detail.items()}
        row["targets"] = checks
        rows.append(row)
    return rows


# -- the paths ---------------------------------------------------------------------------------
def start_relays(path: Route, procs: Procs, server_pid: int) -> None:
    """Start socat and hvsock relay for *path*; fill in the three addresses."""
    listen = "tcp://127.0.0.1:0" if path.listen_kind == "tcp" else "vsock://any:any"
    path.log = f"{procs.tmp}/relay-{path.name.replace('>', '')}.log"
    relay, info = procs.hvsock(
        "relay",
        listen,
        path.relay_target,
        "--quiet",
        "--max-connections",
        "5000",
        "--idle-timeout",
        "0",
        *RELAY_ARGS,
        log=path.log,
    )
    if path.listen_kind == "tcp":
        port = free_tcp_port()
        socat_address = f"tcp://127.0.0.1:{port}"
    else:
        port = free_vsock_port()
        socat_address = f"vsock://1:{port}"
    sp = procs.start(
        ["socat", f"{path.socat_listen}:{port},fork,reuseaddr,backlog=1024", path.socat_target]
    )
    wait_listening(lambda: hvsock.connect(socat_address, timeout=2))
    path.addresses.update(
        direct=path.direct,
        socat=socat_address,
        hvsock=vsock_client_address(info["listen"]),
        socat_pid=str(sp.pid),
        hvsock_pid=str(relay.pid),
        server_pid=str(server_pid),
    )


def host_paths(procs: Procs, tmp: str, wanted: list[str]) -> Iterator[Route]:
    if "tcp-tcp" in wanted:
        server, info = procs.hvsock("bench", "server", "tcp://127.0.0.1:0")
        addr = info["address"]
        port = hvsock.parse_address(addr).port  # type: ignore[union-attr]
        p = Route("tcp->tcp", addr, addr, "TCP-LISTEN", f"TCP:127.0.0.1:{port}", "tcp")
        start_relays(p, procs, server.pid)
        yield p
    if "tcp-unix" in wanted:
        sock = f"{tmp}/bench.sock"
        server, info = procs.hvsock("bench", "server", f"unix://{sock}")
        p = Route(
            "tcp->unix",
            info["address"],
            info["address"],
            "TCP-LISTEN",
            f"UNIX-CONNECT:{sock}",
            "tcp",
        )
        start_relays(p, procs, server.pid)
        yield p
    if "tcp-hybrid" in wanted:
        uds = f"{tmp}/vm.sock"
        ready = procs.ready_file()
        procs.start(
            [sys.executable, str(HERE / "_relay_procs.py"), "muxer", uds, ready, "52"], ready
        )
        guest_path = json.loads(Path(ready).read_text())["guest_paths"]["52"]
        server, _ = procs.hvsock("bench", "server", f"unix://{guest_path}")
        target = f"hybrid://{uds}:52"
        p = Route(
            "tcp->hybrid",
            target,
            target,
            "TCP-LISTEN",
            f"UNIX-CONNECT:{uds}",
            "tcp",
            client_handshake=52,
        )
        start_relays(p, procs, server.pid)
        yield p


def vm_paths(procs: Procs, wanted: list[str]) -> Iterator[Route]:
    if not os.path.isdir("/sys/module/vsock_loopback"):
        raise SystemExit(
            "--vm runs only where vsock_loopback is loaded (the test VM: "
            "scripts/bench-vm); here a vsock connect would leave this machine"
        )
    server, info = procs.hvsock("bench", "server", "vsock://any:any")
    target = vsock_client_address(info["address"])
    port = hvsock.parse_address(target).port  # type: ignore[union-attr]
    if "tcp-vsock" in wanted:
        p = Route("tcp->vsock", target, target, "TCP-LISTEN", f"VSOCK-CONNECT:1:{port}", "tcp")
        start_relays(p, procs, server.pid)
        yield p
    if "vsock-vsock" in wanted:
        p = Route(
            "vsock->vsock", target, target, "VSOCK-LISTEN", f"VSOCK-CONNECT:1:{port}", "vsock"
        )
        start_relays(p, procs, server.pid)
        yield p


# -- output --------------------------------------------------------------------------------------
def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(
        f"machine: {m.get('cpu', m['machine'])} ({m['cpus']} CPUs, {m.get('memory', '?')}), "
        f"kernel {m['kernel']}, Python {m['python']}, socat {m.get('socat', '?')}"
        f"{' [QEMU test VM]' if m['in_test_vm'] else ''}"
    )
    print(f"settings: {report['settings']}")
    header = (
        f"{'path':<13} {'figure':<15} {'unit':<7} {'direct':>9} {'socat':>9} "
        f"{'hvsock':>9} {'/direct':>8} {'/socat':>7}  targets"
    )
    print(header)
    print("-" * len(header))
    for path in report["paths"]:
        for row in path["rows"]:
            checks = "; ".join(
                f"{c['rule']}: {'met' if c['met'] else 'MISSED'}" for c in row["targets"]
            )
            vd = "-" if row["vs_direct"] is None else f"{row['vs_direct']:.2f}x"
            vs = "-" if row["vs_socat"] is None else f"{row['vs_socat']:.2f}x"
            print(
                f"{path['name']:<13} {row['figure']:<15} {row['unit']:<7} "
                f"{fmt(row['direct']):>9} {fmt(row['socat']):>9} {fmt(row['hvsock']):>9} "
                f"{vd:>8} {vs:>7}  {checks}"
            )
        for error in path["table"].get("errors", []):
            print(
                f"  {path['name']}, {error['figure']}, {error['variant']}, round "
                f"{error['round']}: FAILED: {error['error']}"
            )
        problems = path["table"].get("relay_problems", {})
        if problems.get("count"):
            print(f"  {path['name']}: hvsock relay logged {problems['count']} problem(s), e.g.")
            for line in problems["first"]:
                print(f"    {line[:160]}")
        for figure in RSS_FIGURES:
            for variant, detail in path["table"][figure].get("detail", {}).items():
                if detail.get("mismatches"):
                    print(
                        f"  {path['name']}, {figure}, {variant}: {detail['mismatches']} "
                        f"connections failed, e.g. {detail['failures'][0][:100]}"
                    )


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table (what docs/port-forwarding.md shows)."""
    m = report["machine"]
    where = " (inside the QEMU test VM, TCG)" if m["in_test_vm"] else ""
    lines = [
        f"Measured on: {m.get('cpu', m['machine'])}, {m['cpus']} CPUs, "
        f"{m.get('memory', '?')}, Linux {m['kernel']}, Python {m['python']}, "
        f"socat {m.get('socat', '?')}{where}.",
        "",
        "| path | figure | direct | socat | hvsock relay | vs direct | vs socat | target |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for path in report["paths"]:
        targets = targets_for(path["name"], m["in_test_vm"])
        for row in ratios(path["table"], targets):  # today's targets on saved figures
            unit = row["unit"]
            checks = (
                "; ".join(
                    f"{c['rule']}: {'met' if c['met'] else '**missed**'}" for c in row["targets"]
                )
                or "-"
            )
            vd = "-" if row["vs_direct"] is None else f"{row['vs_direct']:.2f}x"
            vs = "-" if row["vs_socat"] is None else f"{row['vs_socat']:.2f}x"
            cells = [
                f"{fmt(row[v])} {unit}" if row[v] is not None else "-"
                for v in ("direct", "socat", "hvsock")
            ]
            lines.append(
                f"| {path['name']} | {row['figure']} | {' | '.join(cells)} | {vd} | "
                f"{vs} | {checks} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--json-out", help="also write the JSON report to this file")
    parser.add_argument(
        "--vm",
        action="store_true",
        help="the VM paths (inside the test VM only; see scripts/bench-vm)",
    )
    parser.add_argument(
        "--paths",
        help="comma-separated subset: tcp-tcp,tcp-unix,tcp-hybrid "
        "(host) or tcp-vsock,vsock-vsock (--vm)",
    )
    parser.add_argument(
        "--figures",
        help="comma-separated subset of the figures: "
        + ", ".join(f.replace(" ", "-") for f in FIGURES),
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--duration", type=float, default=0.6, help="seconds per measurement (default 0.6)"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=1000,
        help="connections at once for the RSS figure (default 1000)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument(
        "--markdown",
        metavar="REPORT_JSON",
        help="print a saved JSON report as a Markdown table, and exit",
    )
    parser.add_argument(
        "--relay-args", default="", help="extra `hvsock relay` options, e.g. '--busy-poll 0'"
    )
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return 0
    RELAY_ARGS[:] = args.relay_args.split()
    if shutil.which("socat") is None:
        raise SystemExit("socat is not installed (apt-get install socat)")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    default = "tcp-vsock,vsock-vsock" if args.vm else "tcp-tcp,tcp-unix,tcp-hybrid"
    wanted = (args.paths or default).split(",")
    figures = FIGURES
    if args.figures:
        figures = tuple(f.replace("-", " ") for f in args.figures.split(","))
        unknown = [f for f in figures if f not in FIGURES]
        if unknown:
            raise SystemExit(f"unknown figure(s) {unknown}; known: {FIGURES}")

    def progress(text: str) -> None:
        if not args.quiet:
            sys.stderr.write(f"\r\x1b[K{text}" if sys.stderr.isatty() else f"{text}\n")
            sys.stderr.flush()

    started = time.monotonic()
    report: dict[str, Any] = {
        "machine": machine(),
        "settings": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "connections": args.connections,
            "client_write": bench.DEFAULT_BUFFER,
            "relay": ["--quiet", *RELAY_ARGS],
            "connect_rate_x4_clients": "4 processes",
        },
        "paths": [],
    }
    with tempfile.TemporaryDirectory(prefix="hvbr-", dir="/tmp") as tmp:
        procs = Procs(tmp)
        pool = ClientPool(4)
        try:
            paths = vm_paths(procs, wanted) if args.vm else host_paths(procs, tmp, wanted)
            for path in paths:
                table = run_path(
                    path,
                    procs,
                    pool,
                    rounds=args.rounds,
                    duration=args.duration,
                    conns=args.connections,
                    progress=progress,
                    figures=figures,
                )
                report["paths"].append(
                    {
                        "name": path.name,
                        "table": table,
                        "rows": ratios(table, targets_for(path.name, args.vm)),
                    }
                )
                for key in ("hvsock_pid", "socat_pid", "server_pid"):
                    pid = int(path.addresses[key])
                    for proc in procs.procs:
                        if proc.pid == pid and key != "server_pid":
                            procs.stop(proc)
        finally:
            pool.close()
            procs.close()
    report["seconds"] = round(time.monotonic() - started, 1)
    if not args.quiet and sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_table(report)
        print(f"({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
