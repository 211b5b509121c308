"""The CLI: in-process through main(argv), and as real processes for connect/listen."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hvsock
import hvsock.sockets
from hvsock._cli import main as cli
from hvsock.testing import HybridVsockMuxer

from ..signals import with_default_signals


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(list(argv), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_service_id_and_port_round_trip() -> None:
    assert run("service-id", "2761") == (0, "00000ac9-facb-11e6-bd58-64006a7986d3\n", "")
    assert run("service-id", "0xac9")[1] == "00000ac9-facb-11e6-bd58-64006a7986d3\n"
    assert run("port", "{00000AC9-FACB-11E6-BD58-64006A7986D3}") == (0, "2761\n", "")


def test_port_of_a_non_template_id_names_the_template() -> None:
    status, out, err = run("port", "999E53D4-3D5C-4C3E-8779-BED06EC056E1")
    assert status == cli.EXIT_USAGE
    assert out == ""
    assert "00000000-facb-11e6-bd58-64006a7986d3" in err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["service-id", "-1"], "usage"),
        (["service-id", "4294967296"], "out of range"),
        (["service-id", "abc"], "is not a number"),
        (["service-id", "\u0663"], "is not a number"),
        (["port", "not-a-guid"], "is not a GUID"),
        (["addr", "vsock://3"], "has no ':<port>'"),
        (["addr", "ftp://x"], "unknown address scheme"),
        (["connect", "vsock://3:1", "--timeout", "0"], "positive number"),
        (["connect", "vsock://3:1", "--retries", "-2"], "usage"),
        (["listen", "unix:///tmp/x", "--mode", "999"], "octal"),
        (["demo", "--transport", "carrier-pigeon"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_arguments_exit_2_with_a_reason(argv: list[str], fragment: str) -> None:
    status, out, err = run(*argv)
    assert status == cli.EXIT_USAGE
    assert fragment in err
    assert out == ""


def test_addr_explains_both_views() -> None:
    status, out, _ = run("addr", "hvsock://parent/2761")
    assert status == 0
    assert "parent: the host, as a VM reaches it" in out
    assert "guest side  vsock://2:2761" in out
    status, out, _ = run("addr", "--json", "vsock://any:5000")
    info = json.loads(out)
    assert info["hyperv_view"] == "hvsock://wildcard/5000"
    assert info["cid_name"] == "any"
    assert info["service_id"] == "00001388-facb-11e6-bd58-64006a7986d3"


def test_help_and_version_return_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert "hvsock 0.1.0" in capsys.readouterr().out
    assert cli.main(["connect", "--help"]) == 0
    assert "ProxyCommand" in capsys.readouterr().out


def test_cid_reports_or_explains() -> None:
    status, out, err = run("cid", "--json")
    if os.access("/dev/vsock", os.R_OK):
        assert status == 0
        assert json.loads(out)["cid"] == hvsock.sockets.local_cid()
    elif os.path.exists("/dev/vsock"):  # root's 0600 device, this run a user
        assert status == cli.EXIT_UNSUPPORTED
        assert "run as a user that may read it" in err
    else:
        assert status == cli.EXIT_UNSUPPORTED
        assert "modprobe" in err


def test_demo_in_process_uses_a_safe_transport() -> None:
    status, out, _ = run("demo", "--json")
    assert status == 0
    report = json.loads(out)
    if not hvsock.sockets.vsock_loopback_loaded():
        assert report["transport"] == "hybrid"
    assert report["service"] == "HV Socket Demo"
    assert ["service replied", "#3: 17 bytes, 'data streams only'"] in report["exchanged"]
    assert report["exchanged"][-1] == ["service", "saw EOF and closed the connection"]


def test_demo_refuses_vsock_without_loopback() -> None:
    if hvsock.sockets.vsock_loopback_loaded():
        pytest.skip("vsock_loopback is loaded here")
    status, _, err = run("demo", "--transport", "vsock")
    assert status == cli.EXIT_UNSUPPORTED
    assert "vsock_loopback" in err


def test_exit_codes_for_each_error_class() -> None:
    assert cli.exit_code_for(hvsock.AddressError("x")) == cli.EXIT_USAGE
    assert cli.exit_code_for(hvsock.NothingListeningError("x")) == cli.EXIT_CONNECT
    assert cli.exit_code_for(hvsock.ConnectTimeoutError("x")) == cli.EXIT_CONNECT
    assert cli.exit_code_for(hvsock.UnreachableError("x")) == cli.EXIT_CONNECT
    assert cli.exit_code_for(hvsock.TransportUnavailableError("x")) == cli.EXIT_UNSUPPORTED
    assert cli.exit_code_for(hvsock.HandshakeError("x")) == cli.EXIT_PROTOCOL
    assert cli.exit_code_for(hvsock.PermissionDeniedError("x")) == cli.EXIT_PERMISSION
    assert cli.exit_code_for(hvsock.AddressInUseError("x")) == cli.EXIT_IN_USE
    assert cli.exit_code_for(hvsock.HvsockError("x")) == cli.EXIT_ERROR


_SAFE_COMMANDS = st.sampled_from(["service-id", "port", "addr", "--bogus", "help", "x"])


@settings(max_examples=300, deadline=None)
@given(command=_SAFE_COMMANDS, rest=st.lists(st.text(max_size=40), max_size=4))
def test_any_arguments_give_an_exit_status_never_a_traceback(command: str, rest: list[str]) -> None:
    # Only commands that do no I/O: random text must never become a vsock connect.
    status, _, err = run(command, *rest)
    assert status in (0, cli.EXIT_USAGE)
    if status:
        assert err.strip()
        assert "Traceback" not in err


# -- real processes --------------------------------------------------------------------


def _spawn(cmd: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs
    )  # type: ignore[call-overload]


def _wait_listening(proc: subprocess.Popen[bytes], timeout: float = 10) -> str:
    """Read stderr until 'listening on ADDR'; return ADDR (no sleeping)."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode()
        if not line:
            break
        if "listening on " in line:
            return line.split("listening on ", 1)[1].strip()
    proc.kill()
    raise AssertionError(f"listener did not start: {proc.communicate(timeout=5)}")


