"""A real ansible-playbook (ansible-core from PyPI) through the hvsock.vm.hvsock connection
plugin, against four `hvsock agent` processes serving exec and cp over Unix sockets.

One playbook run (module fixture) covers the modules; each test asserts on one part of
what it did, on the "remote" side (files, hashes) and in Ansible's own report.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.host._peers import wait_for

pytest.importorskip("ansible", reason="ansible-core is in the test extra: pip install -e '.[test]'")

# ansible start-up is slow on a busy machine: the whole playbook runs inside one test's
# budget (the first test to ask for the fixture).
pytestmark = pytest.mark.timeout(900)

HOSTS = ["h0", "h1", "h2", "h3"]
CUT = "h3"  # the host whose agent a task kills
BIG = 50 * 1024 * 1024
BIN = Path(sys.executable).parent


@dataclass
class Agent:
    name: str
    proc: subprocess.Popen[bytes]
    socket: Path
    cp_socket: Path


@dataclass
class Run:
    base: Path
    agents: dict[str, Agent]
    playbook: subprocess.CompletedProcess[str]
    seconds: float
    results: dict[str, dict[str, object]]
    started: float = 0.0  # wall clock, for "made by this run"


def _start_agent(base: Path, name: str) -> Agent:
    home = base / name
    home.mkdir()
    sock, cp_sock, ready = home / "a.sock", home / "cp.sock", home / "ready.json"
    config = home / "agent.toml"
    # cp with the root "/": Ansible writes its temporary files and destinations anywhere.
    config.write_text(
        f'[agent]\nlisten = "unix://{sock}"\n\n[exec]\nenabled = true\n\n'
        f'[cp]\nenabled = true\nroots = ["/"]\nlisten = "unix://{cp_sock}"\n'
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hvsock",
            "agent",
            "--config",
            str(config),
            "--ready-file",
            str(ready),
        ],
        env={**os.environ, "HVA_HOST": name},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(
        lambda: ready.exists() or proc.poll() is not None,
        timeout=60,
        what=f"agent {name}'s ready file",
    )
    assert proc.poll() is None, f"agent {name} exited with {proc.returncode}"
    return Agent(name, proc, sock, cp_sock)


#: What ansible-core needs of the locale, whatever the suite runs with.
UTF8_LOCALE = {"LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}


def ansible_env(base: Path) -> dict[str, str]:
    """The environment of every ansible-* process the tests start (here and in the
    inventory and jump tests): its own home, temp dirs and no stray config."""
    home = base / "home"
    home.mkdir(exist_ok=True)
    return {
        **os.environ,
        # ansible-core refuses to start without a UTF-8 locale (the busy pass runs the
        # suite with LC_ALL=C): give its processes the one every glibc has.
        **UTF8_LOCALE,
        "HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(base / "local-tmp"),
        "ANSIBLE_REMOTE_TMP": str(base / "remote-tmp"),
        "ANSIBLE_FORKS": "4",
        "ANSIBLE_PIPELINING": "true",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "false",
        "ANSIBLE_CONFIG": str(base / "ansible.cfg"),  # none there: no stray config applies
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _inventory(base: Path, agents: dict[str, Agent]) -> Path:
    hosts = {
        name: {
            "ansible_host": f"unix://{a.socket}",
            "ansible_hvsock_cp_address": f"unix://{a.cp_socket}",
            "agent_pid": a.proc.pid,
        }
        for name, a in agents.items()
    }
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "hvsock.vm.hvsock",
                "ansible_python_interpreter": "/usr/bin/python3",
                "base": str(base),
            },
            "hosts": hosts,
        }
    }
    path = base / "inventory.json"  # JSON is YAML: the yaml inventory plugin reads it
    path.write_text(json.dumps(inventory))
    return path


BECOME_METHOD = "sudo" if shutil.which("sudo") else "su"
# sudo as root needs no password, to any user; su to an unprivileged user would need the
# user's shell (nobody's is nologin), so su becomes root.
BECOME_USER = "nobody" if BECOME_METHOD == "sudo" else "root"

PLAYBOOK = f"""
- hosts: all
  gather_facts: false
  vars:
    dir: "{{{{ base }}}}/{{{{ inventory_hostname }}}}"
  tasks:
    - ping:
      register: r_ping
    - name: ping with pipelining off (the module goes through put_file)
      ping:
      vars:
        ansible_pipelining: false
      register: r_ping_put
    - command: printenv HVA_HOST
      register: r_command
    - shell: echo "$HVA_HOST" | tr a-z A-Z; echo to-stderr >&2
      register: r_shell
    - copy:
        src: "{{{{ base }}}}/big.bin"
        dest: "{{{{ dir }}}}/big.bin"
    - copy:
        src: "{{{{ base }}}}/tree/"
        dest: "{{{{ dir }}}}/tree/"
    - fetch:
        src: "{{{{ dir }}}}/fetchme.txt"
        dest: "{{{{ base }}}}/fetched/{{{{ inventory_hostname }}}}.txt"
        flat: true
    - template:
        src: "{{{{ base }}}}/page.j2"
        dest: "{{{{ dir }}}}/page.txt"
    - file:
        path: "{{{{ dir }}}}/made/deeper"
        state: directory
        mode: "0750"
    - stat:
        path: "{{{{ dir }}}}/big.bin"
        checksum_algorithm: sha256
      register: r_stat
    - lineinfile:
        path: "{{{{ dir }}}}/conf.txt"
        regexp: "^port="
        line: "port=5100"
    - command: id -un
      become: true
      become_method: {BECOME_METHOD}
      become_user: {BECOME_USER}
      register: r_become
    - command: sh -c "echo failing; exit 3"
      register: r_fail
      ignore_errors: true
    - copy:
        content: "{{{{ {{'ping': r_ping, 'ping_put': r_ping_put, 'command': r_command,
                      'shell': r_shell, 'stat': r_stat, 'become': r_become,
                      'fail': r_fail}} | to_json }}}}"
        dest: "{{{{ dir }}}}/results.json"

