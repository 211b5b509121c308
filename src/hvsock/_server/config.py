"""Server config files (``agent.toml``, ``relay.toml``): one TOML reader, and every
problem reported at its line.

:func:`parse` reads the text (the one ``tomllib`` / ``tomli`` import); a
:class:`Problems` gathers what the server's own checks find, each at the line of
the table or key to blame (:class:`Lines`: tomllib gives no positions), so a user
sees every mistake at once, compiler-style (``agent.toml:6: ...``), and
:class:`ConfigError` carries them all.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from .._errors import ArgumentError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = ["ConfigError", "Lines", "Problems", "parse", "read"]

T = TypeVar("T")
#: A problem: the 1-based line it is on (None: no one line is to blame) and what is wrong.
Problem = tuple[int | None, str]


class ConfigError(ArgumentError):
    """The configuration is wrong; ``problems`` lists every ``(line, message)`` pair.

    Its text is one ``PATH:LINE: message`` line per problem (``PATH:-:`` where no
    line is to blame).
    """

    def __init__(self, path: str, problems: list[Problem]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}:{line or '-'}: {msg}" for line, msg in problems))


class Lines:
    """Where each table and key is written in a TOML text.

    A table is named as in its header (``"agent"``, ``"exec"``); the *n*-th
    (0-based) table of an array ``[[forward]]`` is ``"forward[n]"``; keys before
    any header are in the table ``""``.
    """

    _HEADER = re.compile(r"\s*(\[\[|\[)\s*([A-Za-z0-9_.-]+)\s*\]")
    _KEY = re.compile(r"\s*\"?([A-Za-z0-9_-]+)\"?\s*=")

    def __init__(self, text: str) -> None:
        self.tables: dict[str, int] = {}
        self.keys: dict[tuple[str, str], int] = {}
        arrays: dict[str, int] = {}
        table = ""
        for number, line in enumerate(text.splitlines(), 1):
            header = self._HEADER.match(line)
            if header:
                table = header.group(2)
                if header.group(1) == "[[":
                    index = arrays.get(table, 0)
                    arrays[table] = index + 1
                    table = f"{table}[{index}]"
                self.tables.setdefault(table, number)
                continue
            key = self._KEY.match(line)
            if key:
                self.keys.setdefault((table, key.group(1)), number)

    def of(self, table: str, key: str | None = None) -> int | None:
        """The line of *key* in *table*; the table's header when the key is not
        written there (or *key* is None); None for neither."""
        if key is not None and (table, key) in self.keys:
            return self.keys[(table, key)]
        return self.tables.get(table)


_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)")


def parse(text: str, path: str) -> tuple[dict[str, Any], Lines]:
    """The tables in *text* and where each key is. Raises :class:`ConfigError` with
    the line of a TOML syntax error."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        at = _AT.search(message)
        line = int(at.group(1)) if at else None
        if at:
            message = f"{message[: at.start()]} (column {at.group(2)})"
        raise ConfigError(path, [(line, f"not valid TOML: {message}")]) from None
    return data, Lines(text)


def read(path: str) -> str:
    """The text of the file *path*. Raises :class:`ConfigError` (no line) when it
    cannot be read."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(path, [(None, f"cannot read the configuration: {reason}")]) from None


class Problems:
    """What is wrong with one config file, gathered (not raised one by one)."""

    def __init__(self, path: str, lines: Lines) -> None:
        self.path = path
        self.lines = lines
        self.found: list[Problem] = []

    def add(self, message: str, table: str = "", key: str | None = None) -> None:
        """Note *message* at the line of *key* in *table* (see :meth:`Lines.of`)."""
        problem = (self.lines.of(table, key) if table or key else None, message)
        if problem not in self.found:
            self.found.append(problem)

    def check(
        self,
        check: Callable[[Any], T],
        value: object,
        table: str = "",
        key: str | None = None,
        label: str | None = None,
    ) -> tuple[bool, T | None]:
        """``(True, check(value))``; or ``(False, None)`` with the
        :class:`ArgumentError` *check* raised noted at *key*'s line, after *label*
        when given (for checks whose message does not name the key)."""
        try:
            return True, check(value)
        except ArgumentError as exc:
            self.add(f"{label} {exc}" if label else str(exc), table, key)
            return False, None

    def __bool__(self) -> bool:
        return bool(self.found)

    def raise_if_any(self) -> None:
        """Raise :class:`ConfigError` with every problem noted, if any."""
        if self.found:
            raise ConfigError(self.path, list(self.found))
