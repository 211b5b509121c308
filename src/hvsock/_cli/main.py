"""``hvsock`` command line: parse arguments, call the library, map errors to exit codes."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType, ModuleType

from .._version import __version__
from . import args as cliargs

# Not typing.TYPE_CHECKING (see args.py): start-up is paid on every call.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

#: The command groups (modules of this package), in the order ``hvsock --help`` lists
#: them. Each has ``COMMANDS`` (its command names) and ``add_commands(sub) -> {name:
#: handler}``, and keeps its top cheap: argparse and ``args``, the implementation
#: imported inside each handler (tests/unit/test_cli_imports.py checks).
EXTENSIONS = (
    "address_cmds",
    "socket_cmds",
    "service_cmds",
    "agent_cmds",
    "cp_cmds",
    "share_cmds",
    "kvp_cmds",
    "windows_cmds",
    "doctor_cmds",
    "relay_cmds",
    "tools_cmds",
    "selftest_cmds",
)
#: Command -> the group that adds it, so a command imports and builds only its own
#: group (a test checks this against each group's COMMANDS).
OWNER = {
    "service-id": "address_cmds",
    "port": "address_cmds",
    "addr": "address_cmds",
    "cid": "address_cmds",
    "connect": "socket_cmds",
    "listen": "socket_cmds",
    "demo": "service_cmds",
    "echo-server": "service_cmds",
    "ping": "service_cmds",
    "agent": "agent_cmds",
    "exec": "agent_cmds",
    "cp": "cp_cmds",
    "share": "share_cmds",
    "mount": "share_cmds",
    "kvp": "kvp_cmds",
    "register": "windows_cmds",
    "unregister": "windows_cmds",
    "services": "windows_cmds",
    "vms": "windows_cmds",
    "doctor": "doctor_cmds",
    "relay": "relay_cmds",
    "bench": "tools_cmds",
    "stress": "tools_cmds",
    "selftest": "selftest_cmds",
}


def group(name: str) -> ModuleType:
    """The command group module *name* (imported on first use)."""
    return importlib.import_module(f"{__package__}.{name}")


# Exit statuses, in one place (documented in docs/cli.md).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # bad arguments or a bad address
EXIT_UNSUPPORTED = 3  # family / transport missing here
EXIT_CONNECT = 4  # nothing listening, timed out, unreachable
EXIT_PROTOCOL = 5  # a peer broke the protocol
EXIT_PERMISSION = 6
EXIT_IN_USE = 7
EXIT_REGISTRY = 8  # a registration conflicts, or the registry refused it
EXIT_RESET = 9  # the peer reset the connection after connect: the stream is incomplete
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def _exit_codes() -> list[tuple[type[BaseException], int]]:
    """Error class -> exit status, most specific first. Built on first use, so a
    command that succeeds never imports the exception tree's module."""
    from .. import _errors as e

    return [
        (e.AddressError, EXIT_USAGE),
        (ValueError, EXIT_USAGE),
        (e.UnsupportedError, EXIT_UNSUPPORTED),
        (e.NothingListeningError, EXIT_CONNECT),
        (e.ConnectTimeoutError, EXIT_CONNECT),
        (e.UnreachableError, EXIT_CONNECT),
        (e.VmNotFoundError, EXIT_CONNECT),
        (e.HandshakeError, EXIT_PROTOCOL),
        (e.PermissionDeniedError, EXIT_PERMISSION),
        (e.AddressInUseError, EXIT_IN_USE),
        (e.RegistryError, EXIT_REGISTRY),
        (e.ConnectionResetByPeerError, EXIT_RESET),
    ]


class Terminated(Exception):
    """SIGTERM arrived: unwind like Ctrl-C so listeners clean up their files.

    The one rule: a long-running server (listen, relay, echo-server, bench server,
    agent) stops on SIGTERM and exits 0; any other command it cuts short exits 143.
    """


#: The library's spelling of an option in its messages, and the command line's.
_LIBRARY_HINTS = {
    " (or pass retries=N to wait for it)": ("retries", " (or pass --retries N to wait for it)"),
    " (pass retries=N)": ("retries", " (pass --retries N)"),
}


def cli_wording(message: str, args: argparse.Namespace) -> str:
    """*message* with the library's hints in the command's own spelling: a hint to an
    option this command has reads as that option; one it does not have is dropped."""
    for library, (dest, cli) in _LIBRARY_HINTS.items():
        message = message.replace(library, cli if hasattr(args, dest) else "")
    return message


def exit_code_for(exc: BaseException) -> int:
    for cls, code in _exit_codes():
        if isinstance(exc, cls):
            return code
    return EXIT_ERROR


def _groups_for(argv: Sequence[str] | None) -> tuple[str, ...]:
    """The command groups a parse of *argv* needs: only the named command's group, so
    a command builds (and imports) no parser but its own; every group for --help, a
    mistyped command or none; no group for a lone --version."""
    tokens = sys.argv[1:] if argv is None else list(argv)
    for token in tokens:
        if token == "--version":
            return ()
        if not token.startswith("-"):
            owner = OWNER.get(token)
            return (owner,) if owner is not None else EXTENSIONS
    return EXTENSIONS


def build_parser(argv: Sequence[str] | None = None, *, every: bool = True) -> cliargs.Parser:
    """The parser: with *every* false, only what parsing *argv* needs (see _groups_for)."""
    parser = cliargs.Parser(
        prog="hvsock",
        description=(
            "Hyper-V sockets and VM sockets from the command line. Addresses: "
            "vsock://CID:PORT, hvsock://VM/SERVICE, hybrid://UDS_PATH:PORT, "
            "tcp://HOST:PORT, unix://PATH."
        ),
    )
    parser.add_argument("--version", action="version", version=f"hvsock {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=cliargs.Parser
    )

    for name in EXTENSIONS if every else _groups_for(argv):
        COMMANDS.update(group(name).add_commands(sub))
    return parser


COMMANDS: dict[str, cliargs.Handler] = {}


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def main(
    argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run the CLI; return the exit status (never exits by itself)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = build_parser(argv, every=False).parse_args(argv)
    except cliargs.UsageError as exc:
        err.write(f"{exc}\n")
        return EXIT_USAGE
    except SystemExit as exc:  # --help / --version print and "exit" 0
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return COMMANDS[args.command](args, out, err)
    except (OSError, ValueError) as exc:
        from .._errors import HvsockError

        if isinstance(exc, BrokenPipeError) and not isinstance(exc, HvsockError):
            # Our reader went away (e.g. `hvsock addr ... | head -1`): nothing to report.
            return EXIT_OK
        if isinstance(exc, (HvsockError, ValueError)):
            err.write(f"hvsock: error: {cli_wording(str(exc), args)}\n")
            return exit_code_for(exc)
        err.write(f"hvsock: error: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        err.write("hvsock: interrupted\n")
        return EXIT_INTERRUPTED
    except Terminated:
        return EXIT_TERMINATED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
