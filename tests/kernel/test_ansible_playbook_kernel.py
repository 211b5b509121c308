"""A real ``ansible-playbook`` (ansible-core from PyPI) through the hvsock.vm.hvsock
connection plugin over AF_VSOCK (vsock_loopback, ``vsock://1:PORT``) in the test VM,
against four ``hvsock agent`` processes, ``forks: 4``.

One run (the module fixture) of one playbook: every module the issue names on all four
hosts (``ping``, ``command``, ``shell``, ``copy`` of a 50 MiB file and of a tree,
``fetch``, ``template``, ``file``, ``stat``, ``lineinfile``, a ``become`` task, a failing
task), then a play that gathers facts (the ``setup`` module) through the plugin, then a
play whose task loses its connection (the agent killed under it). The tests read
Ansible's own report of it: the default callback with ``result_format: json`` and
``-v`` prints every host's result of every task as one JSON line, and the recap counts;
and they check the files on the "guest" side (here the same kernel, hashes compared).

Made affordable for this emulated guest (every module run starts a Python that
compiles Ansible's module utilities from the module's zip, seconds apiece): one
``ansible-playbook`` start for everything, pipelining on, no fact gathering but the
setup play's, interpreter discovery off, a two-file tree; see docs/testing.md for the
time it takes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.agent_thread import process_gone, wait_for

from ._support import target, unused_port

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(1800)]
pytest.importorskip("ansible", reason="ansible-core is in the test extra")

BIN = Path(sys.executable).parent
HOSTS = ("k0", "k1", "k2", "k3")
CUT = "k3"  # the host whose agent its own task kills
FACTS = "k0"  # the host whose facts the setup play gathers
FILE_HOSTS = ("k0", "k1")  # the hosts the file modules run on (k0: cp at its default)
#: The port the agent serves cp on when [cp] names no listen, and the plugin's default.
DEFAULT_CP_PORT = 5005
BIG = 50 * 1024 * 1024
#: How long the cut task's command would run if Ansible waited for it.
SLEEP = 3600
#: Bounds on a whole run: far above what it takes on a busy machine (docs/testing.md).
PLAYBOOK_TIMEOUT = 1500
AGENT_START_TIMEOUT = 300


@dataclass
class Agent:
    name: str
    proc: subprocess.Popen[bytes]
    address: str
    cp_address: str
    home: Path


@dataclass
class Result:
    """One host's result of one task, as Ansible's default callback printed it."""

    status: str  # ok, changed, failed, unreachable
    data: dict[str, Any]
    ignored: bool = False


@dataclass
class Run:
    base: Path
    agents: dict[str, Agent]
    done: subprocess.CompletedProcess[str]
    seconds: float
    ended: float  # time.time() when ansible-playbook exited
    tasks: dict[str, dict[str, Result]] = field(default_factory=dict)
    recap: dict[str, dict[str, int]] = field(default_factory=dict)

    def output(self) -> str:
        return (
            f"exit {self.done.returncode}\nstdout:\n{self.done.stdout}\nstderr:\n{self.done.stderr}"
        )

    def result(self, task: str, host: str) -> Result:
        assert task in self.tasks, f"no task {task!r} in Ansible's report\n{self.output()}"
        assert host in self.tasks[task], f"{task!r} reports no {host}\n{self.output()}"
        return self.tasks[task][host]


# ``TASK [name] ****`` opens each task; with ``-v`` and result_format json each host's
# result is one line: ``ok: [k0] => {...}`` (``ok: [k0]`` alone for gathered facts),
# ``changed: ...``, ``fatal: [k0]: FAILED! => {...}`` (then ``...ignoring`` when
# ignore_errors), ``fatal: [k3]: UNREACHABLE! => {...}``.
TASK_LINE = re.compile(r"^TASK \[(?P<task>.*)\] \**$")
RESULT_LINE = re.compile(
    r"^(?P<status>ok|changed|fatal|failed): \[(?P<host>[^\]]+)\]"
    r"(?:: (?P<fatal>FAILED|UNREACHABLE)!)?(?: => (?P<json>\{.*\}))?$"
)
RECAP_LINE = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)$")


def parse_report(stdout: str) -> tuple[dict[str, dict[str, Result]], dict[str, dict[str, int]]]:
    """Every host's result of every task, and the recap's counts, from the default
    callback's output (``-v``, ``ANSIBLE_CALLBACK_RESULT_FORMAT=json``, not pretty)."""
    tasks: dict[str, dict[str, Result]] = {}
    recap: dict[str, dict[str, int]] = {}
    task = None
    last: Result | None = None
    in_recap = False
    for line in stdout.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap, task = True, None
            continue
        if in_recap:
            m = RECAP_LINE.match(line.strip())
            if m:
                recap[m["host"]] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m["counts"])}
            continue
        m = TASK_LINE.match(line)
        if m:
            task = m["task"]
            assert task not in tasks, f"two tasks named {task!r}: name them apart"
            tasks[task] = {}
            continue
        if line.strip() == "...ignoring" and last is not None:
            last.ignored = True
            continue
        m = RESULT_LINE.match(line)
        if m and task is not None:
            status = {"FAILED": "failed", "UNREACHABLE": "unreachable"}.get(
                m["fatal"] or "", m["status"]
            )
            # No JSON: a result the callback keeps short (gathered facts).
            last = Result(status, json.loads(m["json"]) if m["json"] else {})
            tasks[task][m["host"]] = last
    return tasks, recap