- hosts: {CUT}
  gather_facts: false
  tasks:
    - name: cut the connection mid-command
      shell: echo $$ > {{{{ base }}}}/{CUT}/sleeper.pid; kill -9 {{{{ agent_pid }}}}; exec sleep 600
    - name: never reached
      command: "true"
"""


def _prepare(base: Path) -> None:
    big = base / "big.bin"
    with big.open("wb") as f:  # varied bytes, so a misplaced block changes the hash
        block = hashlib.sha256(b"seed").digest() * 32768
        for i in range(BIG // len(block)):
            f.write(block[i % 7 :] + block[: i % 7])
    tree = base / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.bin").write_bytes(os.urandom(100_000))
    (tree / "sub" / "deeper" / "c.txt").write_text("gamma " * 1000)
    (base / "page.j2").write_text("host={{ inventory_hostname }} answer={{ 6 * 7 }}\n")
    for name in HOSTS:
        (base / name / "fetchme.txt").write_text(f"fetched from {name}\n")
        (base / name / "conf.txt").write_text("name=x\nport=22\n")


def _stop(agent: Agent) -> None:
    if agent.proc.poll() is None:
        agent.proc.send_signal(signal.SIGTERM)
        try:
            agent.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.proc.kill()
            agent.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    base = Path(tempfile.mkdtemp(prefix="hva-", dir="/tmp"))  # short: socket paths
    wall = time.time()
    agents: dict[str, Agent] = {}
    try:
        for name in HOSTS:
            agents[name] = _start_agent(base, name)
        _prepare(base)
        inventory = _inventory(base, agents)
        (base / "site.yml").write_text(PLAYBOOK)
        started = time.monotonic()
        done = subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", str(inventory), str(base / "site.yml")],
            cwd=base,
            env=ansible_env(base),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        seconds = time.monotonic() - started
        results = {}
        for name in HOSTS:
            path = base / name / "results.json"
            if path.exists():
                results[name] = json.loads(path.read_text())
        yield Run(base, agents, done, seconds, results, wall - 1)
    finally:
        sleeper = base / CUT / "sleeper.pid"
        if sleeper.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(sleeper.read_text()), signal.SIGKILL)
        for agent in agents.values():
            _stop(agent)
        shutil.rmtree(base, ignore_errors=True)


def _recap(run: Run) -> dict[str, dict[str, int]]:
    recap = {}
    for line in run.playbook.stdout.split("PLAY RECAP")[-1].splitlines():
        m = re.match(r"(\S+)\s+:\s+(.*)", line.strip())
        if m:
            recap[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return recap


def _output(run: Run) -> str:
    return f"stdout:\n{run.playbook.stdout}\nstderr:\n{run.playbook.stderr}"


def test_playbook_recap_and_timing(run: Run) -> None:
    print(f"ansible-playbook took {run.seconds:.1f} s")  # the figure to report (-s)
    recap = _recap(run)
    assert set(recap) == set(HOSTS), _output(run)
    for name in HOSTS:
        if name != CUT:
            assert recap[name]["unreachable"] == 0, _output(run)
            assert recap[name]["failed"] == 0, _output(run)
        assert recap[name]["ignored"] == 1, _output(run)  # the failing task
    # Ansible's exit status for "some host unreachable".
    assert run.playbook.returncode == 4, _output(run)


def test_commands_reach_their_own_agent(run: Run) -> None:
    for name in HOSTS:
        r = run.results[name]
        assert r["ping"]["ping"] == "pong"  # type: ignore[index]
        assert r["ping_put"]["ping"] == "pong"  # type: ignore[index]
        assert r["command"]["stdout"] == name  # type: ignore[index]
        assert r["command"]["rc"] == 0  # type: ignore[index]
        assert r["shell"]["stdout"] == name.upper()  # type: ignore[index]
        assert r["shell"]["stderr"] == "to-stderr"  # type: ignore[index]


def test_copy_of_a_large_file_and_a_tree(run: Run) -> None:
    want = hashlib.sha256((run.base / "big.bin").read_bytes()).hexdigest()
    for name in HOSTS:
        assert hashlib.sha256((run.base / name / "big.bin").read_bytes()).hexdigest() == want
        assert run.results[name]["stat"]["stat"]["checksum"] == want  # type: ignore[index]
        for rel in ("a.txt", "sub/b.bin", "sub/deeper/c.txt"):
            assert (run.base / name / "tree" / rel).read_bytes() == (
                run.base / "tree" / rel
            ).read_bytes(), rel


def test_fetch_template_file_lineinfile(run: Run) -> None:
    for name in HOSTS:
        assert (run.base / "fetched" / f"{name}.txt").read_text() == f"fetched from {name}\n"
        assert (run.base / name / "page.txt").read_text() == f"host={name} answer=42\n"
        made = run.base / name / "made" / "deeper"
        assert made.is_dir()
        assert made.stat().st_mode & 0o777 == 0o750
        assert (run.base / name / "conf.txt").read_text() == "name=x\nport=5100\n"


def test_become(run: Run) -> None:
    for name in HOSTS:
        r = run.results[name]["become"]
        assert r["stdout"] == BECOME_USER, r  # type: ignore[index]


def test_failing_task_is_reported_with_its_rc(run: Run) -> None:
    for name in HOSTS:
        r = run.results[name]["fail"]
        assert r["failed"] is True  # type: ignore[index]
        assert r["rc"] == 3  # type: ignore[index]
        assert r["stdout"] == "failing"  # type: ignore[index]
    assert "non-zero return code" in run.playbook.stdout, _output(run)


def test_cut_connection_is_unreachable_not_a_hang(run: Run) -> None:
    assert _recap(run)[CUT]["unreachable"] == 1, _output(run)
    assert re.search(
        rf"fatal: \[{CUT}\]: UNREACHABLE!.*hvsock: running a command", run.playbook.stdout
    ), _output(run)
    assert "never reached" not in run.playbook.stdout.split("cut the connection")[-1]
    # Ansible gave up while the command still ran: it did not wait for the sleep.
    pid = int((run.base / CUT / "sleeper.pid").read_text())
    os.kill(pid, 0)
    assert run.agents[CUT].proc.wait(timeout=30) == -signal.SIGKILL


def test_ansible_setup_gathers_facts(run: Run) -> None:
    alive = [n for n in HOSTS if n != CUT]
    started = time.monotonic()
    done = subprocess.run(
        [
            str(BIN / "ansible"),
            "-i",
            str(run.base / "inventory.json"),
            ",".join(alive),
            "-m",
            "setup",
            "-o",
        ],
        cwd=run.base,
        env=ansible_env(run.base),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    print(f"ansible -m setup on {len(alive)} hosts took {time.monotonic() - started:.1f} s")
    assert done.returncode == 0, done.stdout + done.stderr
    facts = {}
    for line in done.stdout.splitlines():
        m = re.match(r"(\S+) \| SUCCESS => (\{.*\})$", line)
        if m:
            facts[m.group(1)] = json.loads(m.group(2))["ansible_facts"]
    assert set(facts) == set(alive), done.stdout
    for name, f in facts.items():
        assert f["ansible_system"] == "Linux"
        assert f["ansible_hostname"] == os.uname().nodename.split(".")[0]
        assert f["ansible_env"]["HVA_HOST"] == name
        assert f["ansible_python"]["executable"] == "/usr/bin/python3"


FAKE_SSH = """#!/bin/sh
# ssh's calling convention without a network: options, the destination, then one command
# string that "the remote shell" runs (here, this machine's sh).
while [ $# -gt 0 ]; do
  case "$1" in -[bcDEeFIiJLlmOoPpRSWw]) shift 2 ;; -*) shift ;; *) break ;; esac
