"""Remote exec through a real agent over Unix and TCP sockets, with real programs and PTYs."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pty
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

import hvsock
from hvsock._builtin.agent.config import default_config
from hvsock._builtin.exec.client import ExecSession, make_start
from hvsock._core import exec_proto as ep
from hvsock._core.addresses import parse_address
from tests.agent_thread import AgentThread, process_gone, wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["unix", "tcp"])
def agent(request: pytest.FixtureRequest, short_tmp: Path) -> Iterator[AgentThread]:
    config = default_config(["exec", "info", "health", "time"])
    config.listen = parse_address(
        f"unix://{short_tmp}/agent.sock" if request.param == "unix" else "tcp://127.0.0.1:0"
    )
    if request.param == "tcp":
        # Exec on TCP is refused unless its allow rules are given (any local user can
        # connect to 127.0.0.1): the explicit opt-in.
        config.services["exec"].allow = ["127.0.0.1"]
    with AgentThread(config) as running:
        yield running


@pytest.fixture
def unix_agent(short_tmp: Path) -> Iterator[AgentThread]:
    config = default_config(["exec"])
    config.listen = parse_address(f"unix://{short_tmp}/agent.sock")
    with AgentThread(config) as running:
        yield running


def test_output_streams_exit_code(agent: AgentThread) -> None:
    result = hvsock.exec(agent.address(), ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    assert result.signal is None
    assert result.pid is not None
    with pytest.raises(subprocess.CalledProcessError):
        result.check_returncode()


def test_cat_carries_4_mib_both_ways(agent: AgentThread) -> None:
    data = os.urandom(4 << 20)
    result = hvsock.exec(agent.address(), ["cat"], input=data)
    assert result.returncode == 0
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()


def test_input_may_be_any_bytes_like_object(agent: AgentThread) -> None:
    data = os.urandom(600_000)
    for given in (bytearray(data), memoryview(data), memoryview(data).cast("I")):
        result = hvsock.exec(agent.address(), ["cat"], input=given)
        assert result.stdout == data


def test_big_stdout_and_stderr_at_once_both_arrive_whole(agent: AgentThread) -> None:
    # More than a grown pipe holds on each output, written at the same time.
    script = "head -c 3000000 /dev/urandom | tee /dev/stderr"
    result = hvsock.exec(agent.address(), ["sh", "-c", script])
    assert result.returncode == 0
    assert len(result.stdout) == 3000000
    assert result.stderr == result.stdout


def test_input_the_command_stops_reading_does_not_hang(agent: AgentThread) -> None:
    result = hvsock.exec(agent.address(), ["head", "-c", "10"], input=os.urandom(8 << 20))
    assert (result.returncode, len(result.stdout)) == (0, 10)


def test_exit_is_never_lost_while_the_client_still_sends_stdin(agent: AgentThread) -> None:
    # The agent ends the session with unread stdin in the socket: a plain close would
    # make the kernel reset the connection and drop EXIT on its way (it did in about one
    # session in five). 30 sessions make a lost EXIT all but certain to show.
    data = bytes(4 << 20)
    for _ in range(30):
        result = hvsock.exec(agent.address(), ["true"], input=data)
        assert (result.returncode, result.stdout) == (0, b"")


def test_output_arrives_while_the_command_runs(agent: AgentThread) -> None:
    start = make_start(["sh", "-c", "echo first; read line; echo got $line"])
    with ExecSession.open(agent.address(), start) as session:
        session.sock.settimeout(30)
        seen: list[ep.Event] = []
        while not any(isinstance(e, ep.Output) for e in seen):
            seen += session.feed(session.sock.recv(65536))
        # The command is blocked on stdin: "first" came before it could end.
        assert ep.Output(1, b"first\n") in seen
        session.send(ep.Stdin(b"go\n"))
        session.send(ep.StdinEof())
        while not any(isinstance(e, ep.Exit) for e in seen):
            seen += session.feed(session.sock.recv(65536))
    assert ep.Output(1, b"got go\n") in seen
    assert seen[-1] == ep.Exit(code=0)


def test_signal_exit_is_negative_returncode_and_128_plus_n(agent: AgentThread) -> None:
    result = hvsock.exec(agent.address(), ["sh", "-c", "kill -TERM $$"])
    assert (result.returncode, result.signal, result.exit_status) == (-15, 15, 143)


def test_timeout_kills_the_whole_group_even_ignoring_sigterm(
    unix_agent: AgentThread, tmp_path: Path
) -> None:
    pidfile = tmp_path / "child"
    script = f"trap '' TERM; sleep 1000 & echo $! > {pidfile}; while :; do sleep 0.05; done"
    begun = time.monotonic()
    result = hvsock.exec(unix_agent.address(), ["sh", "-c", script], timeout=0.5)
    assert result.timed_out
    assert result.signal == signal.SIGKILL  # SIGTERM was ignored; SIGKILL after the grace
    assert time.monotonic() - begun < 20
    child = int(pidfile.read_text())
    wait_for(lambda: process_gone(child), "the background child to be killed")


def test_vanished_client_gets_its_group_killed(unix_agent: AgentThread) -> None:
    start = make_start(["sh", "-c", "sleep 1000 & exec sleep 1001"])
    session = ExecSession.open(unix_agent.address(), start)
    session.sock.settimeout(30)
    events: list[ep.Event] = []
    while not any(isinstance(e, ep.Started) for e in events):
        events += session.feed(session.sock.recv(65536))
    pid = next(e.pid for e in events if isinstance(e, ep.Started))
    children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    session.close()
    wait_for(lambda: process_gone(pid), "the command to be killed")
    for child in children:
        wait_for(lambda c=child: process_gone(c), "its group to be killed")  # type: ignore[misc]
    # The agent keeps serving after a client vanished.
    assert hvsock.exec(unix_agent.address(), ["true"]).returncode == 0


def test_env_set_unset_and_cwd(agent: AgentThread, tmp_path: Path) -> None:
    result = hvsock.exec(
        agent.address(),
        ["sh", "-c", 'echo "$A|${HOME-unset}|$PWD"'],
        env={"A": "b c"},
        unset=["HOME"],
        cwd=str(tmp_path),
    )
    assert result.stdout.decode() == f"b c|unset|{tmp_path}\n"


def test_output_cap_stops_the_command(agent: AgentThread) -> None:
    result = hvsock.exec(agent.address(), ["yes"], max_output=1000)
    assert result.truncated
    assert len(result.stdout) == 1000
    assert result.signal == signal.SIGKILL


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"args": ["no-such-program-here"]}, "not_found"),
        ({"args": ["/etc/passwd"]}, "not_executable"),
        ({"args": ["true"], "cwd": "/no/such/dir"}, "bad_cwd"),
        ({"args": ["true"], "user": "no-such-user-xyz"}, "no_user"),
    ],
)
def test_commands_the_agent_cannot_run(
    unix_agent: AgentThread, kwargs: dict[str, object], code: str
) -> None:
    with pytest.raises(hvsock.RemoteError) as info:
        hvsock.exec(unix_agent.address(), **kwargs)  # type: ignore[arg-type]
    assert info.value.code == code


def test_run_as_another_user(unix_agent: AgentThread) -> None:
    if os.geteuid() != 0:
        with pytest.raises(hvsock.RemoteError, match="forbidden"):
            hvsock.exec(unix_agent.address(), ["id", "-u"], user="nobody")
        return
    result = hvsock.exec(unix_agent.address(), ["sh", "-c", "id -u; echo $USER"], user="nobody")
    assert result.stdout.split() == [b"65534", b"nobody"]


@pytest.mark.parametrize(
    "bad",
    [
        {"args": "echo hi"},
        {"args": []},
        {"args": ["a"], "timeout": -1},
        {"args": ["a"], "env": {"A=B": "1"}},
        {"args": ["a"], "max_output": 0},
        {"args": ["cat"], "input": "text, not bytes"},
        {"args": ["cat"], "input": [1, 2]},
    ],
)
def test_bad_arguments_raise_argument_error(bad: dict[str, object]) -> None:
    with pytest.raises(hvsock.ArgumentError):
        hvsock.exec("unix:///nonexistent.sock", **bad)  # type: ignore[arg-type]


class _Records(logging.Handler):
    """Every log record of the agent (its services, asyncio's loop) while installed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))  # with the full traceback, if any

    @contextlib.contextmanager
    def installed(self, *names: str) -> Iterator[_Records]:
        loggers = [logging.getLogger(name) for name in names]
        levels = [logger.level for logger in loggers]
        for logger in loggers:
            logger.addHandler(self)
            logger.setLevel(logging.DEBUG)
        try:
            yield self
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.removeHandler(self)
                logger.setLevel(level)


def test_many_sessions_at_once_async(agent: AgentThread) -> None:
    async def one(i: int) -> hvsock.ExecResult:
        return await hvsock.exec_async(
            agent.address(), ["sh", "-c", f"sleep 0.2; echo {i}"], input=b""
        )

    async def main() -> list[hvsock.ExecResult | BaseException]:
        return await asyncio.gather(*(one(i) for i in range(24)), return_exceptions=True)

    begun = time.monotonic()
    with _Records().installed("hvsock", "asyncio") as records:
        results = asyncio.run(main())
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        # The whole story: each client's traceback and what the agent logged (once this
        # failed under load with BlockingIOError in the server's _read_fd, then KeyError
        # in asyncio's selector, and the bare client error told nothing).
        clients = "\n".join("".join(traceback.format_exception(exc)) for exc in failed)
        pytest.fail(
            f"{len(failed)} of {len(results)} sessions failed.\n-- clients:\n"
            f"{clients}\n-- agent log:\n" + "\n".join(records.lines),
            pytrace=False,
        )
    assert [r.stdout for r in results] == [  # type: ignore[union-attr]
        f"{i}\n".encode() for i in range(24)
    ]
    assert time.monotonic() - begun < 20  # concurrent, not 24 x 0.2 s in a row each waiting


def test_async_twin_carries_big_input_both_ways(agent: AgentThread) -> None:
    data = os.urandom(3 << 20)
    result = asyncio.run(hvsock.exec_async(agent.address(), ["cat"], input=data))
    assert (result.returncode, result.stdout == data) == (0, True)


def test_async_twin_streams_to_callbacks(agent: AgentThread) -> None:
    chunks: list[bytes] = []
    result = asyncio.run(
        hvsock.exec_async(agent.address(), ["sh", "-c", "echo a; echo b >&2"], stdout=chunks.append)
    )
    assert b"".join(chunks) == b"a\n"
    assert (result.stdout, result.stderr) == (b"", b"b\n")


def test_unknown_service_and_denied_peer(short_tmp: Path) -> None:
    config = default_config(["exec"])
    config.listen = parse_address(f"unix://{short_tmp}/a.sock")
    with AgentThread(config) as running:
        with pytest.raises(hvsock.RemoteError) as info:
            hvsock.exec(running.address(), ["true"], service="nope")
        assert info.value.code == "unknown_service"
    config.allow = ["uid:4000000"]
    with AgentThread(config) as running, pytest.raises(hvsock.HvsockError):
        hvsock.exec(running.address(), ["true"])


def test_exec_alone_on_its_own_address(short_tmp: Path) -> None:
    config = default_config(["exec"])
    config.listen = parse_address(f"unix://{short_tmp}/a.sock")
    config.services["exec"].listen = parse_address(f"unix://{short_tmp}/exec.sock")
    with AgentThread(config) as running:
        own = running.address("hvsock exec")
        assert hvsock.exec(own, ["echo", "x"], service=None).stdout == b"x\n"


# -- the CLI through a real terminal ------------------------------------------------


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "hvsock", *args]


