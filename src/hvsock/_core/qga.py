"""The qemu-guest-agent wire protocol, sans I/O.

Requests are JSON objects ``{"execute": NAME, "arguments": {...}, "id": ANY}``
sent back to back (a newline after each is usual but not needed); answers are
``{"return": VALUE}`` or ``{"error": {"class": C, "desc": D}}`` and a newline,
with the request's ``id`` echoed when it had one. A 0xFF byte from the client
throws away a half-read request (qemu-ga answers it with a parse error, so do
we); ``guest-sync-delimited`` puts a 0xFF byte before its answer so the client
can skip whatever was in flight. The texts below follow qemu-ga 7.2's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__: list[str] = []  # internal: the public names live in hvsock.__init__

SENTINEL = b"\xff"
#: Largest request we buffer (qemu-ga's JSON lexer caps a token at 64 MiB).
MAX_REQUEST = 64 * 1024 * 1024
#: qemu-ga's answer to a request past that size.
TOO_LARGE = "JSON token size limit exceeded"
_MISSING: Any = object()
_ALLOWED_KEYS = ("execute", "arguments", "id")
_OUTSIDE = re.compile(rb'[{}\[\]"\xff]')
_INSIDE = re.compile(rb'["\\\xff]')
_NOT_SPACE = re.compile(rb"[^ \t\r\n]")
_BARE_END = re.compile(rb"[ \t\r\n{\[\xff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Command:
    """One parsed request. ``id`` is ``None`` when the request had none."""

    execute: str
    arguments: dict[str, Any]
    id: Any = None
    has_id: bool = False


@dataclass(frozen=True)
class BadInput:
    """Input that is not a request; answer ``GenericError`` with ``desc``.

    *fatal*: answer, then close the connection (a request past the size cap).
    """

    desc: str
    fatal: bool = False


Item = Command | BadInput


class QgaError(Exception):
    """An error answer: ``class`` and ``desc`` as qemu-ga names them."""

    def __init__(self, cls: str, desc: str) -> None:
        super().__init__(desc)
        self.cls = cls
        self.desc = desc


def check_request(obj: object) -> Command:
    """A request object checked like qemu-ga's dispatcher; raises :class:`QgaError`."""
    if not isinstance(obj, dict):
        raise QgaError("GenericError", "QMP input must be a JSON object")
    for key in obj:
        if key not in _ALLOWED_KEYS:
            raise QgaError("GenericError", f"QMP input member '{key}' is unexpected")
    if "execute" not in obj:
        raise QgaError("GenericError", "QMP input lacks member 'execute'")
    if not isinstance(obj["execute"], str):
        raise QgaError("GenericError", "QMP input member 'execute' must be a string")
    args = obj.get("arguments", {})
    if not isinstance(args, dict):
        raise QgaError("GenericError", "QMP input member 'arguments' must be an object")
    return Command(obj["execute"], args, obj.get("id"), "id" in obj)


class Parser:
    """Incremental: ``feed(data)`` returns the requests (and bad inputs) *data* completes.

    Every byte is scanned once: the scan state (where the pending request starts, how far
    it was scanned, nesting, inside a string or a bare token) survives between feeds, so
    a request that arrives in many reads costs what it would in one. Past *max_request*
    pending bytes the parser answers qemu-ga's "token size limit" error as a fatal
    :class:`BadInput` and takes nothing more.
    """

    def __init__(self, max_request: int = MAX_REQUEST) -> None:
        self.max_request = max_request
        self._buf = bytearray()
        self._start = 0  # where the pending request begins
        self._pos = 0  # scanned up to here
        self._depth = 0
        self._in_string = False
        self._bare = False  # inside a token that is not an object or an array
        self.closed = False

    def feed(self, data: bytes) -> list[Item]:
        if self.closed:
            return []
        self._buf += data
        out: list[Item] = []
        while True:
            item = self._next()
            if item is None:
                break
            out.append(item)
        # Drop what was consumed once per feed, not once per request.
        del self._buf[: self._start]
        self._pos -= self._start
        self._start = 0
        if len(self._buf) > self.max_request:
            self._buf = bytearray()
            self._pos = self._depth = 0
            self._in_string = self._bare = False
            self.closed = True
            out.append(BadInput(TOO_LARGE, fatal=True))
        return out

    def _next(self) -> Item | None:
        buf = self._buf
        if self._depth == 0 and not self._bare:
            # Between requests: skip blanks; a bare token is an error up to the next blank.
            found = _NOT_SPACE.search(buf, self._start)
            if found is None:
                self._start = self._pos = len(buf)
                return None
            self._start = self._pos = found.start()
            first = buf[self._start]
            if first == 0xFF:
                self._start = self._pos = self._start + 1
                return BadInput("JSON parse error, stray '\ufffd'")
            if first not in b"{[":
                self._bare = True
        if self._bare:
            end = _BARE_END.search(buf, self._pos)
            if end is None:
                self._pos = len(buf)  # the token may go on; go on from here next time
                return None
            token = bytes(buf[self._start : end.start()]).decode("utf-8", "replace")
            self._start = self._pos = end.start()
            self._bare = False
            return _bare(token)
        while True:
            pattern = _INSIDE if self._in_string else _OUTSIDE
            match = pattern.search(buf, self._pos)
            if match is None:
                self._pos = len(buf)
                return None
            char = match.group()
            self._pos = match.end()
            if char == b"\xff":
                # The client's "forget what you have": drop the half-read request.
                self._start = self._pos
                self._depth = 0
                self._in_string = False
                return BadInput("JSON parse error, stray '\ufffd'")
            if self._in_string:
                if char == b"\\":
                    if self._pos >= len(buf):
                        self._pos -= 1  # look at the escape again with its next byte
                        return None
                    self._pos += 1
                else:
                    self._in_string = False
                continue
            if char == b'"':
                self._in_string = True
            elif char in (b"{", b"["):
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    text = bytes(buf[self._start : self._pos])
                    self._start = self._pos
                    return _parse(text)


