"""No test waits on a fixed sleep to decide an outcome (issue 25).

A test waits for events (a ready line, a record, a file, a count); a sleep in a test
is at most a poll interval inside a bounded wait, or pacing. Both are short: this
check fails on any ``time.sleep``/``asyncio.sleep``/``sleep``/``Event().wait`` in a
test file whose argument is longer than :data:`LONGEST` seconds or is not a literal
number, unless :data:`ALLOWED` lists the function it is in, with the reason. Code in
strings (scripts run as subprocesses, remote commands) is not test code's own wait
and is not looked at.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
LONGEST = 0.05

#: (file under tests/, enclosing function) -> why its longer sleep decides nothing.
ALLOWED: dict[tuple[str, str], str] = {
    (
        "kernel/test_doctor_kernel.py",
        "unload",
    ): "the poll interval of a wait bounded at 60 s (and 600 rounds) for a kernel "
    "module's use count to reach 0; a vsock close frees it up to 8 s later",
}


def sleeps(source: str) -> list[tuple[int, str, str]]:
    """(line, enclosing function, call) for each sleep-like call that is too long."""
    found: list[tuple[int, str, str]] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = (
                child.name
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
                else function
            )
            if isinstance(child, ast.Call) and _sleep_like(child) and _too_long(child):
                found.append((child.lineno, function, ast.unparse(child)))
            visit(child, name)

    visit(ast.parse(source), "<module>")
    return found


def _sleep_like(call: ast.Call) -> bool:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id == "sleep"
    if not isinstance(func, ast.Attribute):
        return False
    if func.attr == "sleep":
        return True
    # threading.Event().wait(n) / asyncio.Event().wait(): a sleep in disguise.
    return (
        func.attr == "wait"
        and isinstance(func.value, ast.Call)
        and ast.unparse(func.value.func).split(".")[-1] == "Event"
    )


def _too_long(call: ast.Call) -> bool:
    if not call.args:
        return False  # Event().wait() blocks for good: a handler that never ends
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, (int, float)):
        return float(arg.value) > LONGEST
    return True  # a computed length: cannot be judged here, so it must be listed


def test_the_check_finds_what_it_should() -> None:
    source = (
        "import time, asyncio, threading\nfrom time import sleep\n"
        "def a():\n    time.sleep(0.3)\n"
        "async def b():\n    await asyncio.sleep(1)\n    await asyncio.sleep(0)\n"
        "def c(n):\n    sleep(n)\n    threading.Event().wait(2)\n    time.sleep(0.05)\n"
        "SCRIPT = 'import time; time.sleep(3600)'\n"
    )
    assert [(line, where) for line, where, _ in sleeps(source)] == [
        (4, "a"),
        (6, "b"),
        (9, "c"),
        (10, "c"),
    ]


def _test_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if ".venv" not in p.parts)


def test_no_test_sleeps_longer_than_a_poll_interval() -> None:
    found = []
    used = set()
    for path in _test_files():
        rel = path.relative_to(TESTS).as_posix()
        for line, function, call in sleeps(path.read_text(encoding="utf-8")):
            if (rel, function) in ALLOWED:
                used.add((rel, function))
            else:
                found.append(f"tests/{rel}:{line} in {function}(): {call}")
    assert not found, (
        "a test sleeps longer than a poll interval: wait for an event instead (a ready "
        "line, a log record, a file, a counter, a round trip), or, for a poll interval "
        "or pacing that decides nothing, list it in ALLOWED with the reason:\n" + "\n".join(found)
    )
    stale = set(ALLOWED) - used
    assert not stale, f"ALLOWED lists functions with no long sleep now: {sorted(stale)}"


@pytest.mark.parametrize("key", sorted(ALLOWED))
def test_each_allowance_names_a_file_and_a_reason(key: tuple[str, str]) -> None:
    assert (TESTS / key[0]).is_file()
    assert len(ALLOWED[key]) > 20
