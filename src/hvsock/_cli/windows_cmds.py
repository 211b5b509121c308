"""Host commands: register, unregister, services (Windows), vms (Windows and KVM hosts).

Thin: each parses its arguments, calls the library, and prints. Registration
writes the machine's registry, or with ``--export`` prints the same change as a
script for an administrator (any OS), or with ``--dry-run`` makes it on an
in-memory copy and prints what would change.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, TextIO

from .._errors import ArgumentError
from . import args as cliargs
from .args import Handler

if TYPE_CHECKING:
    import uuid

    from .._service.declaration import Service
    from .._windows import registry as reg
    from .._windows.memory_registry import MemoryRegistry

EXIT_OK = 0
#: hvsock._windows.export.FORMATS, without importing the Windows layer to build a parser.
EXPORT_FORMATS = ("ps1", "reg")


#: The commands this group adds (main.py builds only the chosen command's group).
COMMANDS = ("register", "unregister", "services", "vms")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add this module's sub-commands to *sub*; return their handlers by name."""
    p = sub.add_parser(
        "register",
        help="register a service on this Hyper-V host",
        description="Register a service under the host's GuestCommunicationServices key "
        "(administrator). Idempotent: the same name and id again changes nothing. Prints "
        "the service id. With --export, print the same step as a script an administrator "
        "runs on the host (works on any OS, e.g. inside a Linux guest).",
    )
    p.add_argument("name", nargs="?", help="the friendly name (ElementName)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--port",
        type=cliargs.port,
        help="a vsock port: registers its template id, what Linux guests reach",
    )
    which.add_argument("--service-id", metavar="GUID", help="a service id GUID")
    which.add_argument("--new", action="store_true", help="a new random service id")
    which.add_argument(
        "--from",
        dest="from_code",
        metavar="MODULE:NAME",
        help="the hvsock.Service (or list of them) NAME in Python module MODULE",
    )
    _change_options(p)

    p = sub.add_parser(
        "unregister",
        help="remove a service registration hvsock made",
        description="Remove a service's registration. Only entries hvsock made, unless "
        "--force; never Windows' built-in ones. Not registered: nothing to do.",
    )
    p.add_argument("service", metavar="ID", help="the service id GUID, or a vsock port")
    p.add_argument("--force", action="store_true", help="also remove an entry another tool made")
    _change_options(p)

    p = sub.add_parser(
        "services",
        help="list registered services (id, name, port, origin)",
        description="List the services registered on this Hyper-V host under "
        "GuestCommunicationServices: id, vsock port (for template ids), who "
        "made each (hvsock, built-in, other) and its name. Windows host only.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser(
        "vms",
        help="list this host's VMs: Hyper-V (and WSL's) or KVM ones",
        description="On Windows: the Hyper-V VMs this user can see (Get-VM, "
        "else CIM) and WSL 2's VM when it runs, with the VM id an hvsock:// "
        "address takes. On Linux: the VMs of this KVM host (libvirt through "
        "virsh -r or libvirt-python, QEMU, Firecracker and Cloud Hypervisor "
        "processes in /proc, the VMMs' API sockets), with the CID a "
        "vsock://name:<VM>:<port> address resolves to or the hybrid socket of "
        "hybrid://name:<VM>:<port>. Starts and changes nothing; a source that "
        "fails is noted on stderr.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--proc",
        metavar="DIR",
        default="/proc",
        help="Linux: read processes from DIR instead of /proc (e.g. the host's "
        "/proc mounted in a container)",
    )

    return {
        "register": cmd_register,
        "unregister": cmd_unregister,
        "services": cmd_services,
        "vms": cmd_vms,
    }


def _change_options(p: argparse.ArgumentParser) -> None:
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--export",
        choices=EXPORT_FORMATS,
        help="print a PowerShell script (ps1) or .reg file instead",
    )
    how.add_argument(
        "--dry-run",
        action="store_true",
        help="change an in-memory copy of the registry; print what would change",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="with --export: write FILE (in the encoding Windows expects)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")


# -- register / unregister ------------------------------------------------------------


