"""The self-test's report: steps that are ok, failed, or not applicable (with the reason)."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from .._doctor.model import explain

OK = "ok"
FAILED = "failed"
NOT_APPLICABLE = "not applicable"
STATUSES = (OK, FAILED, NOT_APPLICABLE)


@dataclass(frozen=True)
class Step:
    """One thing the self-test tried: *name* (stable, for scripts), its *status*, what
    happened, the Windows (or errno) error code of a failure, and what to do about it.
    """

    name: str
    status: str
    summary: str
    error_code: int | None = None
    advice: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status,
            "summary": self.summary,
            "error_code": self.error_code,
            "advice": self.advice,
        }


@dataclass(frozen=True)
class Report:
    """Every step, in the order run; ``ok`` is False when any step failed."""

    platform: str
    python: str
    version: str
    steps: tuple[Step, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return all(step.status != FAILED for step in self.steps)

    def __getitem__(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def as_dict(self) -> dict[str, object]:
        return {
            "platform": self.platform,
            "python": self.python,
            "hvsock": self.version,
            "ok": self.ok,
            "steps": [step.as_dict() for step in self.steps],
        }


def ok(name: str, summary: str) -> Step:
    return Step(name, OK, summary)


def not_applicable(name: str, why: str) -> Step:
    return Step(name, NOT_APPLICABLE, why)


def error_code(exc: BaseException) -> int | None:
    """The Windows error number of *exc* (or of its cause), else its errno."""
    for cause in (exc, exc.__cause__):
        winerror = getattr(cause, "winerror", None)
        if isinstance(winerror, int):
            return winerror
    for cause in (exc, exc.__cause__):
        number = getattr(cause, "errno", None)
        if isinstance(number, int):
            return number
    return None


def failed(name: str, summary: str, exc: BaseException | None = None, advice: str = "") -> Step:
    """A failed step; with *exc*, its error code and the doctor's advice for it."""
    if exc is None:
        return Step(name, FAILED, summary, None, advice)
    code = error_code(exc)
    hint = explain(exc)
    if hint == str(exc):  # the doctor knows nothing more than the message
        hint = ""
    text = f"{summary}: {exc}" if str(exc) else f"{summary}: {type(exc).__name__}"
    if code is not None and code in errno.errorcode and getattr(exc, "winerror", None) is None:
        text += f" [{errno.errorcode[code]}]"
    return Step(name, FAILED, text, code, " ".join(p for p in (hint, advice) if p))