done
echo "$1" >> "$FAKE_SSH_LOG"
shift
# The jump host's view: /jumphost there is $JUMP_ROOT here, so an address under it is
# reachable only through the jump.
exec /bin/sh -c "$(printf '%s' "$*" | sed "s#/jumphost/#$JUMP_ROOT/#g")"
"""

# sudo's side of `sudo -S -p PROMPT -u USER CMD...` without privileges: the prompt on
# stderr, the password read from stdin a byte at a time (as sudo does; sh's read does
# too), three tries; the rest of stdin is left to the command.
FAKE_SUDO = """#!/bin/sh
prompt=""; user=root
while [ $# -gt 0 ]; do
  case "$1" in -p) prompt=$2; shift 2 ;; -u) user=$2; shift 2 ;; -*) shift ;; *) break ;; esac
done
if [ -n "$prompt" ]; then
  tries=0
  while :; do
    printf '%s' "$prompt" >&2
    IFS= read -r pw || { echo "sudo: no password was provided" >&2; exit 1; }
    [ "$pw" = "letmein" ] && break
    echo "Sorry, try again." >&2
    tries=$((tries + 1)); [ $tries -lt 3 ] || exit 1
  done
fi
FAKE_SUDO_USER=$user exec "$@"
"""

REFUSING_SSH = """#!/bin/sh
echo "admin@kvm-host-2: Permission denied (publickey)." >&2
exit 255
"""

EDGE_PLAYBOOK = """
- hosts: jump
  gather_facts: false
  tasks:
    - command: printenv HVA_HOST
      register: r_jump
    - copy:
        content: "through the jump {{ r_jump.stdout }}"
        dest: "{{ base }}/h0/jumped.txt"

