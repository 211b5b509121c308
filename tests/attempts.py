"""Events a test can wait for inside its own process: the connects and file locks the
code under test attempts, as Python reports them to audit hooks (PEP 578), and a
thread the kernel holds in ``connect()``.

A test that must act only after the code under test has tried something (a connect
that found nobody listening, a lock it did not get) waits for the attempt itself,
instead of sleeping a while and hoping the attempt came first.
"""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

#: Attempts seen by the watchers registered now (a hook cannot be removed: one
#: hook for the whole run hands each event to whoever watches).
_watchers: list[Attempts] = []
_lock = threading.Lock()


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event not in ("socket.connect", "fcntl.flock") or not _watchers:
        return
    try:
        with _lock:
            watchers = list(_watchers)
        for watcher in watchers:
            watcher._seen(event, args)
    except Exception:  # pragma: no cover - a hook that raises would fail the connect
        pass


sys.addaudithook(_hook)


class Attempts:
    """Counts audit events *event* whose arguments *match* accepts, while registered.

    ``socket.connect`` gets ``(socket, address)``; ``fcntl.flock`` ``(fd, operation)``.
    """

    def __init__(self, event: str, match: Callable[[tuple[Any, ...]], bool]) -> None:
        self.event = event
        self.match = match
        self.times: list[float] = []
        self._cond = threading.Condition()
        self._stopped = False

    def _seen(self, event: str, args: tuple[Any, ...]) -> None:
        if event == self.event and self.match(args):
            with self._cond:
                self.times.append(time.monotonic())
                self._cond.notify_all()

    @property
    def count(self) -> int:
        with self._cond:
            return len(self.times)

    def reached(self, n: int, timeout: float = 60.0) -> bool:
        """Block until at least *n* attempts were seen: False after *timeout* s, or
        once :meth:`stop` was called (the test is over: a helper thread must not wait
        on)."""
        with self._cond:
            return (
                self._cond.wait_for(lambda: len(self.times) >= n or self._stopped, timeout)
                and len(self.times) >= n
            )

    def wait(self, n: int, what: str, timeout: float = 60.0) -> None:
        """:meth:`reached`, failing the test when it is not."""
        if not self.reached(n, timeout):
            raise AssertionError(f"{what}: {self.count} of {n} attempts")

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def __enter__(self) -> Attempts:
        with _lock:
            _watchers.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        with _lock:
            _watchers.remove(self)


def connects_to(address: object) -> Attempts:
    """Connect attempts (each ``socket.connect``/``connect_ex`` call) to *address*: a
    Unix socket path, a ``(host, port)`` or ``(cid, port)`` tuple."""
    return Attempts("socket.connect", lambda args: args[1] == address)


#: connect(2)'s number in /proc/PID/task/TID/syscall, per machine.
_CONNECT_NR = {"x86_64": 42, "aarch64": 203}


def blocked_in_connect() -> bool:
    """Whether a thread of this process is held by the kernel inside connect(2) (a
    blocking Unix connect waiting for room in a full backlog)."""
    nr = _CONNECT_NR.get(platform.machine())
    if nr is None:
        pytest.skip(
            f"connect(2)'s syscall number on {platform.machine()} is not in tests/attempts.py"
        )
    me = threading.get_native_id()
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/syscall") as f:
                fields = f.read().split()
        except OSError:  # the thread ended meanwhile
            continue
        if fields and fields[0] == str(nr):
            return True
    return False
