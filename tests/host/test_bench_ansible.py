"""benchmarks/bench_ansible.py's command playbook comparison is fair and sums up honestly:
the sides take turns (ABBA), the figure is the median of each round's own ratio, both
sides pipeline every task (one remote command each), the ssh side keeps a ControlPersist
master per host through the rounds (no login after the warm run), and its sessions do not
source this machine's account's ~/.bashrc. Real ansible-playbook runs, real agents, a
real sshd (tests/sshd.py); a small playbook (2 tasks x 2 hosts), never a speed check.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.sshd import Sshd, sshd_missing
from tests.tiers import skip_or_fail

pytest.importorskip("ansible", reason="ansible-core is in the test extra: pip install -e '.[test]'")

pytestmark = pytest.mark.timeout(900)

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCHMARKS))  # the bench imports its sibling _report
    try:
        module = importlib.import_module("bench_ansible")
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture
def small(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The bench at 2 command tasks on 2 hosts."""
    monkeypatch.setattr(bench, "TASKS", 2)
    monkeypatch.setattr(bench, "HOSTS", 2)
    monkeypatch.setattr(
        bench,
        "COMMANDS",
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        + "".join(f"    - command: echo task {i}\n" for i in range(2)),
    )
    return bench


def _need_sshd() -> None:
    why = sshd_missing()
    if why is not None:
        skip_or_fail(f"no real sshd for the bench's ssh side: {why}")


def test_rounds_take_turns_abba(bench: ModuleType) -> None:
    orders = [bench.round_order(i) for i in range(4)]
    assert orders == [
        ("hvsock", "ssh"),
        ("ssh", "hvsock"),
        ("hvsock", "ssh"),
        ("ssh", "hvsock"),
    ]


def test_the_figure_is_the_median_of_each_rounds_own_ratio(bench: ModuleType) -> None:
    # Load rose through the rounds: each pair is 0.5x, though the medians of the two
    # sides (from different rounds) would give 10 / 40 = 0.25x.
    pairs = [(5.0, 10.0), (10.0, 20.0), (40.0, 80.0), (15.0, 30.0), (12.0, 40.0)]
    s = bench.summary(pairs)
    assert s["median"] == pytest.approx(0.5)
    assert s["min"] == pytest.approx(0.3)
    assert s["max"] == pytest.approx(0.5)
    assert s["rounds"] == 5
    with pytest.raises(ValueError, match="no rounds"):
        bench.summary([])


def test_commands_rounds_are_paired_and_ssh_keeps_one_master_per_host(
    small: ModuleType, short_tmp: Path
) -> None:
    _need_sshd()
    notes: dict[str, object] = {}
    with small.agents(short_tmp) as socks:
        rows = small.commands_rows(
            short_tmp, small.hvsock_inventory(socks, short_tmp), 2, 3600.0, notes
        )
    rounds = notes["commands_rounds"]
    assert isinstance(rounds, list)
    assert [(r["round"], r["first"]) for r in rounds] == [(1, "hvsock"), (2, "ssh")]
    for r in rounds:
        assert r["ratio"] == pytest.approx(r["hvsock_s"] / r["ssh_s"], rel=0.02)
    # The masters were up through the rounds: no ssh run paid a login.
    assert notes["commands_ssh_logins_during_rounds"] == 0
    ratios = sorted(r["ratio"] for r in rounds)
    assert notes["commands_ratio"]["median"] == pytest.approx(sum(ratios) / 2, abs=0.002)
    assert rows[0]["ratio"] == notes["commands_ratio"]["median"]
    assert len(rows) == 3  # the median, then one row per round