- hosts: edges
  gather_facts: false
  vars:
    ansible_become_exe: "{{ base }}/fake-sudo"
    ansible_become_method: sudo
  tasks:
    - name: become with a password (answered, then the module follows on stdin)
      command: printenv FAKE_SUDO_USER
      become: true
      become_user: alice
      vars:
        ansible_become_password: letmein
      register: r_sudo_pw
    - name: become with a wrong password
      command: "true"
      become: true
      vars:
        ansible_become_password: wrong
      ignore_errors: true
    - name: su with a password
      command: "true"
      become: true
      vars:
        ansible_become_method: su
        ansible_become_exe: su
        ansible_become_password: secret
      ignore_errors: true
    - copy:
        content: "{{ r_sudo_pw.stdout }}"
        dest: "{{ base }}/h2/sudo-pw.txt"
    - name: fetch through a symlink
      fetch:
        src: "{{ base }}/h2/link/fetchme.txt"
        dest: "{{ base }}/fetched-link.txt"
        flat: true
      ignore_errors: true

# Last: a play whose every host is unreachable ends the playbook.
- hosts: refused
  gather_facts: false
  tasks:
    - command: "true"
"""


def test_jump_refused_ssh_and_refusals(run: Run) -> None:
    base = run.base
    for name, text in (
        ("fake-ssh", FAKE_SSH),
        ("refusing-ssh", REFUSING_SSH),
        ("fake-sudo", FAKE_SUDO),
    ):
        (base / name).write_text(text)
        (base / name).chmod(0o755)
    (base / "h2" / "link").symlink_to(base / "h2")
    agent = {
        name: {
            "ansible_host": f"unix://{run.agents[name].socket}",
            "ansible_hvsock_cp_address": f"unix://{run.agents[name].cp_socket}",
        }
        for name in ("h0", "h1", "h2")
    }
    hvsock_cmd = str(BIN / "hvsock") if (BIN / "hvsock").exists() else "hvsock"
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "hvsock.vm.hvsock",
                "ansible_python_interpreter": "/usr/bin/python3",
                "base": str(base),
            },
            "children": {
                "jump": {
                    "hosts": {
                        "j0": {
                            "ansible_host": "unix:///jumphost/h0/a.sock",
                            "ansible_hvsock_cp_address": "unix:///jumphost/h0/cp.sock",
                            "ansible_hvsock_jump": "admin@kvm-host-2",
                            "ansible_hvsock_jump_ssh": f"{base / 'fake-ssh'} -T",
                            "ansible_hvsock_jump_hvsock": hvsock_cmd,
                        }
                    }
                },
                "refused": {
                    "hosts": {
                        "j1": {
                            **agent["h1"],
                            "ansible_hvsock_jump": "admin@h",
                            "ansible_hvsock_jump_ssh": str(base / "refusing-ssh"),
                        }
                    }
                },
                "edges": {"hosts": {"e2": agent["h2"]}},
            },
        }
    }
    (base / "edges.json").write_text(json.dumps(inventory))
    (base / "edges.yml").write_text(EDGE_PLAYBOOK)
    done = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(base / "edges.json"), str(base / "edges.yml")],
        cwd=base,
        env={**ansible_env(base), "FAKE_SSH_LOG": str(base / "ssh.log"), "JUMP_ROOT": str(base)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = done.stdout + done.stderr
    recap = _recap(Run(base, run.agents, done, 0, {}))
    # Through the jump: the command reached h0's agent, the file went through cp, each
    # connection (exec and cp alike) through the ssh destination (the addresses exist
    # only on the "jump host").
    jumped = base / "h0" / "jumped.txt"
    assert jumped.exists(), out
    assert jumped.read_text() == "through the jump h0", out
    assert recap["j0"]["failed"] == recap["j0"]["unreachable"] == 0, out
    hops = (base / "ssh.log").read_text().split()
    assert len(hops) >= 3, hops  # ping-free play: command, copy's stat/module, cp put
    assert set(hops) == {"admin@kvm-host-2"}
    # ssh refused: unreachable, with ssh's own words.
    assert recap["j1"]["unreachable"] == 1, out
    assert "Permission denied (publickey)" in done.stdout, out
    # sudo's password prompt answered on stdin, the module's input after it.
    assert recap["e2"]["unreachable"] == 0, out
    assert (base / "h2" / "sudo-pw.txt").read_text() == "alice", out
    assert "incorrect sudo password (asked again after it was given)" in done.stdout, out
    # su reads a password from a terminal, which the agent does not give: a clear failure.
    assert "become_method su with a password needs a terminal" in done.stdout, out
    # cp never follows a symlink in a remote path: the fetch fails, nothing is written.
    assert recap["e2"]["ignored"] == 3, out  # wrong password, su, the symlink
    assert not (base / "fetched-link.txt").exists()
    # The bridge's private directories went with their connections.
    assert not [
        p
        for p in Path("/tmp").glob("hvj-*")
        if p.stat().st_uid == os.getuid() and p.stat().st_mtime >= run.started
    ], "a jump bridge directory was left"


USER_PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - command: id -un
      register: r_id
    - name: put as the user (a file of theirs), then read back
      copy:
        src: "{{ base }}/tree/sub/b.bin"
        dest: "{{ shared }}/b.bin"
    - name: fetch as the user
      fetch:
        src: "{{ shared }}/b.bin"
        dest: "{{ base }}/fetched-as-user.bin"
        flat: true
    - name: a directory the user may not write
      copy:
        content: "x"
        dest: "{{ base }}/h1/not-theirs.txt"
      ignore_errors: true
    - name: a file the user may not read
      fetch:
        src: "{{ base }}/h1/secret.txt"
        dest: "{{ base }}/fetched-secret.txt"
        flat: true
      ignore_errors: true
    - copy:
        content: "{{ r_id.stdout }}"
        dest: "{{ shared }}/id.txt"
"""