def _agent_config(port: int, cp_port: int | None) -> str:
    # The peers here come from CID 1 (loopback), not the host's CID 2. cp with the root
    # "/": Ansible writes its temporary files and the destinations anywhere. Without a
    # [cp] listen, cp is served on the agent's family at port 5005.
    cp_listen = f'listen = "vsock://any:{cp_port}"\n' if cp_port is not None else ""
    return (
        f'[agent]\nlisten = "vsock://any:{port}"\nallow = [1]\n\n'
        "[exec]\nenabled = true\nallow = [1]\n\n"
        f'[cp]\nenabled = true\nroots = ["/"]\nallow = [1]\n{cp_listen}'
    )


def start_agents(base: Path) -> dict[str, Agent]:
    """Four ``hvsock agent`` processes on vsock ports of their own, started at once (a
    Python start is slow here) and each waited for through its ready file. The first
    serves cp at the default port, so its inventory entry leaves the cp address to the
    plugin's default."""
    agents: dict[str, Agent] = {}
    try:
        for i, name in enumerate(HOSTS):
            home = base / name
            home.mkdir()
            port = unused_port()
            cp_port = None if i == 0 else unused_port()
            (home / "agent.toml").write_text(_agent_config(port, cp_port))
            with (home / "agent.log").open("wb") as log:
                proc = subprocess.Popen(
                    [
                        *(sys.executable, "-m", "hvsock", "agent"),
                        *("--config", str(home / "agent.toml")),
                        *("--ready-file", str(home / "ready.json")),
                    ],
                    env={**os.environ, "HVA_HOST": name},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            agents[name] = Agent(name, proc, target(port), target(cp_port or DEFAULT_CP_PORT), home)
        for agent in agents.values():
            ready = agent.home / "ready.json"
            wait_for(
                lambda a=agent, r=ready: r.exists() or a.proc.poll() is not None,
                f"agent {agent.name}'s ready file",
                timeout=AGENT_START_TIMEOUT,
            )
            assert agent.proc.poll() is None, (agent.home / "agent.log").read_text()
        return agents
    except BaseException:
        for agent in agents.values():
            stop(agent)
        raise


def stop(agent: Agent) -> None:
    if agent.proc.poll() is None:
        agent.proc.send_signal(signal.SIGTERM)
        try:
            agent.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            agent.proc.kill()
            agent.proc.wait(timeout=60)


def ansible_env(base: Path) -> dict[str, str]:
    """ansible-core's settings for this guest: its files in the test's directory (the
    guest's /root is the host's, read-only), and none of its slow defaults."""
    (base / "home").mkdir(exist_ok=True)
    return {
        **os.environ,
        "LC_ALL": "C.UTF-8",  # ansible-core refuses to start without a UTF-8 locale
        "LANG": "C.UTF-8",
        "HOME": str(base / "home"),
        "ANSIBLE_CONFIG": str(base / "none.cfg"),  # none there: no stray config applies
        "ANSIBLE_LOCAL_TEMP": str(base / "local-tmp"),
        "ANSIBLE_REMOTE_TMP": str(base / "remote-tmp"),
        "ANSIBLE_FORKS": "4",
        "ANSIBLE_PIPELINING": "true",
        # Facts only where a play asks (the setup play); no interpreter discovery (one
        # more command per host): the inventory names /usr/bin/python3.
        "ANSIBLE_GATHERING": "explicit",
        "ANSIBLE_INVENTORY_ENABLED": "yaml",
        "ANSIBLE_RETRY_FILES_ENABLED": "false",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "false",
        # Ansible's own JSON report: every result on one line (parse_report).
        "ANSIBLE_STDOUT_CALLBACK": "default",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        "ANSIBLE_CALLBACK_FORMAT_PRETTY": "false",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def inventory(base: Path, agents: dict[str, Agent]) -> Path:
    hosts: dict[str, dict[str, Any]] = {}
    for i, (name, agent) in enumerate(agents.items()):
        hosts[name] = {"ansible_host": agent.address, "agent_pid": agent.proc.pid}
        if i:  # the first host's cp address is the plugin's default (port 5005)
            hosts[name]["ansible_hvsock_cp_address"] = agent.cp_address
    data = {
        "all": {
            "vars": {
                "ansible_connection": "hvsock.vm.hvsock",
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_hvsock_timeout": 60,
                "base": str(base),
            },
            "hosts": hosts,
        }
    }
    path = base / "inventory.json"  # JSON is YAML: the yaml inventory plugin reads it
    path.write_text(json.dumps(data))
    return path


# sudo as root needs no password, to any user; su to nobody would need nobody's shell
# (nologin), so su becomes root.
BECOME_METHOD = "sudo" if shutil.which("sudo") else "su"
BECOME_USER = "nobody" if BECOME_METHOD == "sudo" else "root"

PLAYBOOK = f"""
- name: modules
  hosts: all
  gather_facts: false
  tasks:
    - name: ping
      ping:
    - name: command
      command: printenv HVA_HOST
    - name: shell
      shell: echo "$HVA_HOST" | tr a-z A-Z; echo to-stderr >&2
    - name: copy big
      copy:
        src: "{{{{ base }}}}/big.bin"
        dest: "{{{{ base }}}}/{{{{ inventory_hostname }}}}/big.bin"
    - name: become
      command: id -un
      become: true
      become_method: {BECOME_METHOD}
      become_user: {BECOME_USER}
      vars:
        # the user's module temp dir where that user may write (the test's is root's)
        ansible_remote_tmp: /tmp
    - name: failing
      command: sh -c "echo failing; exit 3"
      ignore_errors: true

# The file modules on two hosts: one whose cp address is the plugin's default, one
# whose is set. Each module run starts a Python in this emulated guest.
- name: files
  hosts: {",".join(FILE_HOSTS)}
  gather_facts: false
  vars:
    dir: "{{{{ base }}}}/{{{{ inventory_hostname }}}}"
  tasks:
    - name: copy tree
      copy:
        src: "{{{{ base }}}}/tree/"
        dest: "{{{{ dir }}}}/tree/"
    - name: fetch
      fetch:
        src: "{{{{ dir }}}}/fetchme.txt"
        dest: "{{{{ base }}}}/fetched/{{{{ inventory_hostname }}}}.txt"
        flat: true
    - name: template
      template:
        src: "{{{{ base }}}}/page.j2"
        dest: "{{{{ dir }}}}/page.txt"
    - name: file
      file:
        path: "{{{{ dir }}}}/made/deeper"
        state: directory
        mode: "0750"
    - name: stat
      stat:
        path: "{{{{ dir }}}}/big.bin"
        checksum_algorithm: sha256
    - name: lineinfile
      lineinfile:
        path: "{{{{ dir }}}}/conf.txt"
        regexp: "^port="
        line: "port=5100"

- name: facts
  hosts: {FACTS}
  gather_facts: true
  tasks:
    - name: the facts gathered
      # the callback leaves facts out of the setup task's line; debug prints them
      debug:
        var: ansible_facts

- name: cut
  hosts: {CUT}
  gather_facts: false
  tasks:
    - name: cut the connection mid-command
      shell: >-
        echo $$ > {{{{ base }}}}/{CUT}/sleeper.pid;
        date +%s.%N > {{{{ base }}}}/{CUT}/cut.time;
        kill -9 {{{{ agent_pid }}}}; exec sleep {SLEEP}
    - name: never reached
      command: "true"
"""


def prepare(base: Path) -> None:
    with (base / "big.bin").open("wb") as f:  # varied bytes: a misplaced block shows
        block = hashlib.sha256(b"seed").digest() * 32768
        for i in range(BIG // len(block)):
            f.write(block[i % 7 :] + block[: i % 7])
    tree = base / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.bin").write_bytes(os.urandom(100_000))
    (base / "page.j2").write_text("host={{ inventory_hostname }} answer={{ 6 * 7 }}\n")
    for name in HOSTS:
        (base / name / "fetchme.txt").write_text(f"fetched from {name}\n")
        (base / name / "conf.txt").write_text("name=x\nport=22\n")
    (base / "site.yml").write_text(PLAYBOOK)


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    if os.geteuid() != 0:
        pytest.fail("the kernel tier runs as root in its VM", pytrace=False)
    base = Path(tempfile.mkdtemp(prefix="hvp-", dir="/tmp"))
    agents: dict[str, Agent] = {}
    try:
        started = time.monotonic()
        agents = start_agents(base)
        print(f"four agents ready in {time.monotonic() - started:.1f} s")
        prepare(base)
        started = time.monotonic()
        done = subprocess.run(
            [
                str(BIN / "ansible-playbook"),
                "-v",
                *("-i", str(inventory(base, agents))),
                str(base / "site.yml"),
            ],
            cwd=base,
            env=ansible_env(base),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PLAYBOOK_TIMEOUT,
            check=False,
        )
        result = Run(base, agents, done, time.monotonic() - started, time.time())
        print(f"ansible-playbook took {result.seconds:.1f} s")
        result.tasks, result.recap = parse_report(done.stdout)
        yield result
    finally:
        sleeper = base / CUT / "sleeper.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(sleeper.read_text()), signal.SIGKILL)
        for agent in agents.values():
            stop(agent)
        shutil.rmtree(base, ignore_errors=True)


def test_recap_four_hosts_forks_4(run: Run) -> None:
    assert set(run.recap) == set(HOSTS), run.output()
    for name in HOSTS:
        counts = run.recap[name]
        assert counts["failed"] == 0, run.output()
        assert counts["ignored"] == 1, run.output()  # the failing task
        assert counts["unreachable"] == (1 if name == CUT else 0), run.output()
    # ansible-playbook's exit status when a host was unreachable.
    assert run.done.returncode == 4, run.output()
    # Every host reports every task of the first play.
    for task in ("ping", "command", "shell", "copy big", "become", "failing"):
        assert set(run.tasks.get(task, {})) == set(HOSTS), (task, run.output())


def test_commands_reach_their_own_agent(run: Run) -> None:
    for name in HOSTS:
        assert run.result("ping", name).data["ping"] == "pong"
        command = run.result("command", name).data
        assert (command["rc"], command["stdout"]) == (0, name)
        shell = run.result("shell", name).data
        assert (shell["stdout"], shell["stderr"]) == (name.upper(), "to-stderr")


def test_copy_of_a_50_mib_file_and_a_tree(run: Run) -> None:
    data = (run.base / "big.bin").read_bytes()
    sha1, sha256 = hashlib.sha1(data).hexdigest(), hashlib.sha256(data).hexdigest()
    for name in HOSTS:
        copied = run.result("copy big", name)
        assert copied.status == "changed", copied
        assert copied.data["checksum"] == sha1  # the copy module's, of what it received
        assert copied.data["size"] == BIG
        assert hashlib.sha256((run.base / name / "big.bin").read_bytes()).hexdigest() == sha256
    for name in FILE_HOSTS:
        assert run.result("stat", name).data["stat"]["checksum"] == sha256
        assert run.result("copy tree", name).status == "changed"
        for rel in ("a.txt", "sub/b.bin"):
            assert (run.base / name / "tree" / rel).read_bytes() == (
                run.base / "tree" / rel
            ).read_bytes(), (name, rel)


def test_fetch_template_file_lineinfile(run: Run) -> None:
    assert set(run.tasks.get("lineinfile", {})) == set(FILE_HOSTS), run.output()
    for name in FILE_HOSTS:
        fetched = run.base / "fetched" / f"{name}.txt"
        assert fetched.read_text() == f"fetched from {name}\n"
        report = run.result("fetch", name).data
        assert report["checksum"] == hashlib.sha1(fetched.read_bytes()).hexdigest()
        rendered = f"host={name} answer=42\n"
        assert (run.base / name / "page.txt").read_text() == rendered
        assert (
            run.result("template", name).data["checksum"]
            == hashlib.sha1(rendered.encode()).hexdigest()
        )
        made = run.base / name / "made" / "deeper"
        assert made.is_dir()
        assert made.stat().st_mode & 0o777 == 0o750
        assert run.result("file", name).data["mode"] == "0750"
        assert (run.base / name / "conf.txt").read_text() == "name=x\nport=5100\n"
        assert run.result("lineinfile", name).status == "changed"


def test_become(run: Run) -> None:
    for name in HOSTS:
        become = run.result("become", name).data
        assert (become["rc"], become["stdout"]) == (0, BECOME_USER), become


def test_failing_task_is_reported_with_its_rc(run: Run) -> None:
    for name in HOSTS:
        failing = run.result("failing", name)
        assert (failing.status, failing.ignored) == ("failed", True), failing
        assert failing.data["rc"] == 3
        assert failing.data["stdout"] == "failing"
        assert failing.data["msg"] == "non-zero return code"


def test_setup_gathers_facts_through_the_plugin(run: Run) -> None:
    assert run.result("Gathering Facts", FACTS).status == "ok"
    gathered = run.result("the facts gathered", FACTS).data["ansible_facts"]
    assert gathered["system"] == "Linux"
    assert gathered["kernel"] == os.uname().release
    assert gathered["env"]["HVA_HOST"] == FACTS  # from its own agent
    assert gathered["python"]["executable"] == "/usr/bin/python3"
    assert gathered["user_id"] == "root"  # the agent's user


def test_cut_connection_is_unreachable_not_a_hang(run: Run) -> None:
    cut = run.result("cut the connection mid-command", CUT)
    assert cut.status == "unreachable", cut
    assert cut.data["unreachable"] is True
    assert "hvsock: running a command" in cut.data["msg"], cut
    assert "vsock://1:" in cut.data["msg"], cut
    # The play ended there: its next task never ran on the host.
    assert CUT not in run.tasks.get("never reached", {}), run.output()
    # Ansible gave up while the command still ran: it did not wait for the sleep...
    sleeper = int((run.base / CUT / "sleeper.pid").read_text())
    assert not process_gone(sleeper), "the command ended: Ansible may have waited for it"
    # ...and ended soon after the cut (a wide bound; what it took is in the output).
    after = run.ended - float((run.base / CUT / "cut.time").read_text())
    print(f"ansible-playbook ended {after:.1f} s after the cut")
    assert after < SLEEP / 4, after
    assert run.agents[CUT].proc.wait(timeout=60) == -signal.SIGKILL