def _bare(token: str) -> BadInput:
    try:
        json.loads(token)
    except ValueError:
        return BadInput(f"JSON parse error, invalid keyword '{token[:60]}'")
    return BadInput("QMP input must be a JSON object")


def _parse(text: bytes) -> Item:
    try:
        obj = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return BadInput(f"JSON parse error, {exc}")
    lone = _lone_surrogate(obj)
    if lone is not None:
        # json.loads keeps a lone \\uD800..\\uDFFF escape; qemu-ga refuses it, and no path,
        # argument or file name can carry one.
        return BadInput(f"JSON parse error, \\u{ord(lone):04x} is not a valid Unicode character")
    try:
        return check_request(obj)
    except QgaError as exc:
        return BadInput(exc.desc)


def _lone_surrogate(value: Any) -> str | None:
    """An unpaired surrogate in some string of *value* (keys too), or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found = _SURROGATE.search(item)
            if found:
                return found.group()
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _dump(obj: dict[str, Any]) -> bytes:
    # qemu-ga's spacing (", " and ": "), one answer per line.
    return json.dumps(obj, ensure_ascii=True).encode() + b"\n"


def format_return(value: Any, request_id: Any = _MISSING, *, delimited: bool = False) -> bytes:
    """``{"return": value}`` (and the request's id), 0xFF-prefixed when *delimited*."""
    obj: dict[str, Any] = {"return": value}
    if request_id is not _MISSING:
        obj["id"] = request_id
    return (SENTINEL if delimited else b"") + _dump(obj)


def format_error(cls: str, desc: str, request_id: Any = _MISSING) -> bytes:
    """``{"error": {"class": cls, "desc": desc}}`` (and the request's id)."""
    obj: dict[str, Any] = {"error": {"class": cls, "desc": desc}}
    if request_id is not _MISSING:
        obj["id"] = request_id
    return _dump(obj)


def answer_id(command: Command) -> Any:
    """What to pass as ``request_id`` for *command*: its id, or nothing."""
    return command.id if command.has_id else _MISSING


# -- argument checks in qemu-ga's words ---------------------------------------------


_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "str": (str,),
    "bool": (bool,),
    "list": (list,),
    "number": (int, float),
    "any": (object,),
}
_TYPE_NAMES = {
    "int": "integer",
    "str": "string",
    "bool": "boolean",
    "list": "array",
    "number": "number",
    "any": "any",
}


def check_arguments(args: dict[str, Any], schema: dict[str, tuple[str, bool]]) -> dict[str, Any]:
    """*args* checked against ``{name: (type, required)}``; raises :class:`QgaError`."""
    for name in args:
        if name not in schema:
            raise QgaError("GenericError", f"Parameter '{name}' is unexpected")
    for name, (kind, required) in schema.items():
        if name not in args:
            if required:
                raise QgaError("GenericError", f"Parameter '{name}' is missing")
            continue
        value = args[name]
        ok = isinstance(value, _TYPES[kind]) and not (
            kind in ("int", "number") and isinstance(value, bool)
        )
        if not ok:
            raise QgaError(
                "GenericError",
                f"Invalid parameter type for '{name}', expected: {_TYPE_NAMES[kind]}",
            )
    return args
