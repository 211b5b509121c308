"""Registration as a script an administrator runs on the host: PowerShell or a .reg file.

Written anywhere (a user inside a Linux guest or WSL can make the host-side step).
The PowerShell script checks before it writes: it keeps an id registered under
another name, and removes only entries hvsock made (unless forced). A .reg file
cannot check anything, so :func:`parse_reg` reads one back for the tests' round
trip and for anyone who wants to see what a file would do.
"""

from __future__ import annotations

import ntpath
import posixpath
import re
from collections.abc import Sequence

from .._errors import RegistryError
from .registry import (
    ELEMENT_NAME,
    HKLM,
    MARKER_NAME,
    MARKER_VALUE,
    SERVICES_KEY,
    Change,
    Registration,
    RegistryEdit,
    Removal,
    describe_service,
)

FORMATS = ("ps1", "reg")
REG_HEADER = "Windows Registry Editor Version 5.00"
_REGEDIT4 = "REGEDIT4"

# PowerShell ends a single-quoted string at any of these, and reads two in a row
# as one literal (the second): so each is doubled.
_PS_QUOTES = "'\u2018\u2019\u201a\u201b"


def ps_quote(text: str) -> str:
    """*text* as a PowerShell single-quoted string (no expansion of $ or `)."""
    return "'" + "".join(c + c if c in _PS_QUOTES else c for c in text) + "'"


