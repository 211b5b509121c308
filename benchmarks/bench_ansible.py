"""Ansible through hvsock.vm.hvsock, side by side with its baselines in one run.

- A playbook of 30 small ``command`` tasks on 4 hosts (forks 4, pipelining on, no
  facts, the linear strategy, the same environment): the hvsock connection plugin
  against 4 ``hvsock agent`` processes on Unix sockets (started with a service's
  environment, as systemd starts one) vs Ansible's ssh connection plugin with
  ControlPersist on, against a local sshd on loopback (tests/sshd.py: its own config
  and keys; its sessions' ``HOME`` a fresh Debian root's, not this machine's account's,
  whose ``.bashrc`` bash would source for every command). The 4 ssh hosts are all
  127.0.0.1 on one port; each gets its own control path, so its own master, as four
  real hosts would. Each side is run once untimed first with ``-vvv``, which checks that
  every task was pipelined (one remote command per task) and that ssh's ControlPersist
  is on; the masters are then up, as in steady use. Then ROUNDS rounds (``--rounds``,
  none started after ``--budget`` seconds), each one run per side back to back, the
  sides' order alternating (ABBA), so a load that drifts moves both sides of a round
  alike. The figure is the median of the rounds' own ratios, with their min and max;
  each round is a row too, with the load average. ``ssh -O check`` and sshd's log then
  show every master still up and no login during the rounds (else the bench fails: an
  ssh run that paid a login would be unfair to ssh). Target: hvsock <= 0.7x ssh.
- ``copy`` of a 100 MB file to one host through the plugin (the task's own duration,
  from Ansible's junit callback, and the playbook's wall time) vs a raw
  ``hvsock cp`` of the same file to the same agent's cp service. Targets: >= 0.5x raw
  ``hvsock cp``, and >= 10x the 350 KB/s that the QGA-based Proxmox ``qm`` connection
  plugin's author reports as its best ("File transfer is really slow! Only around
  90-350 KB/s", community.proxmox, its connection plugin proposal).
- The same ``copy`` task over Ansible's own ``local`` connection (no transport at all:
  ``put_file`` is a local file copy, modules are local subprocesses): the floor Ansible's
  own per-task work imposes, so a reader sees which part of the copy task is Ansible's and
  which is the plugin's.
- A breakdown of one copy task per connection, from an extra run with ``ANSIBLE_DEBUG``
  (Ansible's timestamped debug log; the plugin logs its ``put_file`` there too): the
  worker's start, each remote command (``mkdir`` of the remote temporary directory, the
  ``stat`` and ``copy`` module runs, ``chmod``, ``rm``), building each module's AnsiballZ
  payload, the controller's sha1 of the source and ``put_file``. Each phase is a row,
  the plugin's seconds vs the ``local`` connection's (``put_file`` alone vs raw
  ``hvsock cp``). Not the timed runs: the debug log costs time of its own.

``--only commands`` or ``--only copy`` runs one part; ``--json-out FILE`` also writes
the JSON report there (benchmarks/results/ansible-latest.json); ``--preload`` runs the
plugin's side by its short name from Ansible's ``connection_plugins`` path, loaded once
before the workers fork (docs/ansible.md, "Many small tasks"). The bytecode of hvsock
and of the collection is compiled first, as pip does when it installs the wheel (Ansible imports the
plugin afresh in every task's worker process).

Needs ansible-core (pip install -e '.[ansible]') and openssh-server for the ssh side.
Not run by CI.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import _report

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "src" / "ansible_collections" / "hvsock" / "vm" / "plugins" / "connection"
sys.path.insert(0, str(ROOT))
from tests.sshd import Sshd, sshd_missing  # noqa: E402

BIN = Path(sys.executable).parent
HOSTS = 4
TASKS = 30
RUNS = 3
#: Rounds of the command playbook (each: one run per side, back to back), and the
#: seconds after which no new round starts.
ROUNDS = 5
BUDGET = 1500.0
#: The ssh side's ControlPersist, seconds: longer than a whole bench.
PERSIST = 3600
BIG = 100 * 1000 * 1000
QM_BEST_KBS = 350.0


#: The agents' environment, as systemd gives a service (docs/agent.md's unit). A command
#: gets the agent's environment, and sshd gives the ssh side's a clean one: started with
#: the bench's, the agents passed on this machine's PYTHONUNBUFFERED=1, which makes the
#: Python of every pipelined module read its script from stdin one byte per read()
#: (150,000 reads for a 150 KB module, 18 ms more a task at idle).
SERVICE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


def service_signals() -> None:
    """In the agent's process before it starts: SIGINT, SIGQUIT and SIGHUP at their
    default, as systemd starts a service. A bench started in the background or under
    nohup ignores them, its agents would inherit that, and an agent that ignores one
    resets it in every command's child, which costs Python's fast vfork() start of the
    command (docs/agent.md): 2 ms more a command."""
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


@contextmanager
def agents(base: Path) -> Iterator[list[tuple[Path, Path]]]:
    procs, socks = [], []
    try:
        for i in range(HOSTS):
            home = base / f"a{i}"
            home.mkdir()
            sock, cp, ready = home / "a.sock", home / "cp.sock", home / "ready"
            (home / "agent.toml").write_text(
                f'[agent]\nlisten = "unix://{sock}"\n\n[exec]\nenabled = true\n\n'
                f'[cp]\nenabled = true\nroots = ["/"]\nlisten = "unix://{cp}"\n'
            )
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "hvsock",
                        "agent",
                        "--config",
                        str(home / "agent.toml"),
                        "--ready-file",
                        str(ready),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=SERVICE_ENV,
                    preexec_fn=service_signals,
                )
            )
            deadline = time.monotonic() + 60
            while not ready.exists():
                if procs[-1].poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"agent {i} did not start")
                time.sleep(0.05)
            socks.append((sock, cp))
        yield socks
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(30)


def env(base: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    home = base / "home"
    home.mkdir(exist_ok=True)
    return {
        # Not PYTHONUNBUFFERED (see SERVICE_ENV): the local connection's modules, the
        # copy rows' floor, would inherit it from ansible-playbook.
        **{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "ANSIBLE_CONFIG": str(base / "none.cfg"),
        "ANSIBLE_FORKS": str(HOSTS),
        "ANSIBLE_PIPELINING": "true",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "false",
        "ANSIBLE_LOCAL_TEMP": str(base / "ltmp"),
        "ANSIBLE_REMOTE_TMP": str(base / "rtmp"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **(extra or {}),
    }


def run_playbook(
    base: Path,
    inventory: dict[str, object],
    play: str,
    extra: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> tuple[float, str]:
    """One ansible-playbook run: its wall time and its output."""
    (base / "inv.json").write_text(json.dumps(inventory))
    (base / "play.yml").write_text(play)
    started = time.monotonic()
    done = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            *args,
            "-i",
            str(base / "inv.json"),
            str(base / "play.yml"),
        ],
        env=env(base, extra),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    seconds = time.monotonic() - started
    if done.returncode != 0 or re.search(r"failed=[1-9]|unreachable=[1-9]", done.stdout):
        raise SystemExit(f"playbook failed:\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout + done.stderr


def playbook(
    base: Path, inventory: dict[str, object], play: str, extra: dict[str, str] | None = None
) -> float:
    return run_playbook(base, inventory, play, extra)[0]


def hvsock_inventory(socks: list[tuple[Path, Path]], base: Path) -> dict[str, object]:
    return {
        "all": {
            "vars": {
                "ansible_connection": "hvsock.vm.hvsock",
                "base": str(base),
                "ansible_python_interpreter": "/usr/bin/python3",
            },
            "hosts": {
                f"h{i}": {"ansible_host": f"unix://{s}", "ansible_hvsock_cp_address": f"unix://{c}"}
                for i, (s, c) in enumerate(socks)
            },
        }
    }


def ssh_inventory(sshd: Sshd, base: Path) -> dict[str, object]:
    common = shlex.join(sshd.ssh_options())
    return {
        "all": {
            "vars": {
                "ansible_connection": "ssh",
                "ansible_host": "127.0.0.1",
                "base": str(base),
                "ansible_port": sshd.port,
                "ansible_user": sshd.user,
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_ssh_common_args": common,
                # Ansible's own ssh defaults (-C, ControlMaster auto), with ControlPersist
                # long enough to outlast the other side's turn between two ssh runs (at
                # 60 s, Ansible's default, a slow hvsock run let the masters expire and
                # the next ssh run paid four logins; in steady use they stay up).
                "ansible_ssh_args": f"-C -o ControlMaster=auto -o ControlPersist={PERSIST}s",
            },
            # A master per host, as for four real hosts. All four are 127.0.0.1 on one
            # port, so Ansible's default control path (a hash of host, port and user)
            # would make them share one master: one ssh process multiplexing every
            # fork's sessions, which no real inventory of four hosts has.
            "hosts": {
                f"s{i}": {"ansible_control_path": f"%(directory)s/s{i}"} for i in range(HOSTS)
            },
        }
    }


COMMANDS = "- hosts: all\n  gather_facts: false\n  tasks:\n" + "".join(
    f"    - command: echo task {i}\n" for i in range(TASKS)
)

COPY = """- hosts: all
  gather_facts: false
  tasks:
    - name: copy 100 MB
      copy:
        src: "{{ base }}/big.bin"
        dest: "{{ base }}/dest/big.bin"
