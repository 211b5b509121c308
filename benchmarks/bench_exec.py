"""Remote exec and QGA figures, each against a baseline run in the same run.

- Start-to-first-byte latency of ``echo x``: ``hvsock.exec`` (a new connection per
  call, from a warm Python process) and the ``hvsock exec`` CLI (a new process per
  call) vs ``ssh`` to a throwaway local sshd (a new process and session per call).
  Target: lower than ssh.
- Throughput of ``cat`` (bytes in and the same bytes back): through the agent vs
  ``ssh host cat`` and vs a raw TCP socket to ``cat`` (socat ``EXEC:cat``, no
  protocol). Target: >= 0.8x the raw socket.
- CPU seconds the same cat run costs (client, server and cat), which on a busy
  machine decides the throughput.
- Every throughput run pushes one 64 MiB object built before any timing:
  ``hvsock.exec`` takes it whole as ``input``, the ssh and raw clients write it in
  64 KiB slices of it (no copies). Nobody pays for building the input, and nobody
  sends a cache-hot little block over and over while another streams from memory.
- QGA requests per second (guest-ping, guest-get-time, one connection, one at a
  time): hvsock's QGA service vs the real qemu-ga, both over Unix sockets on this
  machine.

All over loopback (127.0.0.1) or Unix sockets. Needs openssh-server, socat and
qemu-guest-agent (Debian packages); a missing one skips its rows.
"""

from __future__ import annotations

import argparse
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
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import _report

import hvsock

LATENCY_RUNS = 20
THROUGHPUT_BYTES = 64 << 20
THROUGHPUT_RUNS = 3
QGA_REQUESTS = 3000
CHUNK = 1 << 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"nothing listening on {port}") from None
            time.sleep(0.02)


PIDS: dict[str, int] = {}


def cpu_seconds(pid: int) -> float:
    """CPU time of *pid* and its reaped children (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_of(fn: Callable[[], float], server: str) -> float:
    """CPU seconds (this process + the server's tree) one run of *fn* costs."""
    before = own_cpu() + cpu_seconds(PIDS[server])
    fn()
    time.sleep(0.5)  # let the server reap the per-run child (cat)
    return own_cpu() + cpu_seconds(PIDS[server]) - before


@contextlib.contextmanager
def agent(tmp: str) -> Iterator[str]:
    port = free_port()
    ready = f"{tmp}/agent-ready"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hvsock",
            "agent",
            "--listen",
            f"tcp://127.0.0.1:{port}",
            "--enable",
            "exec",
            "--allow",
            "127.0.0.1",
            "--ready-file",
            ready,
        ],
        stderr=subprocess.DEVNULL,
    )
    PIDS["agent"] = proc.pid
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(ready):
            if time.monotonic() > deadline:
                raise SystemExit("the agent did not start")
            time.sleep(0.02)
        yield f"tcp://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def sshd(tmp: str) -> Iterator[list[str] | None]:
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(binary) or not shutil.which("ssh"):
        yield None
        return
    port = free_port()
    d = Path(tmp)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "host"], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "client"], check=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\nStrictModes no\n"
        "UsePAM no\nPermitRootLogin yes\nPasswordAuthentication no\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen(
        [binary, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.DEVNULL
    )
    try:
        wait_port(port)
        yield [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(d / "client"),
            "-p",
            str(port),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            f"{os.environ.get('USER', 'root')}@127.0.0.1",
        ]
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def raw_cat() -> Iterator[int | None]:
    if not shutil.which("socat"):
        yield None
        return
    port = free_port()
    proc = subprocess.Popen(
        ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", "EXEC:cat"],
        stderr=subprocess.DEVNULL,
    )
    PIDS["raw"] = proc.pid
    try:
        wait_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def first_byte_process(argv: list[str]) -> float:
    begun = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.read(1)
    elapsed = time.perf_counter() - begun
    proc.communicate()
    return elapsed


def first_byte_library(address: str) -> float:
    begun = time.perf_counter()
    got: list[float] = []

    def sink(data: bytes) -> None:
        if not got:
            got.append(time.perf_counter() - begun)

    hvsock.exec(address, ["echo", "x"], stdout=sink)
    return got[0]


def median_ms(fn: Callable[[], float], runs: int = LATENCY_RUNS) -> float:
    fn()  # warm up
    return statistics.median(fn() for _ in range(runs)) * 1000


_PAYLOAD: list[bytes] = []