@pytest.fixture
def unix_server(short_tmp: Path) -> Iterator[tuple[hvsock.UnixAddress, socket.socket]]:
    addr = hvsock.UnixAddress(str(short_tmp / "srv.sock"))
    with hvsock.listen(addr) as listener:
        yield addr, listener
    hvsock.sockets.remove_socket_file(addr)


def _recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def test_connect_process_half_close_stdin_eof(
    unix_server: tuple[hvsock.UnixAddress, socket.socket], hvsock_cmd: list[str]
) -> None:
    """stdin EOF -> the server sees EOF, and its answer after that still reaches stdout."""
    addr, listener = unix_server
    payload = os.urandom(1_000_000)

    def server() -> None:
        conn, _ = listener.accept()
        with conn:
            data = _recv_all(conn)
            conn.sendall(b"got %d bytes" % len(data))

    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    with _spawn([*hvsock_cmd, "connect", str(addr)]) as proc:
        out, err = proc.communicate(payload, timeout=30)
    thread.join(5)
    assert proc.returncode == 0, err
    assert out == b"got 1000000 bytes"


def test_connect_process_peer_half_close_first(
    unix_server: tuple[hvsock.UnixAddress, socket.socket], hvsock_cmd: list[str]
) -> None:
    """The server closes its side first; what we send afterwards still arrives in full."""
    addr, listener = unix_server
    received: list[bytes] = []

    def server() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"banner\n")
            conn.shutdown(socket.SHUT_WR)
            received.append(_recv_all(conn))

    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    with _spawn([*hvsock_cmd, "connect", str(addr)]) as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        assert proc.stdout.readline() == b"banner\n"
        assert proc.stdout.read() == b""  # stdout closed after the peer's EOF
        proc.stdin.write(b"late data " * 10_000)
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
    thread.join(5)
    assert received == [b"late data " * 10_000]


def test_connect_process_nothing_listening(short_tmp: Path, hvsock_cmd: list[str]) -> None:
    proc = subprocess.run(
        [*hvsock_cmd, "connect", f"unix://{short_tmp}/none.sock"],
        input=b"",
        capture_output=True,
        timeout=20,
    )
    assert proc.returncode == cli.EXIT_CONNECT
    assert b"nothing is listening" in proc.stderr


