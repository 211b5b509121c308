"""The exec agent's side under hostile and careless clients, with a raw client speaking
the wire protocol (so these tests judge the agent, whatever the client library does)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import pwd
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import hvsock
from hvsock._builtin.agent.config import default_config
from hvsock._builtin.exec import server as exec_server
from hvsock._core import exec_proto as ep
from hvsock._core import mux
from hvsock._core.addresses import parse_address
from hvsock._core.framing import encode_frame
from hvsock._server.peers import Peer
from hvsock._service.connection import Connection
from hvsock._service.frames import recv_frame
from tests.agent_thread import AgentThread, process_gone, wait_for

pytestmark = pytest.mark.timeout(180)


class Raw:
    """A client written against the wire protocol: hello, START, then frames."""

    def __init__(
        self, address: str, start: ep.Start | None, *, service: str | None = "exec"
    ) -> None:
        self.sock = hvsock.connect(address, timeout=30)
        try:
            self.sock.settimeout(60)
            if service is not None:
                self.sock.sendall(encode_frame(mux.encode_hello(service), mux.MAX_HELLO))
                answer = recv_frame(self.sock, mux.MAX_HELLO)
                assert answer is not None, "the agent closed at the hello"
                mux.decode_answer(answer)
            if start is not None:
                self.sock.sendall(ep.frame(start))
        except BaseException:
            self.sock.close()
            raise

    def event(self) -> ep.Event | None:
        body = recv_frame(self.sock, ep.MAX_FRAME)
        return None if body is None else ep.decode(body)

    def until(self, kind: type) -> tuple[ep.Event, bytes]:
        """Events up to the first of *kind*: (it, the output seen before it)."""
        out = b""
        while True:
            event = self.event()
            assert event is not None, f"connection closed before {kind.__name__}"
            if isinstance(event, ep.Output):
                out += event.data
            if isinstance(event, kind):
                return event, out
            assert not isinstance(event, ep.Error), event

    def close(self) -> None:
        self.sock.close()


def _agent(short_tmp: Path, **exec_options: object) -> AgentThread:
    config = default_config(["exec", "info"])
    config.listen = parse_address(f"unix://{short_tmp}/agent.sock")
    config.services["exec"].options.update(exec_options)
    return AgentThread(config)


@pytest.fixture
def agent(short_tmp: Path) -> Iterator[AgentThread]:
    with _agent(short_tmp) as running:
        yield running


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


# -- the process group dies with the command, and on every way the client leaves ---


def test_a_background_child_dies_when_the_command_exits(short_tmp: Path) -> None:
    # Output still in flight is waited for up to drain_wait: a long one here, so a
    # child left holding the pipe would show as a late return, not just a survivor.
    policy = exec_server.ExecPolicy(drain_wait=120)
    host = hvsock.ServiceHost(grace=1)
    host.add(exec_server.exec_service(allow=None, policy=policy), f"unix://{short_tmp}/exec.sock")
    with _HostThread(host) as running:
        begun = time.monotonic()
        result = hvsock.exec(running.address, ["sh", "-c", "sleep 1000 & echo $!"], service=None)
        child = int(result.stdout)
        assert time.monotonic() - begun < 60, "exec waited for the child's pipe to close"
        wait_for(lambda: process_gone(child), "the background child to be killed")
        result = hvsock.exec(
            running.address, ["sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!"], service=None
        )
        child = int(result.stdout)
        wait_for(lambda: process_gone(child), "the detached background child to be killed")


def test_client_gone_right_after_start_kills_the_group(
    agent: AgentThread, fd_baseline: None
) -> None:
    raw = Raw(agent.address(), ep.Start(("sh", "-c", "sleep 1000 & exec sleep 1001")))
    started, _ = raw.until(ep.Started)
    assert isinstance(started, ep.Started)
    # Wait for the child to exist before hanging up, so its death proves the group went.
    wait_for(lambda: len(_children(started.pid)) == 1, "the background child to start")
    child = _children(started.pid)[0]
    raw.close()
    wait_for(lambda: process_gone(started.pid), "the command to be killed")
    wait_for(lambda: process_gone(child), "its group to be killed")
    wait_for(lambda: agent.agent.host.active_connections("hvsock agent") == 0, "the session to end")


def test_client_gone_before_started_is_noticed(agent: AgentThread, fd_baseline: None) -> None:
    # START and hang up at once, many times: the agent's send of STARTED fails (or
    # the read sees EOF); either way the command and its pipes go.
    marker = f"hvsock-test-{os.getpid()}-{time.monotonic_ns()}"
    for _ in range(20):
        raw = Raw(agent.address(), ep.Start(("sh", "-c", f"exec sleep 1000 {marker}")))
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        raw.close()

    def survivors() -> list[str]:
        found = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if marker.encode() in cmdline and not process_gone(int(pid)):
                    found.append(pid)
        return found

    wait_for(
        lambda: agent.agent.host.active_connections("hvsock agent") == 0,
        "every session to end",
        timeout=60,
    )
    wait_for(lambda: not survivors(), "every command to be killed", timeout=30)


def test_signal_is_read_while_stdin_waits_for_a_command_not_reading_it(short_tmp: Path) -> None:
    host = hvsock.ServiceHost(grace=1)
    policy = exec_server.ExecPolicy(stdin_buffer=16 << 20)
    host.add(exec_server.exec_service(allow=None, policy=policy), f"unix://{short_tmp}/exec.sock")
    with _HostThread(host) as running:
        raw = Raw(running.address, ep.Start(("sleep", "1000")), service=None)
        raw.until(ep.Started)
        # Far more than the command's stdin pipe holds (1 MiB at most; it never
        # reads), then a signal: it must not queue behind the write to the full pipe.
        chunk = b"x" * (256 << 10)
        for _ in range(16):
            raw.sock.sendall(ep.frame(ep.Stdin(chunk)))
        raw.sock.sendall(ep.frame(ep.Signal(signal.SIGTERM)))
        exit_event, _ = raw.until(ep.Exit)
        raw.close()
    assert isinstance(exit_event, ep.Exit)
    assert exit_event.signal == signal.SIGTERM


def test_client_gone_while_its_stdin_waits_kills_the_group(agent: AgentThread) -> None:
    raw = Raw(agent.address(), ep.Start(("sh", "-c", "sleep 1000 & exec sleep 1001")))
    started, _ = raw.until(ep.Started)
    assert isinstance(started, ep.Started)
    wait_for(lambda: len(_children(started.pid)) == 1, "the background child to start")
    child = _children(started.pid)[0]
    # Far more stdin than the pipe and the agent's buffer hold: the agent stops reading
    # (back-pressure), so it has to notice the hang-up without reading to it.
    raw.sock.setblocking(False)
    frames = memoryview(ep.frame(ep.Stdin(b"y" * (256 << 10))) * 256)  # 64 MiB
    sent = 0
    deadline = time.monotonic() + 60
    while sent < len(frames) and time.monotonic() < deadline:
        try:
            sent += raw.sock.send(frames[sent:])
        except BlockingIOError:
            if sent > 4 * exec_server.STDIN_BUFFER:
                break  # full all the way back to us
            time.sleep(0.01)
    assert sent > 2 * exec_server.STDIN_BUFFER
    raw.close()
    wait_for(lambda: process_gone(started.pid), "the command to be killed", timeout=30)
    wait_for(lambda: process_gone(child), "its group to be killed", timeout=30)
    wait_for(
        lambda: agent.agent.host.active_connections("hvsock agent") == 0,
        "the session to end",
        timeout=30,
    )


def test_stdin_order_and_eof_survive_back_pressure(agent: AgentThread) -> None:
    # A slow reader: everything arrives, in order, then EOF ends it.
    data = os.urandom(5 << 20)
    result = hvsock.exec(agent.address(), ["sh", "-c", "sleep 0.3; exec sha256sum"], input=data)
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


# -- deadlines ---------------------------------------------------------------------------


def test_no_start_after_the_hello_is_cut_at_the_deadline(short_tmp: Path) -> None:
    config = default_config(["exec", "info"])
    config.listen = parse_address(f"unix://{short_tmp}/agent.sock")
    config.max_connections = 4
    with AgentThread(config) as running:
        running.agent.services["exec"].handler.policy = exec_server.ExecPolicy(  # type: ignore[attr-defined]
            start_timeout=0.5
        )
        idle = [Raw(running.address(), None) for _ in range(4)]
        # Every slot is held by a client that never sends START; the deadline frees
        # them, and each is told why.
        for raw in idle:
            event = raw.event()
            assert isinstance(event, ep.Error), event
            assert event.code == "timeout"
            raw.close()
        assert hvsock.exec(running.address(), ["echo", "in"]).stdout == b"in\n"


def test_no_start_on_the_dedicated_address_is_cut_at_the_deadline(short_tmp: Path) -> None:
    policy = exec_server.ExecPolicy(start_timeout=0.5, max_sessions=1)
    host = hvsock.ServiceHost(grace=1)
    host.add(exec_server.exec_service(allow=None, policy=policy), f"unix://{short_tmp}/exec.sock")
    with _HostThread(host) as running:
        idle = [Raw(running.address, None, service=None) for _ in range(4)]  # the limit
        for raw in idle:
            event = raw.event()
            assert isinstance(event, ep.Error), event
            assert event.code == "timeout"
            raw.close()
        assert hvsock.exec(running.address, ["echo", "in"], service=None).stdout == b"in\n"


# -- what a command inherits -------------------------------------------------------------


def test_commands_get_default_signals_whatever_the_agent_inherited(short_tmp: Path) -> None:
    # As under nohup or a script's background job: SIGINT/SIGQUIT ignored, and a
    # signal blocked in the thread that runs the agent.
    agent = _agent(short_tmp)
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGQUIT)}
    try:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        try:
            agent.__enter__()  # its thread starts here, and inherits the mask
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        with contextlib.ExitStack() as stack:
            stack.callback(agent.__exit__, None, None, None)
            result = hvsock.exec(agent.address(), ["sh", "-c", "kill -INT $$; echo survived"])
            assert (result.signal, result.stdout) == (signal.SIGINT, b""), result
            status = hvsock.exec(agent.address(), ["cat", "/proc/self/status"]).stdout
            fields = dict(
                line.split(":\t", 1) for line in status.decode().splitlines() if ":\t" in line
            )
            assert int(fields["SigBlk"], 16) == 0, fields["SigBlk"]
            assert int(fields["SigIgn"], 16) & (1 << (signal.SIGQUIT - 1)) == 0
            raw = Raw(
                agent.address(),
                ep.Start(("sh", "-c", "kill -QUIT $$; echo survived"), tty=ep.Tty()),
            )
            on_pty, _ = raw.until(ep.Exit)
            raw.close()
            assert isinstance(on_pty, ep.Exit)
            assert on_pty.signal == signal.SIGQUIT, on_pty
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _signal_fields(agent: AgentThread) -> tuple[int, int]:
    """(SigIgn, SigBlk) of a real command the agent runs, from its /proc status."""
    status = hvsock.exec(agent.address(), ["cat", "/proc/self/status"]).stdout
    fields = dict(line.split(":\t", 1) for line in status.decode().splitlines() if ":\t" in line)
    return int(fields["SigIgn"], 16), int(fields["SigBlk"], 16)


def _bits(signals: object) -> int:
    return sum(1 << (sig - 1) for sig in signals)  # type: ignore[attr-defined]


@contextlib.contextmanager
def _dispositions(ignored: set[int]) -> Iterator[None]:
    """*ignored* set to SIG_IGN, every other signal the exec server resets to a handler of
    ours (the suite may run with SIGINT ignored, as a background job; a handler, unlike
    SIG_DFL, cannot kill the test run, and exec puts it back to the default)."""
    handled = {sig for sig in exec_server.RESET_SIGNALS if sig not in exec_server.RESTORED_SIGNALS}
    old = {sig: signal.getsignal(sig) for sig in handled}
    try:
        for sig in handled:
            signal.signal(sig, signal.SIG_IGN if sig in ignored else (lambda *_: None))
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _signals_clean_in_a_thread() -> bool:
    seen: list[bool] = []
    thread = threading.Thread(target=lambda: seen.append(exec_server._signals_clean()))
    thread.start()
    thread.join(30)
    return seen[0]


def test_the_fast_spawn_is_chosen_only_when_nothing_needs_resetting() -> None:
    # The interpreter ignores SIGPIPE (and SIGXFSZ) itself: subprocess's restore_signals
    # resets those, so they do not stop the spawn without preexec_fn.
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    with _dispositions(set()):
        assert _signals_clean_in_a_thread()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
        try:
            assert not _signals_clean_in_a_thread()  # the new thread inherits the mask
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGTERM):
        with _dispositions({sig}):
            assert not _signals_clean_in_a_thread(), signal.Signals(sig).name


def test_a_command_spawned_the_fast_way_starts_clean(short_tmp: Path) -> None:
    with _dispositions(set()), _agent(short_tmp) as agent:
        ignored, blocked = _signal_fields(agent)
    assert blocked == 0, hex(blocked)
    # Not even SIGPIPE, which the agent (a Python) ignores.
    assert ignored & _bits(exec_server.RESET_SIGNALS) == 0, hex(ignored)


def test_signals_the_agent_ignores_reach_the_command_at_default(short_tmp: Path) -> None:
    # An agent started under nohup (SIGHUP) from a script's background job (SIGINT).
    with _dispositions({signal.SIGINT, signal.SIGHUP}), _agent(short_tmp) as agent:
        ignored, blocked = _signal_fields(agent)
        result = hvsock.exec(agent.address(), ["sh", "-c", "kill -HUP $$; echo survived"])
    assert ignored & _bits({signal.SIGINT, signal.SIGHUP}) == 0, hex(ignored)
    assert blocked == 0, hex(blocked)
    assert (result.signal, result.stdout) == (signal.SIGHUP, b""), result


def test_a_mask_in_the_agents_thread_does_not_reach_the_command(short_tmp: Path) -> None:
    # Nothing ignored, but the thread that runs the agent's loop (and spawns) started
    # with signals blocked: a vfork child would keep that mask across exec.
    with _dispositions(set()):
        agent = _agent(short_tmp)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
        try:
            agent.__enter__()  # its thread starts here, and inherits the mask
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        try:
            ignored, child_blocked = _signal_fields(agent)
        finally:
            agent.__exit__(None, None, None)
    assert child_blocked == 0, hex(child_blocked)
    assert ignored & _bits(exec_server.RESET_SIGNALS) == 0, hex(ignored)


def test_another_user_gets_a_clean_environment(agent: AgentThread) -> None:
    if os.geteuid() != 0:
        pytest.skip("running a command as another user needs an agent run as root")
    nobody = pwd.getpwnam("nobody")
    os.environ["HVSOCK_AGENT_SECRET"] = "s3cret"
    try:
        result = hvsock.exec(agent.address(), ["env"], user="nobody", env={"MINE": "1"})
    finally:
        del os.environ["HVSOCK_AGENT_SECRET"]
    env = dict(line.split("=", 1) for line in result.stdout.decode().splitlines())
    assert "HVSOCK_AGENT_SECRET" not in env
    assert env["HOME"] == nobody.pw_dir
    assert env["USER"] == env["LOGNAME"] == "nobody"
    assert env["SHELL"] == (nobody.pw_shell or "/bin/sh")
    assert env["PATH"] == exec_server.USER_PATH
    assert env["MINE"] == "1"
    assert set(env) <= {
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "PATH",
        "MINE",
        "PWD",
        "SHLVL",
        "_",
        "OLDPWD",
    }, env


# -- the agent's own policy --------------------------------------------------------------


def test_the_agents_max_output_applies_when_the_client_sets_none(short_tmp: Path) -> None:
    # Bounded output (never `yes`): a missed cap must fail the test, not fill memory.
    with _agent(short_tmp, max_output=1000) as running:
        result = hvsock.exec(running.address(), ["head", "-c", "100000", "/dev/zero"])
        assert result.truncated
        assert len(result.stdout) == 1000
        # The client's own, larger cap does not lift the agent's.
        result = hvsock.exec(
            running.address(), ["head", "-c", "100000", "/dev/zero"], max_output=5000
        )
        assert result.truncated
        assert len(result.stdout) == 1000


def test_allow_user_false_is_enforced(short_tmp: Path) -> None:
    with _agent(short_tmp, allow_user=False) as running:
        with pytest.raises(hvsock.RemoteError) as info:
            hvsock.exec(running.address(), ["id", "-u"], user="nobody")
        assert info.value.code == "forbidden"
        assert "allow_user = false" in str(info.value)
        # Its own user is no "other user".
        me = pwd.getpwuid(os.geteuid()).pw_name
        assert hvsock.exec(running.address(), ["true"], user=me).returncode == 0


# -- allow rules on the shared address ---------------------------------------------------


def test_a_services_narrower_allow_is_checked_on_the_shared_address(short_tmp: Path) -> None:
    me = f"uid:{os.geteuid()}"
    config = default_config(["exec", "info", "health"])
    config.listen = parse_address(f"unix://{short_tmp}/agent.sock")
    config.allow = [me]
    config.services["info"].allow = ["uid:4000000"]  # narrower: not us
    with AgentThread(config) as running:
        with pytest.raises(hvsock.RemoteError) as info:
            Raw(running.address(), None, service="info")
        assert info.value.code == "forbidden"
        assert "uid:4000000" in str(info.value)  # the refusal names the rule
        Raw(running.address(), None, service="health").close()  # the agent's list


def test_the_agents_allow_does_not_override_a_services(short_tmp: Path) -> None:
    me = f"uid:{os.geteuid()}"
    config = default_config(["info", "health"])
    config.listen = parse_address(f"unix://{short_tmp}/agent.sock")
    config.allow = [me, "uid:4000000"]
    config.services["health"].allow = ["uid:4000000"]
    with AgentThread(config) as running:
        assert running.agent.services["health"].allow == frozenset({"uid:4000000"})
        with pytest.raises(hvsock.RemoteError, match="forbidden"):
            Raw(running.address(), None, service="health")
        Raw(running.address(), None, service="info").close()


# -- a session cancelled twice (the agent stopping) ---------------------------------------


def test_a_session_cancelled_twice_leaves_no_fd_registered() -> None:
    """The stop path cancels a session, and may again while it cleans up: its fds
    must close only after its pumps unregistered them, or a number reused by the
    next session loses that session's registration."""
    policy = exec_server.ExecPolicy()
    service = exec_server.exec_service(allow=None, policy=policy)
    log = logging.getLogger("hvsock.test.exec")
    loop_errors: list[dict[str, object]] = []

    writers: list[asyncio.StreamWriter] = []

    async def session(argv: tuple[str, ...]) -> tuple[asyncio.Task[None], socket.socket]:
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        writers.append(writer)  # closed by the test, as ServiceHost closes its own
        conn = Connection(reader, writer, Peer("test"), service, log)
        task = asyncio.create_task(service.handler(conn))  # type: ignore[arg-type]
        theirs.sendall(ep.frame(ep.Start(argv)))
        return task, theirs

    async def main() -> bytes:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: loop_errors.append(context)
        )
        for _ in range(10):
            task, client = await session(("sh", "-c", "while :; do echo x; done"))
            client.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_recv(client, 100)  # STARTED and output: the pumps run
            task.cancel()
            await asyncio.sleep(0)  # one step: the second cancel lands in its clean-up
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            client.close()
        # The next session reuses the numbers: it must run to its end.
        task, client = await session(("echo", "after"))
        client.setblocking(False)
        # The handler returns once it sent EXIT (ServiceHost would close the socket).
        await asyncio.wait_for(task, 60)
        got = client.recv(1 << 20)
        client.close()
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):  # the test's clients left first
                await writer.wait_closed()
        return got

    got = asyncio.run(main())
    assert b"after" in got
    assert not loop_errors, loop_errors


