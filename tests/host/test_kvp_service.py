"""The KVP service over Unix and TCP sockets: guest pools in files, the host's client."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import hvsock
import hvsock.kvp as kvp
import hvsock.windows
from hvsock._builtin.kvp.service import DEFAULT_ALLOW, with_default_port
from hvsock._cli import main as cli

ME = f"uid:{os.getuid()}"


def served(
    directory: Path,
    address: str,
    fn: Callable[..., Any],
    allow: object = frozenset({ME, "127.0.0.1"}),
) -> Any:
    """Run *fn* in a thread while the KVP service serves *directory* on *address*.

    *fn* takes no argument, or the address the service really listens on (TCP port 0).
    """
    service = kvp.kvp_service(pool_dir=directory, allow=allow)
    actual: list[str] = []
    host = hvsock.ServiceHost(grace=1, on_ready=lambda a: actual.append(str(a[service.name])))
    host.add(service, address)

    async def main() -> Any:
        async with host:
            if fn.__code__.co_argcount:
                return await asyncio.to_thread(fn, actual[0])
            return await asyncio.to_thread(fn)

    return asyncio.run(main())


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_host_reads_guest_pool_and_pushes_its_own(kind: str, short_tmp: Path) -> None:
    guest = kvp.open_pool(directory=short_tmp)
    guest.set("GuestState", "ready")
    guest.append("dup", "1")
    guest.append("dup", "2")
    listen = f"unix://{short_tmp}/kvp.sock" if kind == "unix" else "tcp://127.0.0.1:0"

    def host_side(address: str) -> dict[str, Any]:
        with kvp.KvpClient(address, timeout=10) as client:
            seen = {
                "items": client.items(),
                "get": client.get("GuestState"),
                "missing": client.get("nope"),
                "dict": client.as_dict("guest"),
            }
            client.set("Config", "on")  # pool 0 by default: the host's
            client.update(
                {"HostName": "kvm-host", "VirtualMachineName": "vm7"}, kvp.Pool.AUTO_EXTERNAL
            )
            seen["facts"] = client.host_info()
            seen["deleted"] = client.delete("Config")
            client.set("Config", "again")
            with pytest.raises(hvsock.ArgumentError, match="is the guest's"):
                client.set("x", "y", pool="guest")
            with pytest.raises(hvsock.ArgumentError, match="UTF-16 units"):
                client.set("x", "y" * 2000)
            seen["cleared"] = client.clear(kvp.Pool.EXTERNAL)
            client.set("Config", "last")
            return seen

    seen = served(short_tmp, listen, host_side)
    assert seen["items"] == [("GuestState", "ready"), ("dup", "1"), ("dup", "2")]
    assert seen["get"] == "ready"
    assert seen["missing"] is None
    assert seen["dict"] == {"GuestState": "ready", "dup": "2"}
    assert seen["facts"].host_name == "kvm-host"
    assert seen["facts"].vm_name == "vm7"
    assert seen["deleted"] == 1
    assert seen["cleared"] == 1
    # The same files a program on the guest reads, in the daemon's format.
    assert kvp.open_pool(0, directory=short_tmp).items() == [("Config", "last")]
    assert kvp.host_info(short_tmp).vm_name == "vm7"
    assert (short_tmp / ".kvp_pool_3").stat().st_size == 2 * kvp.RECORD_SIZE


def test_only_the_host_by_default(short_tmp: Path) -> None:
    assert {2, hvsock.windows.PARENT} == DEFAULT_ALLOW
    # On a Unix socket the host's rules can never match a peer: the host refuses the
    # service when it is added, instead of every client at connect.
    host = hvsock.ServiceHost(grace=1)
    with pytest.raises(hvsock.ArgumentError, match="can never match a peer on unix"):
        host.add(
            kvp.kvp_service(pool_dir=short_tmp, allow=DEFAULT_ALLOW), f"unix://{short_tmp}/kvp.sock"
        )


def test_bad_requests_get_error_replies(short_tmp: Path) -> None:
    address = f"unix://{short_tmp}/kvp.sock"

    def raw() -> list[str]:
        codes = []
        with hvsock.RpcClient(hvsock.connect(address, timeout=10)) as rpc:
            for method, params in [
                ("items", {"pool": 9}),
                ("items", [1]),
                ("get", {"pool": 1}),
                ("update", {"pool": 0, "items": [1]}),
                ("update", {"pool": 1, "items": {}}),
                ("update", {"pool": 0, "items": {"k\0": "v"}}),
                ("clear", {"pool": 2}),
                ("nope", {}),
            ]:
                with pytest.raises(hvsock.RemoteError) as info:
                    rpc.call(method, params)
                codes.append(info.value.code)
            assert rpc.call("items", {"pool": "auto"}) == []
        return codes

    assert served(short_tmp, address, raw) == [
        "bad_argument",
        "bad_argument",
        "bad_argument",
        "bad_argument",
        "pool_not_writable",
        "bad_argument",
        "pool_not_writable",
        "unknown_method",
    ]


def test_a_torn_guest_pool_is_reported_to_the_host(short_tmp: Path) -> None:
    (short_tmp / ".kvp_pool_1").write_bytes(b"x" * 100)
    address = f"unix://{short_tmp}/kvp.sock"

    def read() -> None:
        with (
            kvp.KvpClient(address) as client,
            pytest.raises(hvsock.KvpError, match="100 bytes, not a multiple"),
        ):
            client.items()

    served(short_tmp, address, read)


def test_a_fifo_pool_is_answered_at_once_and_parks_no_thread(short_tmp: Path) -> None:
    os.mkfifo(short_tmp / ".kvp_pool_1")
    address = f"unix://{short_tmp}/kvp.sock"
    threads_before = threading.active_count()

    def read() -> int:
        # Each call would park one executor thread in open() for good; with a 10 s answer
        # bound, 40 calls also outnumber the executor's threads.
        with kvp.KvpClient(address, timeout=10) as client:
            for _ in range(40):
                with pytest.raises(hvsock.KvpError, match="is a FIFO, not a regular file"):
                    client.items()
                with pytest.raises(hvsock.KvpError, match="is a FIFO"):
                    client.get("k")
        return threading.active_count()

    threads_during = served(short_tmp, address, read)
    # The default executor has at most min(32, cpus + 4) threads; none is left parked.
    assert threads_during - threads_before <= 32 + 2


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs sysfs at /sys")
def test_a_permission_error_reaches_the_host_as_one(short_tmp: Path) -> None:
    # sysfs refuses to create files, to root too (EACCES): a pool directory there gives
    # the service a real PermissionDeniedError to report.
    address = f"unix://{short_tmp}/kvp.sock"
    service = kvp.kvp_service(pool_dir="/sys/kernel", allow=frozenset({ME}))
    host = hvsock.ServiceHost(grace=1)
    host.add(service, address)

    def write() -> None:
        with (
            kvp.KvpClient(address, timeout=10) as client,
            pytest.raises(hvsock.PermissionDeniedError, match="run as root"),
        ):
            client.set("k", "v")

    async def main() -> None:
        async with host:
            await asyncio.to_thread(write)

    asyncio.run(main())
    assert not os.path.exists("/sys/kernel/.kvp_pool_0")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("vsock://3", "vsock://3:5010"),
        ("vsock://3:7000", "vsock://3:7000"),
        ("hybrid:///run/fc.sock", "hybrid:///run/fc.sock:5010"),
        ("tcp://127.0.0.1", "tcp://127.0.0.1:5010"),
        ("unix:///run/k.sock", "unix:///run/k.sock"),
    ],
)
def test_default_port(text: str, expected: str) -> None:
    assert str(with_default_port(text)) == expected


def test_default_port_bad_address() -> None:
    with pytest.raises(hvsock.AddressError):
        with_default_port("nonsense")


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(list(argv), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_cli_from_the_host(short_tmp: Path) -> None:
    kvp.open_pool(directory=short_tmp).set("GuestIp", "10.0.0.7")
    address = f"unix://{short_tmp}/kvp.sock"

    def host_side() -> list[tuple[int, str, str]]:
        return [
            run("kvp", "--vm", address, "get", "GuestIp"),
            run("kvp", "--vm", address, "set", "Role", "web"),
            run("kvp", "--vm", address, "--pool", "auto-external", "set", "HostName", "h1"),
            run("kvp", "--vm", address, "host-info", "--json"),
            run("kvp", "--vm", address, "list", "--pool", "external"),
            run("kvp", "--vm", address, "set", "Mine", "no", "--pool", "guest"),
            run("kvp", "--vm", address, "get", "missing"),
        ]

    results = served(short_tmp, address, host_side)
    assert results[0] == (0, "10.0.0.7\n", "")
    assert results[1][0] == 0
    assert results[2][0] == 0
    assert json.loads(results[3][1])["host_name"] == "h1"
    assert results[4] == (0, "Role=web\n", "")
    assert results[5][0] == cli.EXIT_USAGE
    assert "is the guest's" in results[5][2]
    assert results[6][0] == 1
    assert kvp.open_pool(0, directory=short_tmp).as_dict() == {"Role": "web"}


def test_cli_serve_as_a_process(short_tmp: Path, hvsock_cmd: list[str]) -> None:
    ready = short_tmp / "ready.json"
    address = f"unix://{short_tmp}/kvp.sock"
    proc = subprocess.Popen(
        [
            *hvsock_cmd,
            "kvp",
            "serve",
            "--listen",
            address,
            "--dir",
            str(short_tmp),
            "--allow",
            ME,
            "--ready-file",
            str(ready),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.stderr.read() if proc.stderr else ""
        with kvp.KvpClient(address) as client:
            client.set("FromHost", "1")
            assert client.items("external") == [("FromHost", "1")]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, 143), err
    assert "hvsock: listening on unix://" in err
    assert kvp.open_pool(0, directory=short_tmp).get("FromHost") == "1"


def _one_shot_server(path: Path, reply: bytes) -> threading.Thread:
    """A Unix listener that reads the request, sends *reply* and hangs up."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)
    listener.settimeout(30)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(30)
                conn.recv(65536)
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("reply", [b"", b'\x00\x00\x00\x10{"id"'])
def test_a_connection_closed_without_an_answer_says_so(short_tmp: Path, reply: bytes) -> None:
    # Closed before an answer, or in the middle of one: PeerClosedError from the RPC
    # client, which the KVP client tells by its class (never by its message).
    thread = _one_shot_server(short_tmp / "kvp.sock", reply)
    with (
        kvp.KvpClient(f"unix://{short_tmp}/kvp.sock", timeout=10) as client,
        pytest.raises(hvsock.HvsockError, match="closed the connection without an answer") as info,
    ):
        client.get("k")
    assert isinstance(info.value.__cause__, hvsock.PeerClosedError)
    thread.join(30)


def test_a_broken_answer_stays_a_protocol_error(short_tmp: Path) -> None:
    thread = _one_shot_server(short_tmp / "kvp.sock", b"\x00\x00\x00\x05[1,2]")
    with (
        kvp.KvpClient(f"unix://{short_tmp}/kvp.sock", timeout=10) as client,
        pytest.raises(hvsock.ProtocolError, match="must be a JSON object") as info,
    ):
        client.get("k")
    assert not isinstance(info.value, hvsock.PeerClosedError)
    thread.join(30)
