"""hvsock.__all__ is exactly the public surface, sorted, and every name in it resolves."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import types
import typing
from collections.abc import Iterator

import pytest

import hvsock
from hvsock import _errors
from hvsock._core import addresses


def public_names(module: types.ModuleType) -> set[str]:
    """Names a user can import: no leading underscore (plus __version__), no submodules."""
    names = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    if hasattr(module, "__version__"):
        names.add("__version__")
    return names


def isort_key(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps __all__ in: CONSTANTS, then Classes, then the rest."""
    if name.isupper():
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def test_all_is_exactly_the_public_names() -> None:
    exported = set(hvsock.__all__)
    for name in hvsock.__all__:  # load every lazy name, so vars() holds the whole surface
        getattr(hvsock, name)
    public = public_names(hvsock)
    assert public - exported == set(), "public but missing from __all__"
    assert exported - public == set(), "in __all__ but not a public name"


def test_all_has_no_duplicates_and_is_sorted() -> None:
    assert len(hvsock.__all__) == len(set(hvsock.__all__))
    assert hvsock.__all__ == sorted(hvsock.__all__, key=isort_key)


def test_every_name_resolves() -> None:
    for name in hvsock.__all__:
        assert getattr(hvsock, name) is not None, name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from hvsock import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(hvsock.__all__)
    for name, value in namespace.items():
        assert value is getattr(hvsock, name)


def test_version_matches_the_installed_distribution() -> None:
    assert hvsock.__version__ == importlib.metadata.version("hvsock")


def test_private_modules_all_lists_resolve() -> None:
    for module in (addresses, _errors):
        assert len(module.__all__) == len(set(module.__all__))
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"
            # what the package re-exports is the same object
            if name in hvsock.__all__:
                assert getattr(hvsock, name) is getattr(module, name)
    # every exception class the package defines is public
    errors = {
        name
        for name, value in vars(_errors).items()
        if isinstance(value, type)
        and issubclass(value, BaseException)
        and value.__module__ == _errors.__name__
    }
    assert errors == set(_errors.__all__)
    assert errors <= set(hvsock.__all__)


def test_import_hvsock_loads_no_heavy_layer() -> None:
    """`import hvsock` stays as cheap as `import socket`: the rest loads when first used."""
    import subprocess
    import sys

    heavy = [
        "asyncio",
        "typing",
        "hvsock._relay",
        "hvsock._doctor",
        "hvsock._windows",
        "hvsock._aio",
        "hvsock._service",
    ]
    code = (
        "import sys, hvsock; print(' '.join(m for m in "
        + repr(heavy)
        + " if any(k == m or k.startswith(m + '.') for k in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert out == ""


def test_dir_lists_every_public_name() -> None:
    assert set(hvsock.__all__) <= set(dir(hvsock))


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hvsock.nope  # noqa: B018


def test_the_export_table_agrees_with_each_modules_all() -> None:
    """Where a module declares __all__, the package exports only names from it."""
    for module_name, names in hvsock._EXPORTS.items():
        module = importlib.import_module(module_name, "hvsock")
        declared = getattr(module, "__all__", None)
        for name in names:
            assert hasattr(module, name), f"{module_name}.{name}"
            if declared is not None:
                assert name in declared, f"{name} is not in {module_name}.__all__"


def _hvsock_types(hint: object) -> Iterator[type]:
    """Every class defined in hvsock that a type hint mentions."""
    if isinstance(hint, type) and hint.__module__.split(".")[0] == "hvsock":
        yield hint
    for arg in typing.get_args(hint):
        yield from _hvsock_types(arg)


def _public_surface() -> dict[str, object]:
    """Every public name, top level and namespaces: spelling -> object."""
    surface = {f"hvsock.{name}": getattr(hvsock, name) for name in hvsock.__all__}
    for namespace in hvsock._NAMESPACES:
        module = importlib.import_module(f"hvsock.{namespace}")
        surface.update(
            {f"hvsock.{namespace}.{name}": getattr(module, name) for name in module.__all__}
        )
    return surface


def test_every_type_a_public_function_takes_or_returns_is_exported() -> None:
    """...at the top level or in a namespace."""
    surface = _public_surface()
    exported = {id(value) for value in surface.values()}
    missing: set[str] = set()
    for name, value in surface.items():
        functions = (
            [value]
            if inspect.isfunction(value)
            else (
                [
                    f
                    for _, f in inspect.getmembers(value, inspect.isfunction)
                    if not f.__name__.startswith("_") or f.__name__ == "__init__"
                ]
                if inspect.isclass(value)
                else []
            )
        )
        for function in functions:
            try:
                hints = typing.get_type_hints(function)
            except NameError:
                continue  # a hint naming a type only a type checker imports
            for hint in hints.values():
                for cls in _hvsock_types(hint):
                    if id(cls) not in exported and not cls.__name__.startswith("_"):
                        missing.add(f"{cls.__module__}.{cls.__qualname__} (via {name})")
    assert not missing, sorted(missing)


def test_the_type_checking_block_spells_out_exactly_the_export_table() -> None:
    """Type checkers read the ``if TYPE_CHECKING:`` imports; the runtime reads _EXPORTS."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(hvsock.__file__).read_text(encoding="utf-8"))
    spelled: set[tuple[str, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom)
                for alias in stmt.names:
                    assert alias.asname == alias.name  # re-exported under its own name
                    spelled.add(("." * stmt.level + (stmt.module or ""), alias.name))
    table = {(module, name) for module, names in hvsock._EXPORTS.items() for name in names}
    assert spelled == table