def _default_sigint() -> None:  # pragma: no cover - runs in the child
    # The suite may start with SIGINT ignored (a background job, nohup), and an ignored
    # disposition is inherited: the children of tests that send SIGINT get the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


#: A remote command prefix doing the same on the agent's side (a shell cannot trap a
#: signal that was ignored when it started), whatever the agent running in this
#: process passes on to its commands.
WITH_DEFAULT_SIGINT = [
    sys.executable,
    "-c",
    "import os, signal, sys; "
    "signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execvp(sys.argv[1], sys.argv[1:])",
]


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Terminal:
    """A real PTY whose slave side is the controlling terminal of the client we run.

    Its input side stays open and nothing is typed ahead unless a test writes it, so
    the tests see hvsock's behaviour, not a harness's: ``script`` sends ^D when its own
    stdin ends, and a terminal not yet in raw mode keeps that type-ahead as a NUL.
    """

    def __init__(self, argv: list[str], rows: int = 33, cols: int = 101) -> None:
        self.master, self.slave = pty.openpty()
        _set_size(self.slave, rows, cols)
        self.before = termios.tcgetattr(self.slave)
        slave = self.slave

        def take_terminal() -> None:
            _default_sigint()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=take_terminal,
            env=dict(os.environ, TERM="xterm-256color"),
        )
        self.output = bytearray()

    def read_until(self, needle: bytes, timeout: float = 30) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} in {bytes(self.output)[-500:]!r}")
            import select

            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:
                    break
        return bytes(self.output)

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def finish(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        after = termios.tcgetattr(self.slave)
        os.close(self.master)
        os.close(self.slave)
        assert after == self.before, "the caller's terminal mode was not restored"
        return code


def test_cli_tty_gets_the_callers_size_and_term(unix_agent: AgentThread) -> None:
    term = Terminal(
        _cli(
            "exec",
            "-t",
            unix_agent.address(),
            "--",
            "sh",
            "-c",
            "stty size; echo $TERM; test -t 0 && echo tty",
        )
    )
    out = term.read_until(b"tty\r\n")
    assert b"33 101\r\n" in out
    assert b"xterm-256color\r\n" in out
    assert term.finish() == 0


def test_cli_tty_output_is_byte_for_byte_what_a_local_terminal_shows(
    unix_agent: AgentThread,
) -> None:
    """The same command on a PTY here and through ``hvsock exec -t``: the same bytes.

    Both terminals are real PTYs of the same size and TERM whose input side stays
    open (nothing types ahead, no EOF), so a difference is hvsock's.
    """
    command = [
        "sh",
        "-c",
        "printf 'a\\tb\\n\\033[1mbold\\033[0m\\n\\001\\377 x\\r\\n'; "
        'stty size; echo "$TERM"; test -t 0 && echo tty; '
        "ls /no-such-path-xyz 2>&1 | sed 's/^[^:]*: //'; echo END; exit 3",
    ]
    local = Terminal(command, rows=37, cols=101)
    expected = local.read_until(b"END\r\n")
    assert local.finish() == 3
    remote = Terminal(_cli("exec", "-t", unix_agent.address(), "--", *command), rows=37, cols=101)
    got = remote.read_until(b"END\r\n")
    assert remote.finish() == 3
    assert b"\x01\xff x\r\r\n37 101\r\nxterm-256color\r\ntty\r\n" in expected
    assert got == expected


def test_cli_interactive_bash_resizes_and_exit_status(unix_agent: AgentThread) -> None:
    term = Terminal(
        _cli(
            "exec",
            "-it",
            "-e",
            "PS1=PROMPT> ",
            unix_agent.address(),
            "--",
            "bash",
            "--norc",
            "--noprofile",
            "-i",
        )
    )
    term.read_until(b"PROMPT> ")
    term.write(b"echo $((6*7))\n")
    term.read_until(b"42")
    _set_size(term.master, 40, 120)  # the kernel sends SIGWINCH to the client
    deadline = time.monotonic() + 30
    while b"40 120" not in term.output and time.monotonic() < deadline:
        # SIGWINCH and the typed line race in the client; ask until the new size shows.
        term.write(b"stty size\n")
        try:
            term.read_until(b"40 120", timeout=1)
        except AssertionError:
            continue
    assert b"40 120" in term.output
    term.write(b"exit 5\n")
    assert term.finish() == 5


def test_cli_tty_restores_terminal_when_the_command_is_missing(unix_agent: AgentThread) -> None:
    term = Terminal(_cli("exec", "-t", unix_agent.address(), "--", "no-such-program-xyz"))
    term.read_until(b"command not found")
    assert term.finish() == 127


def test_cli_ctrl_c_is_forwarded_as_sigint(unix_agent: AgentThread) -> None:
    proc = subprocess.Popen(
        _cli(
            "exec",
            unix_agent.address(),
            "--",
            *WITH_DEFAULT_SIGINT,
            "sh",
            "-c",
            "trap 'echo INT; exit 7' INT; echo ready; while :; do sleep 0.05; done",
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_default_sigint,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert out == b"INT\n"
    assert proc.returncode == 7


def test_cli_exit_statuses(unix_agent: AgentThread) -> None:
    def run(*cmd: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            _cli("exec", unix_agent.address(), "--", *cmd),
            capture_output=True,
            timeout=60,
            check=False,
        )

    assert run("sh", "-c", "exit 9").returncode == 9
    assert run("sh", "-c", "kill -KILL $$").returncode == 137
    missing = run("no-such-program-xyz")
    assert missing.returncode == 127
    assert b"command not found" in missing.stderr
    echoed = subprocess.run(
        _cli("exec", unix_agent.address(), "--", "cat"),
        input=b"abc",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert echoed.stdout == b"abc"


def test_cli_agent_listen_enable_end_to_end(short_tmp: Path) -> None:
    sock = short_tmp / "cli.sock"
    ready = short_tmp / "ready.json"
    agent = subprocess.Popen(
        _cli(
            "agent",
            "--listen",
            f"unix://{sock}",
            "--enable",
            "exec,info",
            "--ready-file",
            str(ready),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(ready.exists, "the agent's ready file", timeout=30)
        done = subprocess.run(
            _cli("exec", f"unix://{sock}", "--", "echo", "hi"),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert (done.returncode, done.stdout) == (0, b"hi\n")
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=30)
    assert agent.returncode in (0, 143)
    assert not sock.exists()


def test_cli_check_config(tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text("[exec]\nenabled = 1\n\n[bogus]\n")
    done = subprocess.run(
        _cli("agent", "--check-config", str(bad)), capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stderr.decode().splitlines() == [
        f"{bad}:4: unknown section [bogus]; known: [agent], [exec], [info], [health], [time], "
        "[qga], [kvp], [cp]",
        f"{bad}:2: [exec] enabled must be true or false",
    ]
    bad.write_text("[exec]\nenabled = true\n")
    done = subprocess.run(
        _cli("agent", "--check-config", str(bad)), capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0
    assert b"exec" in done.stdout


def test_threads_and_sessions_do_not_leak(unix_agent: AgentThread, fd_baseline: None) -> None:
    threads = threading.active_count()
    for _ in range(5):
        hvsock.exec(unix_agent.address(), ["true"], input=b"x")
    wait_for(lambda: threading.active_count() <= threads, "client threads to end")


def test_own_address_allowlist_never_defaults_to_everyone(short_tmp: Path) -> None:
    config = default_config(["exec"])
    config.listen = parse_address(f"unix://{short_tmp}/a.sock")
    config.allow = ["uid:4000000", f"uid:{os.geteuid()}"]
    config.services["exec"].listen = parse_address(f"unix://{short_tmp}/exec.sock")
    with AgentThread(config) as running:
        # exec never takes [agent] allow: with none of its own, its default (this uid
        # and root), on its own address too.
        assert running.agent.services["exec"].allow == frozenset({f"uid:{os.geteuid()}", "uid:0"})
    config.services["exec"].allow = ["uid:4000000"]
    with AgentThread(config) as running:
        assert running.agent.services["exec"].allow == frozenset({"uid:4000000"})
        with pytest.raises(hvsock.HvsockError):
            hvsock.exec(running.address("hvsock exec"), ["true"], service=None)


@pytest.mark.parametrize(
    "argv",
    [
        ["exec", "unix:///tmp/x.sock"],
        ["exec", "unix:///tmp/x.sock", "--"],
        ["exec", "-e", "NOEQUALS", "unix:///tmp/x.sock", "--", "true"],
        ["exec", "--timeout", "-1", "unix:///tmp/x.sock", "--", "true"],
        ["exec", "nope://x", "--", "true"],
        ["agent", "--listen", "unix:///tmp/x.sock"],
        ["agent", "--enable", "exec"],
        ["agent", "--listen", "unix:///tmp/x.sock", "--enable", "exec,nope"],
        ["agent", "--listen", "unix:///tmp/x.sock", "--enable", "qga"],
    ],
)
def test_cli_usage_errors_exit_2(argv: list[str]) -> None:
    import io

    from hvsock._cli.main import main

    err = io.StringIO()
    assert main(argv, out=io.StringIO(), err=err) == 2
    assert err.getvalue().strip()


def test_cli_tty_ctrl_c_reaches_the_remote_foreground_job(unix_agent: AgentThread) -> None:
    term = Terminal(
        _cli(
            "exec",
            "-t",
            unix_agent.address(),
            "--",
            *WITH_DEFAULT_SIGINT,
            "sh",
            "-c",
            "trap 'echo INT; exit 7' INT; echo ready; while :; do sleep 0.05; done",
        )
    )
    term.read_until(b"ready")
    term.write(b"\x03")  # raw mode here: the byte travels; the remote PTY makes it SIGINT
    term.read_until(b"INT")
    assert term.finish() == 7


# -- the client's frame reader: whole frames straight off the socket -------------------


def _unsent(sock: socket.socket) -> int:
    """Bytes *sock* sent that its Unix-socket peer has not read yet (SIOCOUTQ)."""
    return int(struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0])


def _started(sock: socket.socket) -> ExecSession:
    """A session over *sock* whose START went out (the agent's side is the test's)."""
    session = ExecSession(sock)
    session.proto.start(make_start(["cat"]))
    return session


def test_read_event_gathers_a_frame_that_arrives_in_two_reads() -> None:
    ours, agent_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    session = _started(ours)
    # A timeout makes Python's recv non-blocking: MSG_WAITALL then returns what is there.
    ours.settimeout(20)
    data = os.urandom(200_000)
    frame = ep.frame(ep.Started(1)) + ep.data_head(ep.STDOUT, len(data)) + data

    def agent() -> None:
        agent_side.sendall(frame[:100_000])
        deadline = time.monotonic() + 20
        while _unsent(agent_side) and time.monotonic() < deadline:  # the client read it
            time.sleep(0.005)
        agent_side.sendall(frame[100_000:] + ep.frame(ep.Exit(0)))

    sender = threading.Thread(target=agent)
    sender.start()
    try:
        assert session.read_event() == ep.Started(1)
        assert session.read_event() == ep.Output(1, data)
        assert session.read_event() == ep.Exit(0)
    finally:
        sender.join(20)
        session.close()
        agent_side.close()


@pytest.mark.parametrize(
    ("sent", "message"),
    [
        (b"", "closed the connection before the command's exit"),
        (b"\x00\x00", "in the middle of a frame"),
        (ep.data_head(ep.STDOUT, 1000) + b"x" * 10, "in the middle of a frame"),
        (b"\x00\x00\x00\x00\x11", "empty exec frame"),
        (b"\x7f\x00\x00\x00\x11", "frame"),
        (b"\x00\x00\x00\x02\x99x", "unknown exec frame kind"),
    ],
)
def test_read_event_on_cut_or_bad_frames_raises_protocol_error(sent: bytes, message: str) -> None:
    ours, agent_side = socket.socketpair()
    session = _started(ours)
    ours.settimeout(20)
    agent_side.sendall(ep.frame(ep.Started(1)) + sent)
    agent_side.close()
    assert session.read_event() == ep.Started(1)
    with session, pytest.raises(hvsock.ProtocolError, match=message):
        session.read_event()


def test_pipes_grow_where_allowed_and_keep_their_size_where_not() -> None:
    from hvsock._builtin.exec import server

    if not sys.platform.startswith("linux"):
        pytest.skip("pipe sizes are a Linux feature")
    get_size = getattr(fcntl, "F_GETPIPE_SZ", 1032)
    grown = server._pipe(server.PIPE_SIZE)
    # A size the kernel refuses (EINVAL, for root too): the default pipe, still working.
    kept = server._pipe(-1)
    try:
        size = fcntl.fcntl(grown[1], get_size)
        if os.geteuid() == 0:
            assert size == server.PIPE_SIZE
        else:  # past the user's pipe quota, a process keeps the default
            assert size in (server.PIPE_SIZE, 65536)
        assert fcntl.fcntl(kept[1], get_size) == 65536
        os.write(kept[1], b"still a pipe")
        assert os.read(kept[0], 100) == b"still a pipe"
    finally:
        for fd in (*grown, *kept):
            os.close(fd)


def test_whole_frame_reads_are_asked_only_where_the_family_allows_them() -> None:
    from hvsock._builtin.exec.client import waitall_flag

    for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
        assert waitall_flag(family) == socket.MSG_WAITALL
    # Linux's AF_VSOCK answers ENOMEM to a MSG_WAITALL read of its buffer size or more.
    assert waitall_flag(getattr(socket, "AF_VSOCK", 40)) == 0


def test_input_may_be_pieces_taken_as_the_command_runs(agent: AgentThread) -> None:
    """A generator that waits for the command's prompt before answering it (how the
    Ansible plugin answers sudo's password prompt)."""
    prompted = threading.Event()
    seen = bytearray()

    def on_stderr(data: bytes) -> None:
        seen.extend(data)
        if b"password:" in seen:
            prompted.set()

    def answer() -> Iterator[bytes]:
        assert prompted.wait(60), "the prompt never came"
        yield b"s3cret\n"
        yield memoryview(b"rest of the input")

    script = 'printf password: >&2; read -r pw; echo "pw=$pw"; cat'
    result = hvsock.exec(agent.address(), ["sh", "-c", script], input=answer(), stderr=on_stderr)
    assert (result.returncode, result.stdout) == (0, b"pw=s3cret\nrest of the input")
    assert bytes(seen) == b"password:"


def test_input_pieces_stream_a_file(agent: AgentThread, tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "f").write_bytes(data)
    with (tmp_path / "f").open("rb") as f:
        pieces = iter(lambda: f.read(100_000), b"")
        result = hvsock.exec(agent.address(), ["sha256sum"], input=pieces)
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    listed = hvsock.exec(agent.address(), ["cat"], input=[b"a", bytearray(b"b"), memoryview(b"c")])
    assert listed.stdout == b"abc"


def test_bad_input_pieces_are_an_argument_error(agent: AgentThread) -> None:
    with pytest.raises(hvsock.ArgumentError, match="input must be bytes, not str"):
        hvsock.exec(agent.address(), ["cat"], input="text")

    def pieces() -> Iterator[object]:
        yield b"fine"
        yield "not bytes"

    started = time.monotonic()
    with pytest.raises(hvsock.ArgumentError, match="each piece of input must be bytes"):
        hvsock.exec(agent.address(), ["sleep", "60"], input=pieces())  # type: ignore[arg-type]
    assert time.monotonic() - started < 50  # the session ended, not the sleep


BLOCKING_CLIENT = """
import json, sys
import hvsock
before = set(sys.modules)
result = hvsock.exec(sys.argv[1], ["sh", "-c", "cat; echo err >&2"], input=b"in")
print(json.dumps({"out": result.stdout.decode(), "err": result.stderr.decode(),
                  "loaded": sorted(set(sys.modules) - before),
                  "asyncio_before": "asyncio" in before}))
"""


def test_blocking_exec_loads_neither_asyncio_nor_the_service_framework(
    unix_agent: AgentThread,
) -> None:
    """hvsock.exec in a fresh process (as each Ansible task's worker runs it, and the
    CLI): what it imports is paid on every call of such a process; asyncio alone was
    most of the cost of a first exec."""
    done = subprocess.run(
        [sys.executable, "-c", BLOCKING_CLIENT, unix_agent.address()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(done.stdout)
    assert (report["out"], report["err"]) == ("in", "err\n")
    if report["asyncio_before"]:
        pytest.skip("`import hvsock` itself imports asyncio")
    assert "hvsock._builtin.exec.client" in report["loaded"]
    heavy = [
        m
        for m in report["loaded"]
        if m.split(".")[0] == "asyncio" or m.startswith(("hvsock._service", "concurrent."))
    ]
    assert heavy == []


def test_async_input_may_be_pieces_plain_or_asynchronous(
    agent: AgentThread, tmp_path: Path
) -> None:
    """exec_async takes input as hvsock.exec does (bytes-like, or an iterable of pieces),
    and also as an async iterable, whose next piece may wait for the command's output."""
    data = os.urandom(3 << 20)
    (tmp_path / "f").write_bytes(data)
    prompted = asyncio.Event()
    seen = bytearray()

    def on_stderr(got: bytes) -> None:
        seen.extend(got)
        if b"password:" in seen:
            prompted.set()

    async def answer() -> AsyncIterator[bytes]:
        await asyncio.wait_for(prompted.wait(), 60)
        yield b"s3cret\n"
        yield memoryview(b"rest of the input")

    async def main() -> list[hvsock.ExecResult]:
        with (tmp_path / "f").open("rb") as f:
            hashed = await hvsock.exec_async(
                agent.address(), ["sha256sum"], input=iter(lambda: f.read(100_000), b"")
            )
        listed = await hvsock.exec_async(
            agent.address(), ["cat"], input=[b"a", bytearray(b"b"), memoryview(b"c")]
        )
        script = 'printf password: >&2; read -r pw; echo "pw=$pw"; cat'
        answered = await hvsock.exec_async(
            agent.address(), ["sh", "-c", script], input=answer(), stderr=on_stderr
        )
        return [hashed, listed, answered]

    hashed, listed, answered = asyncio.run(main())
    assert hashed.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert listed.stdout == b"abc"
    assert (answered.returncode, answered.stdout) == (0, b"pw=s3cret\nrest of the input")
    assert bytes(seen) == b"password:"


def test_async_bad_input_pieces_are_an_argument_error(agent: AgentThread) -> None:
    async def pieces() -> AsyncIterator[object]:
        yield b"fine"
        yield "not bytes"

    def plain() -> Iterator[object]:
        yield b"fine"
        yield 42

    async def main() -> None:
        with pytest.raises(hvsock.ArgumentError, match="input must be bytes, not str"):
            await hvsock.exec_async(agent.address(), ["cat"], input="text")  # type: ignore[arg-type]
        with pytest.raises(hvsock.ArgumentError, match="each piece of input must be bytes"):
            await hvsock.exec_async(agent.address(), ["cat"], input=[b"a", "b"])  # type: ignore[list-item]
        for given in (pieces(), plain()):
            started = time.monotonic()
            with pytest.raises(hvsock.ArgumentError, match="each piece of input must be bytes"):
                await hvsock.exec_async(agent.address(), ["sleep", "60"], input=given)  # type: ignore[arg-type]
            assert time.monotonic() - started < 50  # the session ended, not the sleep

    asyncio.run(main())


def _cutting_agent(path: Path, cut: Callable[[socket.socket], None]) -> threading.Thread:
    """An agent that takes the hello and the start of the session, then *cut*s it while
    the client is still sending input."""
    from hvsock._core import mux
    from hvsock._core.framing import FrameReader, encode_frame
    from hvsock._transports.recv import recv_frame

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()

    def serve() -> None:
        with listener:
            listener.settimeout(60)
            conn, _ = listener.accept()
        with conn:
            conn.settimeout(60)
            recv_frame(conn, FrameReader(mux.MAX_HELLO))
            conn.sendall(encode_frame(mux.encode_answer(), mux.MAX_HELLO))
            conn.recv(1)  # START has come
            cut(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def _writer_gone() -> bool:
    return not any(t.name == "hvsock-exec-stdin" for t in threading.enumerate())


def test_a_connection_cut_while_input_is_sent_is_a_protocol_error(short_tmp: Path) -> None:
    """The agent goes away while the client is still sending (a VM stopped mid-module):
    ProtocolError, the error of a broken session, never the send's own BrokenPipeError
    (the Ansible plugin makes HvsockError "unreachable"; anything else was a task's
    traceback)."""

    def cut(conn: socket.socket) -> None:
        # The client's sends now fail; its reading side sees the end only at close,
        # after the sending side has failed (the order that let its error through).
        conn.shutdown(socket.SHUT_RD)
        wait_for(_writer_gone, "the client's input thread to end", timeout=60)

    for i in range(3):
        path = short_tmp / f"cut{i}.sock"
        server = _cutting_agent(path, cut)
        with pytest.raises(hvsock.ProtocolError, match="closed the connection before"):
            hvsock.exec(f"unix://{path}", ["cat"], input=os.urandom(8 << 20))
        server.join(60)


def test_async_connection_cut_while_input_is_sent_is_a_protocol_error(short_tmp: Path) -> None:
    def cut(conn: socket.socket) -> None:
        conn.shutdown(socket.SHUT_RD)  # then closed, with the client's input unread

    async def big() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield os.urandom(1 << 17)

    for given in (os.urandom(8 << 20), big()):
        path = short_tmp / "cut.sock"
        server = _cutting_agent(path, cut)
        with pytest.raises(hvsock.ProtocolError):
            asyncio.run(hvsock.exec_async(f"unix://{path}", ["cat"], input=given))
        server.join(60)
        path.unlink()