def _services_to_register(args: argparse.Namespace) -> list[tuple[str, uuid.UUID]]:
    import uuid

    from .._core import ids
    from .._windows import registry as reg

    if args.from_code is not None:
        if args.name is not None:
            raise ArgumentError("with --from, the name comes from the declaration; drop NAME")
        return [(s.name, s.service_id) for s in load_services(args.from_code)]
    if args.name is None:
        raise ArgumentError("give the service's NAME (or --from MODULE:NAME)")
    reg.check_element_name(args.name)
    if args.new:
        return [(args.name, uuid.uuid4())]
    if args.port is not None:
        return [(args.name, ids.service_id_for_port(args.port))]
    return [(args.name, ids.parse_guid(args.service_id, what="service id"))]


def load_services(spec: str) -> list[Service]:
    """The Service declarations *spec* (``module:name``) names: one, or a collection."""
    import importlib

    from .._service.declaration import Service

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ArgumentError(f"--from takes MODULE:NAME (e.g. myapp.services:agent), not {spec!r}")
    with _cwd_on_path():
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ArgumentError(f"cannot import {module_name!r}: {exc}") from exc
    try:
        value = getattr(module, attr)
    except AttributeError:
        raise ArgumentError(f"module {module_name!r} has no {attr!r}") from None
    found = (
        [value]
        if isinstance(value, Service)
        else (list(value) if isinstance(value, (list, tuple, set, frozenset)) else [])
    )
    if not found or not all(isinstance(s, Service) for s in found):
        raise ArgumentError(f"{spec} is not a hvsock.Service (or a list of them)")
    return found


@contextlib.contextmanager
def _cwd_on_path() -> Iterator[None]:
    # The console script's sys.path lacks the current directory (python -m has it).
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def _machine_registry(what_to_do: str) -> reg.RegistryBackend:
    """The machine's registry; where there is none, an error saying what this command's
    user can do instead (each command has its own options)."""
    from .._errors import UnsupportedError
    from .._windows import registry as reg

    try:
        return reg.default_backend()
    except UnsupportedError:
        raise UnsupportedError(
            "the Windows registry is not here: services are registered "
            f"on the Hyper-V host; {what_to_do}"
        ) from None


def _dry_run_registry() -> MemoryRegistry:
    """A copy of the machine's services key, or an empty registry where there is none."""
    from .._errors import UnsupportedError
    from .._windows import registry as reg
    from .._windows.memory_registry import MemoryRegistry

    try:
        real = reg.default_backend()
    except UnsupportedError:
        return MemoryRegistry()
    return MemoryRegistry.copy_of(real, reg.SERVICES_KEY)  # pragma: no cover - Windows


def _write_export(text: str, fmt: str, output: str | None, out: TextIO, err: TextIO) -> None:
    from .._errors import HvsockError

    if output is None:
        out.write(text)
        return
    # regedit expects UTF-16 with a BOM; Windows PowerShell 5.1 reads a BOM-less
    # script as ANSI, so UTF-8 gets one. Both with CRLF line ends.
    encoding = "utf-16" if fmt == "reg" else "utf-8-sig"
    try:
        with open(output, "w", encoding=encoding, newline="\r\n") as f:
            f.write(text)
    except OSError as exc:
        raise HvsockError(f"cannot write {output}: {exc.strerror or exc}") from exc
    err.write(f"hvsock: wrote {output}\n")


def _describe_edits(edits: Sequence[reg.RegistryEdit]) -> list[str]:
    lines = []
    for edit in edits:
        if edit.delete:
            lines.append(f"would delete HKLM\\{edit.key}")
            continue
        lines.append(f"would create HKLM\\{edit.key} (if missing)")
        lines += [f"would set {name} = {value!r}" for name, value in edit.values]
    return lines