def test_connect_through_hybrid_muxer(short_tmp: Path, hvsock_cmd: list[str]) -> None:
    with HybridVsockMuxer(str(short_tmp / "vm.sock")) as muxer, muxer.guest_listen(22) as guest:

        def echo_upper() -> None:
            conn, _ = guest.accept()
            with conn:
                conn.sendall(_recv_all(conn).upper())

        thread = threading.Thread(target=echo_upper, daemon=True)
        thread.start()
        proc = subprocess.run(
            [*hvsock_cmd, "connect", str(muxer.address(22))],
            input=b"ssh-ish bytes",
            capture_output=True,
            timeout=20,
        )
        thread.join(5)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"SSH-ISH BYTES"


def test_listen_exec_once(short_tmp: Path, hvsock_cmd: list[str]) -> None:
    path = short_tmp / "exec.sock"
    with _spawn(
        [
            *hvsock_cmd,
            "listen",
            f"unix://{path}",
            "--once",
            "--exec",
            'printf "%s|" "$HVSOCK_PEER"; tr a-z A-Z',
        ]
    ) as proc:
        assert _wait_listening(proc) == f"unix://{path}"
        with hvsock.connect(f"unix://{path}", timeout=5) as sock:
            sock.sendall(b"hello exec")
            hvsock.close_write(sock)
            reply = _recv_all(sock)
        assert proc.wait(timeout=20) == 0
    assert reply.endswith(b"|HELLO EXEC")
    assert not path.exists()  # the listener removed its socket file


def test_listen_exec_serves_many_until_sigterm(short_tmp: Path, hvsock_cmd: list[str]) -> None:
    path = short_tmp / "many.sock"
    with _spawn([*hvsock_cmd, "listen", f"unix://{path}", "--exec", "cat"]) as proc:
        _wait_listening(proc)
        for i in range(5):
            with hvsock.connect(f"unix://{path}", timeout=5) as sock:
                sock.sendall(b"n%d" % i)
                hvsock.close_write(sock)
                assert _recv_all(sock) == b"n%d" % i
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == cli.EXIT_OK  # SIGTERM stops a server cleanly
    assert not path.exists()


def test_listen_stdio_ctrl_c(short_tmp: Path, hvsock_cmd: list[str]) -> None:
    path = short_tmp / "int.sock"
    # The child's SIGINT at its default even when this run started with it ignored.
    with _spawn(with_default_signals([*hvsock_cmd, "listen", f"unix://{path}"])) as proc:
        _wait_listening(proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == cli.EXIT_INTERRUPTED
    assert not path.exists()


def test_listen_stdio_hybrid_guest_initiated(short_tmp: Path, hvsock_cmd: list[str]) -> None:
    with (
        HybridVsockMuxer(str(short_tmp / "vm.sock")) as muxer,
        _spawn([*hvsock_cmd, "listen", str(muxer.address(1024))]) as proc,
    ):
        assert _wait_listening(proc) == str(muxer.address(1024))
        assert proc.stdin is not None
        assert proc.stdout is not None
        with muxer.guest_connect(1024) as guest:
            guest.sendall(b"from the guest")
            guest.shutdown(socket.SHUT_WR)
            proc.stdin.write(b"from the host")
            proc.stdin.close()
            assert _recv_all(guest) == b"from the host"
        assert proc.stdout.read() == b"from the guest"
        assert proc.wait(timeout=10) == 0


def test_listen_on_a_regular_file_keeps_it(short_tmp: Path, hvsock_cmd: list[str]) -> None:
    path = short_tmp / "keep.txt"
    path.write_text("data")
    proc = subprocess.run(
        [*hvsock_cmd, "listen", f"unix://{path}"],
        capture_output=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == cli.EXIT_IN_USE
    assert b"will not remove it" in proc.stderr
    assert path.read_text() == "data"


def test_demo_as_installed_command(hvsock_cmd: list[str]) -> None:
    proc = subprocess.run(
        [*hvsock_cmd, "demo"], capture_output=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, proc.stderr
    assert b"HV Socket Demo" in proc.stdout
    assert proc.stdout.rstrip().endswith(b"ok")