def test_ansible_user_runs_tasks_and_moves_files_as_that_user(run: Run) -> None:
    """ansible_user: the agent (root) runs commands as that user and files move through
    exec as that user, so the guest's permissions for that user apply both ways."""
    if os.geteuid() != 0:
        pytest.skip("the agent switches users only when it runs as root")
    base = run.base
    import pwd

    nobody = pwd.getpwnam("nobody")
    base.chmod(0o711)  # nobody may pass through to its own directory, nothing more
    shared = base / "nobody"
    shared.mkdir()
    shared.chmod(0o777)
    (base / "h1" / "secret.txt").write_text("root only\n")
    (base / "h1" / "secret.txt").chmod(0o600)
    agent = run.agents["h1"]
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "hvsock.vm.hvsock",
                "ansible_python_interpreter": "/usr/bin/python3",
                "base": str(base),
                "shared": str(shared),
                "ansible_user": "nobody",
                "ansible_remote_tmp": str(shared / "tmp"),
            },
            "hosts": {
                "u1": {
                    "ansible_host": f"unix://{agent.socket}",
                    "ansible_hvsock_cp_address": f"unix://{agent.cp_socket}",
                }
            },
        }
    }
    (base / "user.json").write_text(json.dumps(inventory))
    (base / "user.yml").write_text(USER_PLAYBOOK)
    done = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(base / "user.json"), str(base / "user.yml")],
        cwd=base,
        env=ansible_env(base),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = done.stdout + done.stderr
    recap = _recap(Run(base, run.agents, done, 0, {}))
    assert recap["u1"]["failed"] == 0, out
    assert recap["u1"]["ignored"] == 2, out
    assert (shared / "id.txt").read_text() == "nobody", out
    put = shared / "b.bin"
    assert put.read_bytes() == (base / "tree" / "sub" / "b.bin").read_bytes()
    assert put.stat().st_uid == nobody.pw_uid  # theirs, not the agent's (root)
    assert (base / "fetched-as-user.bin").read_bytes() == put.read_bytes()
    assert not (base / "h1" / "not-theirs.txt").exists()
    assert "Permission denied" in done.stdout, out
    assert not (base / "fetched-secret.txt").exists()


