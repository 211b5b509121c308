"""The guest agent and remote exec: ``hvsock agent``, ``hvsock exec``.

The work is in :mod:`hvsock._builtin.agent` and :mod:`hvsock._builtin.exec`; this module
parses arguments and drives the caller's terminal (raw mode, SIGWINCH, Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import logging
import os
import select
import selectors
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import TextIO

from .._builtin.agent import config as agent_config
from .._builtin.agent.host import CATALOGUE, build_agent
from .._builtin.exec.client import ExecSession, make_start
from .._core import exec_proto as ep
from .._core.addresses import Address, parse_address
from .._errors import ArgumentError, RemoteError
from .._validate import quote

EXIT_OK = 0
EXIT_CONFIG = 2  # --check-config found problems (a usage error, like bad arguments)
#: Like a shell's: the agent could not find / could not execute the command.
EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
#: The agent killed the command at --timeout (or its own limit): as timeout(1).
EXIT_TIMED_OUT = 124
#: Our output was closed early (EPIPE) and the command still exited 0: 128 + SIGPIPE,
#: what a local writer cut off by its reader gets.
EXIT_OUTPUT_CLOSED = 141
#: Ctrl-C this many times in a row (without -t) gives up on the command and leaves.
GIVE_UP_AFTER = 3
#: Bytes of frames waiting for the socket above which stdin is not read.
OUTBOX_HIGH = 1 << 20
#: Bytes read from the socket per wake-up before stdin and signals get their turn.
READ_BUDGET = 4 << 20


# -- hvsock agent -------------------------------------------------------------------


def cmd_agent(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.check_config:
        try:
            config = agent_config.load_config(args.check_config)
        except agent_config.ConfigError as exc:
            for line, message in exc.problems:
                err.write(f"{exc.path}:{line if line is not None else '-'}: {message}\n")
            return EXIT_CONFIG
        for line, message in config.warnings:
            err.write(
                f"{args.check_config}:{line if line is not None else '-'}: warning: {message}\n"
            )
        out.write(f"{args.check_config}: ok\n")
        for name in config.enabled:
            where = config.services[name].listen
            out.write(f"  {name}{f' (also on {where})' if where else ''}\n")
        return EXIT_OK
    if args.listen or args.enable:
        if not (args.listen and args.enable):
            raise ArgumentError("--listen and --enable go together (or use --config)")
        names = [n.strip() for n in args.enable.split(",") if n.strip()]
        unknown = [n for n in names if n not in CATALOGUE]
        if unknown:
            raise ArgumentError(
                f"--enable: no built-in {', '.join(map(quote, unknown))}; "
                f"known: {', '.join(CATALOGUE)}"
            )
        config = agent_config.default_config(names)
        config.listen = parse_address(args.listen)
        config.allow = args.allow
        if "qga" in names:
            # On one address the hello comes first; QGA clients do not send it.
            raise ArgumentError("qga needs its own address: use a config file with [qga] listen")
        if args.allow:
            # Typed on the command line next to --enable: it is exec's opt-in as well.
            for name in agent_config.SENSITIVE & set(names):
                config.services[name].allow = args.allow
        if "cp" in names:
            if not args.cp_root:
                raise ArgumentError(
                    "--enable cp serves only the directories it is given: "
                    "add --cp-root DIR (repeatable)"
                )
            config.services["cp"].options["roots"] = args.cp_root
        elif args.cp_root:
            raise ArgumentError("--cp-root goes with --enable cp")
        try:
            agent_config.validate(config)
        except agent_config.ConfigError as exc:
            raise ArgumentError("; ".join(message for _, message in exc.problems)) from None
    elif args.config is None and not os.path.exists(agent_config.DEFAULT_PATH):
        # No configuration at all: the defaults (info, health, time; exec off; host only).
        config = agent_config.default_config()
    else:
        config = agent_config.load_config(args.config or agent_config.DEFAULT_PATH)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="hvsock agent: %(name)s: %(message)s",
        stream=err,
    )
    for _, message in config.warnings:
        err.write(f"hvsock agent: warning: {message}\n")

    def ready(addresses: dict[str, Address]) -> None:
        for name, address in addresses.items():
            err.write(f"hvsock: {name} listening on {address}\n")
        err.flush()

    agent = build_agent(config, ready_file=args.ready_file, on_ready=ready)
    asyncio.run(agent.host.serve())
    return EXIT_OK


# -- hvsock exec --------------------------------------------------------------------


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Raw mode on *fd* for the block; the old mode back on every way out."""
    import termios  # POSIX only: imported here so the CLI loads on Windows
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSADRAIN)  # as ssh: keep what was typed ahead
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


