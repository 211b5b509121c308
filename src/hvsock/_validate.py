"""The one set of argument checks: every public entry point checks its arguments here.

Each check returns the (normalised) value or raises :class:`ArgumentError`, which is an
``HvsockError`` and a ``ValueError``; messages quote user input cut to a sane length
(:func:`quote`), so a 10 MB argument never becomes a 10 MB message.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ._errors import ArgumentError

__all__: list[str] = []  # internal: the public names live in hvsock.__init__

TYPE_CHECKING = False  # not typing's: docs/architecture.md, "Start-up rules"
if TYPE_CHECKING:
    from typing import TypeVar

    T = TypeVar("T")

#: How much of a user's input a message quotes.
QUOTE_LIMIT = 60


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` cut to *limit* characters, marked with an ellipsis when cut."""
    if isinstance(value, int) and value.bit_length() > 128:
        # repr() of an int over ~4300 digits raises ValueError: never show that many.
        return f"({value.bit_length()}-bit number)"
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value[: limit + 1])
    text = repr(value) if not isinstance(value, str) else repr(value[: limit + 1])
    if len(text) > limit:
        return text[: limit - 1] + "…"
    return text


def _finite(value: int | float) -> bool:
    # math.isfinite() and float() of an int too large for a float raise OverflowError:
    # such an int is as unusable as infinity.
    return math.isfinite(value) if isinstance(value, float) else abs(value) < 2**1000


def positive_number(value: object, what: str, *, optional: bool = False) -> float | None:
    """A finite number > 0 (seconds, sizes); ``None`` passes when *optional*."""
    if value is None and optional:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (_finite(value) and value > 0)
    ):
        raise ArgumentError(
            f"{what} must be a positive number{' or None' if optional else ''}, not {quote(value)}"
        )
    return float(value)


def non_negative_number(value: object, what: str, *, optional: bool = False) -> float | None:
    """A finite number >= 0; ``None`` passes when *optional*."""
    if value is None and optional:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (_finite(value) and value >= 0)
    ):
        raise ArgumentError(
            f"{what} must be a number >= 0{' or None' if optional else ''}, not {quote(value)}"
        )
    return float(value)


def whole_number(value: object, what: str, lo: int, hi: int) -> int:
    """An ``int`` (not a bool) in ``lo..hi``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentError(f"{what} must be a whole number in {lo}..{hi}, not {quote(value)}")
    if not lo <= value <= hi:
        raise ArgumentError(f"{what} must be in {lo}..{hi}, not {quote(value)}")
    return value


def text(value: object, what: str, *, max_len: int, printable: bool = True) -> str:
    """A non-empty string with no leading/trailing space, at most *max_len* characters."""
    if not isinstance(value, str) or not value.strip():
        raise ArgumentError(f"{what} must be a non-empty string, not {quote(value)}")
    if value != value.strip():
        raise ArgumentError(f"{what} {quote(value)} has leading or trailing spaces: remove them")
    if len(value) > max_len:
        raise ArgumentError(f"{what} is {len(value)} characters; at most {max_len}")
    if printable and not value.isprintable():
        raise ArgumentError(f"{what} {quote(value)} has control characters")
    return value


#: Windows' limit on a service's ElementName, which hvsock keeps on every platform.
MAX_SERVICE_NAME = 256


def service_name(value: object) -> str:
    """A service's friendly name, as the registry's ElementName takes it: 1..256 printable
    characters, no spaces at either end. ``Service`` and registration share this check."""
    if not isinstance(value, str):
        raise ArgumentError(f"a service name must be text, not {type(value).__name__}")
    if not value.strip():
        raise ArgumentError("a service name cannot be empty")
    if len(value) > MAX_SERVICE_NAME:
        raise ArgumentError(
            f"service name is {len(value)} characters long; at most {MAX_SERVICE_NAME}"
        )
    bad = next((c for c in value if not c.isprintable()), None)
    if bad is not None:
        raise ArgumentError(
            f"service name {quote(value)} has a control or invisible "
            f"character {bad!r}; use printable characters only"
        )
    if value != value.strip():
        raise ArgumentError(f"service name {quote(value)} starts or ends with spaces; remove them")
    return value


def instance(value: object, cls: type[T], what: str) -> T:
    """*value* itself, when it is an instance of *cls*."""
    if not isinstance(value, cls):
        raise ArgumentError(
            f"{what} must be a {cls.__module__.split('.')[0]}.{cls.__qualname__}, "
            f"not {type(value).__name__}"
        )
    return value


def callable_(value: object, what: str) -> Callable[..., object]:
    """*value* itself, when it can be called."""
    if not callable(value):
        raise ArgumentError(f"{what} must be callable, not {type(value).__name__}")
    return value