# The plugin from ansible-core's loader in a Python of its own (this test process may
# have imported ansible_collections as a plain package, which the loader cannot take).
AS_TASK = """
import json, sys
from ansible.errors import AnsibleError
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import connection_loader, init_plugin_loader
init_plugin_loader()
address, src, closed, got = sys.argv[1:]
conn = connection_loader.get("hvsock.vm.hvsock", PlayContext(), None)
conn.set_options(var_options={"ansible_host": address, "ansible_user": "nobody"})
conn._connect()
said = {}
for name, call in (("put", lambda: conn.put_file(src, closed + "/x")),
                   ("fetch", lambda: conn.fetch_file(closed + "/secret", got))):
    try:
        call()
        said[name] = "done"
    except AnsibleError as e:
        said[name] = str(e)
conn.close()
print(json.dumps(said))
"""


def test_plugin_put_and_fetch_as_a_user_fail_where_that_user_may_not(
    run: Run, tmp_path: Path
) -> None:
    """The plugin as a task drives it, with ansible_user: a put into a directory that
    user may not write and a fetch of a file they may not read fail with the guest's
    own words, and leave nothing behind."""
    if os.geteuid() != 0:
        pytest.skip("the agent switches users only when it runs as root")
    agent = run.agents["h2"]
    (tmp_path / "src").write_bytes(b"data")
    run.base.chmod(0o711)  # nobody may pass through (h2 is 0755)...
    closed = run.base / "h2" / "closed"
    closed.mkdir(mode=0o755)  # ...but not write in root's directory
    (closed / "secret").write_bytes(b"root only")
    (closed / "secret").chmod(0o600)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            AS_TASK,
            f"unix://{agent.socket}",
            str(tmp_path / "src"),
            str(closed),
            str(tmp_path / "got"),
        ],
        env=ansible_env(run.base),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout.splitlines()[-1])
    for name in ("put", "fetch"):
        assert re.search(r"as nobody failed: .*Permission denied", said[name]), said
    assert not (closed / "x").exists()
    assert not (tmp_path / "got").exists()  # no partial file left


