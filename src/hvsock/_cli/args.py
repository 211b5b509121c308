"""Argument types and the parser class shared by every command module."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence

# Not typing.TYPE_CHECKING: every command imports this module, and typing costs more
# than the rest of it; mypy treats any constant of this name as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

    #: A command: (parsed arguments, stdout, stderr) -> exit status.
    Handler = Callable[[argparse.Namespace, TextIO, TextIO], int]
else:
    Handler = Callable[..., int]


#: The help of every positional ADDRESS that gives none of its own.
ADDRESS_HELP = (
    "vsock://CID:PORT, hvsock://VM/SERVICE, hybrid://UDS_PATH:PORT, "
    "tcp://HOST:PORT or unix://PATH (docs/addresses.md)"
)


class _CheckingFormatter(argparse.HelpFormatter):
    """The formatter argparse builds at every ``add_argument`` to check metavars.

    That check needs no terminal width, but argparse's formatter asks ``shutil`` for
    one, and importing shutil (with zlib, bz2 and lzma) costs `hvsock connect` a
    tenth of Python's start-up. Help and usage text use argparse's own formatter.
    """

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=80)


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _CheckingFormatter)
        super().__init__(*args, **kwargs)

    def _with_terminal_width(self, render: Callable[[], str]) -> str:
        checking = self.formatter_class
        if checking is _CheckingFormatter:
            self.formatter_class = argparse.HelpFormatter
        try:
            return render()
        finally:
            self.formatter_class = checking

    def format_usage(self) -> str:
        return self._with_terminal_width(super().format_usage)

    def format_help(self) -> str:
        return self._with_terminal_width(super().format_help)

    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse exits by itself; raise instead so main() maps it in one place.
        raise UsageError(f"{self.prog}: {message}\n{self.format_usage().strip()}")

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        if args == ("address",) and "help" not in kwargs:
            kwargs["help"] = ADDRESS_HELP
        return super().add_argument(*args, **kwargs)

    def parse_args(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        namespace: argparse.Namespace | None = None,
    ) -> argparse.Namespace:
        # argparse reports an unknown option from the top-level parser, with the
        # top-level usage; report it from the (sub)command it was given to.
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self._innermost(parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _innermost(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self
        for _ in range(8):  # nesting depth: command, then mode (bench client)
            chosen = None
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    chosen = action.choices.get(getattr(parsed, action.dest, None) or "")
            if chosen is None:
                break
            parser = chosen
        return parser


class UsageError(Exception):
    pass


def port(text: str) -> int:
    # The library's one number reader: ASCII digits only, any number of leading zeros.
    from .._core.ids import parse_number
    from .._errors import AddressError

    try:
        return parse_number(text, "port", 0, 0xFFFFFFFF)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def non_negative_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def mode(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode like 600") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"mode {text} is outside 000..777")
    return value


_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def size(text: str) -> int:
    """A byte count: 1000, 64K, 256M, 1GiB (binary multiples)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 4096, 64K, 256M or 1G")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number of seconds >= 0")
    return value


#: A server command's default --grace: _server.lifecycle.DEFAULT_GRACE, spelled out here
#: because every command imports this module and lifecycle pulls in asyncio
#: (tests/unit/test_cli_grace.py keeps the two equal).
DEFAULT_GRACE = 10.0


def add_grace(parser: argparse.ArgumentParser, what: str = "open connections") -> None:
    """The one ``--grace`` of every server command, so they all stop alike."""
    parser.add_argument(
        "--grace",
        type=non_negative_float,
        default=DEFAULT_GRACE,
        help=f"seconds {what} get to finish on SIGTERM / Ctrl-C; a second signal "
        f"cuts them (default {DEFAULT_GRACE:g})",
    )


def raise_open_files_limit() -> None:
    """Raise the soft open-files limit to the hard one: each relayed connection needs
    two sockets and, while bytes are in flight, up to two pipes."""
    import contextlib  # here, not at the top: every command imports this module

    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = 1 << 20
        if soft != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def plural(count: int, noun: str) -> str:
    """``1 byte``, ``2 bytes``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def print_json(obj: object, out: TextIO) -> None:
    import json

    out.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def allow_rule(text: str) -> int | str:
    """An --allow value: digits are a CID; anything else (host, uid:N, VM id) as is."""
    text = text.strip()
    return int(text) if text.isdigit() else text
