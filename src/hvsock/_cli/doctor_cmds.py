"""``hvsock doctor``: check VM sockets here (and for an address), say what to fix.

The checks are in :mod:`hvsock._doctor`; this module prints their report.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, TextIO

from . import args as cliargs
from .args import Handler

if TYPE_CHECKING:
    from .._doctor.model import Diagnosis

EXIT_OK = 0
EXIT_FAILED_CHECKS = 1


#: The commands this group adds (main.py builds only the chosen command's group).
COMMANDS = ("doctor",)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add this module's sub-commands to *sub*; return their handlers by name."""
    p = sub.add_parser(
        "doctor",
        help="check VM sockets here (and ADDRESS); say what to fix",
        description="Check what VM sockets need on this machine, and for ADDRESS what it "
        "needs (port range, registration, the VM). Exit status 1 when a check fails. "
        "Never connects AF_VSOCK.",
    )
    p.add_argument("address", nargs="?")
    p.add_argument("--json", action="store_true", help="print JSON")
    return {"doctor": cmd_doctor}


def print_diagnosis(report: Diagnosis, out: TextIO) -> None:
    """The report as text: one line per check, its fix under it; n/a ones summed up."""
    from .._doctor.model import FAIL, NOT_APPLICABLE, WARN

    where = f", address {report.address}" if report.address else ""
    out.write(f"hvsock doctor: {report.platform}, Python {report.python}{where}\n")
    shown = [c for c in report.checks if c.status != NOT_APPLICABLE]
    width = max((len(c.name) for c in shown), default=0)
    for check in shown:
        out.write(f"  {check.status:<5} {check.name:<{width}}  {check.summary}\n")
        if check.fix:
            out.write(f"  {'':<5} {'':<{width}}  fix: {check.fix}\n")
    skipped = [c for c in report.checks if c.status == NOT_APPLICABLE]
    reasons: dict[str, list[str]] = {}
    for check in skipped:
        reasons.setdefault(check.summary, []).append(check.name)
    for why, names in reasons.items():
        out.write(f"  not applicable ({why}): {', '.join(names)}\n")
    failed = sum(c.status == FAIL for c in report.checks)
    warned = sum(c.status == WARN for c in report.checks)
    out.write(f"{failed} failed, {warned} warnings\n")


def cmd_doctor(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .._doctor import diagnose

    report = diagnose(args.address)
    if args.json:
        cliargs.print_json(report.as_dict(), out)
    else:
        print_diagnosis(report, out)
    return EXIT_OK if report.ok else EXIT_FAILED_CHECKS
