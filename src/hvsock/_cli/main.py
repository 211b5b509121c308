"""``hvsock`` command line: parse arguments, call the library, map errors to exit codes."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TextIO

from .._errors import (
    AddressError,
    AddressInUseError,
    ConnectionResetByPeerError,
    ConnectTimeoutError,
    HandshakeError,
    HvsockError,
    NothingListeningError,
    PermissionDeniedError,
    RegistryError,
    UnreachableError,
    UnsupportedError,
    VmNotFoundError,
)
from .._version import __version__
from . import (
    agent_cmds,
    cp_cmds,
    doctor_cmds,
    kvp_cmds,
    relay_cmds,
    selftest_cmds,
    service_cmds,
    socket_cmds,
    tools_cmds,
    windows_cmds,
)
from . import args as cliargs

#: The command groups, in the order ``hvsock --help`` lists them. Each module has
#: ``add_commands(sub) -> {name: handler}``. Keep these modules cheap to import:
#: argparse and ``args`` at the top, the implementation imported inside each handler,
#: so a command loads only what it runs (tests/unit/test_cli_imports.py checks).
EXTENSIONS = (
    socket_cmds, service_cmds, agent_cmds, cp_cmds, kvp_cmds, windows_cmds, doctor_cmds, relay_cmds,
    tools_cmds, selftest_cmds,
)

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

_EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (AddressError, EXIT_USAGE),
    (ValueError, EXIT_USAGE),
    (UnsupportedError, EXIT_UNSUPPORTED),
    (NothingListeningError, EXIT_CONNECT),
    (ConnectTimeoutError, EXIT_CONNECT),
    (UnreachableError, EXIT_CONNECT),
    (VmNotFoundError, EXIT_CONNECT),
    (HandshakeError, EXIT_PROTOCOL),
    (PermissionDeniedError, EXIT_PERMISSION),
    (AddressInUseError, EXIT_IN_USE),
    (RegistryError, EXIT_REGISTRY),
    (ConnectionResetByPeerError, EXIT_RESET),
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
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_ERROR


def build_parser() -> cliargs.Parser:
    parser = cliargs.Parser(prog="hvsock", description=(
        "Hyper-V sockets and VM sockets from the command line. Addresses: "
        "vsock://CID:PORT, hvsock://VM/SERVICE, hybrid://UDS_PATH:PORT, "
        "tcp://HOST:PORT, unix://PATH."))
    parser.add_argument("--version", action="version", version=f"hvsock {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=cliargs.Parser)

    for module in EXTENSIONS:
        COMMANDS.update(module.add_commands(sub))
    return parser


COMMANDS: dict[str, cliargs.Handler] = {}


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Run the CLI; return the exit status (never exits by itself)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = build_parser().parse_args(argv)
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
    except (HvsockError, ValueError) as exc:
        err.write(f"hvsock: error: {cli_wording(str(exc), args)}\n")
        return exit_code_for(exc)
    except KeyboardInterrupt:
        err.write("hvsock: interrupted\n")
        return EXIT_INTERRUPTED
    except Terminated:
        return EXIT_TERMINATED
    except BrokenPipeError:
        # Our reader went away (e.g. `hvsock addr ... | head -1`): nothing to report.
        return EXIT_OK
    except OSError as exc:
        err.write(f"hvsock: error: {exc}\n")
        return EXIT_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