"""

#: A debug log line: " PID EPOCH: message".
DEBUG_LINE = re.compile(r"^\s*\d+ (\d+\.\d+): (.*)$")
MODULE_PAYLOAD = re.compile(r"ANSIBALLZ: Lock acquired: .*/ansible\.modules\.(\w+)-")


def breakdown(log: str) -> dict[str, float]:
    """Seconds per phase of the one copy task in an ``ANSIBLE_DEBUG`` log.

    Each remote command is timed from Ansible's ``_low_level_execute_command(): starting``
    to its ``done``; each module payload from ``ANSIBALLZ: Acquiring lock`` to ``Done
    creating module``; ``put_file`` by the plugin's own debug lines; the controller's sha1
    of the source from the stat module's end to the next step (for ``local`` that step is
    its ``chmod``, so there it includes ``put_file``). The rest of the task, from the
    worker's ``in run()`` to ``_execute() done``, is Ansible's own work between them.
    """
    events = []
    for line in log.splitlines():
        m = DEBUG_LINE.match(line)
        if m:
            events.append((float(m.group(1)), m.group(2)))
    phases: dict[str, float] = {}
    started = ended = 0.0
    since: float | None = None  # an open interval: the exec, payload or put running
    label = module = ""
    after_stat: float | None = None

    def add(name: str, seconds: float) -> None:
        phases[name] = phases.get(name, 0.0) + seconds

    for t, msg in events:
        if msg.startswith("in run() - task"):
            started = t
        elif msg.startswith("_execute() done"):
            ended = t
        elif msg.startswith("_low_level_execute_command(): starting"):
            if after_stat is not None:
                add("controller sha1 of the source, then put_file", t - after_stat)
                after_stat = None
            since = t
        elif msg.startswith("_low_level_execute_command(): executing:"):
            command = msg.split("executing:", 1)[1]
            label = (
                f"exec: {module} module run (python3, pipelined)"
                if "python" in command
                else "exec: mkdir remote tmp"
                if "mkdir" in command
                else "exec: chmod"
                if "chmod" in command
                else "exec: rm remote tmp"
                if "rm -f -r" in command
                else "exec: other"
            )
        elif msg.startswith("_low_level_execute_command() done") and since is not None:
            add(label, t - since)
            since = None
        elif msg.startswith("ANSIBALLZ: Acquiring lock"):
            since = t
        elif m := MODULE_PAYLOAD.match(msg):
            module = m.group(1)
        elif msg.startswith("ANSIBALLZ: Done creating module") and since is not None:
            add(f"build {module} module payload (AnsiballZ)", t - since)
            since = None
        elif msg.startswith("done with _execute_module (ansible.legacy.stat"):
            after_stat = t
        elif msg.startswith("hvsock: put_file starting"):
            if after_stat is not None:
                add("controller sha1 of the source", t - after_stat)
                after_stat = None
            since = t
        elif msg.startswith("hvsock: put_file done") and since is not None:
            add("put_file", t - since)
            since = None
    if not (started and ended > started):
        raise SystemExit("the debug log has no whole task in it")
    if "put_file" in phases:
        phases["controller sha1 of the source, then put_file"] = (
            phases["controller sha1 of the source"] + phases["put_file"]
        )
    accounted = sum(
        v for k, v in phases.items() if k not in ("controller sha1 of the source", "put_file")
    )
    phases["Ansible's own work between the steps (worker start, plugin load, results)"] = (
        ended - started - accounted
    )
    phases["the whole task (in run() to _execute() done)"] = ended - started
    return phases


def local_inventory(base: Path) -> dict[str, object]:
    """One host over Ansible's local connection, with the same interpreter."""
    return {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "base": str(base),
                "ansible_python_interpreter": "/usr/bin/python3",
            },
            "hosts": {"l0": {}},
        }
    }


