"""Run CPython's own test modules and write each test's outcome as JSON lines.

``python _cpython_suite.py OUT.jsonl test_os test_shutil.TestMove`` runs the named
modules (or classes) of the interpreter's ``test`` package (Debian:
libpython3.X-testsuite) as regrtest would without ``-u``: no optional resources, in
a fresh working directory made under ``TMPDIR`` (so the tests' files, ``TESTFN``
and ``tempfile``'s alike, land on the file system under test). OUT gets one JSON
line per test as it ends, ``[test id, outcome, detail, seconds]``, the outcome one
of ok, skip, fail, error, xfail, xpass (a failing subtest fails its test, in a
later line), so a run stopped part-way still tells what it did; a test also gets a
line when it starts (outcome "started"), so one that never ends names itself. Exit 0 unless the
modules cannot be imported (exit 3, the reason on stderr).

Run as a script in a child process: the tests chdir, fork, change the umask and
signal handlers, which must not touch pytest's process.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
import unittest
from typing import Any

OUTCOMES = ("started", "ok", "skip", "fail", "error", "xfail", "xpass")


class Recorder(unittest.TestResult):
    """Every test's outcome, with the reason of a skip and the last line of a failure."""

    def __init__(self, out: Any) -> None:
        super().__init__()
        self.out = out
        self.failed: set[str] = set()
        self.started = time.monotonic()

    def startTest(self, test: unittest.TestCase) -> None:
        super().startTest(test)
        self.started = time.monotonic()
        self._set(test, "started")

    def _set(self, test: unittest.TestCase, outcome: str, detail: str = "") -> None:
        key = test.id()
        # A failing subtest must not be overwritten by the test's own "ok" at the end.
        if key in self.failed and outcome in ("started", "ok"):
            return
        if outcome in ("fail", "error"):
            self.failed.add(key)
        line = [key, outcome, detail, round(time.monotonic() - self.started, 2)]
        self.out.write(json.dumps(line) + "\n")
        self.out.flush()

    @staticmethod
    def _last_line(err: Any) -> str:
        lines = "".join(traceback.format_exception_only(err[0], err[1])).strip().splitlines()
        return lines[-1][:300] if lines else repr(err[1])[:300]

    def addSuccess(self, test: unittest.TestCase) -> None:
        self._set(test, "ok")

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        self._set(test, "skip", reason)

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        self._set(test, "fail", self._last_line(err))

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        # setUpClass/module errors arrive as an _ErrorHolder whose id names the class.
        self._set(test, "error", self._last_line(err))

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:
        self._set(test, "xfail")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        self._set(test, "xpass")

    def addSubTest(self, test: unittest.TestCase, subtest: unittest.TestCase, err: Any) -> None:
        if err is not None:
            kind = "fail" if issubclass(err[0], test.failureException) else "error"
            self._set(test, kind, f"{subtest.id()}: {self._last_line(err)}")


def main(argv: list[str]) -> int:
    out, modules = argv[0], argv[1:]
    try:
        from test import support
    except ImportError as exc:
        sys.stderr.write(
            f"no `test` package in {sys.executable} ({exc}); on Debian: "
            "apt-get install libpython3.11-testsuite\n"
        )
        return 3
    support.use_resources = []  # as regrtest without -u: optional resources off
    support.verbose = 0
    started = time.monotonic()
    work = tempfile.mkdtemp(prefix="cpython-suite-")
    os.chdir(work)
    try:
        suite = unittest.defaultTestLoader.loadTestsFromNames(f"test.{m}" for m in modules)
    except ImportError as exc:
        sys.stderr.write(f"cannot import {modules}: {exc}\n")
        return 3
    with open(out, "w", encoding="utf-8") as f:
        suite.run(Recorder(f))
        f.write(json.dumps(["#seconds", "ok", "", round(time.monotonic() - started, 1)]) + "\n")
    return 0


def read(path: str) -> dict[str, list[Any]]:
    """OUT's lines as ``{test id: [outcome, detail, seconds]}``, the last line winning."""
    outcomes: dict[str, list[Any]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, *rest = json.loads(line)
            outcomes[key] = rest
    return outcomes


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
