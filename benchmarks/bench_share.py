"""hvsock share against diod (a C 9P2000.L server), same kernel client, same transport.

Runs as root inside the QEMU test guest (``bash scripts/bench-vm --bench share``),
where vsock_loopback keeps every vsock connection in the guest's kernel. Both servers
export a directory of the guest's tmpfs and are reached the same way: a vsock
connection to CID 1 handed to the kernel's v9fs with ``trans=fd`` (hvsock's by
``hvsock share --listen vsock://...``; diod's by a listener here that starts
``diod --rfdno N --wfdno N`` on each accepted connection), mounted with the same
options (``msize``, ``cache=none``). QEMU's virtio-9p mount of the project directory
(the test guest's writable root share) is measured beside them, for scale.

Figures, each in the same run: sequential write and read of a file (1 GiB by
default, in 1 MiB calls, fsync'd), untar of 5,000 small files, ``find``+``stat`` of
them, ``rm -r``, and the server's RSS with 1,000 files held open on the mount. All
mounts are up at once and each workload runs on every mount in turn before the next
workload (the order turning round at every workload), so a load that drifts over the
run's minutes is shared, not one server's.
Emulated CPUs make absolute numbers meaningless: read the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from _report import machine, write_bytecode_cache

MIB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, timeout=120)


# -- the servers ---------------------------------------------------------------------
class Server:
    name = ""
    pid = 0
    aname = ""
    #: Mount options of this server's own (besides the shared msize and cache).
    extra = ""

    def mount(self, mnt: Path, msize: int) -> None:
        from hvsock._builtin.share.mount import mount

        options = f"msize={msize},cache=none" + (f",aname={self.aname}" if self.aname else "")
        options += f",{self.extra}" if self.extra else ""
        mount(f"vsock://1:{self.port}", mnt, options=options, timeout=60)

    def __init__(self, export: Path, port: int) -> None:
        self.export, self.port = export, port

    def stop(self) -> None:
        raise NotImplementedError


class Hvsock(Server):
    name = "hvsock share"

    def __init__(self, export: Path, port: int) -> None:
        super().__init__(export, port)
        ready = export.parent / f"ready-{port}.json"
        hvsock = Path(sys.executable).with_name("hvsock")
        self.proc = subprocess.Popen(
            [
                str(hvsock),
                "share",
                str(export),
                "--listen",
                f"vsock://any:{port}",
                "--allow",
                "1",
                "--ready-file",
                str(ready),
            ],
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("hvsock share did not start")
            time.sleep(0.05)
        self.pid = self.proc.pid

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(60)


class Diod(Server):
    """diod serving each accepted vsock connection (its --rfdno/--wfdno mode)."""

    name = "diod"
    # v9fs attaches as "nobody" unless told a user, and diod impersonates whoever
    # attaches: nobody cannot enter the 0700 work directory (EACCES at mount). diod's
    # own README mounts with uname=root; hvsock share serves as its own user either way.
    extra = "uname=root"

    #: --diod-debug: diod logs every message (slow; to see why it fails).
    debug = False

    def __init__(self, export: Path, port: int) -> None:
        super().__init__(export, port)
        self.aname = str(export)
        # diod's own log: the only place that says why it refused an attach.
        self.log = export.parent / f"diod-{port}.log"
        self.listener = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        self.listener.bind((socket.VMADDR_CID_ANY, port))
        self.listener.listen(4)
        self.children: list[subprocess.Popen[bytes]] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            fd = conn.fileno()
            child = subprocess.Popen(
                [
                    "diod",
                    "--foreground",
                    "--no-auth",
                    "--export",
                    str(self.export),
                    "--rfdno",
                    str(fd),
                    "--wfdno",
                    str(fd),
                    "--logdest",
                    str(self.log),
                    *(["--debug", "3"] if self.debug else []),
                ],
                pass_fds=(fd,),
                start_new_session=True,
            )
            conn.close()
            self.children.append(child)
            self.pid = child.pid  # the mount's own connection (the last one)

    def stop(self) -> None:
        self.listener.close()
        for child in self.children:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            child.wait(60)


# -- the workloads -------------------------------------------------------------------
def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def progress(line: str) -> None:
    """Each figure as it is measured: a run stopped by its time bound still tells."""
    print(line, file=sys.stderr, flush=True)


def write_file(path: Path, size: int) -> None:
    block = os.urandom(MIB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(size // MIB):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_file(path: Path) -> int:
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while chunk := os.read(fd, MIB):
            total += len(chunk)
    finally:
        os.close(fd)
    return total


def small_tree_tar(count: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for i in range(count):
            data = b"%d\n" % i * (1 + i % 50)
            info = tarfile.TarInfo(f"t/d{i % 50}/f{i}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def untar(tar: bytes, where: Path) -> None:
    subprocess.run(["tar", "-C", str(where), "-xf", "-"], input=tar, check=True, timeout=3600)


def find_stat(where: Path) -> int:
    done = subprocess.run(
        ["find", str(where / "t"), "-type", "f", "-printf", "%s\n"],
        capture_output=True,
        check=True,
        timeout=3600,
    )
    return len(done.stdout.splitlines())


def open_many(where: Path, count: int) -> list[int]:
    (where / "many").mkdir()
    return [os.open(where / "many" / f"f{i}", os.O_RDWR | os.O_CREAT, 0o644) for i in range(count)]


def sequential(mnt: Path, size: int, out: dict[str, float]) -> None:
    big = mnt / "big"
    out["write_MiBps"] = size / MIB / timed(lambda: write_file(big, size))
    with contextlib.suppress(OSError):  # drop the guest's cache, for virtio-9p's sake
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    out["read_MiBps"] = size / MIB / timed(lambda: read_file(big))
    big.unlink()


def metadata_steps(tar: bytes, files: int) -> list[Callable[[Path, dict[str, float]], None]]:
    def untar_step(mnt: Path, out: dict[str, float]) -> None:
        out["untar_s"] = timed(lambda: untar(tar, mnt))

    def find_step(mnt: Path, out: dict[str, float]) -> None:
        found: list[int] = []
        out["find_stat_s"] = timed(lambda: found.append(find_stat(mnt)))
        assert found == [files], found

    def rm_step(mnt: Path, out: dict[str, float]) -> None:
        out["rm_r_s"] = timed(lambda: shutil.rmtree(mnt / "t"))

    return [untar_step, find_step, rm_step]


def memory(mnt: Path, server: Server, out: dict[str, float]) -> None:
    before = rss_kib(server.pid)
    fds = open_many(mnt, 1000)
    out["rss_idle_KiB"] = before
    out["rss_1000_open_KiB"] = rss_kib(server.pid)
    for fd in fds:
        os.close(fd)
    shutil.rmtree(mnt / "many")


def measure_interleaved(
    mounts: dict[str, tuple[Path, Server | None]], size: int, tar: bytes, files: int
) -> dict[str, dict[str, float]]:
    """Each workload on every mount in turn before the next workload: the machine's
    load drifts over a run of many minutes, and back-to-back steps see the same load.
    The order turns round at every step, so a load that falls (or rises) through the
    run does not always favour the mount measured second."""
    results: dict[str, dict[str, float]] = {name: {} for name in mounts}
    steps: list[Callable[[Path, dict[str, float]], None]] = [
        lambda mnt, out: sequential(mnt, size, out),
        *metadata_steps(tar, files),
    ]
    for index, step in enumerate(steps):
        order = list(mounts.items())
        for name, (mnt, _) in reversed(order) if index % 2 else order:
            step(mnt, results[name])
            progress(f"  {name}: {results[name]}")
    for name, (mnt, server) in mounts.items():
        if server is not None:
            memory(mnt, server, results[name])
    return results


@contextlib.contextmanager
def mounted(server: Server, mnt: Path, msize: int) -> Iterator[Path]:
    mnt.mkdir(parents=True, exist_ok=True)
    try:
        server.mount(mnt, msize)
        try:
            yield mnt
        finally:
            umount(mnt)
    except Exception:
        log = getattr(server, "log", None)
        if log is not None and log.exists():
            progress(f"{server.name}'s log:\n{log.read_text(errors='replace')[-6000:]}")
        raise
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="sequential file (MiB)")
    parser.add_argument("--files", type=int, default=5000, help="small files to untar")
    parser.add_argument("--msize", type=int, default=512 * 1024)
    parser.add_argument("--json-out", help="write the JSON report here too")
    parser.add_argument("--diod-debug", action="store_true", help="diod logs every message")
    parser.add_argument(
        "--servers",
        default="hvsock,diod,virtio",
        help="which to measure, comma-separated (default: hvsock,diod,virtio)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0 or not os.path.isdir("/sys/module/vsock_loopback"):
        raise SystemExit("run it as root in the test VM: bash scripts/bench-vm --bench share")
    if shutil.which("diod") is None:
        raise SystemExit("diod is missing: apt-get install diod")
    write_bytecode_cache()
    size = args.size_mib * MIB
    tar = small_tree_tar(args.files)
    work = Path(tempfile.mkdtemp(prefix="bench-share-"))
    # A tmpfs of its own: the guest's /tmp is an overlay, whose files and directories
    # report different st_dev; diod takes that for a mount point and refuses the walk.
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size + 512 * MIB}", "bench-share", str(work)],
        check=True,
        timeout=60,
    )
    chosen = set(args.servers.split(","))
    Diod.debug = args.diod_debug
    with contextlib.ExitStack() as stack:
        mounts: dict[str, tuple[Path, Server | None]] = {}
        for index, kind in enumerate((Hvsock, Diod)):
            if kind.name.split()[0] not in chosen:
                continue
            export = work / f"export-{index}"
            export.mkdir()
            progress(f"{kind.name}: starting")
            server = kind(export, 30000 + index + os.getpid() % 1000 * 10)
            mnt = stack.enter_context(mounted(server, work / f"mnt-{index}", args.msize))
            mounts[kind.name] = (mnt, server)
        # QEMU's virtio-9p (the guest's writable project share), for scale: no server RSS.
        if "virtio" in chosen:
            virtio = Path(tempfile.mkdtemp(prefix=".bench-share-", dir=ROOT))
            stack.callback(shutil.rmtree, virtio, ignore_errors=True)
            mounts["virtio-9p (QEMU)"] = (virtio, None)
        results = measure_interleaved(mounts, size, tar, args.files)
    umount(work)
    shutil.rmtree(work, ignore_errors=True)
    virtio_mounts = [
        line for line in Path("/proc/mounts").read_text().splitlines() if f" {ROOT} " in line
    ]
    report = {
        "machine": machine(),
        "size_mib": args.size_mib,
        "files": args.files,
        "msize": args.msize,
        "virtio_9p_mount": virtio_mounts,
        "results": results,
    }
    if "hvsock share" in results and "diod" in results:
        ours, theirs = results["hvsock share"], results["diod"]
        report["ratios_vs_diod"] = {
            "write": ours["write_MiBps"] / theirs["write_MiBps"],
            "read": ours["read_MiBps"] / theirs["read_MiBps"],
            "untar": theirs["untar_s"] / ours["untar_s"],
            "find_stat": theirs["find_stat_s"] / ours["find_stat_s"],
            "rm_r": theirs["rm_r_s"] / ours["rm_r_s"],
        }
    print(json.dumps(report, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    print(
        f"\n{'':<18} {'write MiB/s':>11} {'read MiB/s':>11} {'untar s':>8} "
        f"{'find+stat s':>11} {'rm -r s':>8} {'RSS idle/1000 open KiB':>22}"
    )
    for name, r in results.items():
        rss = f"{r['rss_idle_KiB']}/{r['rss_1000_open_KiB']}" if "rss_idle_KiB" in r else "-"
        print(
            f"{name:<18} {r['write_MiBps']:>11.1f} {r['read_MiBps']:>11.1f} "
            f"{r['untar_s']:>8.2f} {r['find_stat_s']:>11.2f} {r['rm_r_s']:>8.2f} {rss:>22}"
        )
    if "ratios_vs_diod" in report:
        print(
            "hvsock/diod (higher is better for hvsock): "
            + ", ".join(f"{k} {v:.2f}x" for k, v in report["ratios_vs_diod"].items())
        )


if __name__ == "__main__":
    main()
