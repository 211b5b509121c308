"""KVP pools of a Windows guest: values in ``HKLM\\SOFTWARE\\Microsoft\\Virtual Machine``.

Windows' integration service keeps each pool as the string values of one registry key,
a value per item: the same API as :class:`~hvsock._builtin.kvp.store.KvpStore` over any
registry backend (``winreg`` on Windows, :class:`hvsock.testing.MemoryRegistry` in tests).
The registry has no duplicates and compares names without regard to case, so
:meth:`RegistryKvpStore.append` is a set there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..._core import kvp as codec
from ..._core.kvp import Pool
from ..._errors import ArgumentError, UnsupportedError
from .store import DEFAULT_WATCH_INTERVAL, Change, HostFacts, poll_changes

VM_KEY = r"SOFTWARE\Microsoft\Virtual Machine"
#: Each pool's key below HKEY_LOCAL_MACHINE (pool 4 has none on Windows).
POOL_KEYS = {
    Pool.EXTERNAL: VM_KEY + r"\External",
    Pool.GUEST: VM_KEY + r"\Guest",
    Pool.AUTO: VM_KEY + r"\Auto",
    Pool.AUTO_EXTERNAL: VM_KEY + r"\Guest\Parameter",
}


class KvpRegistry(Protocol):
    """What a pool needs of a registry backend (``hvsock._windows.registry``'s, plus
    ``delete_value``). Paths are below HKEY_LOCAL_MACHINE."""

    def values(self, path: str) -> dict[str, object] | None:
        """The values of *path* by name; None when the key does not exist."""
        ...

    def create_key(self, path: str) -> None:
        """Create *path* and any missing parents."""
        ...

    def set_value(self, path: str, name: str, value: str) -> None:
        """Set string value *name* of the existing key *path*."""
        ...

    def delete_value(self, path: str, name: str) -> None:
        """Remove value *name* of *path*; nothing when either does not exist."""
        ...


@dataclass(frozen=True)
class RegistryKvpStore:
    """One pool of a Windows guest, in *registry*. Same methods as the file store.

    Raises :class:`UnsupportedError` for pool 4 (no key on Windows),
    :class:`ArgumentError` for bad items or writing the host's pools without
    *allow_host_pool*, and the backend's :class:`RegistryError` /
    :class:`PermissionDeniedError` when the registry refuses.
    """

    registry: KvpRegistry
    pool: Pool = Pool.GUEST
    limits: str = codec.SAFE
    allow_host_pool: bool = False
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pool", codec.parse_pool(self.pool))
        codec.check_limits(self.limits)
        if self.pool not in POOL_KEYS:
            raise UnsupportedError(
                f"pool {int(self.pool)} ({self.pool.cli_name}) has no "
                "registry key on Windows guests"
            )
        object.__setattr__(self, "key", POOL_KEYS[self.pool])

    @property
    def where(self) -> str:
        return f"KVP pool {int(self.pool)} ({self.pool.cli_name}, HKLM\\{self.key})"

    def _writable(self) -> None:
        if self.pool != Pool.GUEST and not self.allow_host_pool:
            raise ArgumentError(
                f"pool {int(self.pool)} ({self.pool.cli_name}) belongs to the host; a guest "
                "program writes pool 1 (guest). To write it anyway pass allow_host_pool=True "
                "(--host-pool)"
            )

    def items(self) -> list[tuple[str, str]]:
        """Every string value of the pool's key; [] when the key does not exist."""
        values = self.registry.values(self.key) or {}
        return [(name, value) for name, value in values.items() if isinstance(value, str)]

    def as_dict(self) -> dict[str, str]:
        return dict(self.items())

    def keys(self) -> list[str]:
        return [k for k, _ in self.items()]

    def get(self, key: str, default: str | None = None) -> str | None:
        """The value of *key* (compared without regard to case, as Windows does)."""
        if not isinstance(key, str):
            raise ArgumentError(f"a KVP key must be text, not {type(key).__name__}")
        folded = key.casefold()
        return next((v for k, v in self.items() if k.casefold() == folded), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __len__(self) -> int:
        return len(self.items())

    def set(self, key: str, value: str) -> None:
        self.update({key: value})

    def append(self, key: str, value: str) -> None:
        """The registry holds one value per name: the same as :meth:`set`."""
        self.update({key: value})

    def update(self, items: dict[str, str]) -> None:
        for key, value in items.items():
            codec.check_item(key, value, self.limits)
        self._writable()
        self.registry.create_key(self.key)
        for key, value in items.items():
            self.registry.set_value(self.key, key, value)

    def delete(self, key: str) -> int:
        if not isinstance(key, str):
            raise ArgumentError(f"a KVP key must be text, not {type(key).__name__}")
        self._writable()
        folded = key.casefold()
        found = [k for k, _ in self.items() if k.casefold() == folded]
        for name in found:
            self.registry.delete_value(self.key, name)
        return len(found)

    def clear(self) -> int:
        self._writable()
        names = self.keys()
        for name in names:
            self.registry.delete_value(self.key, name)
        return len(names)

    def _signature(self) -> object:
        return tuple(sorted(self.items()))

    def watch(
        self,
        *,
        interval: float = DEFAULT_WATCH_INTERVAL,
        timeout: float | None = None,
        max_changes: int | None = None,
    ) -> Iterator[Change]:
        """Yield each change as it happens, reading the key every *interval* seconds."""
        return poll_changes(
            self.as_dict,
            self._signature,
            interval=interval,
            timeout=timeout,
            max_changes=max_changes,
        )

    def is_stale(self, boot: float | None = None) -> bool:
        """Registry keys carry no write time here: never reported stale."""
        return False


def registry_host_info(registry: Any) -> HostFacts:
    """The host facts a Windows guest holds in ``Guest\\Parameter``."""
    return HostFacts.from_items(RegistryKvpStore(registry, Pool.AUTO_EXTERNAL).as_dict())