def copy_task_seconds(junit_dir: Path) -> float:
    times = []
    for path in junit_dir.glob("*.xml"):
        for case in ET.parse(path).getroot().iter("testcase"):
            if "copy 100 MB" in (case.get("name") or ""):
                times.append(float(case.get("time") or 0))
    if not times:
        raise SystemExit("no junit timing for the copy task")
    return min(times)


def make_big(path: Path) -> None:
    block = os.urandom(1 << 20)
    with path.open("wb") as f:
        for _ in range(BIG // len(block)):
            f.write(block)
        f.write(block[: BIG % len(block)])


def copy_task(base: Path, inventory: dict[str, object], run: str) -> tuple[float, float]:
    """One timed run of the copy playbook: (the task's own seconds, the playbook's)."""
    dest = base / "dest"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    junit = base / f"junit-{run}"
    wall = playbook(
        base,
        inventory,
        COPY,
        {"ANSIBLE_CALLBACKS_ENABLED": "junit", "JUNIT_OUTPUT_DIR": str(junit)},
    )
    return copy_task_seconds(junit), wall


def copy_debug_log(base: Path, inventory: dict[str, object]) -> str:
    """The ``ANSIBLE_DEBUG`` log of one copy playbook (for :func:`breakdown`)."""
    dest = base / "dest"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    (base / "inv.json").write_text(json.dumps(inventory))
    (base / "play.yml").write_text(COPY)
    done = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(base / "inv.json"), str(base / "play.yml")],
        env=env(base, {"ANSIBLE_DEBUG": "1"}),
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    return done.stdout + done.stderr


