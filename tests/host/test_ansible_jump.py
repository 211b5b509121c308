"""The ssh jump for real: an OpenSSH server on a loopback port (tests/sshd.py, its own
config and keys in a private directory), the connection plugin reaching an agent
through `ssh JUMP hvsock connect ADDRESS` with ControlPersist (one ssh login for every
task), and the inventory plugin running `hvsock vms --json` on the jump host.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import hvsock
import hvsock.windows
from tests.host.test_ansible import BIN, _start_agent, _stop, ansible_env
from tests.host.test_ansible_inventory import _plain, hosts_of
from tests.sshd import Sshd, sshd_missing
from tests.tiers import skip_or_fail

pytest.importorskip("ansible", reason="ansible-core is in the test extra: pip install -e '.[test]'")
pytestmark = pytest.mark.timeout(600)

HVSOCK = str(BIN / "hvsock")


@pytest.fixture(scope="module")
def sshd() -> Iterator[Sshd]:
    why = sshd_missing()
    if why is not None:
        skip_or_fail(f"no real sshd for the jump tests: {why}")
    with Sshd() as server:
        yield server


PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - command: printenv HVA_HOST
      register: r
    - copy:
        content: "{{ r.stdout }}"
        dest: "{{ base }}/jumped.txt"
    - command: cat {{ base }}/jumped.txt
      register: r2
    - copy:
        content: "{{ r2.stdout }} again"
        dest: "{{ base }}/jumped2.txt"
"""


def test_playbook_through_a_real_sshd_reuses_one_login(sshd: Sshd, short_tmp: Path) -> None:
    agent = _start_agent(short_tmp, "vm")
    try:
        # The "hvsock" on the jump host: the real one, behind a note of the ssh session
        # each connection came in on (sshd sets SSH_CONNECTION for its sessions only).
        wrapper = short_tmp / "remote-hvsock"
        log = short_tmp / "hops.log"
        wrapper.write_text(
            f'#!/bin/sh\necho "$SSH_CONNECTION $*" >> {log}\nexec {shlex.quote(HVSOCK)} "$@"\n'
        )
        wrapper.chmod(0o755)
        ssh = shlex.join(["ssh", "-T", *sshd.ssh_options(control=True)])
        inventory = {
            "all": {
                "vars": {
                    "ansible_connection": "hvsock.vm.hvsock",
                    "base": str(short_tmp),
                    "ansible_python_interpreter": "/usr/bin/python3",
                    "ansible_hvsock_jump": sshd.destination,
                    "ansible_hvsock_jump_ssh": ssh,
                    "ansible_hvsock_jump_hvsock": str(wrapper),
                },
                "hosts": {
                    "vm1": {
                        "ansible_host": f"unix://{agent.socket}",
                        "ansible_hvsock_cp_address": f"unix://{agent.cp_socket}",
                    }
                },
            }
        }
        (short_tmp / "inv.json").write_text(json.dumps(inventory))
        (short_tmp / "site.yml").write_text(PLAYBOOK)
        before = sshd.logins()
        done = subprocess.run(
            [
                str(BIN / "ansible-playbook"),
                "-i",
                str(short_tmp / "inv.json"),
                str(short_tmp / "site.yml"),
            ],
            env=ansible_env(short_tmp),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        assert (short_tmp / "jumped2.txt").read_text() == "vm again", out
        hops = log.read_text().splitlines()
        # Every exec and cp connection of the four tasks came in through sshd...
        assert len(hops) >= 6, hops
        assert all(
            h.startswith("127.0.0.1 ") and f" 127.0.0.1 {sshd.port} connect " in h for h in hops
        ), hops
        assert any(h.endswith(f"connect unix://{agent.cp_socket}") for h in hops), hops
        # ...over one ssh login, kept by ControlPersist across the tasks.
        assert sshd.logins() - before == 1, sshd.log.read_text()
    finally:
        sshd.stop_masters()
        _stop(agent)


def test_inventory_discovers_the_vms_of_the_jump_host(sshd: Sshd, tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "100").mkdir(parents=True)
    (proc / "100" / "cmdline").write_bytes(
        b"qemu-system-x86_64\0-name\0far\0-device\0vhost-vsock-pci,guest-cid=21\0"
    )
    ssh = shlex.join(["ssh", "-T", *sshd.ssh_options()])
    config = {
        "plugin": "hvsock.vm.vms",
        "hvsock_jump": sshd.destination,
        "hvsock_jump_ssh": ssh,
        "hvsock_jump_hvsock": HVSOCK,
        "proc": str(proc),
        "group": "kvm2",
        "prefix": "kvm2-",
    }
    (tmp_path / "kvm2.hvsock.yml").write_text(json.dumps(config))
    before = sshd.logins()
    done = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(tmp_path / "kvm2.hvsock.yml"), "--list"],
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    listing = _plain(json.loads(done.stdout))
    v = listing["_meta"]["hostvars"]["kvm2-far"]  # type: ignore[index]
    assert v["ansible_host"] == "vsock://21:5100"
    assert v["ansible_hvsock_jump"] == sshd.destination  # the connection goes there too
    assert v["ansible_hvsock_jump_ssh"] == ssh
    assert v["ansible_hvsock_jump_hvsock"] == HVSOCK
    assert v["hvsock_source"] == f"{proc}/100"
    assert hosts_of(listing, "kvm2") == {"kvm2-far"}  # type: ignore[arg-type]
    assert sshd.logins() - before == 1  # discovery ran over ssh