# A task's worker, as far as the plugin sees it: a fresh process in which the loader
# imports the plugin, then the task's commands and files through one connection object.
WORKER = """
import json, sys
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import connection_loader, init_plugin_loader
init_plugin_loader()
address, cp, src, remote, back = sys.argv[1:]
conn = connection_loader.get("hvsock.vm.hvsock", PlayContext(), None)
conn.set_options(var_options={"ansible_host": address, "ansible_hvsock_cp_address": cp})
before = set(sys.modules)
conn._connect()
rc, out, err = conn.exec_command("cat; echo to-err >&2", in_data=b"piped")
conn.put_file(src, remote)
conn.fetch_file(remote, back)
conn.close()
print(json.dumps({"exec": [rc, out.decode(), err.decode()],
                  "loaded": sorted(set(sys.modules) - before),
                  "asyncio_before": "asyncio" in before}))
"""


def test_a_tasks_worker_loads_no_asyncio_and_logs_put_and_fetch_in_the_debug_log(
    short_tmp: Path,
) -> None:
    """Ansible imports the plugin in a new worker process for every task, so what the
    plugin's calls import is paid per task: no asyncio, no service framework. With
    ANSIBLE_DEBUG, put_file and fetch_file log their start and end, timestamped, in
    Ansible's debug log (how benchmarks/bench_ansible.py times the transfer apart from
    Ansible's own steps)."""
    agent = _start_agent(short_tmp, "w0")
    try:
        payload = os.urandom(3 << 20)
        (short_tmp / "src.bin").write_bytes(payload)
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                WORKER,
                f"unix://{agent.socket}",
                f"unix://{agent.cp_socket}",
                str(short_tmp / "src.bin"),
                str(short_tmp / "w0" / "put.bin"),
                str(short_tmp / "back.bin"),
            ],
            env={**ansible_env(short_tmp), "ANSIBLE_DEBUG": "1"},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        _stop(agent)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    report = json.loads(lines[-1])
    assert report["exec"] == [0, "piped", "to-err\n"]
    assert (short_tmp / "back.bin").read_bytes() == payload
    if not report["asyncio_before"]:
        heavy = [
            m
            for m in report["loaded"]
            if m.split(".")[0] == "asyncio" or m.startswith(("hvsock._service", "concurrent."))
        ]
        assert heavy == [], "a task's worker imports them for nothing"
    logged = [
        (float(m.group(1)), m.group(2))
        for m in (re.match(r"\s*\d+ (\d+\.\d+): hvsock: (\w+ \w+)", line) for line in lines)
        if m
    ]
    assert [what for _, what in logged] == [
        "put_file starting",
        "put_file done",
        "fetch_file starting",
        "fetch_file done",
    ], done.stdout
    times = [t for t, _ in logged]
    assert times == sorted(times)


CUT_WORKER = """
import os, sys
from ansible.errors import AnsibleConnectionFailure
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import connection_loader, init_plugin_loader
init_plugin_loader()
conn = connection_loader.get("hvsock.vm.hvsock", PlayContext(), None)
conn.set_options(var_options={"ansible_host": sys.argv[1]})
conn._connect()
try:
    conn.exec_command("/usr/bin/python3", in_data=os.urandom(8 << 20))
except AnsibleConnectionFailure as e:
    print("unreachable:", e)
except Exception as e:
    print("other:", type(e).__name__, e)
"""


