"""The KVM host side for real: libvirt through a `virsh` program on PATH that prints
recorded domain XML, QEMU / Firecracker / Cloud Hypervisor command lines in a fake
/proc tree, the VMMs' APIs served over HTTP on real Unix sockets, and `hvsock vms` /
`hvsock connect` run as programs. A fake-VMM process (a real process whose argv[0] is
`firecracker` or `qemu-system-x86_64`) stands on the real /proc for the end-to-end
cases. Nothing here connects AF_VSOCK: a vsock:// name is only resolved.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

import hvsock
from hvsock import AddressError, HybridAddress, UnreachableError, VsockAddress
from hvsock._core.vmconfig import CLOUD_HYPERVISOR, FIRECRACKER, QEMU, VsockDevice
from hvsock._kvm import unix_http
from hvsock._kvm.vms import (
    MAX_CMDLINE,
    HostDiscovery,
    HostVm,
    discover_host_vms,
    resolve_host_address,
)

from ..fakes import FIXTURES

DOMAINS = {
    "web1": "libvirt-web1-running.xml",
    "db1": "libvirt-db1-shutoff-fixed.xml",
    "build": "libvirt-build-shutoff-auto.xml",
    "legacy": "libvirt-legacy-novsock.xml",
}
LIBVIRT_QEMU = [
    "/usr/bin/qemu-system-x86_64",
    "-name",
    "guest=web1,debug-threads=on",
    "-S",
    "-machine",
    "pc-q35-8.2,usb=off",
    "-accel",
    "kvm",
    "-device",
    '{"driver":"vhost-vsock-pci","id":"vsock0","guest-cid":3,"vhostfd":"28"}',
]
FC_CONFIG = {
    "boot-source": {"kernel_image_path": "vmlinux"},
    "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
    "vsock": {"guest_cid": 3, "uds_path": "./v.sock"},
}


# -- fakes: a /proc tree, a virsh program, an HTTP API on a Unix socket ----------------------


class FakeProc:
    """A directory standing in for /proc: one <pid>/cmdline per process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(exist_ok=True)
        (root / "self").mkdir()  # not a pid: skipped
        (root / "meminfo").write_text("MemTotal: 1 kB\n")

    def add(
        self,
        pid: int,
        argv: list[str] | bytes,
        *,
        cwd: Path | None = None,
        root: Path | None = None,
    ) -> None:
        d = self.root / str(pid)
        d.mkdir()
        data = argv if isinstance(argv, bytes) else b"".join(os.fsencode(a) + b"\0" for a in argv)
        (d / "cmdline").write_bytes(data)
        if cwd is not None:
            (d / "cwd").symlink_to(cwd)
        if root is not None:
            (d / "root").symlink_to(root)


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path / "proc")


@pytest.fixture
def virsh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `virsh` on PATH printing the recorded domains; returns the log of its argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "virsh.log"
    cases = "".join(
        f'  *" dumpxml -- {name}") cat {shlex.quote(str(FIXTURES / f))} ;;\n'
        for name, f in DOMAINS.items()
    )
    script = bin_dir / "virsh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {shlex.quote(str(log))}\n'
        'case "$*" in\n'
        f'  *" list --all --name") printf "{chr(92)}n".join(DOMAINS) ;;\n'.replace(
            'printf "\\n".join(DOMAINS)', "printf '" + "\\n".join(DOMAINS) + "\\n\\n'"
        )
        + cases
        + '  *" dumpxml -- broken") echo "<domain><name>broken</name>" ;;\n'
        "  *) echo \"error: failed to get domain '$*'\" >&2; exit 1 ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)
    return log


