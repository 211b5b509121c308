"""The exec service: run a command for a client, stream its output live, report its end.

Each command runs in a new session (its own process group), on pipes or on a
PTY the agent opens with the client's size and TERM, with default signal
dispositions and an empty signal mask whatever the agent inherited (an agent
started under nohup must not pass on an ignored SIGINT). Whatever way the
session ends, the whole process group goes: at exit of the command (so nothing
it left behind holds the pipes), at the timeout (SIGTERM, then SIGKILL after a
grace), at the output cap, and when the client vanishes, also while its stdin
waits for a command that does not read it.

The client's frames are read by one task and the command's stdin is written by
another, through a bounded buffer: a command that does not read its stdin never
stops the agent reading RESIZE, SIGNAL or the client's hang-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import pty
import pwd
import select
import signal
import struct
import termios
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..._aio.ready import wait_ready
from ..._core import exec_proto as ep
from ..._errors import ProtocolError
from ..._pump import grow_pipe
from ..._service.connection import Connection
from ..._service.declaration import Limits, Service
from ..._service.frames import read_frame, read_next

__all__: list[str] = []

EXEC_PORT = 5105
#: Seconds a command gets between SIGTERM and SIGKILL at its timeout.
KILL_GRACE = 2.0
#: Seconds the agent waits for output still in flight after the command exited.
DRAIN_WAIT = 2.0
#: Size asked for the command's stdin and stdout pipes (Linux's default is 64 KiB; at
#: 1 MiB a streaming command and the agent wake each other up far less often).
PIPE_SIZE = 1 << 20
#: Seconds a client has to send START once connected (after the hello on the shared
#: address): idle connections must not hold the agent's connection slots.
START_TIMEOUT = 10.0
#: Bytes of stdin held for a command that is not reading it; past this the agent stops
#: reading the client (back-pressure) but still notices it hanging up.
STDIN_BUFFER = 1 << 20
#: Seconds between checks that a client is still there while its stdin waits.
HANGUP_POLL = 0.5
#: Signals whose disposition a command gets reset to the default (SIG_IGN survives exec).
RESET_SIGNALS = tuple(
    getattr(signal, name)
    for name in (
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGPIPE",
        "SIGTERM",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGCHLD",
        "SIGUSR1",
        "SIGUSR2",
        "SIGALRM",
        "SIGXFSZ",
    )
    if hasattr(signal, name)
)
#: PATH for a command run as another user, as su - / login(1) set it.
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class ExecPolicy:
    """What the agent lets clients do."""

    #: Sessions at once; more wait for a free one.
    max_sessions: int = 32
    #: Run as another user (only possible when the agent runs as root).
    allow_user: bool = True
    #: Longest timeout, and the one used when the client gives none (None: no limit).
    max_timeout: float | None = None
    #: Largest output (stdout + stderr) per command (None: no limit).
    max_output: int | None = None
    kill_grace: float = KILL_GRACE
    #: Seconds for START to arrive.
    start_timeout: float = START_TIMEOUT
    #: Seconds to wait for output still in flight once the command exited.
    drain_wait: float = DRAIN_WAIT
    #: Bytes of stdin held per session for a command not reading it (then back-pressure).
    stdin_buffer: int = STDIN_BUFFER


def _winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


#: Signals CPython ignores at start-up and subprocess's ``restore_signals`` (on by default)
#: sets back to the default in every child, with or without a ``preexec_fn``.
RESTORED_SIGNALS = frozenset(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
)


def _signals_clean() -> bool:
    """True when a child started from this thread needs no signal reset of its own.

    Then the command can be spawned with no ``preexec_fn``, which lets CPython vfork()
    instead of copying the agent's page tables with fork() (about a millisecond per
    command, and more the larger the agent). A child exec'd without the reset keeps
    only what survives exec: ignored dispositions and the signal mask. So: no signal of
    RESET_SIGNALS ignored (but those restore_signals resets anyway), and an empty mask in
    this thread (a vfork child gets the mask of the thread that spawns it). Dispositions
    are read from the signal module, which sees the ones the agent started with and every
    change made through it; the agent loads no C code that sets dispositions behind it.
    """
    if signal.pthread_sigmask(signal.SIG_BLOCK, ()):
        return False
    return not any(
        signal.getsignal(sig) == signal.SIG_IGN
        for sig in RESET_SIGNALS
        if sig not in RESTORED_SIGNALS
    )


def _default_signals() -> None:  # pragma: no cover - runs in the child
    # Ignored dispositions and the mask survive exec: give the command a clean start.
    for sig in RESET_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _take_terminal() -> None:  # pragma: no cover - runs in the child
    _default_signals()
    # start_new_session made us a session leader; fd 0 is the PTY's slave side.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _pipe(size: int | None) -> tuple[int, int]:
    """A pipe (read end, write end), grown to *size* bytes where the system lets us."""
    r, w = os.pipe()
    if size is not None:
        grow_pipe(w, size)
    return r, w


def _close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _settle(tasks: list[asyncio.Task[Any]]) -> None:
    """Wait until every (cancelled) task in *tasks* has finished, even if we are
    cancelled meanwhile (then re-raise that once they have).

    The pumps unregister their fds from the loop as they finish: closing an fd first
    would let its number be reused by another session, whose registration the late
    unregister would then remove (seen as BlockingIOError, then KeyError in the
    selector, when the agent stopped under load).
    """
    cancelled = False
    pending = [t for t in tasks if not t.done()]
    while pending:
        try:
            await asyncio.wait(pending)
        except asyncio.CancelledError:
            cancelled = True
        pending = [t for t in pending if not t.done()]
    if cancelled:
        raise asyncio.CancelledError


def _hung_up(fd: int) -> bool:
    """True once the peer of socket *fd* has closed its end for good (or it failed)."""
    poller = select.poll()
    poller.register(fd, select.POLLHUP | select.POLLERR)
    return any(ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, ev in poller.poll(0))


async def _read_fd(fd: int) -> bytes:
    """Up to one chunk from a non-blocking fd; b"" at EOF (EIO is a PTY's EOF)."""
    while True:
        try:
            return os.read(fd, ep.CHUNK)
        except BlockingIOError:
            await wait_ready(fd)
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise


async def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await wait_ready(fd, writable=True)


async def _read_event(reader: asyncio.StreamReader) -> ep.Event | None:
    """The client's next event, None at EOF between frames.

    Read through exec's frame reader: the kind byte comes with the frame's header, so
    a STDIN frame's bytes are the very object the stream hands over. Raises
    :class:`ProtocolError` for a malformed or cut frame.
    """
    got = await read_next(reader.readexactly, ep.FrameReader())
    return None if got is None else ep.decode_kind(*got)


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Session:
    def __init__(self, conn: Connection, start: ep.Start, policy: ExecPolicy) -> None:
        self.conn = conn
        self.start = start
        self.policy = policy
        self.proc: asyncio.subprocess.Process | None = None
        #: The PTY's master side (stdin and output both), when the client asked for one.
        self.master: int | None = None
        #: Our ends of the command's stdin and output (non-blocking; closed by _close_fds).
        self.stdin_fd: int | None = None
        self.outputs: list[tuple[int, int]] = []  # (fd, 1 for stdout / 2 for stderr)
        self.sent = 0
        self.cap = min(
            (c for c in (start.max_output, policy.max_output) if c is not None), default=None
        )
        self.truncated = False
        self.timed_out = False
        self.write_lock = asyncio.Lock()
        #: stdin on its way to the command, written by _feed_stdin (b"" marks EOF).
        self.stdin_queue: deque[bytes] = deque()
        self.stdin_queued = 0
        self.stdin_more = asyncio.Event()
        self.stdin_room = asyncio.Event()
        self.stdin_room.set()

    async def send(self, event: ep.Event) -> None:
        async with self.write_lock:
            await self.conn.write(ep.frame(event))

    async def send_output(self, fd: int, data: bytes) -> None:
        """An output frame: *data* copied once, behind its head (a gathered write to
        the transport's socket measured no faster, see docs/agent.md)."""
        head = ep.data_head(ep.STDOUT if fd == 1 else ep.STDERR, len(data))
        async with self.write_lock:
            await self.conn.write(head + data)

    # -- starting -------------------------------------------------------------------
    def _prepare(self) -> tuple[dict[str, str], dict[str, Any], str]:
        start = self.start
        kwargs: dict[str, Any] = {}
        account = None
        if start.user is not None:
            try:
                account = pwd.getpwnam(start.user)
            except KeyError:
                raise _Refused("no_user", f"no user {start.user!r:.60} here") from None
            if account.pw_uid != os.geteuid():
                if not self.policy.allow_user:
                    raise _Refused(
                        "forbidden",
                        "this agent does not run commands as other users (exec.allow_user = false)",
                    )
                if os.geteuid() != 0:
                    raise _Refused(
                        "forbidden",
                        f"the agent runs as uid {os.geteuid()}, not "
                        f"root, so it cannot run commands as {start.user!r:.60}",
                    )
                kwargs.update(
                    user=account.pw_uid,
                    group=account.pw_gid,
                    extra_groups=os.getgrouplist(account.pw_name, account.pw_gid),
                )
        else:
            with contextlib.suppress(KeyError):
                account = pwd.getpwuid(os.geteuid())
        if account is not None and start.user is not None:
            # As su - / sudo -i: the target user's minimal environment, never the
            # agent's (its variables may point at the agent's files, or be secrets).
            env = {
                "HOME": account.pw_dir,
                "USER": account.pw_name,
                "LOGNAME": account.pw_name,
                "SHELL": account.pw_shell or "/bin/sh",
                "PATH": ROOT_PATH if account.pw_uid == 0 else USER_PATH,
            }
        else:
            env = dict(os.environ)
        for name in start.unset:
            env.pop(name, None)
        if start.tty is not None:
            env["TERM"] = start.tty.term
        env.update(start.env)
        cwd = start.cwd
        if cwd is None:
            home = account.pw_dir if account is not None else "/"
            cwd = home if os.path.isdir(home) else "/"
        elif not os.path.isdir(cwd):
            raise _Refused("bad_cwd", f"working directory {cwd!r:.80} does not exist here")
        return env, kwargs, cwd

    async def _spawn(self) -> None:
        env, kwargs, cwd = self._prepare()
        argv = self.start.argv
        tty = self.start.tty
        theirs: list[int] = []  # the child's ends, closed here once it has them
        try:
            if tty is not None:
                self.master, slave = pty.openpty()
                theirs.append(slave)
                _winsize(slave, tty.rows, tty.cols)
                self.stdin_fd = self.master
                self.outputs = [(self.master, 1)]
                kwargs.update(stdin=slave, stdout=slave, stderr=slave, preexec_fn=_take_terminal)
            else:
                # Our own pipes rather than asyncio's: sized for streaming, and read and
                # written straight, with no stream buffer copying every byte once more.
                child_in, self.stdin_fd = _pipe(PIPE_SIZE)
                theirs.append(child_in)
                out, child_out = _pipe(PIPE_SIZE)
                self.outputs.append((out, 1))
                theirs.append(child_out)
                err, child_err = _pipe(None)
                self.outputs.append((err, 2))
                theirs.append(child_err)
                kwargs.update(stdin=child_in, stdout=child_out, stderr=child_err)
                if not _signals_clean():
                    kwargs.update(preexec_fn=_default_signals)
            for fd, _ in self.outputs:
                os.set_blocking(fd, False)
            os.set_blocking(self.stdin_fd, False)
            self.proc = await asyncio.create_subprocess_exec(
                *argv, env=env, cwd=cwd, start_new_session=True, **kwargs
            )
        except FileNotFoundError:
            raise _Refused("not_found", f"{argv[0]}: command not found") from None
        except PermissionError:
            raise _Refused("not_executable", f"{argv[0]}: permission denied") from None
        except OSError as exc:
            raise _Refused("spawn_failed", f"{argv[0]}: {exc.strerror or exc}") from None
        finally:
            for fd in theirs:
                _close(fd)

    # -- running --------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self._spawn()
        except _Refused as exc:
            self._close_fds()
            await self.send(ep.Error(exc.code, exc.message))
            return
        proc = self.proc
        assert proc is not None
        pgid = proc.pid  # a new session: its leader's pid is the group's id
        loop = asyncio.get_running_loop()
        timers: list[asyncio.TimerHandle] = []
        outputs: list[asyncio.Task[None]] = []
        helpers: list[asyncio.Task[None]] = []
        try:
            # Inside the try: a client gone before STARTED still takes the group along.
            await self.send(ep.Started(proc.pid))
            timeout = self.start.timeout
            if self.policy.max_timeout is not None:
                timeout = min(timeout or self.policy.max_timeout, self.policy.max_timeout)
            if timeout is not None:
                timers.append(loop.call_later(timeout, self._on_timeout, pgid, timers))
            outputs += [
                asyncio.create_task(self._pump_output(fd, kind, pgid)) for fd, kind in self.outputs
            ]
            helpers += [
                asyncio.create_task(self._pump_client(pgid)),
                asyncio.create_task(self._feed_stdin()),
            ]
            code = await proc.wait()
            # The command is over: so is its group (nothing it left keeps our pipes).
            _killpg(pgid, signal.SIGKILL)
            _, late = await asyncio.wait(outputs, timeout=self.policy.drain_wait)
            for task in late:
                task.cancel()
            for task in outputs:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            exit_event = ep.Exit(
                code if code >= 0 else None,
                -code if code < 0 else None,
                self.timed_out,
                self.truncated,
            )
            await self.send(exit_event)
        finally:
            for timer in timers:
                timer.cancel()
            for task in (*helpers, *outputs):
                task.cancel()
            try:
                if proc.returncode is None:
                    # We are leaving before the command ended (client gone, agent stopping).
                    _killpg(pgid, signal.SIGKILL)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(asyncio.shield(proc.wait()), 5)
            finally:
                try:
                    await _settle([*helpers, *outputs])
                finally:
                    self._close_fds()

    def _close_fds(self) -> None:
        # The PTY's master is both stdin_fd and an output: closed once.
        for fd in {self.stdin_fd, *(fd for fd, _ in self.outputs)}:
            _close(fd)
        self.stdin_fd = self.master = None
        self.outputs = []

    def _on_timeout(self, pgid: int, timers: list[asyncio.TimerHandle]) -> None:
        self.timed_out = True
        self.conn.log.info("command %r timed out for %s", self.start.argv[0], self.conn.peer)
        _killpg(pgid, signal.SIGTERM)
        timers.append(
            asyncio.get_running_loop().call_later(
                self.policy.kill_grace, _killpg, pgid, signal.SIGKILL
            )
        )

    async def _emit(self, fd: int, data: bytes, pgid: int) -> bool:
        """Send output within the cap; False once the cap is reached."""
        if self.truncated:
            return False
        if self.cap is not None and self.sent + len(data) > self.cap:
            data = data[: self.cap - self.sent]
            self.truncated = True
            _killpg(pgid, signal.SIGKILL)
        self.sent += len(data)
        if data:
            await self.send_output(fd, data)
        return not self.truncated

    async def _pump_output(self, source: int, fd: int, pgid: int) -> None:
        """Output read from *source* (a pipe or the PTY) goes out as *fd*'s frames."""
        while True:
            data = await _read_fd(source)
            if not data or not await self._emit(fd, data, pgid):
                return

    async def _pump_client(self, pgid: int) -> None:
        proc = self.proc
        assert proc is not None
        reader = self.conn.reader
        while True:
            why = "EOF"
            if not self.stdin_room.is_set() and not await self._wait_for_room():
                event, why = None, "hung up while its stdin waited"
            else:
                try:
                    event = await _read_event(reader)
                except (ConnectionError, ProtocolError) as exc:
                    event, why = None, str(exc)
            if event is None:
                # The client vanished (or broke the protocol): its command goes too.
                self.conn.log.info(
                    "client %s gone (%s): killing process group %d", self.conn.peer, why, pgid
                )
                _killpg(pgid, signal.SIGKILL)
                return
            if isinstance(event, ep.Stdin):
                self._queue_stdin(event.data)
            elif isinstance(event, ep.StdinEof):
                if self.master is not None:
                    # A terminal has no half-close: EOF is the VEOF character (Ctrl-D).
                    with contextlib.suppress(OSError):
                        self._queue_stdin(termios.tcgetattr(self.master)[6][termios.VEOF])
                else:
                    self._queue_stdin(b"")
            elif isinstance(event, ep.Resize):
                if self.master is not None:
                    with contextlib.suppress(OSError):
                        _winsize(self.master, event.rows, event.cols)
            elif isinstance(event, ep.Signal):
                target = pgid
                if self.master is not None:
                    with contextlib.suppress(OSError):
                        target = os.tcgetpgrp(self.master)
                _killpg(target, event.signo)
            else:
                self.conn.log.warning(
                    "client %s sent %s during a session; ignored",
                    self.conn.peer,
                    type(event).__name__,
                )

    async def _wait_for_room(self) -> bool:
        """Wait until the stdin buffer has room; False if the client hung up meanwhile.

        The client is not read meanwhile (that is the back-pressure), so its hang-up
        is looked for on the socket itself.
        """
        sock = self.conn.writer.get_extra_info("socket")
        while not self.stdin_room.is_set():
            if sock is not None and _hung_up(sock.fileno()):
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stdin_room.wait(), HANGUP_POLL)
        return True

    def _queue_stdin(self, data: bytes) -> None:
        if self.stdin_fd is None:
            return  # stdin was closed (STDIN_EOF came first): nothing reads this
        self.stdin_queue.append(data)
        self.stdin_queued += len(data)
        self.stdin_more.set()
        if self.stdin_queued >= self.policy.stdin_buffer:
            self.stdin_room.clear()

    async def _feed_stdin(self) -> None:
        """Write the queued stdin to the command, in order; b"" closes it."""
        while True:
            await self.stdin_more.wait()
            while self.stdin_queue:
                data = self.stdin_queue[0]
                fd = self.stdin_fd
                if fd is not None and not data and self.master is None:
                    _close(fd)
                    self.stdin_fd = None
                elif fd is not None:
                    try:
                        await _write_fd(fd, data)
                    except OSError:
                        # The command closed its stdin: what is left has no reader.
                        if self.master is None:
                            _close(fd)
                            self.stdin_fd = None
                self.stdin_queue.popleft()
                self.stdin_queued -= len(data)
                if self.stdin_queued < self.policy.stdin_buffer:
                    self.stdin_room.set()
                if self.stdin_fd is None:
                    self.stdin_queue.clear()
                    self.stdin_queued = 0
                    self.stdin_room.set()
            self.stdin_more.clear()


