"""The share server's big-message path on the host: Twrite and Tread over a Unix socket.

No VM and no kernel client: a client here sends what the Linux v9fs client sends for a
``cache=none`` sequential write in 1 MiB calls (each two Twrites of ``msize - 24``
bytes, then one of 48), one Twrite at a time, waiting for each Rwrite (v9fs writes
synchronously), then reads the file back the same way with
Treads. It measures ``hvsock share`` (a subprocess) against a floor, a plain Python
server in this file that does only what any server must (receive the frame into a
reused buffer, pwrite it, send Rwrite; pread and send Rread) and, with ``--against
SRC``, the share of another source tree (e.g. ``git archive main src``), all in the same
run, rounds interleaved. Emulated CPUs (the VM bench) magnify what each message costs in
Python; this shows that cost without the VM's noise.

    .venv/bin/python benchmarks/bench_share_host.py [--size-mib 256] [--against /tmp/old/src]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import machine, write_bytecode_cache

from hvsock._core import ninep as p

MIB = 1 << 20
PATTERN = 4 * MIB  # the bytes written repeat with this period
IOHDRSZ = 24  # the kernel's P9_IOHDRSZ: what a Twrite's data leaves of msize
_HEAD = struct.Struct("<IBH")
_RWRITE = struct.Struct("<IBHI")


def plain_server(path: str) -> None:
    """The floor: one connection, Tversion/Tattach/Twalk/Tlcreate/Tlopen/Twrite/Tread/
    Tclunk answered with no checks, frames received straight into one reused buffer."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    print("ready", flush=True)
    conn, _ = listener.accept()
    buffer = bytearray(2 * MIB)
    view = memoryview(buffer)
    fds: dict[int, int] = {}
    names: dict[int, bytes] = {}
    root = os.getcwd().encode()
    qid = p.Qid(0, 0, 1)
    while True:
        got = 0
        while got < 4:
            n = conn.recv_into(view[got:4])
            if not n:
                return
            got += n
        size = struct.unpack_from("<I", buffer)[0]
        while got < size:
            n = conn.recv_into(view[got:size])
            if not n:
                return
            got += n
        _, kind, tag = _HEAD.unpack_from(buffer)
        if kind == p.TWRITE:
            fid, offset, count = struct.unpack_from("<IQI", buffer, 7)
            done = os.pwrite(fds[fid], view[23 : 23 + count], offset)
            conn.sendall(_RWRITE.pack(11, p.RWRITE, tag, done))
            continue
        if kind == p.TREAD:
            fid, offset, count = struct.unpack_from("<IQI", buffer, 7)
            data = os.pread(fds[fid], count, offset)
            head = struct.pack("<IBHI", 11 + len(data), p.RREAD, tag, len(data))
            sent = conn.sendmsg([head, data])
            conn.sendall(memoryview(data)[sent - len(head) :])
            continue
        msg = p.decode(view[:size])
        args: tuple[object, ...] = ()
        if kind == p.TVERSION:
            args = msg.args
        elif kind == p.TATTACH:
            names[msg.args[0]] = root
            args = (qid,)
        elif kind == p.TWALK:
            fid, newfid, walk = msg.args
            names[newfid] = os.path.join(names[fid], *walk) if walk else names[fid]
            args = ((qid,) * len(walk),)
        elif kind == p.TLCREATE:
            fid, name, _, mode, _ = msg.args
            names[fid] = os.path.join(names[fid], name)
            fds[fid] = os.open(names[fid], os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode)
            args = (qid, 0)
        elif kind == p.TLOPEN:
            fds[msg.args[0]] = os.open(names[msg.args[0]], os.O_RDONLY)
            args = (qid, 0)
        elif kind == p.TCLUNK:
            fd = fds.pop(msg.args[0], None)
            if fd is not None:
                os.close(fd)
        conn.sendall(p.encode(p.Message(kind + 1, tag, args)))


class Client:
    """What v9fs does for a sequential write and read: one request at a time."""

    def __init__(self, path: str, msize: int) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(120)
        self.sock.connect(path)
        self.reply = bytearray(msize + 64)
        self.view = memoryview(self.reply)
        self.msize = self.rpc(p.Message(p.TVERSION, p.NOTAG, (msize, p.VERSION))).args[0]

    def recv_frame(self) -> int:
        got = 0
        while got < 4 or got < struct.unpack_from("<I", self.reply)[0]:
            want = 4 if got < 4 else struct.unpack_from("<I", self.reply)[0]
            n = self.sock.recv_into(self.view[got:want])
            if not n:
                raise SystemExit("the server closed the connection")
            got += n
        return got

    def rpc(self, msg: p.Message) -> p.Message:
        self.sock.sendall(p.encode(msg))
        reply = p.decode(self.view[: self.recv_frame()])
        if reply.type != msg.type + 1:
            raise SystemExit(f"{msg.name} was answered with {reply}")
        return reply

    def write(self, fid: int, data: memoryview, size: int) -> None:
        chunk = self.msize - IOHDRSZ
        offset = 0
        while offset < size:
            # As v9fs splits each 1 MiB write(): two Twrites of msize - 24, then 48 bytes.
            start = offset % PATTERN
            piece = data[start : start + min(chunk, MIB - offset % MIB, size - offset)]
            head = struct.pack("<IBHIQI", 23 + len(piece), p.TWRITE, 1, fid, offset, len(piece))
            sent = self.sock.sendmsg([head, piece])
            if sent < len(head):
                raise SystemExit("the socket took less than a Twrite's header")
            self.sock.sendall(piece[sent - len(head) :])
            self.recv_frame()
            kind, count = self.reply[4], struct.unpack_from("<I", self.reply, 7)[0]
            if kind != p.RWRITE or count == 0:
                raise SystemExit(f"Twrite at {offset} was answered with type {kind}")
            offset += count

    def read(self, fid: int, size: int) -> int:
        chunk = self.msize - IOHDRSZ
        offset = 0
        while offset < size:
            self.sock.sendall(struct.pack("<IBHIQI", 23, p.TREAD, 1, fid, offset, chunk))
            self.recv_frame()
            count = struct.unpack_from("<I", self.reply, 7)[0]
            if self.reply[4] != p.RREAD or count == 0:
                raise SystemExit(f"Tread at {offset} was answered with type {self.reply[4]}")
            offset += count
        return offset