def test_inventory_of_a_hyperv_host_through_the_jump(sshd: Sshd, tmp_path: Path) -> None:
    """A Windows host's `hvsock vms --json` (what VmInfo.as_dict gives), printed by a
    stand-in for hvsock on the jump host."""
    vm_id = uuid.uuid4()
    report = {
        "vms": [
            hvsock.windows.VmInfo("Build VM", vm_id, "Running", "Get-VM").as_dict(),
            hvsock.windows.VmInfo("Old", uuid.uuid4(), "Off", "Get-VM").as_dict(),
        ],
        "problems": [],
    }
    fake = tmp_path / "windows-hvsock"
    fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{json.dumps(report)}\nEOF\n")
    fake.chmod(0o755)
    config = {
        "plugin": "hvsock.vm.vms",
        "hvsock_jump": sshd.destination,
        "hvsock_jump_ssh": shlex.join(["ssh", "-T", *sshd.ssh_options()]),
        "hvsock_jump_hvsock": str(fake),
    }
    (tmp_path / "hv.hvsock.yml").write_text(json.dumps(config))
    done = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(tmp_path / "hv.hvsock.yml"), "--list"],
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    listing = _plain(json.loads(done.stdout))
    hostvars = listing["_meta"]["hostvars"]  # type: ignore[index]
    assert hostvars["Build VM"]["ansible_host"] == f"hvsock://{vm_id}/5100"
    assert hostvars["Build VM"]["hvsock_vm_id"] == str(vm_id)
    assert hosts_of(listing, "hypervisor_hyperv") == {"Build VM", "Old"}  # type: ignore[arg-type]
    assert hosts_of(listing, "state_off") == {"Old"}  # type: ignore[arg-type]


def test_inventory_jump_without_hvsock_says_what_to_do(sshd: Sshd, tmp_path: Path) -> None:
    config = {
        "plugin": "hvsock.vm.vms",
        "hvsock_jump": sshd.destination,
        "hvsock_jump_ssh": shlex.join(["ssh", "-T", *sshd.ssh_options()]),
        "hvsock_jump_hvsock": "/nonexistent/hvsock",
    }
    (tmp_path / "x.hvsock.yml").write_text(json.dumps(config))
    done = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(tmp_path / "x.hvsock.yml"), "--list"],
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    said = " ".join((done.stdout + done.stderr).split())
    assert "`hvsock vms --json` on" in said, said
    assert "is hvsock installed there" in said, said
    assert "/nonexistent/hvsock" in said, said
