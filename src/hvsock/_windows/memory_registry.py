"""An in-memory registry that behaves like HKEY_LOCAL_MACHINE for registration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._errors import RegistryError

if TYPE_CHECKING:
    from .registry import RegistryBackend

#: Windows' limits on a key name and a value name.
MAX_KEY_NAME = 255
MAX_VALUE_NAME = 16383


@dataclass
class _Key:
    path: str  # as first created
    values: dict[str, tuple[str, object]] = field(default_factory=dict)  # folded -> name, value


def _parts(path: str) -> list[str]:
    if not isinstance(path, str):
        raise RegistryError(f"a registry path must be text, not {type(path).__name__}")
    parts = path.split("\\")
    for part in parts:
        if not part:
            raise RegistryError(f"registry path {path!r} has an empty part")
        if len(part) > MAX_KEY_NAME:
            raise RegistryError(
                f"registry key name {part[:40]!r}... is longer than {MAX_KEY_NAME} characters"
            )
        if "\0" in part:
            raise RegistryError(f"registry key name {part!r} contains a NUL character")
    return parts


def _fold(path: str) -> str:
    return "\\".join(p.casefold() for p in _parts(path))


class MemoryRegistry:
    """Keys and string values in memory, with the registry's rules.

    Key and value names compare without regard to case (the first spelling is
    kept), creating a key creates its parents, a key with subkeys cannot be
    deleted, names and values are held to Windows' limits. It implements
    hvsock's registry backend, so::

        registry = MemoryRegistry()
        hvsock.windows.register_service(my_service, registry=registry)
        assert [s.name for s in hvsock.windows.registered_services(registry)] == [my_service.name]
    """

    def __init__(self) -> None:
        self._keys: dict[str, _Key] = {}

    # -- the backend interface ---------------------------------------------
    def subkeys(self, path: str) -> list[str]:
        folded = _fold(path)
        if folded not in self._keys:
            return []
        depth = folded.count("\\") + 1
        return [
            key.path.split("\\")[-1]
            for name, key in self._keys.items()
            if name.startswith(folded + "\\") and name.count("\\") == depth
        ]

    def values(self, path: str) -> dict[str, object] | None:
        key = self._keys.get(_fold(path))
        if key is None:
            return None
        return dict(key.values.values())

    def create_key(self, path: str) -> None:
        parts = _parts(path)
        for i in range(1, len(parts) + 1):
            sub = "\\".join(parts[:i])
            self._keys.setdefault(_fold(sub), _Key(sub))

    def set_value(self, path: str, name: str, value: str) -> None:
        key = self._keys.get(_fold(path))
        if key is None:
            raise RegistryError(f"cannot set {name!r}: key {path} does not exist")
        if not isinstance(name, str) or len(name) > MAX_VALUE_NAME:
            raise RegistryError(
                f"value name {str(name)[:40]!r} is not text of at most {MAX_VALUE_NAME} characters"
            )
        if not isinstance(value, str) or "\0" in value:
            raise RegistryError(f"value {name!r} must be text without NUL characters")
        folded = name.casefold()
        shown = key.values[folded][0] if folded in key.values else name
        key.values[folded] = (shown, value)

    def delete_key(self, path: str) -> None:
        folded = _fold(path)
        if folded not in self._keys:
            return
        if any(name.startswith(folded + "\\") for name in self._keys):
            raise RegistryError(f"cannot delete {path}: it has subkeys")
        del self._keys[folded]

    def delete_value(self, path: str, name: str) -> None:
        """Remove value *name* of *path* (any case); nothing when either does not exist."""
        key = self._keys.get(_fold(path))
        if key is not None and isinstance(name, str):
            key.values.pop(name.casefold(), None)

    # -- for tests ------------------------------------------------------------
    def snapshot(self) -> dict[str, dict[str, object]]:
        """Every key (as first spelled) with its values: compare two registries with it."""
        return {key.path: dict(key.values.values()) for key in self._keys.values()}

    @classmethod
    def copy_of(cls, backend: RegistryBackend, path: str) -> MemoryRegistry:
        """A copy of *path* and everything under it, read from another backend
        (values of any type are kept as they are). ``--dry-run`` works on such a copy.
        """
        copy = cls()
        pending = [path]
        while pending:
            current = pending.pop()
            values = backend.values(current)
            if values is None:
                continue
            copy.create_key(current)
            key = copy._keys[_fold(current)]
            for name, value in values.items():
                key.values[name.casefold()] = (name, value)
            pending.extend(f"{current}\\{sub}" for sub in backend.subkeys(current))
        return copy
