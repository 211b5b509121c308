"""Every ``hvsock.<name>`` that README.md and docs/*.md name exists, under that spelling.

A doc naming a function that was renamed, moved to a namespace or never written is
caught here: each dotted name is imported and looked up with warnings as errors, so a
deprecated top-level spelling (``hvsock.WILDCARD`` for ``hvsock.windows.WILDCARD``)
fails too. The few ``hvsock.<...>`` spellings that are not Python names are listed
with what they are.
"""

from __future__ import annotations

import importlib
import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: A dotted hvsock name: not part of a path (src/hvsock/..., /etc/hvsock/...) or a word.
NAME = re.compile(r"(?<![\w./-])hvsock(?:\.[A-Za-z_]\w*)+")

#: Spellings that are not Python names: prefix -> what it is.
NOT_PYTHON = {
    "hvsock.vm": "the Ansible collection (hvsock.vm.hvsock is its connection plugin)",
    "hvsock.exe": "the Windows command",
    "hvsock.yml": "the ending of an hvsock.vm.vms inventory file's name",
    "hvsock.yaml": "the ending of an hvsock.vm.vms inventory file's name",
    "hvsock.relay": "the relay's logger (the function moved to hvsock.forwarding.relay)",
    "hvsock.service": "the service framework's loggers, hvsock.service.<service name>",
}


#: ``from hvsock[.namespace] import a, b as c`` in a snippet.
FROM_IMPORT = re.compile(r"^\s*from (hvsock(?:\.\w+)*) import \(?([\w, ]+)")


def doc_names() -> list[tuple[str, int, str]]:
    found = []
    for path in DOCS:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            imported = FROM_IMPORT.match(line)
            if imported:
                for name in imported.group(2).split(","):
                    if name.split():
                        found.append(
                            (
                                path.relative_to(ROOT).as_posix(),
                                number,
                                f"{imported.group(1)}.{name.split()[0]}",
                            )
                        )
            for match in NAME.finditer(line):
                dotted = match.group(0)
                if any(dotted == p or dotted.startswith(p + ".") for p in NOT_PYTHON):
                    continue
                found.append((path.relative_to(ROOT).as_posix(), number, dotted))
    return found


def resolve(dotted: str) -> object:
    """Import the longest module prefix of *dotted*, then look up the rest as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for part in parts[cut:]:
            value = getattr(value, part)
        return value
    raise ModuleNotFoundError(dotted)


def test_the_docs_name_hvsock_things_at_all() -> None:
    names = {dotted for _, _, dotted in doc_names()}
    assert {"hvsock.connect", "hvsock.testing.HybridVsockMuxer"} <= names


@pytest.mark.parametrize(
    ("doc", "line", "dotted"), doc_names(), ids=lambda v: v if isinstance(v, str) else str(v)
)
def test_every_name_the_docs_use_exists(doc: str, line: int, dotted: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecated spelling is a stale doc too
        try:
            resolve(dotted)
        except (AttributeError, ImportError, DeprecationWarning) as exc:
            pytest.fail(f"{doc}:{line} names {dotted}, which does not resolve: {exc}")


def test_a_stale_name_is_caught() -> None:
    with pytest.raises(AttributeError):
        resolve("hvsock.kvp.AsyncKvpClient")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DeprecationWarning):
            resolve("hvsock.WILDCARD")
    assert NAME.findall("see src/hvsock/_core and /etc/hvsock/agent.toml, `hvsock.connect`") == [
        "hvsock.connect"
    ]
    imported = FROM_IMPORT.match("    from hvsock.windows import guest_view, host_view as hv")
    assert imported is not None
    assert imported.groups() == ("hvsock.windows", "guest_view, host_view as hv")