def raw_cp(base: Path, cp_socket: Path) -> float:
    dest = base / "dest"
    dest.mkdir(exist_ok=True)
    started = time.monotonic()
    subprocess.run(
        [
            str(BIN / "hvsock"),
            "cp",
            "--remote",
            f"unix://{cp_socket}",
            str(base / "big.bin"),
            f":{dest}/raw.bin",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    seconds = time.monotonic() - started
    (dest / "raw.bin").unlink()
    return seconds


def ssh_masters(sshd: Sshd, base: Path) -> list[bool]:
    """Whether each host's ControlPersist master is up (``ssh -O check``)."""
    up = []
    for i in range(HOSTS):
        done = subprocess.run(
            [
                "ssh",
                *sshd.ssh_options(),
                "-o",
                f"ControlPath={base / 'cp' / f's{i}'}",
                "-O",
                "check",
                sshd.destination,
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        up.append(done.returncode == 0)
    return up


def stop_ssh_masters(sshd: Sshd, base: Path) -> None:
    sshd.stop_masters((base / "cp").glob("s*"))


def ssh_home(base: Path) -> Path:
    """The ssh sessions' ``HOME``: a fresh Debian root's, whose ``.bashrc`` (base-files'
    stock one, all comments) bash sources for every command sshd starts. The account's
    own (here /root's: ``pyenv init``, 0.26 s a command) made the ssh side slower by a
    cost no guest has: runs before this fix measured ssh at 0.37 s a command, 0.02 s
    after."""
    home = base / "ssh-home"
    home.mkdir(exist_ok=True)
    stock = Path("/usr/share/base-files/dot.bashrc")
    if stock.exists():
        shutil.copyfile(stock, home / ".bashrc")
    return home


def round_order(index: int) -> tuple[str, str]:
    """ABBA...: which side runs first in round *index*, so neither side always has the
    other's aftermath (its page cache, a load that rises through a round) behind it."""
    return ("hvsock", "ssh") if index % 2 == 0 else ("ssh", "hvsock")


def summary(pairs: list[tuple[float, float]]) -> dict[str, float]:
    """The median, min and max of the rounds' own ratios (hvsock / ssh, each pair timed
    back to back): a load that drifts between rounds moves both sides of a pair alike."""
    if not pairs:
        raise ValueError("no rounds to sum up")
    ratios = sorted(ours / theirs for ours, theirs in pairs)
    return {
        "median": statistics.median(ratios),
        "min": ratios[0],
        "max": ratios[-1],
        "rounds": len(ratios),
    }


def check_verbose(out: str, side: str) -> None:
    """Both sides must pipeline every task (one remote command per task: no temporary
    directory, no module file put), and the ssh side must keep ControlPersist on: a -vvv
    run shows both."""
    runs = TASKS * HOSTS
    pipelined = out.count("Pipelining is enabled.")
    execs = out.count("SSH: EXEC " if side == "ssh" else "> EXEC [")
    if pipelined != runs or execs != runs:
        raise SystemExit(
            f"{side}: {pipelined} of {runs} task runs pipelined, {execs} remote commands"
            f" (one per task run expected):\n{out[-3000:]}"
        )
    if side == "ssh" and "ControlPersist=" not in out:
        raise SystemExit(f"ssh: ControlPersist is not on:\n{out[-3000:]}")


def preloaded(inv: dict[str, object]) -> tuple[dict[str, object], dict[str, str]]:
    """*inv* and the environment for the plugin by its short name from Ansible's
    ``connection_plugins`` path (docs/ansible.md, "Many small tasks"): ansible-playbook
    then loads it, and reads its options, once before it forks the task workers."""
    inv = json.loads(json.dumps(inv))
    inv["all"]["vars"]["ansible_connection"] = "hvsock"  # type: ignore[index]
    return inv, {"ANSIBLE_CONNECTION_PLUGINS": str(PLUGIN_DIR)}


def commands_rows(
    base: Path,
    inv: dict[str, object],
    rounds: int,
    budget: float,
    notes: dict[str, object],
    preload: bool = False,
) -> list[dict[str, object]]:
    why = sshd_missing()
    if why is not None:
        print(f"ssh side skipped: {why}", file=sys.stderr)
        return []
    with Sshd(base, login_home=ssh_home(base)) as sshd:
        sides = {
            "hvsock": preloaded(inv) if preload else (inv, {}),
            "ssh": (ssh_inventory(sshd, base), {"ANSIBLE_SSH_CONTROL_PATH_DIR": str(base / "cp")}),
        }
        try:
            # Untimed, -vvv: bytecode and Ansible's caches warm, the ssh masters up, and
            # the settings checked on both sides.
            for side, (inventory, extra) in sides.items():
                check_verbose(run_playbook(base, inventory, COMMANDS, extra, ("-vvv",))[1], side)
            if not all(ssh_masters(sshd, base)):
                raise SystemExit("ssh: a ControlPersist master is not up after the warm run")
            logins = sshd.logins()
            pairs: list[tuple[float, float]] = []
            per_round: list[dict[str, object]] = []
            started = time.monotonic()
            for i in range(rounds):
                if i >= 2 and time.monotonic() - started > budget:
                    break  # bounded: two rounds at least, then no new round past the budget
                load = os.getloadavg()[0]
                seconds = {}
                for side in round_order(i):
                    inventory, extra = sides[side]
                    seconds[side] = float(playbook(base, inventory, COMMANDS, extra))
                pairs.append((seconds["hvsock"], seconds["ssh"]))
                per_round.append(
                    {
                        "round": i + 1,
                        "first": round_order(i)[0],
                        "hvsock_s": round(seconds["hvsock"], 2),
                        "ssh_s": round(seconds["ssh"], 2),
                        "ratio": round(seconds["hvsock"] / seconds["ssh"], 3),
                        "load_start": round(load, 2),
                        "load_end": round(os.getloadavg()[0], 2),
                    }
                )
                print(f"round {per_round[-1]}", file=sys.stderr, flush=True)
            masters = ssh_masters(sshd, base)
            new_logins = sshd.logins() - logins
        finally:
            stop_ssh_masters(sshd, base)
    if new_logins or not all(masters):
        # A master that went away mid-bench made some ssh runs pay a login: unfair to ssh.
        raise SystemExit(f"ssh: {new_logins} logins during the timed rounds, masters up: {masters}")
    s = summary(pairs)
    notes["commands_rounds"] = per_round
    notes["commands_ratio"] = {k: round(v, 3) for k, v in s.items()}
    notes["commands_ssh_logins_during_rounds"] = new_logins
    figure = f"{TASKS} command tasks x {HOSTS} hosts, wall time"
    rows = [
        _report.row(
            f"  round {r['round']} ({r['first']} first, load {r['load_start']})",
            "s",
            ours,
            theirs,
            "ssh connection plugin, ControlPersist, local sshd",
        )
        for r, (ours, theirs) in zip(per_round, pairs, strict=True)
    ]
    median_row = _report.row(
        f"{figure}, median of {s['rounds']:.0f} rounds' ratios"
        f" (min {s['min']:.2f}, max {s['max']:.2f})",
        "s",
        statistics.median(p[0] for p in pairs),
        statistics.median(p[1] for p in pairs),
        "ssh connection plugin, ControlPersist, local sshd",
        "<= 0.7",
    )
    # The ratio that counts is the median of the rounds' own ratios, not the ratio of
    # the two sides' medians (which pairs runs from different rounds).
    median_row["ratio"] = round(s["median"], 3)
    return [median_row, *rows]


def copy_rows(base: Path, socks: list[tuple[Path, Path]]) -> list[dict[str, object]]:
    make_big(base / "big.bin")
    one = hvsock_inventory(socks[:1], base)
    local = local_inventory(base)
    task, wall, raw, floor = [], [], [], []
    # Interleaved, so a change in the machine's load falls on every side alike.
    for i in range(RUNS):
        seconds, whole = copy_task(base, one, f"h{i}")
        task.append(seconds)
        wall.append(whole)
        raw.append(raw_cp(base, socks[0][1]))
        floor.append(copy_task(base, local, f"l{i}")[0])
    ours_phases = breakdown(copy_debug_log(base, one))
    local_phases = breakdown(copy_debug_log(base, local))
    shutil.rmtree(base / "dest", ignore_errors=True)
    mb = BIG / 1e6
    rows = [
        _report.row(
            "copy 100 MB, the copy task vs raw hvsock cp",
            "MB/s",
            mb / min(task),
            mb / min(raw),
            "hvsock cp CLI, same file, same cp service",
            ">= 0.5",
        ),
        _report.row(
            "copy 100 MB, the copy task vs the same task over local",
            "MB/s",
            mb / min(task),
            mb / min(floor),
            "Ansible's local connection, same file (Ansible's own floor)",
            "",
        ),
        _report.row(
            "copy 100 MB, the copy task over local vs raw hvsock cp",
            "MB/s",
            mb / min(floor),
            mb / min(raw),
            "hvsock cp CLI (the best any connection plugin could do here)",
            "",
        ),
        _report.row(
            "copy 100 MB, whole ansible-playbook vs raw hvsock cp",
            "MB/s",
            mb / min(wall),
            mb / min(raw),
            "hvsock cp CLI (the playbook includes Ansible's start-up)",
            "",
        ),
        _report.row(
            "copy 100 MB, the copy task vs QGA (qm plugin)",
            "MB/s",
            mb / min(task),
            QM_BEST_KBS / 1000,
            "350 KB/s, the qm plugin author's best published figure",
            ">= 10",
        ),
    ]
    for phase, seconds in ours_phases.items():
        if phase == "put_file":
            rows.append(
                _report.row(
                    "  copy task phase: put_file alone",
                    "s",
                    seconds,
                    min(raw),
                    "raw hvsock cp CLI, best of the timed runs",
                )
            )
        elif phase in local_phases:
            rows.append(
                _report.row(
                    f"  copy task phase: {phase}",
                    "s",
                    seconds,
                    local_phases[phase],
                    "the same phase over the local connection",
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--only", choices=("commands", "copy"), help="run one part of the benchmark"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=ROUNDS,
        help=f"rounds of the command playbook, one run per side each (default {ROUNDS})",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=BUDGET,
        help=f"seconds after which no new round starts (two rounds at least; default {BUDGET:.0f})",
    )
    parser.add_argument(
        "--preload",
        action="store_true",
        help="the command playbook's plugin side by its short name from Ansible's "
        "connection_plugins path (loaded once, before the workers fork)",
    )
    parser.add_argument("--json-out", type=Path, help="also write the JSON report to this file")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (a median of one pair says little)")
    _report.write_bytecode_cache()
    # The collection's plugin is imported in every task's worker: compile it as pip's
    # wheel install would (an editable install, under PYTHONDONTWRITEBYTECODE, does not).
    if not compileall.compile_dir(str(ROOT / "src" / "ansible_collections"), quiet=1):
        raise SystemExit("could not write the collection's bytecode cache")
    rows: list[dict[str, object]] = []
    notes: dict[str, object] = {
        "load_start": [round(x, 2) for x in os.getloadavg()],
        "plugin": "preloaded (connection_plugins)" if args.preload else "hvsock.vm.hvsock",
    }
    with tempfile.TemporaryDirectory(prefix="hvba-", dir="/tmp") as tmp:
        base = Path(tmp)
        with agents(base) as socks:
            if args.only in (None, "commands"):
                rows += commands_rows(
                    base,
                    hvsock_inventory(socks, base),
                    args.rounds,
                    args.budget,
                    notes,
                    args.preload,
                )
            if args.only in (None, "copy"):
                rows += copy_rows(base, socks)
    notes["load_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {"machine": _report.machine(), **notes, "rows": rows}
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    _report.emit(rows, False)
    print(
        f"load average (1, 5, 15 min): {notes['load_start']} at the start, "
        f"{notes['load_end']} at the end"
    )


if __name__ == "__main__":
    main()
