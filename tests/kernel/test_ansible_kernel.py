"""A real ansible-playbook over AF_VSOCK (vsock_loopback, vsock://1:PORT) in the test VM,
through the hvsock.vm.hvsock connection plugin, against `hvsock agent` run as root with
exec and cp: commands, a copy and a fetch over vsock, become through the real sudo with
a password (a user made for this throw-away guest, whose sudoers rule asks for it), and
ansible_user running tasks as that user.

The guest's /etc is the host's, shared read-only: the agent runs in a mount namespace of
its own where copies of passwd, group, shadow and sudoers (with the user added) are
bound over the originals. Nothing outside that namespace sees them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.agent_thread import wait_for

from ._support import target, unused_port

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(600)]
pytest.importorskip("ansible", reason="ansible-core is in the test extra")

BIN = Path(sys.executable).parent
USER, UID, PASSWORD = "hvans", 4321, "s3cret-pw"


@dataclass
class Guest:
    base: Path
    agent: str
    cp: str
    proc: subprocess.Popen[bytes]


def _etc(base: Path) -> dict[str, Path]:
    """Copies of /etc's account files with USER added, and a sudoers asking for its
    password (the binds' sources)."""
    etc = base / "etc"
    etc.mkdir()
    home = base / "home"
    home.mkdir()
    os.chown(home, UID, UID)
    digest = subprocess.run(["openssl", "passwd", "-6", PASSWORD], capture_output=True,
                            text=True, check=True, timeout=60).stdout.strip()
    files = {
        "passwd": Path("/etc/passwd").read_text()
        + f"{USER}:x:{UID}:{UID}:hvsock test:{home}:/bin/sh\n",
        "group": Path("/etc/group").read_text() + f"{USER}:x:{UID}:\n",
        "shadow": Path("/etc/shadow").read_text() + f"{USER}:{digest}:19000:0:99999:7:::\n",
        # No NOPASSWD: sudo must ask, and timestamp_timeout=0 makes it ask every time.
        "sudoers": "Defaults env_reset,timestamp_timeout=0\n"
                   "root ALL=(ALL:ALL) ALL\n"
                   f"{USER} ALL=(ALL:ALL) ALL\n",
    }
    paths = {}
    for name, text in files.items():
        path = etc / name
        path.write_text(text)
        path.chmod(0o440 if name == "sudoers" else 0o640 if name == "shadow" else 0o644)
        paths[name] = path
    return paths


@pytest.fixture(scope="module")
def guest() -> Iterator[Guest]:
    if os.geteuid() != 0:
        pytest.fail("the kernel tier runs as root in its VM", pytrace=False)
    for tool in ("unshare", "sudo", "openssl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing in the test VM", pytrace=False)
    base = Path(tempfile.mkdtemp(prefix="hvk-", dir="/tmp"))
    base.chmod(0o755)
    binds = _etc(base)
    port, cp_port = unused_port(), unused_port()
    (base / "agent.toml").write_text(
        f'[agent]\nlisten = "vsock://any:{port}"\nallow = [1]\n\n'
        "[exec]\nenabled = true\nallow = [1]\n\n"
        f'[cp]\nenabled = true\nroots = ["/"]\nlisten = "vsock://any:{cp_port}"\n'
        "allow = [1]\n")
    ready = base / "ready.json"
    mounts = " && ".join(f"mount --bind {src} /etc/{name}" for name, src in binds.items())
    script = (f"exec 2>{base / 'agent.log'}; {mounts} && exec {sys.executable} -m hvsock "
              f"agent --config {base / 'agent.toml'} --ready-file {ready}")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                             "/bin/sh", "-c", script], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None,
                 "the agent's ready file", timeout=120)
        assert proc.poll() is None, (base / "agent.log").read_text()
        yield Guest(base, target(port), target(cp_port), proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


PLAYBOOK = f"""
- hosts: all
  gather_facts: false
  tasks:
    - command: id -un
      register: r_root
    - copy:
        src: "{{{{ base }}}}/payload.bin"
        dest: "{{{{ base }}}}/copied.bin"
    - fetch:
        src: "{{{{ base }}}}/copied.bin"
        dest: "{{{{ base }}}}/fetched.bin"
        flat: true
    - name: ansible_user, then become root with its password through the real sudo
      command: id -un
      become: true
      become_method: sudo
      vars:
        ansible_user: {USER}
        ansible_become_password: {PASSWORD}
        ansible_remote_tmp: "{{{{ base }}}}/home/.ansible/tmp"
      register: r_sudo
    - name: ansible_user alone
      shell: id -un; echo made > {{{{ base }}}}/home/by-user.txt
      vars:
        ansible_user: {USER}
        ansible_remote_tmp: "{{{{ base }}}}/home/.ansible/tmp"
      register: r_user
    - name: a wrong sudo password
      command: "true"
      become: true
      vars:
        ansible_user: {USER}
        ansible_become_password: wrong
        ansible_remote_tmp: "{{{{ base }}}}/home/.ansible/tmp"
      ignore_errors: true
    - copy:
        content: "{{{{ {{'root': r_root.stdout, 'sudo': r_sudo.stdout,
                      'user': r_user.stdout}} | to_json }}}}"
        dest: "{{{{ base }}}}/results.json"
"""


def test_playbook_over_af_vsock_with_sudo_password_and_ansible_user(guest: Guest) -> None:
    base = guest.base
    payload = os.urandom(5 << 20)
    (base / "payload.bin").write_bytes(payload)
    inventory = {"all": {"vars": {"ansible_connection": "hvsock.vm.hvsock",
                                  "ansible_python_interpreter": sys.executable,
                                  "base": str(base)},
                         "hosts": {"vm": {"ansible_host": guest.agent,
                                          "ansible_hvsock_cp_address": guest.cp}}}}
    (base / "inventory.json").write_text(json.dumps(inventory))
    (base / "site.yml").write_text(PLAYBOOK)
    home = base / "ctl"
    home.mkdir()
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "HOME": str(home),
           "ANSIBLE_CONFIG": str(home / "none.cfg"), "ANSIBLE_PIPELINING": "true",
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
           "ANSIBLE_REMOTE_TMP": str(base / "remote-tmp"),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(base / "inventory.json"),
                           str(base / "site.yml")], env=env, capture_output=True, text=True,
                          timeout=500, check=False)
    out = done.stdout + done.stderr + "\nagent log:\n" + (base / "agent.log").read_text()
    recap = re.search(r"vm\s+:\s+ok=(\d+).*failed=(\d+).*ignored=(\d+)", done.stdout)
    assert recap is not None, out
    assert (recap.group(2), recap.group(3)) == ("0", "1"), out
    results = json.loads((base / "results.json").read_text())
    assert results["root"] == "root", out  # the agent's user
    assert results["sudo"] == "root", out  # sudo took the password and ran as root
    assert results["user"] == USER, out  # ansible_user: the agent ran it as the user
    assert (base / "home" / "by-user.txt").stat().st_uid == UID
    assert (base / "copied.bin").read_bytes() == payload  # cp over AF_VSOCK
    assert (base / "fetched.bin").read_bytes() == payload
    assert "incorrect sudo password" in done.stdout, out
