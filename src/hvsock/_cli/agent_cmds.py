"""``hvsock agent`` and ``hvsock exec``: the parsers.

Building the parser imports nothing heavy; the commands themselves live in
:mod:`hvsock._cli.agent_run` and load when one of them runs.
"""

from __future__ import annotations

import argparse
from typing import TextIO

from .._transports._common import DEFAULT_CONNECT_TIMEOUT
from . import args as cliargs
from .args import Handler, allow_rule, size

#: The agent's defaults, repeated so that building the parser imports nothing heavy
#: (tests/unit/test_cli_imports.py checks they match the library).
DEFAULT_CONFIG_PATH = "/etc/hvsock/agent.toml"
CATALOGUE_NAMES = ("exec", "info", "health", "time", "qga", "kvp", "cp")


def env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r:.60} is not NAME=VALUE")
    return name, value


#: The commands this group adds (main.py builds only the chosen command's group).
COMMANDS = ("agent", "exec")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add ``agent`` and ``exec`` to *sub*; return their handlers by name."""
    p = sub.add_parser(
        "agent",
        help="run the guest agent (exec, info, health, time, qga, ...)",
        description="Host the built-in services from a config file (default "
        f"{DEFAULT_CONFIG_PATH}), or with --listen/--enable for a try-out. Serves until "
        "SIGTERM / Ctrl-C. Access is limited to the host unless the config says otherwise; "
        "exec is off unless enabled. See docs/agent.md.",
    )
    p.add_argument("--config", metavar="FILE", help="configuration file (TOML)")
    p.add_argument(
        "--check-config",
        metavar="FILE",
        help="check FILE, print what is wrong line by line (or what it serves), exit",
    )
    p.add_argument(
        "--listen",
        metavar="ADDRESS",
        help="serve the --enable'd services on ADDRESS behind the service hello",
    )
    p.add_argument(
        "--enable",
        metavar="NAMES",
        help=f"comma-separated built-ins to serve: {', '.join(CATALOGUE_NAMES)}",
    )
    p.add_argument(
        "--allow",
        action="append",
        metavar="RULE",
        type=allow_rule,
        help="with --listen: who may connect, to every enabled service, exec "
        "too (repeatable: 2, host:privileged, uid:N, 127.0.0.1; default: the "
        "host, for exec only root on the host; this uid and root for unix://)",
    )
    p.add_argument(
        "--cp-root",
        action="append",
        metavar="DIR",
        help="with --enable cp: a directory cp serves (repeatable)",
    )
    p.add_argument("--ready-file", help="write JSON {pid, services} here once listening")
    p.add_argument("-v", "--verbose", action="store_true", help="log each connection")

    p = sub.add_parser(
        "exec",
        help="run a command through an hvsock agent, like ssh",
        description="Run COMMAND on the agent at ADDRESS; its output streams live, stdin "
        "(any kind: a pipe, a file, /dev/null, a terminal, closed) is forwarded, Ctrl-C is "
        "sent as SIGINT (three in a row give up), and the exit status is the command's "
        "(128+N for a signal; 127 not found, 126 not executable, 124 timed out, 141 when "
        "our output was closed early). Options go before ADDRESS. "
        "Example: hvsock exec -t vsock://3:5100 -- bash",
    )
    p.add_argument("address")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND", help="-- COMMAND [ARGS...]")
    p.add_argument(
        "-t",
        "--tty",
        action="store_true",
        help="run on a PTY with this terminal's size and TERM (raw mode here)",
    )
    p.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="accepted for ssh/docker habits; stdin is always forwarded",
    )
    p.add_argument(
        "-n",
        "--no-stdin",
        action="store_true",
        help="do not read stdin: the command gets EOF at once (like ssh -n)",
    )
    p.add_argument(
        "-e",
        "--env",
        action="append",
        type=env_pair,
        default=[],
        metavar="NAME=VALUE",
        help="set a variable (repeatable)",
    )
    p.add_argument(
        "-u",
        "--unset",
        action="append",
        default=[],
        metavar="NAME",
        help="remove a variable (repeatable)",
    )
    p.add_argument("-C", "--cwd", help="working directory (default: the user's home)")
    p.add_argument("--user", help="run as this user (the agent must run as root)")
    p.add_argument(
        "--timeout",
        type=cliargs.positive_float,
        help="seconds before the agent kills the command's process group",
    )
    p.add_argument(
        "--max-output",
        type=size,
        help="bytes of output before the agent stops the command (e.g. 64M)",
    )
    p.add_argument(
        "--service",
        default="exec",
        help="service name in the hello (default exec); 'none' for an address "
        "that serves exec alone",
    )
    p.add_argument(
        "--connect-timeout", type=cliargs.positive_float, default=DEFAULT_CONNECT_TIMEOUT
    )
    p.add_argument(
        "--retries",
        type=cliargs.non_negative_int,
        default=0,
        help="retry a failed connect this many times (agents restarting)",
    )
    port = p.add_mutually_exclusive_group()
    port.add_argument(
        "--privileged-port",
        dest="reserved_port",
        action="store_const",
        const=True,
        default="try",
        help="on vsock, fail unless a reserved source port (<= 1023, root) can be "
        "bound; by default one is bound when possible, which an agent's "
        "host:privileged rule (exec's default) requires",
    )
    port.add_argument(
        "--no-privileged-port",
        dest="reserved_port",
        action="store_const",
        const=False,
        help="never bind a reserved source port",
    )
    return {"agent": cmd_agent, "exec": cmd_exec}


def cmd_agent(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from . import agent_run

    return agent_run.cmd_agent(args, out, err)


def cmd_exec(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from . import agent_run

    return agent_run.cmd_exec(args, out, err)
