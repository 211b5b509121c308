"""When a skip must be a failure: ``HVSOCK_REQUIRE_KERNEL_TIER`` (CI, the test VM).

Any true-ish value counts (``1``, ``true``, ``yes``, ``on``, any case). Then a test
that would skip because AF_VSOCK, ``/dev/vsock`` or uvloop is missing fails instead,
so a broken CI image cannot pass as green.
"""

from __future__ import annotations

import os
from types import ModuleType

import pytest

REQUIRE_ENV = "HVSOCK_REQUIRE_KERNEL_TIER"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


def is_true(value: str | None) -> bool:
    """True for ``1``/``true``/``yes``/``on`` in any case, with spaces around allowed."""
    return value is not None and value.strip().lower() in TRUE_WORDS


def tier_required() -> bool:
    return is_true(os.environ.get(REQUIRE_ENV))


def skip_or_fail(reason: str) -> None:
    """Skip normally; fail when the tier was required (CI, and inside the test VM)."""
    if tier_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV} requires this to run)", pytrace=False)
    pytest.skip(reason)


def need_vsock_device() -> None:
    """Skip (or fail, when required) unless AF_VSOCK and /dev/vsock are here."""
    import socket

    if not hasattr(socket, "AF_VSOCK") or not os.path.exists("/dev/vsock"):
        skip_or_fail("needs AF_VSOCK and /dev/vsock")


def import_or_fail(name: str) -> ModuleType:
    """``pytest.importorskip``, but a failure when the tier is required."""
    if tier_required():
        try:
            return __import__(name)
        except ImportError as exc:
            pytest.fail(
                f"{name} is not installed ({exc}); {REQUIRE_ENV} requires it", pytrace=False
            )
    return pytest.importorskip(name)
