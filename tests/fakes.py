"""Test doubles shared by the unit and host tiers: a runner fed recorded outputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from hvsock._windows.vms import ProcessResult, powershell_argv

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> bytes:
    """A recorded output from tests/fixtures (see its README for what each stands for)."""
    return (FIXTURES / name).read_bytes()


def ps(script: str) -> tuple[str, ...]:
    """The command line hvsock runs for a PowerShell *script*."""
    return tuple(powershell_argv(script))


class FakeRunner:
    """Answers commands from a table, like the real runner would.

    A command not in the table is a program that is not installed
    (FileNotFoundError), as on a machine without PowerShell or WSL. An answer that
    is an exception is raised. Every call is recorded in ``calls``.
    """

    def __init__(
        self, answers: Mapping[tuple[str, ...], ProcessResult | BaseException] | None = None
    ) -> None:
        self.answers = dict(answers or {})
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, argv: Sequence[str], timeout: float) -> ProcessResult:
        assert timeout > 0
        key = tuple(argv)
        self.calls.append(key)
        if key not in self.answers:
            raise FileNotFoundError(2, "No such file or directory", argv[0])
        answer = self.answers[key]
        if isinstance(answer, BaseException):
            raise answer
        return answer


def ok(stdout: bytes | str) -> ProcessResult:
    return ProcessResult(0, stdout.encode() if isinstance(stdout, str) else stdout)


def failed(stderr: bytes | str, returncode: int = 1) -> ProcessResult:
    return ProcessResult(returncode, b"", stderr.encode() if isinstance(stderr, str) else stderr)


def outcome(call: Callable[[], object], *errors: type[BaseException]) -> str:
    """``"ok"``, or the message of one of *errors* that *call* raised (any other
    exception propagates and fails the test)."""
    try:
        call()
    except errors as exc:
        return str(exc)
    return "ok"
