"""Errors users meet around connect and listen, through the library and the real CLI.

- issue 13.1: `hvsock connect` never exits 0 when the peer resets the stream;
- defect 6: listening where a directory cannot be searched is a permission error (6);
- defect 9: listening under a missing directory names that directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import hvsock
import hvsock.sockets
from hvsock._cli import main as cli

_LINGER_RESET = b"\x01\0\0\0\0\0\0\0"  # SO_LINGER on, 0 s: close() sends a reset


class Server:
    """A TCP server that answers every client with *reply*, then closes or resets."""

    def __init__(self, reply: bytes, *, reset: bool, wait_for_bytes: bool = False) -> None:
        self.listener = hvsock.listen("tcp://127.0.0.1:0")
        self.address = hvsock.sockets.listener_address(self.listener, "tcp://127.0.0.1:0")
        self.reply, self.reset, self.wait_for_bytes = reply, reset, wait_for_bytes
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            if self.wait_for_bytes:
                conn.settimeout(10)
                conn.recv(1)  # the client is connected and its stream runs
            conn.sendall(self.reply)
            if self.reset:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def hvsock_proc(hvsock_cmd: list[str]) -> list[str]:
    return hvsock_cmd


@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("reset", [True, False])
def test_connect_exits_nonzero_only_when_the_peer_resets(
    hvsock_proc: list[str], reset: bool
) -> None:
    """A stream cut by a reset exits EXIT_RESET; a stream closed cleanly exits 0."""
    server = Server(b"the answer", reset=reset, wait_for_bytes=True)
    try:
        done = subprocess.run(
            [*hvsock_proc, "connect", str(server.address)],
            input=b"x",
            capture_output=True,
            timeout=30,
            check=False,
        )
    finally:
        server.close()
    if reset:
        assert done.returncode == cli.EXIT_RESET, done.stderr
        assert b"reset the connection" in done.stderr
        assert b"nothing is listening" not in done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert done.stdout == b"the answer"


def test_reset_maps_to_its_own_exit_status() -> None:
    error = hvsock.ConnectionResetByPeerError("cut")
    assert cli.exit_code_for(error) == cli.EXIT_RESET
    assert cli.EXIT_RESET not in (0, cli.EXIT_CONNECT, cli.EXIT_ERROR)
    assert isinstance(error, ConnectionResetError)


# -- defect 9: a missing directory is named ----------------------------------------------
@pytest.mark.usefixtures("fd_baseline")
@pytest.mark.parametrize("scheme", ["unix", "hybrid"])
def test_listen_under_a_missing_directory_names_it(short_tmp: Path, scheme: str) -> None:
    missing = short_tmp / "not-made"
    text = (
        f"unix://{missing}/deeper/s.sock"
        if scheme == "unix"
        else f"hybrid://{missing}/deeper/v.sock:52"
    )
    with pytest.raises(hvsock.AddressError) as info:
        hvsock.listen(text)
    assert f"'{missing}'" in str(info.value)
    assert "does not exist" in str(info.value)


# -- defect 6: a directory the user cannot search -----------------------------------------
_PROBE = """
import sys, hvsock
from hvsock._cli import main as cli
try:
    hvsock.listen(sys.argv[1])
except hvsock.PermissionDeniedError as exc:
    print("PermissionDeniedError", cli.exit_code_for(exc), exc)
except BaseException as exc:
    print(type(exc).__name__, exc)
"""


def _without_dac_override(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run *argv* so file modes bind it: as root, drop the capabilities that skip them."""
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: file modes cannot bind here")
        caps = "-dac_override,-dac_read_search"
        argv = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("scheme", ["unix", "hybrid"])
def test_listen_where_a_directory_cannot_be_searched(tmp_path: Path, scheme: str) -> None:
    closed = Path("/tmp") / f"hv-closed-{os.getpid()}-{scheme}"
    closed.mkdir(mode=0o700)
    try:
        (closed / "inner").mkdir()
        closed.chmod(0o000)
        text = (
            f"unix://{closed}/inner/s.sock"
            if scheme == "unix"
            else f"hybrid://{closed}/inner/v.sock:52"
        )
        env_python = [sys.executable, "-c", _PROBE, text]
        done = _without_dac_override(env_python)
        assert done.stdout.startswith("PermissionDeniedError 6"), (done.stdout, done.stderr)
        assert str(closed) in done.stdout
    finally:
        closed.chmod(0o700)
        for child in sorted(closed.rglob("*"), reverse=True):
            child.unlink() if not child.is_dir() else child.rmdir()
        closed.rmdir()
