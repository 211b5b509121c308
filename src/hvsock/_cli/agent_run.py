"""The guest agent and remote exec: ``hvsock agent``, ``hvsock exec``.

The work is in :mod:`hvsock._builtin.agent` and :mod:`hvsock._builtin.exec`; this module
parses arguments and drives the caller's terminal (raw mode, SIGWINCH, Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import selectors
import signal
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
#: Ctrl-C this many times in a row (without -t) gives up on the command and leaves.
GIVE_UP_AFTER = 3


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
            err.write(f"{args.check_config}:{line if line is not None else '-'}: "
                      f"warning: {message}\n")
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
            raise ArgumentError(f"--enable: no built-in {', '.join(map(quote, unknown))}; "
                                f"known: {', '.join(CATALOGUE)}")
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
                raise ArgumentError("--enable cp serves only the directories it is given: "
                                    "add --cp-root DIR (repeatable)")
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
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="hvsock agent: %(name)s: %(message)s", stream=err)
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
    """A pipe that becomes readable when one of *signals* arrives (and which ones)."""
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    seen: list[int] = []
    previous = {}

    def handler(signum: int, frame: FrameType | None) -> None:
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _terminal_size(fd: int) -> tuple[int, int]:
    size = os.get_terminal_size(fd)
    return size.lines, size.columns


def cmd_exec(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    command = list(args.argv)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ArgumentError("give a command after --")
    stdin_fd = sys.stdin.fileno()
    stdout_fd, stderr_fd = out.fileno(), err.fileno()
    term = None
    if args.tty:
        tty_fd = stdin_fd if os.isatty(stdin_fd) else stdout_fd
        rows, cols = _terminal_size(tty_fd) if os.isatty(tty_fd) else (24, 80)
        term = ep.Tty(rows, cols, os.environ.get("TERM", "xterm"))
    start = make_start(command, env=dict(args.env), unset=args.unset, cwd=args.cwd,
                       user=args.user, tty=term, timeout=args.timeout,
                       max_output=args.max_output)
    service = None if args.service == "none" else args.service
    out.flush()
    err.flush()
    try:
        session = ExecSession.open(args.address, start, service=service,
                                   connect_timeout=args.connect_timeout, retries=args.retries)
    except RemoteError as exc:
        err.write(f"hvsock: {exc.remote_message}\n")
        return EXIT_FAILED
    with session:
        raw = contextlib.nullcontext() if term is None or not os.isatty(stdin_fd) \
            else raw_terminal(stdin_fd)
        try:
            with raw:
                return _drive(session, args, stdin_fd, stdout_fd, stderr_fd, term is not None)
        except RemoteError as exc:
            err.write(f"hvsock: {exc.remote_message}\n")
            return {"not_found": EXIT_NOT_FOUND,
                    "not_executable": EXIT_NOT_EXECUTABLE}.get(exc.code, EXIT_FAILED)


def _drive(session: ExecSession, args: argparse.Namespace, stdin_fd: int, stdout_fd: int,
           stderr_fd: int, tty_mode: bool) -> int:
    """Pump stdin, output, resizes and Ctrl-C until the command's exit."""
    catch = [signal.SIGWINCH] if tty_mode else [signal.SIGINT]
    interrupts = 0
    with _wake_on(catch) as (wake, seen), selectors.DefaultSelector() as sel:
        sel.register(session.sock, selectors.EVENT_READ, "sock")
        sel.register(wake, selectors.EVENT_READ, "wake")
        if args.no_stdin:
            session.send(ep.StdinEof())
        else:
            with contextlib.suppress(ValueError, OSError):  # stdin may not be pollable
                sel.register(stdin_fd, selectors.EVENT_READ, "stdin")
        sinks = {1: stdout_fd, 2: stderr_fd}
        while True:
            for key, _ in sel.select():
                if key.data == "sock":
                    # The agent sends whole frames: reading one to its end does not stall.
                    event = session.read_event()
                    if isinstance(event, ep.Output):
                        _write_all(sinks[event.fd], event.data)
                    elif isinstance(event, ep.Exit):
                        return event.status
                    elif isinstance(event, ep.Error):
                        raise RemoteError(event.code, event.message)
                elif key.data == "stdin":
                    try:
                        data = os.read(stdin_fd, ep.CHUNK)
                    except OSError:
                        data = b""
                    if data:
                        session.send_stdin(data)
                    else:
                        sel.unregister(stdin_fd)
                        session.send(ep.StdinEof())
                else:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake, 512)
                    while seen:
                        sig = seen.pop(0)
                        if sig == signal.SIGWINCH:
                            with contextlib.suppress(OSError):
                                session.send(ep.Resize(*_terminal_size(stdin_fd)))
                        else:
                            interrupts += 1
                            if interrupts >= GIVE_UP_AFTER:
                                raise KeyboardInterrupt
                            session.send(ep.Signal(int(sig)))