class _HostThread:
    """A ServiceHost with one service served from a thread."""

    def __init__(self, host: hvsock.ServiceHost) -> None:
        self.host = host
        self._ready = threading.Event()
        host.on_ready = lambda _addresses: self._ready.set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self.host.serve(handle_signals=False))
        finally:
            self._ready.set()
            self._loop.close()

    def __enter__(self) -> _HostThread:
        self._thread.start()
        assert self._ready.wait(30), "host did not report ready"
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self.host.request_stop)
        self._thread.join(30)
        assert not self._thread.is_alive(), "host did not stop"

    @property
    def address(self) -> str:
        return str(next(iter(self.host.addresses.values())))


# -- the agent's command line ------------------------------------------------------------


def test_cli_enable_cp_takes_its_roots(short_tmp: Path, hvsock_cmd: list[str]) -> None:
    import json
    import subprocess

    refused = subprocess.run(
        [*hvsock_cmd, "agent", "--listen", "tcp://127.0.0.1:0", "--enable", "cp"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert b"--cp-root DIR" in refused.stderr
    root = short_tmp / "share"
    root.mkdir()
    (root / "f.txt").write_bytes(b"served\n")
    ready = short_tmp / "ready.json"
    agent = subprocess.Popen(
        [
            *hvsock_cmd,
            "agent",
            "--listen",
            "tcp://127.0.0.1:0",
            "--enable",
            "cp",
            "--cp-root",
            str(root),
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and agent.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if agent.poll() is not None:
            err = agent.communicate(timeout=30)[1]
            if b"in use" in err:
                pytest.skip(f"cp's well-known port is taken on this machine: {err!r}")
            raise AssertionError(err)
        services = json.loads(ready.read_text())["services"]
        cp_address = next(v for k, v in services.items() if "file" in k or "cp" in k)
        hvsock.copy(cp_address, f":{root}/f.txt", str(short_tmp / "got.txt"))
        assert (short_tmp / "got.txt").read_bytes() == b"served\n"
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=30)


def test_cli_check_config_warns_about_exec_for_any_source_port(
    tmp_path: Path, hvsock_cmd: list[str]
) -> None:
    import subprocess

    conf = tmp_path / "agent.toml"
    conf.write_text("[exec]\nenabled = true\nallow = [2]\n")
    done = subprocess.run(
        [*hvsock_cmd, "agent", "--check-config", str(conf)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert (
        f"{conf}:3: warning: [exec] allow lets CID 2 in from any source port".encode()
        in done.stderr
    )
