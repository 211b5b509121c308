"""The bases of hvsock's value types: immutable (addresses, file-copy messages) or not.

Not ``@dataclass(frozen=True)``: ``hvsock connect`` and ``hvsock cp`` import these
types on every run, and importing dataclasses (it pulls in inspect, ast and dis) and
generating the classes cost more than the rest of their start-up. A subclass names its
fields in ``_fields`` (in order: repr, equality, pickling and, for file-copy messages,
the wire) and sets them once in its ``__init__`` through :func:`set_fields`.
"""

from __future__ import annotations

# Not typing.TYPE_CHECKING: see addresses.py.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar

__all__: list[str] = []  # internal


class Record:
    """Compared and shown by the fields in ``_fields``; mutable, so not hashable."""

    _fields: ClassVar[tuple[str, ...]] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Record)
        # Defining __eq__ alone leaves __hash__ None: a mutable record is not hashable.
        return self._values() == other._values()

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__qualname__}({shown})"


class Value(Record):
    """Immutable, so hashed (and pickled) by its fields as well."""

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(
            f"cannot assign to {name!r}: {type(self).__name__} is immutable; "
            "build a new one instead"
        )

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete {name!r}: {type(self).__name__} is immutable")

    def __hash__(self) -> int:
        return hash(self._values())

    def __reduce__(self) -> tuple[type[Value], tuple[object, ...]]:
        # pickle and copy rebuild through __init__, so its checks run again.
        return (type(self), self._values())


def set_fields(obj: Value, **values: object) -> None:
    """Set *obj*'s fields, once, from its ``__init__``."""
    # Straight into the instance dict (Value's __setattr__ refuses): one C call, which
    # matters for the file-copy messages, decoded thousands of times a second.
    obj.__dict__.update(values)
