"""hvsock cp against a raw socket stream, scp, rsync over ssh over hvsock connect, and tar.

All in one run, on tmpfs (/dev/shm), over a Unix socket (the raw stream and cp)
or loopback TCP (sshd):

- one large file (--size, default 256M; --rounds interleaved rounds, medians):
  ``hvsock cp`` vs ``hvsock connect`` fed
  the file (the raw stream: ``hvsock listen`` writes it out), vs ``scp`` to a
  throwaway sshd on 127.0.0.1, vs ``rsync -e 'ssh -o ProxyCommand="hvsock connect
  ..."'``. Each figure is the wall time of the command(s), Python start-up
  included for every hvsock command alike (from a written bytecode cache, as an
  install has).
- --small-files (default 10000) files of 1 KiB: ``hvsock cp -r`` vs ``tar -c |
  hvsock connect`` into ``hvsock listen | tar -x``; files per second.

    .venv/bin/python benchmarks/bench_files.py [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit, row, write_bytecode_cache

HVSOCK = [str(Path(sys.executable).with_name("hvsock"))]


def wait_for(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.02)


def timed(cmd: list[str] | str, **kw: object) -> float:
    # The commands' own summaries would land in the middle of --json output.
    kw.setdefault("stdout", subprocess.DEVNULL)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, shell=isinstance(cmd, str), **kw)  # type: ignore[call-overload]
    return time.perf_counter() - start


@contextlib.contextmanager
def cp_server(root: Path, sock: Path) -> Iterator[str]:
    ready = root.parent / "ready.json"
    proc = subprocess.Popen(
        [
            *HVSOCK,
            "cp",
            "--serve",
            str(root),
            "--listen",
            f"unix://{sock}",
            "--ready-file",
            str(ready),
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(ready)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(20)
        ready.unlink(missing_ok=True)


def raw_stream(src: Path, out: Path, sock: Path) -> float:
    """``hvsock connect < file`` into ``hvsock listen > out``; seconds until out is written."""
    with out.open("wb") as sink:
        listener = subprocess.Popen(
            [*HVSOCK, "listen", f"unix://{sock}"],
            stdout=sink,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        wait_for(sock)
        start = time.perf_counter()
        with src.open("rb") as source:
            subprocess.run(
                [*HVSOCK, "connect", f"unix://{sock}"],
                stdin=source,
                stdout=subprocess.DEVNULL,
                check=True,
            )
        listener.wait(120)
        return time.perf_counter() - start


@contextlib.contextmanager
def sshd(work: Path) -> Iterator[tuple[list[str], str] | None]:
    """A throwaway sshd on 127.0.0.1; yields (ssh options, note) or None when impossible."""
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd_bin) or os.geteuid() != 0:
        yield None
        return
    keys = work / "ssh"
    keys.mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "host")], check=True
    )
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "user")], check=True
    )
    (keys / "authorized_keys").write_text((keys / "user.pub").read_text())
    os.chmod(keys / "authorized_keys", 0o600)
    os.makedirs("/run/sshd", exist_ok=True)
    port = 22000 + os.getpid() % 20000
    config = keys / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPermitRootLogin yes\n"
        "PasswordAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {keys / 'pid'}\nSubsystem sftp internal-sftp\n"
    )
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        opts = [
            "-i",
            str(keys / "user"),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
        ]
        yield ([*opts, "-P", str(port)], str(port))
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="MiB of the large file")
    parser.add_argument("--small-files", type=int, default=10_000)
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        choices=range(1, 21),
        metavar="1..20",
        help="interleaved rounds of push, pull and raw stream (medians)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    write_bytecode_cache()  # every figure starts hvsock processes
    rows: list[dict[str, object]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hvbench-", dir="/dev/shm") as d:
        work = Path(d)
        src, root = work / "src", work / "root"
        src.mkdir()
        root.mkdir()
        big = src / "big"
        with big.open("wb") as f:
            for _ in range(args.size):
                f.write(os.urandom(1 << 20))
        nbytes = big.stat().st_size
        mbps = lambda seconds: nbytes / seconds / 1e6  # noqa: E731
        with cp_server(root, work / "cp.sock") as addr:
            # Rounds interleave push, pull and the raw stream, so a machine that slows
            # down mid-run slows all three; each figure is the median of its rounds.
            pushes, pulls, raws = [], [], []
            for _ in range(args.rounds):
                pushes.append(timed([*HVSOCK, "cp", "--remote", addr, str(big), ":big"]))
                pulls.append(timed([*HVSOCK, "cp", "--remote", addr, ":big", str(work / "pulled")]))
                (root / "big").unlink()
                (work / "pulled").unlink()
                raws.append(raw_stream(big, work / "raw.out", work / "raw.sock"))
                (work / "raw.out").unlink()
            t_cp, t_pull, t_raw = (statistics.median(t) for t in (pushes, pulls, raws))
            rows.append(
                row(
                    f"push one {args.size} MiB file",
                    "MB/s",
                    mbps(t_cp),
                    mbps(t_raw),
                    "raw stream: hvsock connect < file",
                    ">= 0.9",
                )
            )
            rows.append(
                row(
                    f"pull one {args.size} MiB file",
                    "MB/s",
                    mbps(t_pull),
                    mbps(t_raw),
                    "raw stream: hvsock connect < file",
                    ">= 0.9",
                )
            )
            with sshd(work) as ssh:
                if ssh is None:
                    notes.append("scp/rsync skipped: no sshd or not root")
                else:
                    opts, port = ssh
                    try:
                        t_scp = timed(
                            ["scp", "-q", *opts, str(big), f"root@127.0.0.1:{work}/scp.out"]
                        )
                        rows.append(
                            row(
                                f"one {args.size} MiB file",
                                "MB/s",
                                mbps(t_cp),
                                mbps(t_scp),
                                "scp over loopback sshd",
                                "> 1",
                            )
                        )
                        (work / "scp.out").unlink()
                    except subprocess.CalledProcessError as exc:
                        notes.append(f"scp failed: {exc}")
                    if shutil.which("rsync"):
                        relay = work / "ssh-relay.sock"
                        relay_proc = subprocess.Popen(
                            [*HVSOCK, "relay", f"unix://{relay}", f"tcp://127.0.0.1:{port}"],
                            stderr=subprocess.DEVNULL,
                        )
                        try:
                            wait_for(relay)
                            ssh_cmd = " ".join(
                                [
                                    "ssh",
                                    *[o for o in opts if o != "-P" and o != port],
                                    "-o",
                                    f"'ProxyCommand={HVSOCK[0]} connect unix://{relay}'",
                                ]
                            )
                            t_rsync = timed(
                                [
                                    "rsync",
                                    "-a",
                                    "-e",
                                    ssh_cmd,
                                    str(big),
                                    f"root@vm:{work}/rsync.out",
                                ]
                            )
                            rows.append(
                                row(
                                    f"one {args.size} MiB file",
                                    "MB/s",
                                    mbps(t_cp),
                                    mbps(t_rsync),
                                    "rsync -e ssh, ProxyCommand hvsock connect",
                                    "> 1",
                                )
                            )
                        except subprocess.CalledProcessError as exc:
                            notes.append(f"rsync failed: {exc}")
                        finally:
                            relay_proc.terminate()
                            relay_proc.wait(10)
                    else:
                        notes.append("rsync skipped: not installed (apt-get install rsync)")
            big.unlink()
            small = src / "small"
            small.mkdir()
            payload = os.urandom(1024)
            for i in range(args.small_files):
                (small / f"f{i:05d}").write_bytes(payload)
            t_cp_small = timed([*HVSOCK, "cp", "--remote", addr, "-r", str(small), ":"])
        out = work / "tar-out"
        out.mkdir()
        tar_sock = work / "tar.sock"
        listener = subprocess.Popen(
            f"{HVSOCK[0]} listen unix://{tar_sock} 2>/dev/null </dev/null | tar -C {out} -xf -",
            shell=True,
        )
        wait_for(tar_sock)
        start = time.perf_counter()
        subprocess.run(
            f"tar -C {src} -cf - small | {HVSOCK[0]} connect unix://{tar_sock} >/dev/null",
            shell=True,
            check=True,
        )
        listener.wait(120)
        t_tar = time.perf_counter() - start
        rows.append(
            row(
                f"{args.small_files} files of 1 KiB",
                "files/s",
                args.small_files / t_cp_small,
                args.small_files / t_tar,
                "tar -c | hvsock connect | tar -x (no checksums, no fsync)",
                "report",
            )
        )
    emit(rows, args.json)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