def cmd_register(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .._core import ids
    from .._windows import export as exporting
    from .._windows import registry as reg

    if args.output is not None and args.export is None:
        raise ArgumentError("--output goes with --export")
    wanted = _services_to_register(args)
    if args.export is not None:
        changes: list[reg.Change] = [reg.Registration(sid, name) for name, sid in wanted]
        _write_export(
            exporting.registration_script(changes, args.export, filename=args.output),
            args.export,
            args.output,
            out,
            err,
        )
        run = exporting.usage(args.export, args.output)
        save = "" if args.output else f"save it as {exporting.DEFAULT_FILE[args.export]}, then "
        step = (
            f"{save}run it on the Hyper-V host in an elevated PowerShell: {run}"
            if args.export == "ps1"
            else f"{save}import it on the Hyper-V host as administrator: {run}"
        )
        for name, sid in wanted:
            err.write(f"hvsock: {name!r} is service {reg.describe_service(sid)}; {step}\n")
        return EXIT_OK
    registry = (
        _dry_run_registry()
        if args.dry_run
        else _machine_registry(
            "write the host-side step with --export ps1 (or --export reg) and run it on the "
            "host as administrator, or try it here with --dry-run"
        )
    )
    results = []
    for name, sid in wanted:
        change = reg.register_service(name, sid, registry=registry)
        edits = change.edits() if change is not None else ()
        results.append(
            {
                "service_id": str(sid),
                "name": name,
                "port": ids.port_for_service_id(sid) if ids.is_template_service_id(sid) else None,
                "changed": change is not None,
                "dry_run": args.dry_run,
                "edits": _describe_edits(edits) if args.dry_run else [],
            }
        )
        if args.json:
            continue
        if args.dry_run:
            out.writelines(line + "\n" for line in _describe_edits(edits))
        else:
            out.write(f"{sid}\n")
        if change is None:
            err.write(
                f"hvsock: {name!r} is already registered as "
                f"{reg.describe_service(sid)}; nothing to do\n"
            )
        elif not args.dry_run:
            err.write(f"hvsock: registered {name!r} as {reg.describe_service(sid)}\n")
    if args.json:
        cliargs.print_json(results, out)
    return EXIT_OK


def cmd_unregister(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .._errors import RegistryError
    from .._windows import export as exporting
    from .._windows import registry as reg

    if args.output is not None and args.export is None:
        raise ArgumentError("--output goes with --export")
    sid = reg.check_service_id(args.service)
    if args.export is not None:
        if args.export == "reg" and not args.force:
            raise RegistryError(
                "a .reg file cannot check who made an entry, so it could remove another "
                "tool's; use --export ps1 (it checks), or add --force"
            )
        _write_export(
            exporting.registration_script(
                [reg.Removal(sid, args.force)], args.export, filename=args.output
            ),
            args.export,
            args.output,
            out,
            err,
        )
        return EXIT_OK
    registry = (
        _dry_run_registry()
        if args.dry_run
        else _machine_registry(
            "write the host-side step with --export ps1 and run it on the host as "
            "administrator, or try it here with --dry-run"
        )
    )
    change = reg.unregister_service(sid, force=args.force, registry=registry)
    edits = change.edits() if change is not None else ()
    if args.json:
        cliargs.print_json(
            {
                "service_id": str(sid),
                "changed": change is not None,
                "dry_run": args.dry_run,
                "edits": _describe_edits(edits) if args.dry_run else [],
            },
            out,
        )
    elif args.dry_run:
        out.writelines(line + "\n" for line in _describe_edits(edits))
    if change is None:
        err.write(f"hvsock: {reg.describe_service(sid)} is not registered; nothing to do\n")
    elif not args.dry_run:
        err.write(f"hvsock: removed {reg.describe_service(sid)}\n")
    return EXIT_OK


# -- listings ----------------------------------------------------------------------


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")


def cmd_services(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .._windows import registry as reg

    entries = reg.registered_services(
        _machine_registry("run `hvsock services` on the Hyper-V host itself")
    )
    if args.json:
        cliargs.print_json([e.as_dict() for e in entries], out)
        return EXIT_OK
    rows = [["ID", "PORT", "ORIGIN", "NAME"]]
    for e in entries:
        rows.append(
            [
                str(e.service_id) if e.service_id is not None else e.key,
                str(e.port) if e.port is not None else "-",
                e.origin,
                e.name if e.name is not None else "(no ElementName)",
            ]
        )
    _table(rows, out)
    return EXIT_OK


def cmd_vms(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if sys.platform.startswith("linux"):
        from .host_vms_text import print_host_vms

        return print_host_vms(args.proc, args.json, out, err)
    from .._windows.vms import discover_vms

    found = discover_vms()
    if args.json:
        cliargs.print_json(
            {"vms": [vm.as_dict() for vm in found.vms], "problems": list(found.problems)}, out
        )
        return EXIT_OK
    if found.vms:
        rows = [["ID", "STATE", "SOURCE", "NAME"]]
        rows += [[str(vm.vm_id), vm.state, vm.source, vm.name] for vm in found.vms]
        _table(rows, out)
    for problem in found.problems:
        err.write(f"hvsock: note: {problem}\n")
    return EXIT_OK