def payload() -> bytes:
    """The bytes every throughput run pushes: built once, outside every timing.

    All three (hvsock, ssh, raw) send this same object, so none pays for making
    its input and none sends from a cache-hot little block while another streams
    64 MiB from memory.
    """
    if not _PAYLOAD:
        _PAYLOAD.append(os.urandom(CHUNK) * (THROUGHPUT_BYTES // CHUNK))
    return _PAYLOAD[0]


def pump(send: Callable[[memoryview], object], finish: Callable[[], object]) -> None:
    """Write the payload in CHUNK-sized pieces (no copies), then *finish*."""
    view = memoryview(payload())
    for i in range(0, len(view), CHUNK):
        send(view[i : i + CHUNK])
    finish()


def throughput_hvsock(address: str) -> float:
    got = [0]
    data = payload()
    begun = time.perf_counter()
    result = hvsock.exec(
        address, ["cat"], input=data, stdout=lambda b: got.__setitem__(0, got[0] + len(b))
    )
    elapsed = time.perf_counter() - begun
    assert result.returncode == 0, result
    assert got[0] == THROUGHPUT_BYTES, got
    return THROUGHPUT_BYTES / elapsed / 1e6


def _drain(stream: Callable[[int], bytes]) -> int:
    total = 0
    while True:
        chunk = stream(1 << 18)
        if not chunk:
            return total
        total += len(chunk)


def throughput_ssh(ssh: list[str]) -> float:
    begun = time.perf_counter()
    proc = subprocess.Popen([*ssh, "cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None
    assert proc.stdout is not None
    total = [0]
    reader = threading.Thread(target=lambda: total.__setitem__(0, _drain(proc.stdout.read)))
    reader.start()
    pump(proc.stdin.write, proc.stdin.close)
    reader.join()
    proc.wait()
    assert total[0] == THROUGHPUT_BYTES
    return THROUGHPUT_BYTES / (time.perf_counter() - begun) / 1e6


def throughput_raw(port: int) -> float:
    begun = time.perf_counter()
    sock = socket.create_connection(("127.0.0.1", port))
    total = [0]
    reader = threading.Thread(target=lambda: total.__setitem__(0, _drain(sock.recv)))
    reader.start()
    pump(sock.sendall, lambda: sock.shutdown(socket.SHUT_WR))
    reader.join()
    sock.close()
    assert total[0] == THROUGHPUT_BYTES
    return THROUGHPUT_BYTES / (time.perf_counter() - begun) / 1e6


def best(fn: Callable[[], float]) -> float:
    return max(fn() for _ in range(THROUGHPUT_RUNS))


# -- QGA --------------------------------------------------------------------------


@contextlib.contextmanager
def qga_pair(tmp: str) -> Iterator[tuple[str, str | None]]:
    ours = f"{tmp}/ours-qga.sock"
    cfg = Path(tmp) / "agent.toml"
    cfg.write_text(
        f'[agent]\nlisten = "unix://{tmp}/agent.sock"\n[info]\nenabled = false\n'
        f"[health]\nenabled = false\n[time]\nenabled = false\n"
        f'[qga]\nenabled = true\nlisten = "unix://{ours}"\n'
        'block = ["guest-shutdown"]\n'
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "hvsock", "agent", "--config", str(cfg)],
            stderr=subprocess.DEVNULL,
        )
    ]
    real = None
    binary = shutil.which("qemu-ga") or "/usr/sbin/qemu-ga"
    if os.path.exists(binary):
        real = f"{tmp}/real-qga.sock"
        os.makedirs(f"{tmp}/state")
        procs.append(
            subprocess.Popen(
                [
                    binary,
                    "-m",
                    "unix-listen",
                    "-p",
                    real,
                    "-t",
                    f"{tmp}/state",
                    "-f",
                    f"{tmp}/state/pid",
                ],
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        deadline = time.monotonic() + 30
        while not all(os.path.exists(p) for p in (ours, real) if p):
            if time.monotonic() > deadline:
                raise SystemExit("QGA agents did not start")
            time.sleep(0.02)
        yield ours, real
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def qga_rate(path: str, command: str) -> float:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    request = json.dumps({"execute": command}).encode() + b"\n"
    reader = sock.makefile("rb")
    begun = time.perf_counter()
    for _ in range(QGA_REQUESTS):
        sock.sendall(request)
        line = reader.readline()
        assert line.startswith(b'{"return"'), line
    elapsed = time.perf_counter() - begun
    reader.close()
    sock.close()
    return QGA_REQUESTS / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    _report.write_bytecode_cache()  # the CLI figure starts an hvsock process per run
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="hvbe-", dir="/tmp") as tmp:
        with agent(tmp) as address, sshd(tmp) as ssh, raw_cat() as raw:
            cli = [sys.executable, "-m", "hvsock", "exec", address, "--", "echo", "x"]
            lib_ms = median_ms(lambda: first_byte_library(address))
            cli_ms = median_ms(lambda: first_byte_process(cli))
            ours_mbs = best(lambda: throughput_hvsock(address))
            if ssh is not None:
                ssh_ms = median_ms(lambda: first_byte_process([*ssh, "echo", "x"]))
                rows.append(
                    _report.row(
                        "first byte of `echo x`, hvsock.exec vs ssh",
                        "ms",
                        lib_ms,
                        ssh_ms,
                        "ssh to a local sshd (new process)",
                        "< 1 (lower than ssh)",
                    )
                )
                rows.append(
                    _report.row(
                        "first byte of `echo x`, hvsock exec CLI vs ssh",
                        "ms",
                        cli_ms,
                        ssh_ms,
                        "ssh to a local sshd (new process)",
                        "< 1 (lower than ssh)",
                    )
                )
                rows.append(
                    _report.row(
                        "cat throughput, hvsock exec vs ssh",
                        "MB/s",
                        ours_mbs,
                        best(lambda: throughput_ssh(ssh)),
                        "ssh host cat",
                    )
                )
            if raw is not None:
                rows.append(
                    _report.row(
                        "cat throughput, hvsock exec vs raw socket",
                        "MB/s",
                        ours_mbs,
                        best(lambda: throughput_raw(raw)),
                        "TCP socket to socat EXEC:cat",
                        ">= 0.8",
                    )
                )
                # CPU per run: what the wall-clock ratio becomes on a busy machine.
                rows.append(
                    _report.row(
                        "cat CPU seconds per 64 MiB, hvsock vs raw socket",
                        "s",
                        cpu_of(lambda: throughput_hvsock(address), "agent"),
                        cpu_of(lambda: throughput_raw(raw), "raw"),
                        "client + server + cat CPU, raw socket to socat",
                    )
                )
        with qga_pair(tmp) as (ours, real):
            if real is not None:
                for command in ("guest-ping", "guest-get-time"):
                    rows.append(
                        _report.row(
                            f"QGA {command} requests/s (Unix socket)",
                            "req/s",
                            qga_rate(ours, command),
                            qga_rate(real, command),
                            "real qemu-ga 7.2 over a Unix socket",
                        )
                    )
    _report.emit(rows, args.json)


if __name__ == "__main__":
    main()
