"""Argument types and the parser class shared by every command module."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any, TextIO

#: A command: (parsed arguments, stdout, stderr) -> exit status.
Handler = Callable[[argparse.Namespace, TextIO, TextIO], int]


#: The help of every positional ADDRESS that gives none of its own.
ADDRESS_HELP = ("vsock://CID:PORT, hvsock://VM/SERVICE, hybrid://UDS_PATH:PORT, "
                "tcp://HOST:PORT or unix://PATH (docs/addresses.md)")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse exits by itself; raise instead so main() maps it in one place.
        raise UsageError(f"{self.prog}: {message}\n{self.format_usage().strip()}")

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        if args == ("address",) and "help" not in kwargs:
            kwargs["help"] = ADDRESS_HELP
        return super().add_argument(*args, **kwargs)

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
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
    try:
        value = int(text, 0) if text[:2].lower() == "0x" else int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"port {value} is out of range 0..4294967295")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def non_negative_int(text: str) -> int:
    if not text.isdigit():
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




def plural(count: int, noun: str) -> str:
    """``1 byte``, ``2 bytes``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def print_json(obj: object, out: TextIO) -> None:
    out.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