class ExecServer:
    """The exec handler with its policy; ``Service(..., ExecServer(policy))``."""

    def __init__(self, policy: ExecPolicy | None = None) -> None:
        self.policy = policy or ExecPolicy()
        self._slots: asyncio.Semaphore | None = None

    async def __call__(self, conn: Connection) -> None:
        try:
            body = await asyncio.wait_for(
                read_frame(conn.reader, ep.MAX_FRAME), self.policy.start_timeout
            )
            if body is None:
                return
            start = ep.decode(body)
        except asyncio.TimeoutError:
            conn.log.info("closed %s: no START within %g s", conn.peer, self.policy.start_timeout)
            with contextlib.suppress(OSError):
                await conn.write(
                    ep.frame(
                        ep.Error("timeout", f"no START within {self.policy.start_timeout:g} s")
                    )
                )
            return
        except ProtocolError as exc:
            await conn.write(ep.frame(ep.Error("bad_request", str(exc))))
            return
        if not isinstance(start, ep.Start):
            await conn.write(ep.frame(ep.Error("bad_request", "a session begins with START")))
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.policy.max_sessions)
        async with self._slots:
            conn.log.info(
                "%s runs %r%s", conn.peer, start.argv[0], " on a pty" if start.tty else ""
            )
            await _Session(conn, start, self.policy).run()
        # The client may still be sending stdin the command never read: EXIT (or ERROR)
        # must not be lost to the reset a close with unread bytes would send.
        await conn.linger()


def exec_service(
    *, port: int = EXEC_PORT, allow: Any = None, policy: ExecPolicy | None = None
) -> Service:
    """The exec service (no idle timeout: a command may be silent for hours)."""
    return Service(
        "hvsock exec",
        port,
        ExecServer(policy),
        allow=allow,
        limits=Limits(idle_timeout=None, max_connections=(policy or ExecPolicy()).max_sessions * 4),
    )