def test_the_ssh_side_has_a_master_per_host(small: ModuleType, short_tmp: Path) -> None:
    """Four inventory hosts that are all 127.0.0.1 would share one master under
    Ansible's default control path; each gets its own, as four real hosts would."""
    _need_sshd()
    with Sshd(short_tmp, login_home=small.ssh_home(short_tmp)) as sshd:
        try:
            extra = {"ANSIBLE_SSH_CONTROL_PATH_DIR": str(short_tmp / "cp")}
            small.playbook(short_tmp, small.ssh_inventory(sshd, short_tmp), small.COMMANDS, extra)
            assert sorted(p.name for p in (short_tmp / "cp").iterdir()) == ["s0", "s1"]
            assert small.ssh_masters(sshd, short_tmp) == [True, True]
            assert sshd.logins() == 2
        finally:
            small.stop_ssh_masters(sshd, short_tmp)
        assert small.ssh_masters(sshd, short_tmp) == [False, False]


def test_a_side_that_does_not_pipeline_is_refused(small: ModuleType, short_tmp: Path) -> None:
    with small.agents(short_tmp) as socks:
        inventory = small.hvsock_inventory(socks, short_tmp)
        _, out = small.run_playbook(short_tmp, inventory, small.COMMANDS, None, ("-vvv",))
        small.check_verbose(out, "hvsock")  # pipelined: one remote command per task run
        _, out = small.run_playbook(
            short_tmp, inventory, small.COMMANDS, {"ANSIBLE_PIPELINING": "false"}, ("-vvv",)
        )
    with pytest.raises(SystemExit, match=r"hvsock: 0 of 4 task runs pipelined"):
        small.check_verbose(out, "hvsock")


def test_ssh_sessions_use_the_login_home_not_the_accounts(tmp_path: Path) -> None:
    """sshd's sessions get the HOME given (and bash, which sources ~/.bashrc for a
    command sshd starts, sources that one), not the account's."""
    _need_sshd()
    home = tmp_path / "home"
    home.mkdir()
    marker = tmp_path / "sourced"
    (home / ".bashrc").write_text(f"echo sourced > {marker}\n")
    with Sshd(tmp_path, login_home=home) as sshd:
        done = subprocess.run(
            ["ssh", *sshd.ssh_options(), sshd.destination, 'echo "$HOME"; echo "$0"'],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    said_home, shell = done.stdout.splitlines()
    assert said_home == str(home)
    if Path(shell).name == "bash" and shutil.which("bash"):
        assert marker.read_text() == "sourced\n"


def test_the_agents_give_commands_a_services_environment(
    bench: ModuleType, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command gets its agent's environment; the bench's agents start with a service's,
    not the bench's (this machine's PYTHONUNBUFFERED=1 made every pipelined module read
    its script byte by byte, where sshd's sessions have a clean environment)."""
    import hvsock

    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    monkeypatch.setattr(bench, "HOSTS", 1)
    with bench.agents(short_tmp) as socks:
        result = hvsock.exec(f"unix://{socks[0][0]}", ["env"], timeout=60)
    seen = dict(line.split("=", 1) for line in result.stdout.decode().splitlines())
    assert "PYTHONUNBUFFERED" not in seen
    assert seen["PATH"] == bench.SERVICE_ENV["PATH"]


def _ignored(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigIgn for {pid}")


def test_the_agents_start_with_a_services_signals(bench: ModuleType, short_tmp: Path) -> None:
    """A bench run in the background (or under nohup) ignores SIGINT, SIGQUIT and
    SIGHUP; its agents start with them at their default, as systemd starts one."""
    import signal

    made_ignored = [signal.SIGQUIT, signal.SIGHUP]
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in made_ignored}
    try:
        assert _ignored(os.getpid()) & (1 << (signal.SIGHUP - 1))  # the set-up took
        with bench.agents(short_tmp) as socks:
            assert socks
            pids = [
                int(p)
                for p in os.listdir("/proc")
                if p.isdigit()
                and str(short_tmp).encode() in _cmdline(int(p))
                and b"agent" in _cmdline(int(p))
            ]
            assert len(pids) == bench.HOSTS
            for pid in pids:
                for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
                    assert not _ignored(pid) & (1 << (sig - 1)), (pid, sig)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
