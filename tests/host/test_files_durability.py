"""Durability of a file copy: the data is fsync'd before the name points at it.

A dropped fsync changes nothing a test can read back from the file system until
the machine crashes, so the order of the real system calls is what is checked.
The real ``hvsock cp`` processes (the service for a push, the client for a pull)
run with a small ``LD_PRELOAD`` library, built here with the C compiler, that
records each ``fsync``/``fdatasync`` and each ``rename*`` the process makes, with
the paths they act on, after the real call returned. Nothing in hvsock is
replaced or told it is observed: the calls are the product's own, on real files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

MB = 1024 * 1024

RECORDER = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void record(const char *kind, const char *a, const char *b) {
    const char *log = getenv("HVSOCK_TEST_SYSCALL_LOG");
    if (!log) return;
    int fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return;
    char line[9000];
    int n = snprintf(line, sizeof line, "%s\t%s\t%s\n", kind, a, b ? b : "");
    if (n > 0) (void)!write(fd, line, (size_t)n);
    close(fd);
}

static void fd_path(int fd, char *out, size_t len) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, len - 1);
    out[n > 0 ? n : 0] = 0;
}

static void at_path(int dirfd, const char *name, char *out, size_t len) {
    if (name[0] == '/' || dirfd == AT_FDCWD) { snprintf(out, len, "%s", name); return; }
    char dir[4096];
    fd_path(dirfd, dir, sizeof dir);
    snprintf(out, len, "%s/%s", dir, name);
}

typedef int (*fd_fn)(int);
typedef int (*renameat_fn)(int, const char *, int, const char *);
typedef int (*renameat2_fn)(int, const char *, int, const char *, unsigned);
typedef int (*rename_fn)(const char *, const char *);
#define REAL(name, type) static type real_##name; \
    if (!real_##name) real_##name = (type)dlsym(RTLD_NEXT, #name)

int fsync(int fd) {
    REAL(fsync, fd_fn);
    int r = real_fsync(fd);
    char p[4096]; fd_path(fd, p, sizeof p);
    if (r == 0) record("fsync", p, 0);
    return r;
}

int fdatasync(int fd) {
    REAL(fdatasync, fd_fn);
    int r = real_fdatasync(fd);
    char p[4096]; fd_path(fd, p, sizeof p);
    if (r == 0) record("fsync", p, 0);
    return r;
}

int renameat(int od, const char *o, int nd, const char *n) {
    char a[4200], b[4200];
    at_path(od, o, a, sizeof a); at_path(nd, n, b, sizeof b);
    REAL(renameat, renameat_fn);
    int r = real_renameat(od, o, nd, n);
    if (r == 0) record("rename", a, b);
    return r;
}

int renameat2(int od, const char *o, int nd, const char *n, unsigned flags) {
    char a[4200], b[4200];
    at_path(od, o, a, sizeof a); at_path(nd, n, b, sizeof b);
    REAL(renameat2, renameat2_fn);
    int r = real_renameat2(od, o, nd, n, flags);
    if (r == 0) record("rename", a, b);
    return r;
}

int rename(const char *o, const char *n) {
    REAL(rename, rename_fn);
    int r = real_rename(o, n);
    if (r == 0) record("rename", o, n);
    return r;
}
"""


@pytest.fixture(scope="module")
def recorder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip(
            "needs a C compiler (cc) to build the LD_PRELOAD recorder of fsync and rename calls"
        )
    d = tmp_path_factory.mktemp("recorder")
    (d / "recorder.c").write_text(RECORDER)
    proc = subprocess.run(
        [
            cc,
            "-shared",
            "-fPIC",
            "-O1",
            "-o",
            str(d / "recorder.so"),
            str(d / "recorder.c"),
            "-ldl",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"could not build the LD_PRELOAD recorder: {proc.stderr.strip()[:300]}")
    probe = d / "probe.log"
    env = {
        **os.environ,
        "LD_PRELOAD": str(d / "recorder.so"),
        "HVSOCK_TEST_SYSCALL_LOG": str(probe),
    }
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); os.fsync(fd)",
            str(d / "probe"),
        ],
        env=env,
        check=False,
    )
    if not probe.exists():
        pytest.skip("LD_PRELOAD does not reach this Python's system calls (a static build?)")
    return d / "recorder.so"


def recorded(log: Path) -> list[tuple[str, str, str]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [(k, a, b) for k, a, b in (line.split("\t") for line in lines)]


def assert_synced_before_renamed(calls: list[tuple[str, str, str]], target: Path) -> None:
    """The rename that put *target* in place came after an fsync of the file renamed."""
    renames = [
        i for i, (kind, _, new) in enumerate(calls) if kind == "rename" and new == str(target)
    ]
    assert renames, f"no rename into {target} was recorded: {calls}"
    i = renames[-1]
    temp = calls[i][1]
    assert Path(temp).name.startswith(".hvsock-"), calls[i]
    synced = [j for j, (kind, path, _) in enumerate(calls[:i]) if kind == "fsync" and path == temp]
    assert synced, (
        f"{target.name} was renamed into place from {temp} without an fsync of it first: {calls}"
    )


def test_each_file_is_fsynced_before_it_is_renamed_into_place(
    recorder: Path, short_tmp: Path, tmp_path: Path, hvsock_cmd: list[str]
) -> None:
    root = short_tmp / "root"
    root.mkdir()
    src = tmp_path / "src"
    src.mkdir()
    (src / "small").write_bytes(b"s" * 1000)  # eager: no round trip
    (src / "large").write_bytes(os.urandom(5 * MB))  # sendfile path
    server_log, client_log = tmp_path / "server.log", tmp_path / "client.log"
    ready = short_tmp / "ready.json"
    preload = {**os.environ, "LD_PRELOAD": str(recorder)}
    address = f"unix://{short_tmp}/cp.sock"
    server = subprocess.Popen(
        [*hvsock_cmd, "cp", "--serve", str(root), "--listen", address, "--ready-file", str(ready)],
        stderr=subprocess.DEVNULL,
        env={**preload, "HVSOCK_TEST_SYSCALL_LOG": str(server_log)},
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "hvsock cp --serve did not report ready"
        push = subprocess.run(
            [*hvsock_cmd, "cp", "--remote", address, "-r", str(src), ":"],
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert push.returncode == 0, push.stderr
        back = tmp_path / "back"
        pull = subprocess.run(
            [*hvsock_cmd, "cp", "--remote", address, "-r", ":src", str(back)],
            capture_output=True,
            timeout=120,
            check=False,
            env={**preload, "HVSOCK_TEST_SYSCALL_LOG": str(client_log)},
        )
        assert pull.returncode == 0, pull.stderr
    finally:
        server.terminate()
        server.wait(30)
    for name in ("small", "large"):
        assert (root / "src" / name).read_bytes() == (src / name).read_bytes()
        assert (back / name).read_bytes() == (src / name).read_bytes()
        assert_synced_before_renamed(recorded(server_log), root.resolve() / "src" / name)
        assert_synced_before_renamed(recorded(client_log), back.resolve() / name)
