"""``hvsock doctor``'s KVP checks: is the daemon running, are the pools sane, are any stale.

They only look (``/proc``, the pool files' sizes and times); the doctor turns each
:class:`Finding` into one of its checks. Every path is below *root*, so tests pass a
directory tree standing in for ``/``.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from ..._core import kvp as codec
from ..._core.kvp import RECORD_SIZE, Pool
from ..._errors import HvsockError
from .store import DEFAULT_DIRECTORY, boot_time

CHECKS = ("kvp_daemon", "kvp_pools", "kvp_stale")
#: The daemon's process names: Debian/Ubuntu's and the older Red Hat one.
DAEMON_NAMES = ("hv_kvp_daemon", "hypervkvpd")
SERVE_MARK = b"kvp\0serve"


class Finding(NamedTuple):
    """One check: *name*, *status* (the doctor's ok/info/warn/fail/not applicable),
    what was found, and the fix."""

    name: str
    status: str
    summary: str
    fix: str = ""


def running_programs(root: str = "/") -> list[str]:
    """What runs: ``hv_kvp_daemon`` / ``hypervkvpd`` by name, ``hvsock kvp serve`` by its
    command line, as read from ``<root>/proc``."""
    found = []
    proc = os.path.join(root, "proc")
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return []
    for pid in pids:
        try:
            with open(os.path.join(proc, pid, "comm"), "rb") as f:
                comm = f.read(64).strip().decode("ascii", "replace")
            if comm in DAEMON_NAMES:
                found.append(comm)
                continue
            with open(os.path.join(proc, pid, "cmdline"), "rb") as f:
                if SERVE_MARK in f.read(4096):
                    found.append("hvsock kvp serve")
        except OSError:
            continue  # the process ended while we looked
    return sorted(set(found))


def kvp_findings(
    *, root: str = "/", directory: str = DEFAULT_DIRECTORY, hyperv_guest: bool
) -> list[Finding]:
    """The three KVP checks for the machine under *root* (pools in *directory*).

    *hyperv_guest*: whether the doctor found this is a Hyper-V guest (then the daemon
    should run). Never raises: every problem is a finding.
    """
    pool_dir = os.path.join(root, directory.lstrip("/"))
    programs = running_programs(root)
    return [_daemon(programs, hyperv_guest), *_pools(pool_dir, directory, root)]


def _daemon(programs: list[str], hyperv_guest: bool) -> Finding:
    if programs:
        return Finding("kvp_daemon", "ok", f"running: {', '.join(programs)}")
    if hyperv_guest:
        return Finding(
            "kvp_daemon",
            "fail",
            "hv_kvp_daemon is not running: the host sees no guest items and no IP addresses",
            "install and start it: `sudo apt install hyperv-daemons` (Debian, "
            "Ubuntu: linux-cloud-tools) then `sudo systemctl enable --now "
            "hv-kvp-daemon`",
        )
    return Finding(
        "kvp_daemon",
        "info",
        "not a Hyper-V guest: no KVP daemon needed; "
        "on KVM or Firecracker `hvsock kvp serve` gives the host the same pools",
    )


def _pools(pool_dir: str, shown: str, root: str) -> list[Finding]:
    if not os.path.isdir(pool_dir):
        why = f"{shown} does not exist (no KVP daemon or service has run here)"
        return [Finding("kvp_pools", "info", why), Finding("kvp_stale", "info", why)]
    sane, bad, stale = [], [], []
    try:
        boot: float | None = boot_time(root)
    except HvsockError:
        boot = None
    for pool in Pool:
        path = os.path.join(pool_dir, pool.file_name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            bad.append(f"{pool.file_name}: {exc.strerror}")
            continue
        try:
            count = codec.check_size(st.st_size, pool.file_name)
        except HvsockError:
            bad.append(f"{pool.file_name} is {st.st_size} bytes, not a multiple of {RECORD_SIZE}")
            continue
        sane.append(f"{int(pool)}: {count}")
        # An empty pool from before the boot holds nothing stale.
        if boot is not None and st.st_mtime < boot and st.st_size:
            stale.append(pool)
    if bad:
        pools = Finding(
            "kvp_pools",
            "fail",
            "; ".join(bad),
            "a writer stopped half-way: clear the pool (`sudo hvsock kvp clear "
            "--pool N --host-pool`) so the daemon can rewrite it",
        )
    elif sane:
        pools = Finding("kvp_pools", "ok", f"records by pool: {', '.join(sane)}")
    else:
        pools = Finding("kvp_pools", "info", f"no pool files in {shown}")
    if boot is None:
        stale_check = Finding("kvp_stale", "warn", "cannot read the boot time from /proc/stat")
    elif stale:
        names = ", ".join(f"{int(p)} ({p.cli_name})" for p in stale)
        stale_check = Finding(
            "kvp_stale",
            "warn",
            f"pool(s) {names} were last written before this boot: "
            "left from an image or an earlier run (e.g. an old host name in pool 3)",
            "clear them: `sudo hvsock kvp clear --stale`; the daemon and host rewrite "
            "current items",
        )
    else:
        stale_check = Finding("kvp_stale", "ok", "no pool is older than this boot")
    return [pools, stale_check]
