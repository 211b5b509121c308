"""L2's side of the share tests: a share served in L2, and mounts in L2 of L1's share.

L2 runs as root (its /init's chroot), with the 9p modules loaded (its root is a 9p
mount), so ``trans=fd`` mounts work there; /tmp is a tmpfs of its own.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from typing import Any

import hvsock
from hvsock._builtin.share.server import share_service

from . import payload, service_kind, step


@service_kind
def share(port: int, directory: str, allow: list[Any] | None = None) -> hvsock.Service:
    return share_service({"data": directory}, port=port, allow=allow)


@step
def make_tree(top: str, files: dict[str, int]) -> dict[str, str]:
    """Files of the given sizes (reproducible bytes) under *top*; their SHA-256s."""
    out = {}
    for name, size in files.items():
        path = os.path.join(top, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = payload(size, seed=size)
        with open(path, "wb") as f:
            f.write(data)
        out[name] = hashlib.sha256(data).hexdigest()
    return out


@step
def tree_hashes(top: str) -> dict[str, str]:
    """SHA-256 of every file under *top*, by path relative to it."""
    out = {}
    for where, _, names in os.walk(top):
        for name in names:
            path = os.path.join(where, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, top)] = hashlib.sha256(f.read()).hexdigest()
    return out


@step
def share_mount(address: str, mountpoint: str, options: str = "") -> bool:
    # Imported here: ctypes would slow every L2 boot's harness start (Python there is slow).
    from hvsock._builtin.share.mount import mount

    os.makedirs(mountpoint, exist_ok=True)
    mount(address, mountpoint, options=options, timeout=60)
    return os.path.ismount(mountpoint)


@step
def share_umount(mountpoint: str) -> bool:
    subprocess.run(["umount", mountpoint], check=True, timeout=120)
    return os.path.ismount(mountpoint)


@step
def rename_and_remove(top: str, old: str, new: str, gone: str) -> list[str]:
    os.rename(os.path.join(top, old), os.path.join(top, new))
    os.unlink(os.path.join(top, gone))
    return sorted(os.listdir(top))