def start(kind: str, src: str | None, export: Path, path: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    if kind == "plain":
        argv = [sys.executable, __file__, "--plain-server", path]
    else:
        ready = export.parent / f"ready-{os.getpid()}-{time.monotonic_ns()}.json"
        argv = [sys.executable, "-m", "hvsock", "share", str(export)]
        argv += ["--listen", f"unix://{path}", "--allow", "any", "--ready-file", str(ready)]
    proc = subprocess.Popen(
        argv,
        cwd=export,
        env=env,
        stdout=subprocess.PIPE if kind == "plain" else subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    if kind == "plain":
        assert proc.stdout is not None
        if proc.stdout.readline() != b"ready\n":
            raise SystemExit("the plain server did not start")
    else:
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"hvsock share ({src or 'this tree'}) did not start")
            time.sleep(0.02)
    return proc


def one_round(kind: str, src: str | None, work: Path, size: int, msize: int) -> dict[str, float]:
    export = work / "export"
    export.mkdir()
    path = str(work / "s.sock")
    proc = start(kind, src, export, path)
    try:
        c = Client(path, msize)
        c.rpc(p.Message(p.TATTACH, 1, (0, p.NOFID, b"u", b"", os.geteuid())))
        c.rpc(p.Message(p.TWALK, 1, (0, 1, ())))
        c.rpc(p.Message(p.TLCREATE, 1, (1, b"big", os.O_RDWR, 0o644, os.getegid())))
        data = memoryview(os.urandom(PATTERN + msize))
        started = time.perf_counter()
        c.write(1, data, size)
        write_s = time.perf_counter() - started
        c.rpc(p.Message(p.TCLUNK, 1, (1,)))
        written = (export / "big").read_bytes()
        if len(written) != size or written[:PATTERN] != data[: min(size, PATTERN)]:
            raise SystemExit(f"{kind}: the file on disk is not what was written")
        c.rpc(p.Message(p.TWALK, 1, (0, 2, (b"big",))))
        c.rpc(p.Message(p.TLOPEN, 1, (2, os.O_RDONLY)))
        started = time.perf_counter()
        if c.read(2, size) != size:
            raise SystemExit(f"{kind}: short read")
        read_s = time.perf_counter() - started
        c.sock.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        shutil.rmtree(export, ignore_errors=True)
        with_path = Path(path)
        if with_path.exists():
            with_path.unlink()
    return {"write_MiBps": size / MIB / write_s, "read_MiBps": size / MIB / read_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--msize", type=int, default=512 * 1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--against", help="another tree's src/ to measure beside this one")
    parser.add_argument("--json-out")
    parser.add_argument("--plain-server", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_server:
        plain_server(args.plain_server)
        return
    write_bytecode_cache()
    servers: dict[str, tuple[str, str | None]] = {"hvsock share": ("hvsock", None)}
    if args.against:
        servers["hvsock share (--against)"] = ("hvsock", args.against)
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", args.against], check=True, timeout=600
        )
    servers["plain Python server"] = ("plain", None)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    base = Path("/dev/shm") if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="bench-share-host-", dir=base) as tmp:
        for _ in range(args.rounds):
            for name, (kind, src) in servers.items():
                results[name].append(
                    one_round(kind, src, Path(tmp), args.size_mib * MIB, args.msize)
                )
                print(f"  {name}: {results[name][-1]}", file=sys.stderr, flush=True)
    medians = {
        name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for name, runs in results.items()
    }
    floor = medians["plain Python server"]
    report = {
        "machine": machine(),
        "load": os.getloadavg(),
        "size_mib": args.size_mib,
        "msize": args.msize,
        "rounds": args.rounds,
        "against": args.against,
        "medians": medians,
        "ratios_vs_plain": {
            name: {k: m[k] / floor[k] for k in m} for name, m in medians.items() if m is not floor
        },
    }
    print(json.dumps(report, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    print(
        f"\n{'':<26} {'write MiB/s':>11} {'read MiB/s':>11} {'write/floor':>11} {'read/floor':>10}"
    )
    for name, m in medians.items():
        print(
            f"{name:<26} {m['write_MiBps']:>11.0f} {m['read_MiBps']:>11.0f} "
            f"{m['write_MiBps'] / floor['write_MiBps']:>11.2f} "
            f"{m['read_MiBps'] / floor['read_MiBps']:>10.2f}"
        )


if __name__ == "__main__":
    main()
