"""The hvsock.vm.vms inventory plugin for real: `ansible-inventory --list` over what the
KVM host discovery finds through the fakes of test_kvm_hosts.py (a `virsh` program on
PATH with recorded domain XML, a fake /proc tree, a Firecracker API served over HTTP on
a Unix socket), then a playbook that reaches the agent of a VM it listed: a fake
Firecracker process on the real /proc whose hybrid vsock socket leads to a real agent.
"""

# The fixtures of test_kvm_hosts.py are imported, then named as test arguments.
# ruff: noqa: F811
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.host.test_ansible import BIN, ansible_env
from tests.host.test_kvm_hosts import (  # noqa: F401 - fixtures used by name
    FC_CONFIG,
    ApiServer,
    FakeProc,
    api_servers,
    fake_vmm,
    firecracker_routes,
    proc,
    start_fake,
    virsh,
)

pytest.importorskip("ansible", reason="ansible-core is in the test extra: pip install -e '.[test]'")
pytestmark = pytest.mark.timeout(600)


def _plain(value: object) -> object:
    """ansible-inventory's JSON without its {"__ansible_unsafe": v} wrappers."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def inventory_list(
    base: Path, config: dict[str, object], name: str = "t.hvsock.yml"
) -> tuple[dict[str, object], str]:
    path = base / name
    path.write_text(json.dumps(config))  # JSON is YAML
    done = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(path), "--list"],
        env=ansible_env(base),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return _plain(json.loads(done.stdout)), done.stderr  # type: ignore[return-value]


def hosts_of(listing: dict[str, object], group: str) -> set[str]:
    return set(listing.get(group, {}).get("hosts", []))  # type: ignore[attr-defined]


def test_lists_libvirt_qemu_firecracker_and_cloud_hypervisor_vms(
    virsh: Path, proc: FakeProc, short_tmp: Path, tmp_path: Path, api_servers: list[ApiServer]
) -> None:
    proc.add(100, ["qemu-system-x86_64", "-name", "l2", "-device", "vhost-vsock-pci,guest-cid=9"])
    proc.add(101, ["qemu-system-x86_64", "-device", "vhost-vsock-pci,guest-cid=11"])
    api = short_tmp / "fc1.api"
    api_servers.append(ApiServer(api, firecracker_routes("fc1", FC_CONFIG)))
    work = short_tmp / "work"
    work.mkdir()
    proc.add(400, ["firecracker", "--api-sock", str(api), "--id", "fc1"], cwd=work)
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
    listing, _ = inventory_list(
        tmp_path,
        {
            "plugin": "hvsock.vm.vms",
            "proc": str(proc.root),
            "port": 7000,
            "cp_port": 7005,
            "group": "kvm-1",
            "keyed_groups": [{"key": "hvsock_source", "prefix": "src"}],
            "compose": {"vm_label": "hvsock_hypervisor ~ '/' ~ inventory_hostname"},
        },
    )
    hostvars = listing["_meta"]["hostvars"]  # type: ignore[index]
    want = {  # host: (ansible_host, state)
        "web1": ("vsock://3:7000", "running"),
        "db1": ("vsock://42:7000", "shut off"),
        "build": ("vsock://name:build:7000", "shut off"),  # auto CID, not assigned yet
        "l2": ("vsock://9:7000", "running"),
        "qemu-cid11": ("vsock://11:7000", "running"),  # a QEMU with no -name
        "fc1": (f"hybrid://{work}/v.sock:7000", "Running"),
        "ch1": (f"hybrid://{short_tmp}/ch1.vsock:7000", "running"),
    }
    assert set(hostvars) == {*want, "legacy"}
    for host, (address, state) in want.items():
        v = hostvars[host]
        assert v["ansible_host"] == address, (host, v)
        assert v["ansible_connection"] == "hvsock.vm.hvsock"
        assert v["hvsock_state"] == state
        assert v["ansible_hvsock_cp_address"] == address.replace(":7000", ":7005")
    assert "ansible_host" not in hostvars["legacy"]  # no vsock device: no address
    assert hostvars["legacy"]["hvsock_vsock"] is False
    assert hostvars["web1"]["hvsock_cid"] == 3
    assert hostvars["fc1"]["hvsock_uds_path"] == f"{work}/v.sock"
    assert hostvars["l2"]["hvsock_pid"] == 100
    assert hostvars["fc1"]["vm_label"] == "firecracker/fc1"  # compose
    assert hosts_of(listing, "hypervisor_qemu") == {
        "web1",
        "db1",
        "build",
        "legacy",
        "l2",
        "qemu-cid11",
    }
    assert hosts_of(listing, "hypervisor_firecracker") == {"fc1"}
    assert hosts_of(listing, "hypervisor_cloud_hypervisor") == {"ch1"}
    assert hosts_of(listing, "state_shut_off") == {"db1", "build"}
    # Firecracker's "Running" and libvirt's "running" are one group.
    assert hosts_of(listing, "state_running") == {
        "web1",
        "legacy",
        "l2",
        "qemu-cid11",
        "ch1",
        "fc1",
    }
    assert hosts_of(listing, "kvm_1") == set(hostvars)
    assert hosts_of(listing, "src_virsh") == {"web1", "db1", "build", "legacy"}  # keyed


def test_running_only_names_prefix(virsh: Path, proc: FakeProc, tmp_path: Path) -> None:
    proc.add(100, ["qemu-system-x86_64", "-name", "l2", "-device", "vhost-vsock-pci,guest-cid=9"])
    listing, _ = inventory_list(
        tmp_path,
        {
            "plugin": "hvsock.vm.vms",
            "proc": str(proc.root),
            "running_only": True,
            "address": "name",
            "prefix": "h1-",
        },
        "h1.hvsock.yaml",
    )
    hostvars = listing["_meta"]["hostvars"]  # type: ignore[index]
    assert set(hostvars) == {"h1-web1", "h1-l2"}  # shut off and vsock-less VMs left out
    assert hostvars["h1-web1"]["ansible_host"] == "vsock://name:web1:5100"
    assert hostvars["h1-l2"]["ansible_host"] == "vsock://name:l2:5100"
    assert "ansible_hvsock_cp_address" not in hostvars["h1-l2"]  # 5005: derived


def test_a_file_of_another_name_is_not_this_plugins(tmp_path: Path) -> None:
    (tmp_path / "vms.yml").write_text("plugin: hvsock.vm.vms\n")
    done = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(tmp_path / "vms.yml"), "--list"],
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert "hvsock.yml" not in done.stdout
    assert json.loads(done.stdout)["_meta"]["hostvars"] == {}


# -- end to end: listed, then reached ---------------------------------------------------------

# A Firecracker stand-in on the real /proc: its API answers GET / and /vm/config, its
# hybrid vsock socket (the muxer) relays guest ports 5100 and 5005 to a real agent's
# exec and cp sockets (the "guest").
FAKE_FIRECRACKER = """
import json, socket, sys, socketserver, threading
from http.server import BaseHTTPRequestHandler
from hvsock.testing import HybridVsockMuxer
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
muxer = HybridVsockMuxer(args["--vsock"])
def pump(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass
def relay(port, target):
    guest = muxer.guest_listen(port)
    while True:
        conn, _ = guest.accept()
        up = socket.socket(socket.AF_UNIX)
        up.connect(target)
        threading.Thread(target=pump, args=(conn, up), daemon=True).start()
        threading.Thread(target=pump, args=(up, conn), daemon=True).start()
for port, target in ((5100, args["--agent"]), (5005, args["--cp"])):
    threading.Thread(target=relay, args=(port, target), daemon=True).start()
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

PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - command: printenv HVA_HOST
      register: r
    - copy:
        content: "{{ r.stdout }} via {{ ansible_host }}"
        dest: "{{ out }}"
"""


@pytest.fixture
def agent(short_tmp: Path) -> Iterator[Path]:
    from tests.host.test_ansible import _start_agent, _stop

    a = _start_agent(short_tmp, "guest")
    yield short_tmp / "guest"
    _stop(a)


def test_a_listed_firecracker_vm_is_reached_through_its_hybrid_socket(
    fake_vmm: list[subprocess.Popen[str]], agent: Path, short_tmp: Path, tmp_path: Path
) -> None:
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
            "--agent",
            str(agent / "a.sock"),
            "--cp",
            str(agent / "cp.sock"),
        ],
    )
    config = {
        "plugin": "hvsock.vm.vms",
        "running_only": True,
        "compose": {"ansible_python_interpreter": "'" + sys.executable + "'"},
    }
    listing, _ = inventory_list(tmp_path, config)
    vars_ = listing["_meta"]["hostvars"][name]  # type: ignore[index]
    assert vars_["ansible_host"] == f"hybrid://{short_tmp}/v.sock:5100"
    assert name in hosts_of(listing, "hypervisor_firecracker")
    out = tmp_path / "reached.txt"
    (tmp_path / "site.yml").write_text(PLAYBOOK)
    done = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            str(tmp_path / "t.hvsock.yml"),
            "--limit",
            name,
            "-e",
            f"out={out}",
            str(tmp_path / "site.yml"),
        ],
        env={**ansible_env(tmp_path), "ANSIBLE_PIPELINING": "true"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The agent behind the hybrid socket ran the command; the file came through its cp
    # (port 5005 on the same socket, derived by the connection plugin).
    assert out.read_text() == f"guest via hybrid://{short_tmp}/v.sock:5100"
