"""File copy over real AF_VSOCK (CID 1, vsock_loopback) in the test VM, both ways."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import hvsock

from .._files import serving
from ._support import target, unused_port

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(240)]

MB = 1024 * 1024


@pytest.fixture
def vsock_file_service(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "root"
    root.mkdir()
    port = unused_port()
    with serving([root], f"vsock://any:{port}", port=port):
        yield target(port), root


def digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def test_push_and_pull_a_tree_over_vsock(
    vsock_file_service: tuple[str, Path], tmp_path: Path
) -> None:
    address, root = vsock_file_service
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "big").write_bytes(os.urandom(8 * MB + 3))
    (src / "sub" / "empty").write_bytes(b"")
    (src / os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1 name")
    os.symlink("../big", src / "sub" / "link")
    pushed = hvsock.copy(address, src, ":", recursive=True, preserve=True)
    assert pushed.files == 3
    assert pushed.symlinks == 1
    assert digest(root / "src" / "big") == digest(src / "big")
    assert os.readlink(root / "src" / "sub" / "link") == "../big"
    back = tmp_path / "back"
    back.mkdir()
    pulled = hvsock.copy(address, ":src", back, recursive=True, preserve=True)
    assert pulled.files == 3
    for rel in ("big", "sub/empty", os.fsdecode(b"caf\xe9")):
        assert digest(back / "src" / rel) == digest(src / rel)
        assert (back / "src" / rel).stat().st_mtime_ns == (src / rel).stat().st_mtime_ns
    assert os.readlink(back / "src" / "sub" / "link") == "../big"


def test_the_cli_scp_form_and_a_rerun_over_vsock(
    vsock_file_service: tuple[str, Path], tmp_path: Path
) -> None:
    """``hvsock cp -a SRC vsock://1:PORT:PATH``: the address ends after the port, a
    re-run of the same tree (a symlink in it) succeeds, and the pull comes back."""
    import io

    from hvsock._cli.main import main

    address, root = vsock_file_service
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_bytes(os.urandom(3 * MB))
    os.symlink("index.html", site / "home.html")
    for _ in range(2):
        err = io.StringIO()
        assert (
            main(["cp", "-a", str(site), f"{address}:{root}"], out=io.StringIO(), err=err) == 0
        ), err.getvalue()
    assert digest(root / "site" / "index.html") == digest(site / "index.html")
    assert os.readlink(root / "site" / "home.html") == "index.html"
    out = io.StringIO()
    assert (
        main(
            ["cp", "-v", f"{address}:site/index.html", str(tmp_path / "back")],
            out=out,
            err=io.StringIO(),
        )
        == 0
    )
    assert digest(tmp_path / "back") == digest(site / "index.html")
    assert "':site/index.html' -> " in out.getvalue()
