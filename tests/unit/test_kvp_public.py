"""hvsock.kvp: its __all__ resolves, and importing it needs no asyncio."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

import hvsock
import hvsock.kvp as kvp

from .test_public_api import isort_key


def test_all_resolves_and_is_sorted() -> None:
    for name in kvp.__all__:
        assert getattr(kvp, name) is not None, name
    assert kvp.__all__ == sorted(kvp.__all__, key=isort_key)
    public = {
        n
        for n, v in vars(kvp).items()
        if not n.startswith("_")
        and not isinstance(v, types.ModuleType)
        and n not in ("annotations", "TYPE_CHECKING", "Any")
    }
    assert public <= set(kvp.__all__)


def test_errors_are_hvsocks() -> None:
    assert issubclass(hvsock.KvpError, hvsock.HvsockError)
    assert kvp.KVP_PORT == 5010
    assert isinstance(kvp.kvp_service(), hvsock.Service)


def test_import_needs_no_asyncio() -> None:
    # hvsock/__init__ pulls in the asyncio API; hvsock.kvp's own modules must not, so a
    # guest program that only reads pools stays light once the package imports lazily.
    src = Path(hvsock.__file__).parent
    code = (
        "import sys, types\n"
        "pkg = types.ModuleType('hvsock'); pkg.__path__ = [sys.argv[1]]\n"
        "sys.modules['hvsock'] = pkg\n"
        "import hvsock.kvp as kvp\n"
        "kvp.open_pool(directory='/nonexistent').items()\n"
        "print('asyncio' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(src)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize(
    "name", ["ArgumentError", "HvsockError", "KvpError", "PermissionDeniedError"]
)
def test_the_errors_it_re_exported_warn_and_are_the_top_levels(name: str) -> None:
    """Until 0.2 hvsock.kvp re-exported four errors; their one home is hvsock now."""
    assert name not in kvp.__all__
    with pytest.warns(
        DeprecationWarning,
        match=rf"hvsock\.kvp\.{name} is deprecated: "
        rf"use hvsock\.{name} ",
    ) as caught:
        value = getattr(kvp, name)
    assert value is getattr(hvsock, name)
    assert caught[0].filename == __file__  # the warning names the user's line
