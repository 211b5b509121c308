"""hvsock.__all__ is exactly the public surface, sorted, and every name in it resolves."""

from __future__ import annotations

import importlib.metadata
import types

import hvsock
from hvsock import _errors
from hvsock._core import addresses


def public_names(module: types.ModuleType) -> set[str]:
    """Names a user can import: no leading underscore (plus __version__), no submodules."""
    names = {name for name, value in vars(module).items()
             if not name.startswith("_") and not isinstance(value, types.ModuleType)}
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
    errors = {name for name, value in vars(_errors).items()
              if isinstance(value, type) and issubclass(value, BaseException)
              and value.__module__ == _errors.__name__}
    assert errors == set(_errors.__all__)
    assert errors <= set(hvsock.__all__)
