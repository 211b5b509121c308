"""``hvsock cp``: serve roots for file copy (``--serve``), or copy through such a service.

The work is in :mod:`hvsock._builtin.files`; this module parses arguments,
shows the progress bar and prints the summary.
"""

from __future__ import annotations

import argparse

from .._errors import ArgumentError
from . import args as cliargs
from .args import Handler, allow_rule, size

# Not typing.TYPE_CHECKING (see args.py): start-up is paid on every copy.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

    from .._core.addresses import Address

EXIT_OK = 0
#: The file service's default port, repeated here so building the parser imports
#: nothing heavy (tests/unit/test_cli_imports.py checks it matches the library).
DEFAULT_PORT = 5005


#: The commands this group adds (main.py builds only the chosen command's group).
COMMANDS = ("cp",)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add ``cp`` to *sub*; return its handler by name."""
    p = sub.add_parser(
        "cp",
        help="copy files and trees to and from a VM (or serve roots for it)",
        description="Copy through hvsock's file service. A path that starts with ':' is on "
        "the --remote side, and ADDRESS:PATH (scp style) names the service and the path "
        "at once; '-' is stdin (source) or stdout (destination). Examples: "
        "hvsock cp --remote vsock://3:5005 :/var/log/app.log . ; "
        "hvsock cp -a ./site vsock://3:5005:/srv/www ; "
        "serve: hvsock cp --serve /srv/www --listen vsock://any:5005. Every file is "
        "SHA-256 checked end to end and put in place atomically.",
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="SRC... DEST when copying (remote: :PATH with --remote, or "
        "ADDRESS:PATH such as vsock://3:5005:/srv/x); ROOT... with --serve",
    )
    p.add_argument("--serve", action="store_true", help="serve the ROOT directories")
    p.add_argument(
        "--listen",
        metavar="ADDRESS",
        help=f"with --serve: where to listen (e.g. vsock://any:{DEFAULT_PORT})",
    )
    p.add_argument("--read-only", action="store_true", help="with --serve: refuse writes")
    p.add_argument(
        "--allow",
        action="append",
        metavar="RULE",
        type=allow_rule,
        help="with --serve: let in only these peers (repeatable): a CID, a VM id, a host or uid:N",
    )
    p.add_argument(
        "--max-file-size",
        type=size,
        default=None,
        help="with --serve: largest file a client may write (e.g. 10G)",
    )
    p.add_argument(
        "--max-files",
        type=cliargs.non_negative_int,
        default=None,
        help="with --serve: most entries per connection",
    )
    p.add_argument(
        "--refuse-hardlinks",
        action="store_true",
        help="with --serve: refuse to send files with more than one hard link "
        "(a link in a root may lead outside it)",
    )
    p.add_argument("--ready-file", help="with --serve: write JSON {pid, services} when ready")
    cliargs.add_grace(p, "with --serve: transfers in progress")
    p.add_argument("--remote", metavar="ADDRESS", help="the file service to copy through")
    p.add_argument("-r", "--recursive", action="store_true", help="copy directories")
    p.add_argument(
        "-p",
        "--preserve",
        action="store_true",
        help="keep mode and mtime (setuid/setgid only with --owner)",
    )
    p.add_argument("-a", "--archive", action="store_true", help="-r -p, as cp -a and rsync -a")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="list each file, directory and symlink as it is copied",
    )
    p.add_argument(
        "--owner", action="store_true", help="keep uid and gid (the writing side must run as root)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep a verified partial file if the copy is cut, and continue one",
    )
    policy = p.add_mutually_exclusive_group()
    policy.add_argument(
        "-n",
        "--no-clobber",
        dest="policy",
        action="store_const",
        const="no-clobber",
        help="never replace an existing file",
    )
    policy.add_argument(
        "-u",
        "--update",
        dest="policy",
        action="store_const",
        const="update",
        help="replace only when the source is newer",
    )
    policy.add_argument(
        "-f",
        "--force",
        dest="policy",
        action="store_const",
        const="force",
        help="also replace symlinks and special files",
    )
    p.add_argument("--parents", action="store_true", help="create missing directories")
    p.add_argument(
        "--timeout", type=cliargs.positive_float, default=5.0, help="seconds to connect (default 5)"
    )
    p.add_argument("--retries", type=cliargs.non_negative_int, default=0)
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="a progress bar on stderr (the default when stderr is a terminal; "
        "never drawn into a pipe or a file)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return {"cp": cmd_cp}


def cmd_cp(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .._builtin.files.client import copy
    from .progress import progress_bar, wanted

    if args.serve:
        return _serve(args, err)
    if len(args.paths) < 2:
        raise ArgumentError(
            "hvsock cp: give SRC... DEST (remote paths start with ':', or are written ADDRESS:PATH)"
        )
    remote, paths = _remote_and_paths(args.remote, args.paths)
    enabled = wanted(err, args.progress is False)
    to_stdout = paths[-1] == "-"
    listing = err if to_stdout else out

    def list_entry(source: str, dest: str) -> None:
        listing.write(f"{source!r} -> {dest!r}\n")

    with progress_bar(err, enabled, "cp", unit="B") as update:
        result = copy(
            remote,
            paths[:-1],
            paths[-1],
            recursive=args.recursive or args.archive,
            preserve=args.preserve or args.archive,
            owner=args.owner,
            resume=args.resume,
            policy=args.policy or "overwrite",
            parents=args.parents,
            progress=update,
            on_entry=list_entry if args.verbose else None,
            timeout=args.timeout,
            retries=args.retries,
        )
    for warning in result.warnings:
        err.write(f"hvsock cp: skipped {warning}\n")
    summary = result.as_dict()
    if args.json:
        cliargs.print_json(summary, err if to_stdout else out)
    elif not to_stdout:
        out.write(
            f"{result.direction}: {result.files} files, {result.directories} "
            f"directories, {result.symlinks} symlinks, {result.skipped} skipped; "
            f"{result.bytes} bytes in {result.seconds:.2f} s "
            f"({result.throughput / 1e6:.1f} MB/s)\n"
        )
    return EXIT_OK


def _remote_and_paths(remote: str | None, paths: list[str]) -> tuple[str, list[str]]:
    """The service's address and the paths with remote ones as ':PATH'.

    ADDRESS:PATH arguments (see filecopy.split_address_path) give the address
    themselves; they must all name the same one, and agree with --remote if given.
    """
    from .._core.addresses import parse_address
    from .._core.filecopy import split_address_path

    found: list[str] = []
    out: list[str] = []
    for path in paths:
        split = split_address_path(path)
        if split is None:
            out.append(path)
            continue
        found.append(split[0])
        out.append(":" + split[1])
    given = ([remote] if remote else []) + found
    if not given:
        raise ArgumentError(
            "hvsock cp: give the service's address: --remote ADDRESS with "
            ":PATH for remote paths, or ADDRESS:PATH (e.g. "
            "vsock://3:5005:/srv/x); or --serve ROOT... --listen ADDRESS "
            "to serve"
        )
    first = parse_address(given[0])
    for other in given[1:]:
        if parse_address(other) != first:
            raise ArgumentError(
                f"hvsock cp: the paths name two services, {given[0]} and "
                f"{other}; copy through one service at a time"
            )
    return given[0], out


def _serve(args: argparse.Namespace, err: TextIO) -> int:
    import asyncio

    from .._builtin.files.server import file_service
    from .._service.declaration import Limits
    from .._service.host import ServiceHost

    if not args.paths or not args.listen:
        raise ArgumentError("hvsock cp --serve: give ROOT... and --listen ADDRESS")
    service = file_service(
        args.paths,
        allow=args.allow,
        read_only=args.read_only,
        max_file_size=args.max_file_size,
        max_files=args.max_files or None,
        refuse_hardlinks=args.refuse_hardlinks,
        limits=Limits(max_connections=16, idle_timeout=120.0),
    )

    def ready(addresses: dict[str, Address]) -> None:
        err.write(f"hvsock: serving {', '.join(args.paths)} on {addresses[service.name]}\n")
        err.flush()

    host = ServiceHost(grace=args.grace, ready_file=args.ready_file, on_ready=ready)
    host.add(service, args.listen)
    asyncio.run(host.serve())
    return EXIT_OK