def reg_quote(text: str) -> str:
    r"""*text* as a .reg string: in double quotes, with \ and " escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


#: The file name the scripts' usage lines suggest when the caller names none.
DEFAULT_FILE = {"ps1": "hvsock-services.ps1", "reg": "hvsock-services.reg"}


def usage(fmt: str, filename: str | None = None) -> str:
    """The command that runs the export saved as *filename* (a default name if None)."""
    name = ntpath.basename(posixpath.basename(filename)) if filename else DEFAULT_FILE[fmt]
    if fmt == "ps1":
        return f"powershell -ExecutionPolicy Bypass -File .\\{name}"
    return f"reg import {name}"


def registration_script(
    changes: Sequence[Change], fmt: str = "ps1", *, filename: str | None = None
) -> str:
    """*changes* (:class:`Registration`, :class:`Removal`) as a ``"ps1"`` PowerShell
    script or a ``"reg"`` file, for an administrator to run on the Hyper-V host.
    *filename*: what the file will be called, for the script's usage comment.

    Works on any OS. Raises :class:`RegistryError` for an unknown *fmt*.
    """
    if fmt == "ps1":
        return to_ps1(changes, filename=filename)
    if fmt == "reg":
        return to_reg(changes)
    raise RegistryError(f"unknown export format {fmt!r}; use one of: " + ", ".join(FORMATS))


# -- PowerShell ----------------------------------------------------------------


def _ps_register(change: Registration) -> list[str]:
    sid, name = str(change.service_id), change.name
    q = ps_quote
    unmarked = (
        f"{sid} has a key but no {ELEMENT_NAME}, and hvsock did not make it; look at it in regedit"
    )
    return [
        f"# Register {q(name)} as {describe_service(change.service_id)}",
        f"$key = Join-Path $root {q(change.key_name)}",
        f"$old = (Get-ItemProperty -LiteralPath $key -ErrorAction SilentlyContinue).{ELEMENT_NAME}",
        "if ($null -eq $old) {",
        "    if (Test-Path -LiteralPath $key) {",
        f"        if ((Get-ItemProperty -LiteralPath $key).{MARKER_NAME} -cne "
        f"{q(MARKER_VALUE)}) {{",
        f"            throw {q(unmarked)}",
        "        }",
        "    } else {",
        f"        New-Item -Path $root -Name {q(change.key_name)} | Out-Null",
        "    }",
        f"    New-ItemProperty -LiteralPath $key -Name {q(MARKER_NAME)} -Value {q(MARKER_VALUE)} "
        "-PropertyType String -Force | Out-Null",
        f"    New-ItemProperty -LiteralPath $key -Name {q(ELEMENT_NAME)} -Value {q(name)} "
        "-PropertyType String -Force | Out-Null",
        f"    Write-Output {q(f'registered {sid} as {name}')}",
        f"}} elseif ($old -ceq {q(name)}) {{",
        f"    Write-Output {q(f'{sid} is already registered as {name}')}",
        "} else {",
        f"    throw ({q(f'{sid} is already registered as ')} + $old + "
        f"{q('; pick another service id, or remove that registration first')})",
        "}",
    ]


def _ps_remove(change: Removal) -> list[str]:
    sid = str(change.service_id)
    q = ps_quote
    lines = [
        f"# Remove the registration of {describe_service(change.service_id)}"
        + (" (even if hvsock did not make it)" if change.force else ""),
        f"$key = Join-Path $root {q(change.key_name)}",
        "if (Test-Path -LiteralPath $key) {",
    ]
    if not change.force:
        lines += [
            f"    if ((Get-ItemProperty -LiteralPath $key).{MARKER_NAME} -cne "
            f"{q(MARKER_VALUE)}) {{",
            f"        throw {q(sid + ' was not registered by hvsock; it is left alone')}",
            "    }",
        ]
    return [
        *lines,
        "    Remove-Item -LiteralPath $key",
        f"    Write-Output {q(f'removed {sid}')}",
        "} else {",
        f"    Write-Output {q(f'{sid} is not registered')}",
        "}",
    ]


def to_ps1(changes: Sequence[Change], *, filename: str | None = None) -> str:
    """A PowerShell script that makes *changes*, checking each first; its usage
    comment names *filename* (default ``hvsock-services.ps1``)."""
    lines = [
        "# Hyper-V socket service registration, written by hvsock.",
        "# Run it on the Hyper-V host in an elevated PowerShell (Run as administrator):",
        f"#   {usage('ps1', filename)}",
        "$ErrorActionPreference = 'Stop'",
        f"$root = {ps_quote('HKLM:' + chr(92) + SERVICES_KEY)}",
        "if (-not (Test-Path -LiteralPath $root)) {",
        "    throw ($root + ' does not exist: is Hyper-V enabled on this machine?')",
        "}",
    ]
    for change in changes:
        lines.append("")
        lines += _ps_register(change) if isinstance(change, Registration) else _ps_remove(change)
    return "\n".join(lines) + "\n"


# -- .reg ------------------------------------------------------------------------


def to_reg(changes: Sequence[Change]) -> str:
    """A .reg file that makes *changes* (``reg import FILE`` as administrator)."""
    lines = [REG_HEADER, ""]
    for change in changes:
        if isinstance(change, Registration):
            lines.append(
                f"; hvsock: register {reg_quote(change.name)} as "
                f"{describe_service(change.service_id)}"
            )
        else:
            lines.append(
                f"; hvsock: remove {describe_service(change.service_id)}, "
                "whatever made it (a .reg file cannot check)"
            )
        for edit in change.edits():
            if edit.delete:
                lines.append(f"[-{HKLM}\\{edit.key}]")
            else:
                lines.append(f"[{HKLM}\\{edit.key}]")
                lines += [f"{reg_quote(name)}={reg_quote(value)}" for name, value in edit.values]
        lines.append("")
    return "\n".join(lines) + "\n"


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _quoted(text: str, start: int, lineno: int) -> tuple[str, int]:
    """The .reg string starting at *text[start]* (a '"'), and the index after it."""
    out: list[str] = []
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            if i + 1 == len(text) or text[i + 1] not in '\\"':
                raise RegistryError(
                    f".reg line {lineno}: a backslash in a string must be "
                    'written \\\\ (or \\" for a quote)'
                )
            out.append(text[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    raise RegistryError(f".reg line {lineno}: a string is not closed with '\"'")


def parse_reg(text: str) -> list[RegistryEdit]:
    """The edits a .reg file makes, in order: keys (HKEY_LOCAL_MACHINE only) with
    string values, and key deletions ``[-KEY]``.

    Raises :class:`RegistryError`, naming the line, for anything else: other hives,
    other value types (dword, hex), default values, value deletions, bad syntax.
    """
    if not isinstance(text, str):
        raise RegistryError(f"a .reg file must be text, not {type(text).__name__}")
    lines = _LINE_BREAK.split(text.lstrip("\ufeff"))
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None or lines[first].strip() not in (REG_HEADER, _REGEDIT4):
        raise RegistryError(f"a .reg file starts with {REG_HEADER!r}")
    edits: list[RegistryEdit] = []
    key: str | None = None
    delete = False
    values: list[tuple[str, str]] = []

    def flush() -> None:
        if key is not None:
            edits.append(RegistryEdit(key, tuple(values), delete))

    for lineno, raw in enumerate(lines[first + 1 :], start=first + 2):
        line = raw.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise RegistryError(f".reg line {lineno}: a key line ends with ']'")
            flush()
            key, delete, values = _key_path(line[1:-1], lineno), line.startswith("[-"), []
            continue
        if key is None:
            raise RegistryError(f".reg line {lineno}: a value before any [key] line")
        if not line.startswith('"'):
            what = "a default value (@=)" if line.startswith("@") else repr(line[:40])
            raise RegistryError(
                f'.reg line {lineno}: {what} is not a "name"="value" line; '
                "hvsock reads named string values only"
            )
        name, end = _quoted(line, 0, lineno)
        rest = line[end:].lstrip()
        if not rest.startswith("="):
            raise RegistryError(f".reg line {lineno}: '=' must follow the value name")
        rest = rest[1:].lstrip()
        if not rest.startswith('"'):
            raise RegistryError(
                f".reg line {lineno}: value {name!r} is {rest[:20]!r}, not a string; "
                "hvsock reads string values only (dword, hex and '-' are not read)"
            )
        value, end = _quoted(rest, 0, lineno)
        if rest[end:].strip():
            raise RegistryError(f".reg line {lineno}: text after the value's closing quote")
        if delete:
            raise RegistryError(f".reg line {lineno}: a value under a deleted key [-...]")
        values.append((name, value))
    flush()
    return edits


def _key_path(text: str, lineno: int) -> str:
    path = text[1:] if text.startswith("-") else text
    root, sep, rest = path.partition("\\")
    if root.upper() not in (HKLM, "HKLM"):
        raise RegistryError(
            f".reg line {lineno}: key {path[:80]!r} is not under "
            f"{HKLM}; hvsock reads only that hive"
        )
    if not sep or not rest or any(not part for part in rest.split("\\")):
        raise RegistryError(f".reg line {lineno}: key {path[:80]!r} has an empty part")
    return rest