@contextlib.contextmanager
def _wake_on(signals: Sequence[int]) -> Iterator[tuple[int, list[int]]]:
    """A pipe that becomes readable when one of *signals* arrives (and which ones).

    The :data:`GIVE_UP_AFTER`-th SIGINT raises :class:`KeyboardInterrupt` from the
    handler itself, so giving up works wherever the client is, a blocked write to
    a stalled stdout included.
    """
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    seen: list[int] = []
    previous = {}
    interrupts = 0

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupts
        if signum == signal.SIGINT:
            interrupts += 1
            if interrupts >= GIVE_UP_AFTER:
                raise KeyboardInterrupt
        seen.append(signum)
        with contextlib.suppress(OSError):
            os.write(wfd, b"!")

    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, handler)
        yield rfd, seen
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        os.close(rfd)
        os.close(wfd)


def _write_all(fd: int, data: bytes) -> bool:
    """All of *data* to *fd*; False when its reader is gone (EPIPE)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:  # an fd someone left non-blocking: wait for room
            select.select([], [fd], [])
        except BrokenPipeError:
            return False
    return True


def _terminal_size(fd: int) -> tuple[int, int]:
    size = os.get_terminal_size(fd)
    return size.lines, size.columns


def _standard_fds() -> bool:
    """Make sure fds 0-2 are open (/dev/null where the caller closed one, as ssh does),
    so no socket of ours lands on them; True when stdin was closed (``<&-``)."""
    closed_stdin = sys.stdin is None
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed_stdin = closed_stdin or fd == 0
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    return closed_stdin


def cmd_exec(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    command = list(args.argv)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ArgumentError("give a command after --")
    stdin_closed = _standard_fds()
    stdin_fd = 0
    stdout_fd, stderr_fd = out.fileno(), err.fileno()
    term = None
    if args.tty:
        tty_fd = stdin_fd if os.isatty(stdin_fd) else stdout_fd
        rows, cols = _terminal_size(tty_fd) if os.isatty(tty_fd) else (24, 80)
        term = ep.Tty(rows, cols, os.environ.get("TERM", "xterm"))
    start = make_start(
        command,
        env=dict(args.env),
        unset=args.unset,
        cwd=args.cwd,
        user=args.user,
        tty=term,
        timeout=args.timeout,
        max_output=args.max_output,
    )
    service = None if args.service == "none" else args.service
    out.flush()
    err.flush()
    try:
        session = ExecSession.open(
            args.address,
            start,
            service=service,
            connect_timeout=args.connect_timeout,
            retries=args.retries,
            reserved_port=args.reserved_port,
        )
    except RemoteError as exc:
        err.write(f"hvsock: {exc.remote_message}\n")
        return EXIT_FAILED
    stdin = None if args.no_stdin or stdin_closed else stdin_fd
    with session:
        raw = (
            contextlib.nullcontext()
            if term is None or not os.isatty(stdin_fd)
            else raw_terminal(stdin_fd)
        )
        try:
            with raw:
                outcome, cut = _drive(session, stdin, stdout_fd, stderr_fd, term is not None)
        except RemoteError as exc:
            err.write(f"hvsock: {exc.remote_message}\n")
            return {"not_found": EXIT_NOT_FOUND, "not_executable": EXIT_NOT_EXECUTABLE}.get(
                exc.code, EXIT_FAILED
            )
    if outcome.timed_out:
        limit = f" after {args.timeout:g} s" if args.timeout else " (the agent's time limit)"
        err.write(f"hvsock: the command timed out{limit}; the agent killed it\n")
        return EXIT_TIMED_OUT
    if outcome.truncated:
        err.write("hvsock: the command's output reached the output limit; the agent stopped it\n")
    if cut and outcome.status == 0:
        return EXIT_OUTPUT_CLOSED  # its output was cut off: not a success
    return outcome.status


class _Outbox:
    """Frames for the agent, sent as the socket takes them (it never blocks the loop).

    Control frames (signals, resizes) go ahead of queued stdin, at the next frame
    boundary, so a Ctrl-C does not wait behind a megabyte of input.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames: collections.deque[list[memoryview]] = collections.deque()
        self.size = 0
        self._head_started = False  # part of the first frame went already

    def put(self, parts: Sequence[bytes | memoryview], urgent: bool = False) -> None:
        views = [memoryview(p).cast("B") for p in parts if len(p)]
        self.size += sum(len(v) for v in views)
        if urgent:
            self.frames.insert(1 if self._head_started else 0, views)
        else:
            self.frames.append(views)

    def flush(self) -> None:
        """Send what the socket takes now (``sendmsg`` of the queued heads and data:
        no joined copies); the rest waits for the socket to become writable."""
        while self.frames:
            iov = [view for frame in itertools.islice(self.frames, 32) for view in frame]
            try:
                sent = self.sock.sendmsg(iov)
            except (BlockingIOError, InterruptedError):
                return
            self.size -= sent
            while sent:
                first = self.frames[0]
                self._head_started = True
                if sent >= len(first[0]):
                    sent -= len(first[0])
                    del first[0]
                else:
                    first[0] = first[0][sent:]
                    sent = 0
                if not first:
                    self.frames.popleft()
                    self._head_started = False