def test_a_connection_cut_while_the_module_is_sent_is_unreachable(short_tmp: Path) -> None:
    """The agent goes away while a pipelined module (the command's input) is still being
    sent: AnsibleConnectionFailure, which Ansible reports as UNREACHABLE, not a task
    failure with a BrokenPipeError's traceback."""
    from tests.host.test_exec import _cutting_agent

    done = threading.Event()

    def cut(conn: socket.socket) -> None:
        conn.shutdown(socket.SHUT_RD)  # the plugin's sends fail from here
        done.wait(2)  # its reading side sees the end later (or when it gave up)

    server = _cutting_agent(short_tmp / "cut.sock", cut)
    try:
        ran = subprocess.run(
            [sys.executable, "-c", CUT_WORKER, f"unix://{short_tmp / 'cut.sock'}"],
            env=ansible_env(short_tmp),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        done.set()
        server.join(60)
    said = ran.stdout.strip().splitlines()[-1:] or [ran.stderr]
    assert said[0].startswith("unreachable: hvsock: running a command through the agent"), said
    assert "closed the connection before the command's exit" in said[0]


PLUGIN_DIR = (
    Path(__file__).resolve().parents[2]
    / "src"
    / "ansible_collections"
    / "hvsock"
    / "vm"
    / "plugins"
    / "connection"
)

PRELOAD_PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - command: printenv HVA_HOST
      register: r
    - command: echo second
    - copy:
        content: "{{ r.stdout }} through the preloaded plugin"
        dest: "{{ base }}/preloaded.txt"
"""


def _preload_run(base: Path, agent: Agent, connection: str, extra: dict[str, str]) -> str:
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": connection,
                "ansible_python_interpreter": "/usr/bin/python3",
                "base": str(base),
            },
            "hosts": {
                "p0": {
                    "ansible_host": f"unix://{agent.socket}",
                    "ansible_hvsock_cp_address": f"unix://{agent.cp_socket}",
                }
            },
        }
    }
    (base / "inv.json").write_text(json.dumps(inventory))
    (base / "site.yml").write_text(PRELOAD_PLAYBOOK)
    (base / "preloaded.txt").unlink(missing_ok=True)
    done = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(base / "inv.json"), str(base / "site.yml")],
        env={**ansible_env(base), **extra, "ANSIBLE_DEBUG": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert (base / "preloaded.txt").read_text() == "p0 through the preloaded plugin"
    assert len(re.findall(r"in run\(\) - task", out)) == 3, out[-4000:]
    return out


def test_the_plugin_from_connection_plugins_is_loaded_once_not_per_task(
    short_tmp: Path,
) -> None:
    """docs/ansible.md, "Many small tasks": with the plugin's directory in Ansible's
    connection_plugins path and ``ansible_connection: hvsock``, ansible-playbook loads
    the plugin (and reads its options) once, before it forks the task workers, which
    find it loaded; by its collection name every task's worker loads it again. Commands
    and the cp service (its option from the inventory) work the same either way."""
    agent = _start_agent(short_tmp, "p0")
    try:
        preloaded = _preload_run(
            short_tmp, agent, "hvsock", {"ANSIBLE_CONNECTION_PLUGINS": str(PLUGIN_DIR)}
        )
        by_collection = _preload_run(short_tmp, agent, "hvsock.vm.hvsock", {})
    finally:
        _stop(agent)
    # Ansible logs each reading of a plugin's options; the workers' loads of a plugin
    # the parent loaded say found_in_cache=True and read nothing.
    read = r"Loaded config def from plugin \(connection/(\S*hvsock)\)"
    assert re.findall(read, preloaded) == ["hvsock"]  # once, for three tasks
    assert len(re.findall(r"Loading Connection 'hvsock' .*found_in_cache=True", preloaded)) >= 3
    assert (
        re.findall(read, by_collection)
        == ["ansible_collections.hvsock.vm.plugins.connection.hvsock"] * 3
    )  # once per task