@pytest.fixture
def no_virsh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PATH without any virsh (this machine's, if it has one, stays out of the test)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", f"{empty}{os.pathsep}/usr/bin{os.pathsep}/bin")
    if any(os.path.exists(os.path.join(d, "virsh")) for d in ("/usr/bin", "/bin")):
        pytest.skip("this machine has a virsh in /usr/bin or /bin")


class ApiServer:
    """An HTTP server on a Unix socket answering GETs from *routes* (path -> status, body)."""

    def __init__(self, path: Path, routes: dict[str, tuple[int, bytes]]) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                status, body = routes.get(self.path, (404, b'{"fault_message": "no"}'))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # a Unix peer has no address to log

        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def api_servers() -> Iterator[list[ApiServer]]:
    servers: list[ApiServer] = []
    yield servers
    for server in servers:
        server.close()


def firecracker_routes(vm_id: str, config: dict[str, object]) -> dict[str, tuple[int, bytes]]:
    return {
        "/": (
            200,
            json.dumps(
                {"id": vm_id, "state": "Running", "vmm_version": "1.9.0", "app_name": "Firecracker"}
            ).encode(),
        ),
        "/vm/config": (200, json.dumps(config).encode()),
    }


def by_name(found: HostDiscovery) -> dict[str | None, HostVm]:
    return {vm.name: vm for vm in found.vms}


# -- libvirt through virsh ---------------------------------------------------------------------


def test_libvirt_domains_through_virsh(virsh: Path, proc: FakeProc) -> None:
    found = discover_host_vms(str(proc.root))
    vms = by_name(found)
    assert set(vms) == set(DOMAINS)
    assert (vms["web1"].state, vms["web1"].vsock) == ("running", VsockDevice(3, auto=True))
    assert (vms["db1"].state, vms["db1"].cid) == ("shut off", 42)
    assert vms["build"].endpoint == "cid auto (assigned at start)"
    assert vms["legacy"].endpoint == "no vsock device"
    assert {vm.source for vm in found.vms} == {"virsh"}
    calls = virsh.read_text().splitlines()
    assert calls[0] == "-r -c qemu:///system list --all --name"
    assert all(call.startswith("-r -c qemu:///system ") for call in calls)  # read-only
    assert found.sources[0].found == 4
    assert found.problems == []


def test_libvirt_default_uri_is_left_to_virsh(
    virsh: Path, proc: FakeProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu+ssh://root@kvm1/system")
    discover_host_vms(str(proc.root))
    assert virsh.read_text().splitlines()[0] == "-r list --all --name"


def test_a_domain_that_fails_is_noted_and_the_others_listed(
    virsh: Path, proc: FakeProc, tmp_path: Path
) -> None:
    # The list names two more domains: one prints broken XML, one makes virsh fail.
    script = Path(virsh.parent / "bin" / "virsh")
    text = script.read_text().replace("legacy\\n\\n", "legacy\\nbroken\\ngone\\n\\n")
    script.write_text(text)
    found = discover_host_vms(str(proc.root))
    assert set(by_name(found)) == set(DOMAINS)
    problems = "\n".join(found.problems)
    assert (
        "virsh: domain 'broken' skipped: domain 'broken''s XML is not well-formed XML" in problems
    )
    assert (
        "virsh: domain 'gone' skipped: `virsh -r dumpxml --` failed: error: failed to "
        "get domain" in problems
    )


def test_virsh_that_fails_says_why(
    tmp_path: Path, proc: FakeProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "virsh").write_text(
        "#!/bin/sh\necho 'error: failed to connect to the hypervisor' >&2\n"
        "echo 'error: Failed to connect socket to /var/run/libvirt/virtqemud-sock-ro: No such "
        "file or directory' >&2\nexit 1\n"
    )
    (bin_dir / "virsh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    found = discover_host_vms(str(proc.root))
    virsh_report = found.sources[0]
    assert virsh_report.source == "virsh"
    assert virsh_report.unavailable is not None
    assert "failed to connect to the hypervisor" in virsh_report.unavailable
    assert "virtqemud-sock-ro" in virsh_report.unavailable
    assert found.sources[1].source == "libvirt-python"  # asked since virsh gave nothing


def test_a_libvirt_domain_and_its_qemu_process_are_one_vm(virsh: Path, proc: FakeProc) -> None:
    proc.add(4242, LIBVIRT_QEMU)
    found = discover_host_vms(str(proc.root))
    web1 = [vm for vm in found.vms if vm.name == "web1"]
    assert len(web1) == 1
    assert web1[0].source == f"virsh, {proc.root}/4242"
    assert web1[0].pid == 4242
    address = resolve_host_address(hvsock.NamedVsockAddress("web1", 5100), str(proc.root))
    assert address == VsockAddress(3, 5100)


def test_resolution_errors_through_virsh(virsh: Path, proc: FakeProc) -> None:
    with pytest.raises(UnreachableError, match="'db1' is shut off, not running: `virsh start db1`"):
        resolve_host_address(hvsock.NamedVsockAddress("db1", 1), str(proc.root))
    with pytest.raises(AddressError) as info:
        resolve_host_address(hvsock.NamedVsockAddress("web9", 1), str(proc.root))
    assert "'build', 'db1', 'legacy', 'web1'" in str(info.value)


def test_libvirt_python_when_virsh_is_missing(
    no_virsh: None, proc: FakeProc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `libvirt` module on sys.path (a real module file standing in for
    libvirt-python, answering from the recorded XML)."""
    site = tmp_path / "site"
    site.mkdir()
    xml = {name: (FIXTURES / f).read_text() for name, f in DOMAINS.items()}
    (site / "libvirt.py").write_text(
        "class libvirtError(Exception):\n    pass\n"
        f"XML = {xml!r}\nOPENED = []\n"
        "def registerErrorHandler(f, ctx):\n    pass\n"
        "class Dom:\n"
        "    def __init__(self, n): self.n = n\n"
        "    def name(self): return self.n\n"
        "    def XMLDesc(self, flags):\n"
        "        if self.n == 'gone': raise libvirtError('Domain not found')\n"
        "        return XML[self.n]\n"
        "class Conn:\n"
        "    def listAllDomains(self, flags): return [Dom(n) for n in [*XML, 'gone']]\n"
        "    def close(self): pass\n"
        "def openReadOnly(uri):\n    OPENED.append(uri)\n    return Conn()\n"
    )
    monkeypatch.syspath_prepend(str(site))
    try:
        found = discover_host_vms(str(proc.root))
        opened = sys.modules["libvirt"].OPENED  # type: ignore[attr-defined]
    finally:
        sys.modules.pop("libvirt", None)
    assert set(by_name(found)) == set(DOMAINS)
    assert {vm.source for vm in found.vms} == {"libvirt-python"}
    assert opened == ["qemu:///system"]
    assert found.sources[0].unavailable == "not installed (no virsh on PATH)"
    assert found.problems == ["libvirt-python: domain 'gone' skipped: Domain not found"]


# -- /proc: QEMU, odd and hostile entries -------------------------------------------------------


def test_qemu_processes(no_virsh: None, proc: FakeProc) -> None:
    proc.add(
        100,
        [
            "qemu-system-x86_64",
            "-m",
            "768",
            "-name",
            "l2",
            "-device",
            "vhost-vsock-pci,guest-cid=3",
        ],
    )
    proc.add(101, ["qemu-system-aarch64", "-device", "vhost-vsock-pci,guest-cid=4"])
    proc.add(102, ["qemu-system-x86_64", "-name", "novsock"])
    proc.add(103, ["bash", "-c", "qemu-system-x86_64 -name fake"])
    proc.add(104, b"")  # a kernel thread
    found = discover_host_vms(str(proc.root))
    assert [(vm.name, vm.hypervisor, vm.cid, vm.pid) for vm in found.vms] == [
        ("l2", QEMU, 3, 100),
        (None, QEMU, 4, 101),
        ("novsock", QEMU, None, 102),
    ]
    assert found.problems == []
    assert resolve_host_address(hvsock.NamedVsockAddress("l2", 9), str(proc.root)) == VsockAddress(
        3, 9
    )


def test_odd_and_hostile_entries_are_skipped_with_a_reason(no_virsh: None, proc: FakeProc) -> None:
    # no trailing NUL, an empty argument, non-UTF-8 bytes in the name
    proc.add(200, b"qemu-system-x86_64\0\0-name\0we\xffb\0-device\0vhost-vsock-pci,guest-cid=5")
    # a title rewritten with spaces (no NULs): QEMU by name, but no options to read
    proc.add(201, b"qemu-system-x86_64 -name x -device vhost-vsock-pci,guest-cid=6\0")
    proc.add(202, ["qemu-system-x86_64", "-device", "vhost-vsock-pci,guest-cid=1"])
    proc.add(203, b"qemu-system-x86_64\0" + b"a" * MAX_CMDLINE)
    (proc.root / "204").mkdir()  # gone between the listing and the read: no cmdline
    (proc.root / "205").mkdir()
    (proc.root / "205" / "cmdline").mkdir()  # unreadable as a file
    found = discover_host_vms(str(proc.root))
    vms = {vm.pid: vm for vm in found.vms}
    assert vms[200].name == "we\udcffb"
    assert vms[200].cid == 5
    assert vms[201].name is None
    assert vms[201].vsock is None
    assert set(vms) == {200, 201}
    problems = "\n".join(found.problems)
    assert "pid 202: guest-cid 1 is not a guest CID" in problems
    assert f"pid 203: its command line is over {MAX_CMDLINE} bytes: skipped" in problems
    assert "pid 205: Is a directory" in problems
    assert "204" not in problems


def test_unreadable_process_entries_are_counted(
    proc: FakeProc, hvsock_cmd: list[str], short_tmp: Path
) -> None:
    """Run without privileges (root reads everything: as root, in a user namespace of
    its own, where file permissions bind it), `hvsock vms` says how many command lines
    it could not read."""
    proc.add(300, ["qemu-system-x86_64", "-name", "mine", "-device", "vhost-vsock-pci,guest-cid=7"])
    proc.add(301, ["qemu-system-x86_64", "-name", "theirs"])
    (proc.root / "301" / "cmdline").chmod(0)
    unprivileged = []
    if os.geteuid() == 0:
        unshare = shutil.which("unshare")
        if unshare is None:
            pytest.skip("running as root without unshare(1) to drop the privilege")
        unprivileged = [unshare, "--user"]
    env = dict(os.environ, PATH=f"{short_tmp}{os.pathsep}/nonexistent")
    done = subprocess.run(
        [*unprivileged, *hvsock_cmd, "vms", "--json", "--proc", str(proc.root)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [vm["name"] for vm in report["vms"]] == ["mine"]
    assert "1 processes' command lines could not be read (permission): run as root" in "\n".join(
        report["problems"]
    )


# -- Firecracker and Cloud Hypervisor -------------------------------------------------------------


def test_firecracker_asked_over_its_api(
    no_virsh: None, proc: FakeProc, short_tmp: Path, api_servers: list[ApiServer]
) -> None:
    api = short_tmp / "fc1.api"
    server = ApiServer(api, firecracker_routes("fc1", FC_CONFIG))
    api_servers.append(server)
    workdir = short_tmp / "work"
    workdir.mkdir()
    proc.add(400, ["firecracker", "--api-sock", str(api), "--id", "fc1"], cwd=workdir)
    found = discover_host_vms(str(proc.root))
    (vm,) = found.vms
    assert (vm.name, vm.hypervisor, vm.state) == ("fc1", FIRECRACKER, "Running")
    # uds_path "./v.sock" is relative to Firecracker's working directory
    assert vm.vsock == VsockDevice(3, str(workdir / "v.sock"))
    assert vm.source == f"firecracker API {api}"
    assert server.requests == ["/", "/vm/config"]
    assert resolve_host_address(
        hvsock.NamedHybridAddress("fc1", 52), str(proc.root)
    ) == HybridAddress(str(workdir / "v.sock"), 52)
    with pytest.raises(AddressError, match="use hybrid://name:fc1:52"):
        resolve_host_address(hvsock.NamedVsockAddress("fc1", 52), str(proc.root))


def test_firecracker_in_a_jail(
    no_virsh: None, proc: FakeProc, short_tmp: Path, api_servers: list[ApiServer]
) -> None:
    jail = short_tmp / "jail"
    (jail / "run").mkdir(parents=True)
    config = {**FC_CONFIG, "vsock": {"guest_cid": 3, "uds_path": "/run/v.sock"}}
    api_servers.append(ApiServer(jail / "run" / "api.sock", firecracker_routes("j1", config)))
    proc.add(401, ["/usr/bin/firecracker", "--id", "j1", "--api-sock", "/run/api.sock"], root=jail)
    (vm,) = discover_host_vms(str(proc.root)).vms
    assert vm.uds_path == str(jail / "run" / "v.sock")


def test_firecracker_config_file_when_the_api_is_gone(
    no_virsh: None, proc: FakeProc, short_tmp: Path
) -> None:
    (short_tmp / "vm.json").write_text(json.dumps(FC_CONFIG))
    proc.add(
        402,
        [
            "firecracker",
            "--api-sock",
            str(short_tmp / "gone.sock"),
            "--id",
            "fc2",
            "--config-file",
            "vm.json",
        ],
        cwd=short_tmp,
    )
    found = discover_host_vms(str(proc.root))
    (vm,) = found.vms
    assert vm.vsock == VsockDevice(3, str(short_tmp / "v.sock"))
    assert vm.source == f"firecracker --config-file {short_tmp / 'vm.json'}"
    assert "no such socket" in "\n".join(found.problems)  # the API's failure, noted


def test_firecracker_nothing_to_ask(no_virsh: None, proc: FakeProc, short_tmp: Path) -> None:
    (short_tmp / "bad.json").write_text('{"vsock": {"guest_cid": 3}}')
    proc.add(
        403,
        ["firecracker", "--no-api", "--id", "fc3", "--config-file", str(short_tmp / "bad.json")],
    )
    found = discover_host_vms(str(proc.root))
    (vm,) = found.vms
    assert (vm.name, vm.vsock) == ("fc3", None)
    assert "vsock.uds_path None is not a non-empty string" in "\n".join(found.problems)
    with pytest.raises(UnreachableError, match="API could not be asked"):
        resolve_host_address(hvsock.NamedHybridAddress("fc3", 1), str(proc.root))


def test_cloud_hypervisor_command_line_and_api(
    no_virsh: None, proc: FakeProc, short_tmp: Path, api_servers: list[ApiServer]
) -> None:
    proc.add(
        500,
        [
            "cloud-hypervisor",
            "--kernel",
            "vmlinux",
            "--vsock",
            f"cid=5,socket={short_tmp}/ch1.vsock",
        ],
    )
    api = short_tmp / "ch2.sock"
    info = {"config": {"vsock": {"cid": 6, "socket": f"{short_tmp}/ch2.vsock"}}, "state": "Paused"}
    api_servers.append(ApiServer(api, {"/api/v1/vm.info": (200, json.dumps(info).encode())}))
    proc.add(501, ["cloud-hypervisor", "--api-socket", f"path={api}"])
    vms = by_name(discover_host_vms(str(proc.root)))
    assert vms["ch1"] == HostVm(
        "ch1",
        CLOUD_HYPERVISOR,
        "running",
        VsockDevice(5, f"{short_tmp}/ch1.vsock"),
        f"{proc.root}/500",
        500,
    )
    assert (vms["ch2"].state, vms["ch2"].vsock) == (
        "Paused",
        VsockDevice(6, f"{short_tmp}/ch2.vsock"),
    )
    assert vms["ch2"].source == f"cloud-hypervisor API {api}"
    with pytest.raises(UnreachableError, match="'ch2' is Paused, not running"):
        resolve_host_address(hvsock.NamedHybridAddress("ch2", 1), str(proc.root))


# -- the HTTP reader against bad peers -----------------------------------------------------------


@contextlib.contextmanager
def raw_server(path: Path, answer: bytes, trickle: bool = False) -> Iterator[None]:
    """A Unix socket server that reads one request and sends *answer* (a byte at a
    time, 20 ms apart, with *trickle*), for at most one client."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        with contextlib.suppress(OSError):
            listener.settimeout(30)
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                if not trickle:
                    conn.sendall(answer)
                    return
                for byte in answer[:2000]:  # bounded: stops when the client hangs up
                    conn.sendall(bytes([byte]))
                    time.sleep(0.02)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        listener.close()
        thread.join(60)


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\n{}", "answered 400 Bad Request"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "not an HTTP answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n", "refusing it"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", "8 bytes short of its Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "Content-Length 'x' is not a number"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "a chunked answer"),
        (b"HTTP/1.1 200 OK\r\n", "closed before a whole HTTP header"),
        (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * (unix_http.MAX_RESPONSE + 10), "over 1048576 bytes"),
    ],
)
def test_bad_api_answers_say_why(short_tmp: Path, answer: bytes, fragment: str) -> None:
    path = short_tmp / "api.sock"
    with raw_server(path, answer), pytest.raises(hvsock.HvsockError) as info:
        unix_http.get(str(path), "/vm/config")
    assert fragment in str(info.value)
    assert f"{path} (GET /vm/config)" in str(info.value)


def test_a_trickling_api_is_cut_off_at_the_deadline(short_tmp: Path) -> None:
    path = short_tmp / "slow.sock"
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000
    started = time.monotonic()
    with (
        raw_server(path, answer, trickle=True),
        pytest.raises(hvsock.HvsockError, match="within 1 s"),
    ):
        unix_http.get(str(path), "/", timeout=1.0)
    assert time.monotonic() - started < 30  # the deadline held, though bytes kept coming


def test_no_socket_and_a_stale_one(short_tmp: Path) -> None:
    with pytest.raises(hvsock.HvsockError, match="no such socket"):
        unix_http.get(str(short_tmp / "none.sock"), "/")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(short_tmp / "stale.sock"))
    stale.close()
    with pytest.raises(hvsock.HvsockError, match="nobody accepts on it"):
        unix_http.get(str(short_tmp / "stale.sock"), "/")


# -- the command, and real processes on the real /proc --------------------------------------------


def test_hvsock_vms_table_and_json(virsh: Path, proc: FakeProc, hvsock_cmd: list[str]) -> None:
    proc.add(600, ["qemu-system-x86_64", "-name", "l2", "-device", "vhost-vsock-pci,guest-cid=9"])
    proc.add(601, b"qemu-system-x86_64\0-name\0bad\x1b[2Jname\0")
    done = subprocess.run(
        [*hvsock_cmd, "vms", "--proc", str(proc.root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["NAME", "HYPERVISOR", "STATE", "VSOCK", "SOURCE"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["web1"].split()[1:] == ["qemu", "running", "cid", "3", "virsh"]
    assert rows["db1"].split()[1:5] == ["qemu", "shut", "off", "cid"]
    assert "no vsock device" in rows["legacy"]
    assert rows["l2"].split()[1:5] == ["qemu", "running", "cid", "9"]
    assert "bad\\x1b[2Jname" in done.stdout
    assert "\x1b" not in done.stdout
    done = subprocess.run(
        [*hvsock_cmd, "vms", "--json", "--proc", str(proc.root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = json.loads(done.stdout)
    web1 = next(vm for vm in report["vms"] if vm["name"] == "web1")
    assert web1 == {
        "name": "web1",
        "hypervisor": "qemu",
        "state": "running",
        "running": True,
        "cid": 3,
        "uds_path": None,
        "vsock": True,
        "auto_cid": True,
        "source": "virsh",
        "pid": None,
    }
    assert [s["source"] for s in report["sources"]] == ["virsh", str(proc.root)]


def test_hvsock_vms_with_nothing_found_says_what_it_asked(
    no_virsh: None, proc: FakeProc, hvsock_cmd: list[str]
) -> None:
    proc.add(700, ["sleep", "1000"])
    done = subprocess.run(
        [*hvsock_cmd, "vms", "--proc", str(proc.root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=dict(os.environ),
    )
    assert done.returncode == 0
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "hvsock: no VMs found on this host; sources checked:",
        "hvsock:   virsh: not installed (no virsh on PATH)",
        "hvsock:   libvirt-python: not installed (no Python module libvirt)",
        f"hvsock:   {proc.root}: none of the 1 processes is QEMU, Firecracker or Cloud Hypervisor",
    ]


FAKE_FIRECRACKER = """
import json, sys, socketserver, threading
from http.server import BaseHTTPRequestHandler
from hvsock.testing import HybridVsockMuxer
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
muxer = HybridVsockMuxer(args["--vsock"])
guest = muxer.guest_listen(int(args["--port"]))
def echo():
    while True:
        conn, _ = guest.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
threading.Thread(target=echo, daemon=True).start()
answers = {"/": {"id": args["--id"], "state": "Running"},
           "/vm/config": {"vsock": {"guest_cid": 3, "uds_path": args["--vsock"]}}}
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(answers[self.path]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
server = socketserver.ThreadingUnixStreamServer(args["--api-sock"], Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def fake_vmm(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        p.stdin.close()  # type: ignore[union-attr]  # its end: it exits
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(30)
        p.stdout.close()  # type: ignore[union-attr]


def start_fake(started: list[subprocess.Popen[str]], argv: list[str]) -> None:
    """A real process with *argv* (argv[0] names the VMM) running this Python."""
    # With argv[0] not its own name, Python cannot find its venv: name hvsock's home.
    env = dict(os.environ, PYTHONPATH=str(Path(hvsock.__file__).parents[1]))
    p = subprocess.Popen(
        argv,
        executable=sys.executable,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    started.append(p)
    assert p.stdout is not None
    assert p.stdout.readline() == "ready\n"


def test_connect_to_a_firecracker_vm_by_name(
    fake_vmm: list[subprocess.Popen[str]], short_tmp: Path, tmp_path: Path, hvsock_cmd: list[str]
) -> None:
    """`hvsock connect hybrid://name:<id>:5100` on the real /proc: found by its command
    line, asked over its API, connected through its vsock socket to the guest's echo."""
    script = tmp_path / "fake_firecracker.py"
    script.write_text(FAKE_FIRECRACKER)
    name = f"fc-{uuid.uuid4().hex[:8]}"
    start_fake(
        fake_vmm,
        [
            "firecracker",
            str(script),
            "--api-sock",
            str(short_tmp / "api"),
            "--id",
            name,
            "--vsock",
            str(short_tmp / "v.sock"),
            "--port",
            "5100",
        ],
    )
    done = subprocess.run(
        [*hvsock_cmd, "connect", f"hybrid://name:{name}:5100"],
        input=b"through the name\n",
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"through the name\n"
    with hvsock.connect(f"hybrid://name:{name}:5100", timeout=30) as sock:
        sock.sendall(b"library")
        hvsock.close_write(sock)
        assert sock.recv(100) == b"library"
    assert hvsock.resolve_address(f"hybrid://name:{name}:52") == HybridAddress(
        str(short_tmp / "v.sock"), 52
    )


def test_a_qemu_process_by_name_on_the_real_proc(
    fake_vmm: list[subprocess.Popen[str]], hvsock_cmd: list[str]
) -> None:
    """Resolved only: a vsock connect here would leave this machine."""
    name = f"q-{uuid.uuid4().hex[:8]}"
    start_fake(
        fake_vmm,
        [
            "qemu-system-x86_64",
            "-c",
            "import sys; print('ready', flush=True); sys.stdin.read()",
            "-name",
            f"guest={name},debug-threads=on",
            "-device",
            "vhost-vsock-pci,id=vsock0,guest-cid=77",
        ],
    )
    assert hvsock.resolve_address(f"vsock://name:{name}:5100") == VsockAddress(77, 5100)
    done = subprocess.run(
        [*hvsock_cmd, "vms", "--json"], capture_output=True, text=True, timeout=120, check=False
    )
    vm = next(vm for vm in json.loads(done.stdout)["vms"] if vm["name"] == name)
    assert (vm["cid"], vm["pid"], vm["source"]) == (77, fake_vmm[0].pid, f"/proc/{fake_vmm[0].pid}")
    done = subprocess.run(
        [*hvsock_cmd, "addr", f"vsock://name:{name}:5100"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0
    assert "looked up on this KVM host" in done.stdout