class _Stdin:
    """The caller's stdin, whatever kind of fd it is: the one place that reads it.

    A pipe, socket, FIFO or terminal is read when the selector says it is readable.
    What the selector refuses (epoll takes no regular file, no /dev/null) is read
    directly: such reads never block. No stdin (``-n``, or closed with ``<&-``) is
    an EOF sent at once.
    """

    def __init__(self, fd: int | None, sel: selectors.BaseSelector) -> None:
        self.fd = fd
        self.sel = sel
        self.open = fd is not None
        self.pollable = False
        self.registered = False
        if fd is not None:
            try:
                sel.register(fd, selectors.EVENT_READ, "stdin")
            except (OSError, ValueError):
                pass  # not pollable: a regular file or the like, read directly
            else:
                self.pollable = self.registered = True

    def want(self, wanted: bool) -> None:
        """Poll stdin or not (not while the socket has a backlog to send)."""
        if self.pollable and self.open and wanted != self.registered:
            if wanted:
                self.sel.register(self.fd, selectors.EVENT_READ, "stdin")  # type: ignore[arg-type]
            else:
                self.sel.unregister(self.fd)  # type: ignore[arg-type]
            self.registered = wanted

    def read(self) -> bytes | None:
        """Up to a chunk; b"" at EOF (or a read error: nothing more will come);
        None when nothing is there after all."""
        assert self.fd is not None
        try:
            data = os.read(self.fd, ep.CHUNK)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if not data:
            self.want(False)
            self.open = False
        return data


def _drive(
    session: ExecSession, stdin_fd: int | None, stdout_fd: int, stderr_fd: int, tty_mode: bool
) -> tuple[ep.Exit, bool]:
    """Pump stdin, output, resizes and Ctrl-C until the command's exit; return it and
    whether our output was cut off (EPIPE). Both directions always flow: the socket
    is non-blocking, stdin is read only while what was read so far has gone out."""
    proto, sock = session.proto, session.sock
    sock.setblocking(False)
    outbox = _Outbox(sock)
    sinks = {1: stdout_fd, 2: stderr_fd}
    cut: set[int] = set()
    catch = [signal.SIGWINCH] if tty_mode else [signal.SIGINT]
    with _wake_on(catch) as (wake, seen), selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ, "sock")
        sel.register(wake, selectors.EVENT_READ, "wake")
        stdin = _Stdin(stdin_fd, sel)
        if not stdin.open:
            outbox.put([proto.send(ep.StdinEof())])
        while True:
            room = outbox.size < OUTBOX_HIGH
            stdin.want(room)
            direct = stdin.open and not stdin.pollable and room
            sel.modify(
                sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if outbox.size else 0), "sock"
            )
            ready = sel.select(0 if direct else None)
            if direct:
                ready.append(
                    (
                        selectors.SelectorKey(
                            stdin_fd,  # type: ignore[arg-type]
                            stdin_fd,  # type: ignore[arg-type]
                            selectors.EVENT_READ,
                            "stdin",
                        ),
                        selectors.EVENT_READ,
                    )
                )
            for key, mask in ready:
                if key.data == "sock":
                    if mask & selectors.EVENT_WRITE:
                        outbox.flush()
                    if mask & selectors.EVENT_READ:
                        for event in _pull(sock, proto):
                            if isinstance(event, ep.Output):
                                if event.fd not in cut and not _write_all(
                                    sinks[event.fd], event.data
                                ):
                                    if not cut and proto.state != ep.DONE:
                                        # As a local pipeline: the writer gets SIGPIPE.
                                        outbox.put(
                                            [proto.send(ep.Signal(signal.SIGPIPE))], urgent=True
                                        )
                                    cut.add(event.fd)
                            elif isinstance(event, ep.Exit):
                                return event, bool(cut)
                            elif isinstance(event, ep.Error):
                                raise RemoteError(event.code, event.message)
                elif key.data == "stdin":
                    data = stdin.read()
                    if data:
                        outbox.put([proto.stdin_head(len(data)), data])
                    elif data is not None:
                        outbox.put([proto.send(ep.StdinEof())])
                else:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake, 512)
                    while seen:
                        sig = seen.pop(0)
                        if sig == signal.SIGWINCH:
                            with contextlib.suppress(OSError):
                                outbox.put(
                                    [
                                        proto.send(
                                            ep.Resize(
                                                *_terminal_size(
                                                    stdin_fd if stdin_fd is not None else stdout_fd
                                                )
                                            )
                                        )
                                    ],
                                    urgent=True,
                                )
                        else:
                            outbox.put([proto.send(ep.Signal(int(sig)))], urgent=True)
            outbox.flush()


def _pull(sock: socket.socket, proto: ep.ClientSession) -> Iterator[ep.Event]:
    """The events that the socket's waiting bytes complete, up to :data:`READ_BUDGET`
    bytes (then stdin and signals get their turn). Each recv asks for the rest of a
    head or body: a whole data frame is the recv's own bytes, not copied."""
    got = 0
    while got < READ_BUDGET and proto.state != ep.DONE:
        try:
            data = sock.recv(proto.wanted())
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionError:
            data = b""
        yield from proto.receive(data)
        got += len(data)
