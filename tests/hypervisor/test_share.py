"""The share across a real virtio-vsock transport: served in L1 and mounted by L2's
kernel (the host->guest case of WSL and podman), and the reverse."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

import hvsock
import hvsock.services
import hvsock.sockets
from hvsock._builtin.share.mount import mount
from tests._files import hosting

from ._support import GUEST_CID, next_port, payload
from ._vm import TEST_TIMEOUT, Guest

pytestmark = [pytest.mark.hypervisor, pytest.mark.timeout(TEST_TIMEOUT)]

SIZES = {"empty": 0, "small": 3, "page": 4096, "sub/dir/odd": 70001, "big": 3 << 20}


def hashes(top: Path) -> dict[str, str]:
    return {
        str(path.relative_to(top)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in top.rglob("*")
        if path.is_file()
    }


def test_l1_serves_l2_mounts(guest: Guest, tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    for name, size in SIZES.items():
        (export / name).parent.mkdir(parents=True, exist_ok=True)
        (export / name).write_bytes(payload(size, size))
    port = next_port()
    mnt = f"/tmp/share-{port}"
    service = hvsock.services.share_service([export], port=port, allow=[GUEST_CID])
    with hosting(service, f"vsock://any:{port}"):
        assert guest.call("share_mount", address=f"vsock://2:{port}", mountpoint=mnt)
        try:
            # L2 reads what L1 has, byte for byte, through its own kernel's v9fs.
            assert guest.call("tree_hashes", top=mnt) == hashes(export)
            # L2 writes; L1 sees it at once (cache=none).
            made = guest.call("make_tree", top=f"{mnt}/from-l2", files={"a": 5, "b/c": 1 << 20})
            assert hashes(export / "from-l2") == made
            left = guest.call(
                "rename_and_remove", top=mnt, old="small", new="renamed", gone="empty"
            )
            assert sorted(os.listdir(export)) == left
            assert (export / "renamed").read_bytes() == payload(3, 3)
        finally:
            assert guest.call("share_umount", mountpoint=mnt) is False


def test_l2_serves_l1_mounts(guest: Guest, tmp_path: Path) -> None:
    port = next_port()
    top = f"/tmp/export-{port}"
    made = guest.call("make_tree", top=top, files=SIZES)
    guest.serve("share", port, directory=top, allow=[hvsock.sockets.CID_HOST])
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        mount(f"vsock://{GUEST_CID}:{port}", mnt, options="aname=data", timeout=60)
        try:
            assert hashes(mnt) == made
            (mnt / "from-l1").mkdir()
            data = payload(2 << 20, port)
            (mnt / "from-l1" / "f").write_bytes(data)
            os.rename(mnt / "page", mnt / "page2")
            in_l2 = guest.call("tree_hashes", top=top)
            assert in_l2["from-l1/f"] == hashlib.sha256(data).hexdigest()
            assert "page2" in in_l2
            assert "page" not in in_l2
        finally:
            subprocess.run(["umount", str(mnt)], check=True, timeout=120)
    finally:
        guest.call("stop_serving", port=port)
    assert not os.path.ismount(mnt)
