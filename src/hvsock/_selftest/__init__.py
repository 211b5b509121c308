"""``hvsock selftest``: exercise the real platform step by step and report each step.

On a Windows host: AF_HYPERV, a temporary registration, loopback round trips (blocking
and asyncio), the .reg / .ps1 exports imported for real, VM discovery. In a Linux
guest: AF_VSOCK, the transports, the local CID, a loopback round trip where
``vsock_loopback`` exists, and a host echo server when the user names its port.
Nothing is left behind. The library never prints; the CLI prints the report.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

from .._core.addresses import Address
from .._version import __version__
from .linux import Guest, linux_steps
from .model import FAILED, NOT_APPLICABLE, OK, Report, Step, not_applicable
from .windows import Host, windows_steps

__all__ = [
    "FAILED",
    "NOT_APPLICABLE",
    "OK",
    "Guest",
    "Host",
    "Report",
    "Step",
    "run_selftest",
    "selftest_steps",
]


def selftest_steps(
    *,
    platform: str | None = None,
    echo: Address | str | None = None,
    host: Host | None = None,
    guest: Guest | None = None,
) -> Iterator[Step]:
    """The steps for this *platform* (``sys.platform`` by default), each as it ends.

    *echo*: a host-side echo server for a Linux guest to reach (``vsock://host:N``).
    Closing the iterator early (Ctrl-C) still removes what the Windows steps made.
    """
    platform = platform or sys.platform
    if platform == "win32":
        yield from windows_steps(host or Host())
    elif platform.startswith("linux"):
        yield from linux_steps(guest or Guest(), echo)
    else:
        yield not_applicable(
            "platform", f"the self-test knows Windows hosts and Linux guests, not {platform}"
        )


def run_selftest(
    *,
    platform: str | None = None,
    echo: Address | str | None = None,
    host: Host | None = None,
    guest: Guest | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> Report:
    """Run every step and return the :class:`Report`; *on_step* sees each as it ends.

    Never raises for a failed step; KeyboardInterrupt propagates after cleanup.
    """
    steps = []
    iterator = selftest_steps(platform=platform, echo=echo, host=host, guest=guest)
    try:
        for step in iterator:
            steps.append(step)
            if on_step is not None:
                on_step(step)
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
    python = ".".join(map(str, sys.version_info[:3]))
    return Report(platform or sys.platform, python, __version__, tuple(steps))
