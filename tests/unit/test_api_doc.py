"""docs/api.md lists exactly what the top level and each namespace export."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import hvsock

API_DOC = Path(__file__).parents[2] / "docs" / "api.md"


def listed() -> dict[str, list[str]]:
    """Section ``## `hvsock.x``` -> the names its ``- **Group**: ...`` lines give."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in API_DOC.read_text(encoding="utf-8").splitlines():
        heading = re.fullmatch(r"## `(hvsock(?:\.\w+)?)`", line)
        if heading:
            current = heading.group(1)
            sections[current] = []
        elif line.startswith("- **") and current is not None:
            _, _, names = line.partition(":")
            # a name, not the words after it: `HybridVsockMuxer` (an emulated ...)
            sections[current] += re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", names))
    return sections


def test_the_page_has_the_top_level_and_every_namespace_once() -> None:
    headings = re.findall(r"^## `(hvsock(?:\.\w+)?)`$", API_DOC.read_text(encoding="utf-8"), re.M)
    assert len(headings) == len(set(headings))
    assert set(headings) == {"hvsock", *(f"hvsock.{n}" for n in hvsock._NAMESPACES)}


def test_each_section_lists_exactly_its_namespaces_all() -> None:
    for module_name, names in listed().items():
        module = importlib.import_module(module_name)
        assert len(names) == len(set(names)), f"{module_name}: a name listed twice"
        assert set(names) == set(module.__all__), module_name
