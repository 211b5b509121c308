"""The hvsock.vm.hvsock connection plugin over AF_VSOCK (vsock_loopback, vsock://1:PORT) in
the test VM, loaded by ansible-core's plugin loader and driven as a task drives it,
against `hvsock agent` run as root with exec and cp: commands with input, a file put and
fetched over vsock, ansible_user (commands and files as that user), and become through
the real sudo with a password (a user made for this throw-away guest, whose sudoers
rule asks for it), right and wrong.

Not a whole ansible-playbook: in this emulated guest each module run starts a Python
that imports Ansible's module utilities, about a minute apiece on a busy machine; the
modules run through the same plugin calls in tests/host/test_ansible.py.

The guest's /etc is the host's, shared read-only: the agent runs in a mount namespace of
its own where copies of passwd, group, shadow and sudoers (with the user added) are
bound over the originals. Nothing outside that namespace sees them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    digest = subprocess.run(
        ["openssl", "passwd", "-6", PASSWORD],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
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
    # ansible-core's own files (its local temp dir, its config) where it may write: the
    # guest's /root is the host's, read-only.
    (base / "ctl").mkdir()
    env = pytest.MonkeyPatch()  # undone at the end: other tests keep their HOME
    for name, value in (
        ("ANSIBLE_LOCAL_TEMP", base / "ctl"),
        ("HOME", base / "ctl"),
        ("ANSIBLE_CONFIG", base / "ctl" / "none.cfg"),
    ):
        env.setenv(name, str(value))
    binds = _etc(base)
    port, cp_port = unused_port(), unused_port()
    (base / "agent.toml").write_text(
        f'[agent]\nlisten = "vsock://any:{port}"\nallow = [1]\n\n'
        "[exec]\nenabled = true\nallow = [1]\n\n"
        f'[cp]\nenabled = true\nroots = ["/"]\nlisten = "vsock://any:{cp_port}"\n'
        "allow = [1]\n"
    )
    ready = base / "ready.json"
    mounts = " && ".join(f"mount --bind {src} /etc/{name}" for name, src in binds.items())
    script = (
        f"exec 2>{base / 'agent.log'}; {mounts} && exec {sys.executable} -m hvsock "
        f"agent --config {base / 'agent.toml'} --ready-file {ready}"
    )
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: ready.exists() or proc.poll() is not None, "the agent's ready file", timeout=120
        )
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
        env.undo()


def _connection(guest: Guest, **options: object) -> Any:
    """The hvsock.vm.hvsock plugin as Ansible's task executor gets it: from the plugin
    loader (the collection found on sys.path), with the play's variables as options."""
    from ansible.playbook.play_context import PlayContext
    from ansible.plugins.loader import connection_loader, init_plugin_loader
    from ansible.utils.collection_loader import AnsibleCollectionConfig

    if AnsibleCollectionConfig.collection_finder is None:  # once per process
        init_plugin_loader()
    conn = connection_loader.get("hvsock.vm.hvsock", PlayContext(), None)
    assert conn is not None, "ansible-core did not find hvsock.vm.hvsock"
    conn.set_options(
        var_options={"ansible_host": guest.agent, "ansible_hvsock_cp_address": guest.cp, **options}
    )
    return conn


def _become(conn: Any, password: str) -> Any:
    from ansible.plugins.loader import become_loader

    become = become_loader.get("sudo")
    become.set_options(direct={"become_user": "root", "become_pass": password})
    conn.set_become_plugin(become)
    return become


def test_plugin_over_af_vsock_with_sudo_password_and_ansible_user(guest: Guest) -> None:
    """What ActionBase does for a task, command by command, over vsock://1:PORT: the
    module-less part of a playbook (a playbook's modules would each start Python in this
    emulated guest, minutes in all; tests/host/test_ansible.py runs those)."""
    base = guest.base
    started = time.monotonic()
    # As root (the agent's user): a command, a file put and fetched through cp.
    conn = _connection(guest)
    conn._connect()
    assert conn.exec_command("id -un; printf in= ; cat", in_data=b"piped")[:2] == (
        0,
        b"root\nin=piped",
    )
    payload = os.urandom(3 << 20)
    (base / "payload.bin").write_bytes(payload)
    conn.put_file(str(base / "payload.bin"), str(base / "copied.bin"))
    conn.fetch_file(str(base / "copied.bin"), str(base / "fetched.bin"))
    assert (base / "fetched.bin").read_bytes() == payload
    assert (base / "copied.bin").stat().st_uid == 0
    conn.close()

    # ansible_user: commands and files as that user, through exec.
    conn = _connection(guest, ansible_user=USER)
    conn._connect()
    rc, out, _ = conn.exec_command(f"id -un; cd; pwd; echo made > {base}/home/by-user.txt")
    assert (rc, out.split()) == (0, [USER.encode(), str(base / "home").encode()])
    assert (base / "home" / "by-user.txt").stat().st_uid == UID
    conn.put_file(str(base / "payload.bin"), str(base / "home" / "put.bin"))
    assert (base / "home" / "put.bin").read_bytes() == payload
    assert (base / "home" / "put.bin").stat().st_uid == UID
    from ansible.errors import AnsibleError

    with pytest.raises(AnsibleError, match="Permission denied"):
        conn.put_file(str(base / "payload.bin"), "/etc/not-theirs")
    with pytest.raises(AnsibleError, match="Permission denied"):
        conn.fetch_file("/etc/shadow", str(base / "shadow"))
    assert not (base / "shadow").exists()

    # The real sudo, asking USER's password: answered on the input, the input follows.
    become = _become(conn, PASSWORD)
    cmd = become.build_become_command("id -un; cat", conn._shell)
    rc, out, err = conn.exec_command(cmd, in_data=b"module input")
    assert rc == 0, (out, err)
    assert become.success.encode() in out  # what ActionBase strips
    assert out.split(b"\n", 1)[1] == b"root\nmodule input", (out, err)
    assert become.prompt.encode() not in err
    # A wrong password: sudo asks again; the plugin says so.
    become = _become(conn, "wrong")
    with pytest.raises(AnsibleError, match="incorrect sudo password"):
        conn.exec_command(become.build_become_command("true", conn._shell))
    conn.close()
    print(f"the plugin's part took {time.monotonic() - started:.1f} s")
