"""``hvsock selftest``: run the platform self-test and print its report (text or JSON)."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from .._core.addresses import VsockAddress
from .._core.ids import CID_HOST
from . import args as cliargs
from .args import Handler

if TYPE_CHECKING:
    from .._selftest import Report, Step

EXIT_OK = 0
EXIT_FAILED_STEPS = 1


#: The commands this group adds (main.py builds only the chosen command's group).
COMMANDS = ("selftest",)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add ``selftest``; return its handler by name."""
    p = sub.add_parser(
        "selftest",
        help="exercise this machine's VM sockets step by step; report each",
        description="On a Windows host (as administrator for the registration step): "
        "AF_HYPERV, a temporary service registration, loopback round trips (blocking and "
        "asyncio), the .reg and .ps1 exports imported into a scratch key and compared, VM "
        "discovery. In a Linux guest: AF_VSOCK, the transports, the local CID, a loopback "
        "round trip where vsock_loopback is loaded, and with --port an echo server on the "
        "host. Nothing is left behind, Ctrl-C included. Exit status 1 when a step fails; "
        "paste the --json output into a bug report.",
    )
    p.add_argument(
        "--port",
        type=cliargs.port,
        help="in a Linux guest: also ping `hvsock echo-server` listening on the "
        "host for this vsock port (connects to vsock://host:PORT)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    return {"selftest": cmd_selftest}


def print_step(step: Step, out: TextIO) -> None:
    out.write(f"  {step.status:<14} {step.name:<16} {step.summary}\n")
    if step.error_code is not None:
        out.write(f"  {'':<14} {'':<16} error code: {step.error_code}\n")
    if step.advice:
        out.write(f"  {'':<14} {'':<16} advice: {step.advice}\n")
    out.flush()


def print_summary(report: Report, out: TextIO) -> None:
    from .._selftest import FAILED, NOT_APPLICABLE

    failed = sum(s.status == FAILED for s in report.steps)
    skipped = sum(s.status == NOT_APPLICABLE for s in report.steps)
    out.write(
        f"{len(report.steps) - failed - skipped} ok, {failed} failed, {skipped} not applicable\n"
    )


class _Break(KeyboardInterrupt):
    """Ctrl-Break on Windows: unwind like Ctrl-C so the cleanup runs."""


@contextmanager
def _ctrl_break_unwinds() -> Iterator[None]:
    # SIGINT already raises KeyboardInterrupt and main() turns SIGTERM into an
    # exception; Windows' Ctrl-Break (SIGBREAK) would otherwise kill the process
    # before the temporary registration is removed.
    sigbreak = getattr(signal, "SIGBREAK", None)
    if sigbreak is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_break(signum: int, frame: FrameType | None) -> None:
        raise _Break

    previous = signal.signal(sigbreak, on_break)  # pragma: no cover - Windows only
    try:  # pragma: no cover - Windows only
        yield
    finally:  # pragma: no cover - Windows only
        signal.signal(sigbreak, previous)


def cmd_selftest(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .._selftest import run_selftest

    echo = None if args.port is None else VsockAddress(CID_HOST, args.port)
    if not args.json:
        out.write("hvsock selftest\n")
    with _ctrl_break_unwinds():
        report = run_selftest(
            echo=echo, on_step=None if args.json else lambda s: print_step(s, out)
        )
    if args.json:
        cliargs.print_json(report.as_dict(), out)
    else:
        out.write(f"platform {report.platform}, Python {report.python}, hvsock {report.version}\n")
        print_summary(report, out)
    return EXIT_OK if report.ok else EXIT_FAILED_STEPS
