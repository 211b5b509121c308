"""The layer contract of docs/architecture.md holds, and it would catch a wrong import.

scripts/test runs `lint-imports` too; here the contract is also shown to bite: a copy of
the package with one upward import (the pure core importing the CLI) breaks it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which(
    "lint-imports"
)
needs_import_linter = pytest.mark.skipif(
    LINT_IMPORTS is None, reason="import-linter is not installed"
)


def lint(package_parent: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS is not None
    env = dict(os.environ, PYTHONPATH=str(package_parent))
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@needs_import_linter
def test_the_layers_hold() -> None:
    done = lint(ROOT / "src", ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def copy_with(tmp_path: Path, module: str, line: str) -> Path:
    """A copy of the package with *line* added to *module*; returns its parent."""
    copy = tmp_path / "src"
    shutil.copytree(
        ROOT / "src" / "hvsock", copy / "hvsock", ignore=shutil.ignore_patterns("__pycache__")
    )
    target = copy / "hvsock" / module
    text = target.read_text()
    marker = "from __future__ import annotations\n"
    assert marker in text
    target.write_text(text.replace(marker, f"{marker}\n{line}\n", 1))
    return copy


@needs_import_linter
def test_a_built_in_service_may_not_import_the_public_package(tmp_path: Path) -> None:
    # The package re-exports every layer (the doctor and CLI-facing ones too), so a
    # built-in that imports it reaches above itself: built-ins import the framework's
    # own modules instead.
    done = lint(copy_with(tmp_path, "_builtin/echo.py", "import hvsock as _public"), tmp_path)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout


@needs_import_linter
@pytest.mark.parametrize(
    ("module", "bad_import"),
    [
        ("_core/ids.py", "from .._cli import args as _upward"),
        ("_windows/registry.py", "from .._service import declaration as _upward"),
        ("_builtin/echo.py", "from .. import testing as _upward"),
        # the public namespaces are for users; library code takes the private paths
        ("_builtin/echo.py", "from .. import services as _public"),
        ("_core/ids.py", "import hvsock.windows as _public"),
        ("_builtin/bench.py", "from hvsock import connect as _public"),
    ],
)
def test_an_upward_import_breaks_the_contract(tmp_path: Path, module: str, bad_import: str) -> None:
    done = lint(copy_with(tmp_path, module, bad_import), tmp_path)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout
