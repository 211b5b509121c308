"""``hvsock vms`` on a Linux (KVM) host: the table, the JSON, and the notes on stderr."""

from __future__ import annotations

from typing import TextIO

from . import args as cliargs

EXIT_OK = 0


def _shown(text: str) -> str:
    # A VM name or path is whatever a process put on its command line: never let it
    # move the cursor or break the table.
    return text if text.isprintable() else ascii(text)[1:-1]


def print_host_vms(proc: str, as_json: bool, out: TextIO, err: TextIO) -> int:
    from .._kvm.vms import discover_host_vms

    found = discover_host_vms(proc)
    if as_json:
        cliargs.print_json(
            {
                "vms": [vm.as_dict() for vm in found.vms],
                "sources": [report.as_dict() for report in found.sources],
                "problems": found.problems,
            },
            out,
        )
        return EXIT_OK
    if found.vms:
        rows = [["NAME", "HYPERVISOR", "STATE", "VSOCK", "SOURCE"]]
        rows += [
            [
                _shown(vm.name) if vm.name is not None else "(no name)",
                vm.hypervisor,
                vm.state,
                _shown(vm.endpoint),
                _shown(vm.source),
            ]
            for vm in found.vms
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
            out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")
        for problem in found.problems:
            err.write(f"hvsock: note: {_shown(problem)}\n")
    else:
        err.write("hvsock: no VMs found on this host; sources checked:\n")
        for report in found.sources:
            err.write(f"hvsock:   {_shown(report.summary())}\n")
    return EXIT_OK
