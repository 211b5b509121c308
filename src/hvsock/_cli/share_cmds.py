"""``hvsock share`` (serve directories as 9P2000.L) and ``hvsock mount`` (mount one in
Linux), plus ``mount.hvsock``, the helper mount(8) runs for ``-t hvsock`` (fstab).

The work is in :mod:`hvsock._builtin.share`; this module parses arguments and prints.
"""

from __future__ import annotations

import argparse
import sys

from . import args as cliargs
from .args import Handler, allow_rule

# Not typing.TYPE_CHECKING (see args.py): start-up is paid on every call.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import TextIO

    from .._core.addresses import Address

EXIT_OK = 0
#: The share's default port (9P's), repeated so building the parser imports nothing heavy.
DEFAULT_PORT = 564

#: The commands this group adds (main.py builds only the chosen command's group).
COMMANDS = ("share", "mount")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add ``share`` and ``mount`` to *sub*; return their handlers by name."""
    s = sub.add_parser(
        "share",
        help="serve directories to VMs as 9P2000.L (Linux's 9p mounts them)",
        description="Serve DIR (and NAME=DIR exports) over a VM socket as 9P2000.L. A guest "
        "mounts it with `hvsock mount ADDRESS MOUNTPOINT` (-o aname=NAME picks an export; "
        "the first is the default). Example: hvsock share ~/src --listen vsock://any:564 "
        "--allow 3. On vsock, Hyper-V and hybrid sockets --allow is required (a CID, a VM "
        "id, uid:N, or 'any').",
    )
    s.add_argument("dirs", nargs="+", metavar="DIR", help="DIR or NAME=DIR")
    s.add_argument(
        "--listen",
        metavar="ADDRESS",
        help=f"where to listen (default: vsock://any:{DEFAULT_PORT} on Linux, "
        f"hvsock://wildcard/{DEFAULT_PORT} on Windows)",
    )
    s.add_argument(
        "--allow",
        action="append",
        metavar="RULE",
        type=allow_rule,
        help="let in only these peers (repeatable): a CID, a VM id, a host, uid:N, or 'any'",
    )
    s.add_argument("--read-only", action="store_true", help="refuse every change (EROFS)")
    s.add_argument(
        "--ownership",
        choices=("server", "passthrough", "synthesized"),
        help="server (the Linux default): files belong to this server's user; "
        "passthrough (root only): new files get the client's uid/gid; "
        "synthesized (the portable backend's): owned by the client, modes made up",
    )
    s.add_argument(
        "--portable",
        action="store_true",
        help="serve with the portable backend (checked paths, synthesized modes and "
        "owners): what Windows uses; on Linux for testing",
    )
    cliargs.add_grace(s, "open requests")
    s.add_argument("--ready-file", help="write JSON {pid, services} when ready")

    m = sub.add_parser(
        "mount",
        help="mount a share in this Linux machine (the kernel's 9p client)",
        description="Connect to a share and mount it with trans=fd: the kernel keeps the "
        "socket and this command exits. Needs root and the 9p, 9pnet_fd modules. Example: "
        "hvsock mount vsock://2:564 /mnt/host -o cache=loose. In /etc/fstab: "
        "vsock://2:564 /mnt/host hvsock defaults,nofail 0 0 (runs mount.hvsock).",
    )
    m.add_argument("address", metavar="ADDRESS")
    m.add_argument("mountpoint", metavar="MOUNTPOINT")
    m.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTS",
        help="ro, msize=BYTES, cache=none|loose|fscache|mmap, aname=EXPORT, "
        "access=..., nosuid, noatime ... (comma-separated, repeatable)",
    )
    m.add_argument(
        "--timeout", type=cliargs.positive_float, default=5.0, help="seconds to connect (default 5)"
    )
    m.add_argument("--retries", type=cliargs.non_negative_int, default=0)
    return {"share": cmd_share, "mount": cmd_mount}


def _exports(dirs: list[str]) -> dict[str, str] | list[str]:
    named = {
        d.split("=", 1)[0]: d.split("=", 1)[1]
        for d in dirs
        if "=" in d and "/" not in d.split("=", 1)[0]
    }
    if not named:
        return dirs
    import os

    out: dict[str, str] = {}
    for d in dirs:
        name, eq, path = d.partition("=")
        if not eq or "/" in name:
            name, path = os.path.basename(os.path.realpath(d)) or "root", d
        out[name] = path
    return out


def cmd_share(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import asyncio

    from .._builtin.share.server import share_service
    from .._core.addresses import HybridAddress, HyperVAddress, VsockAddress, parse_address
    from .._errors import ArgumentError
    from .._service.host import ServiceHost

    service = share_service(
        _exports(args.dirs),
        allow=args.allow,
        read_only=args.read_only,
        ownership=args.ownership,
        portable=True if args.portable else None,
    )
    vm_socket = args.listen is None or isinstance(
        parse_address(args.listen), (VsockAddress, HyperVAddress, HybridAddress)
    )
    if vm_socket and not args.allow:
        raise ArgumentError(
            "a share on a VM socket needs --allow: name the guests (a CID, "
            "a VM id) or give --allow any"
        )

    def ready(addresses: dict[str, Address]) -> None:
        err.write(
            f"hvsock: sharing {', '.join(args.dirs)} on {addresses[service.name]}"
            f"{' (read-only)' if args.read_only else ''}\n"
        )
        err.flush()

    host = ServiceHost(grace=args.grace, ready_file=args.ready_file, on_ready=ready)
    host.add(service, args.listen)
    asyncio.run(host.serve())
    return EXIT_OK


def cmd_mount(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .._builtin.share.mount import mount

    mount(
        args.address,
        args.mountpoint,
        options=",".join(args.options),
        timeout=args.timeout,
        retries=args.retries,
    )
    return EXIT_OK


def mount_helper(argv: Sequence[str] | None = None) -> int:
    """``mount.hvsock SPEC DIR [-sfnv] [-o OPTS]``, as mount(8) runs it for ``-t hvsock``.

    -f (fake) checks the arguments only; -n, -s and -v are accepted and change nothing
    (no mtab; unknown options already pass to the kernel). Returns mount(8)'s codes:
    0, 1 (bad usage), 32 (failure).
    """
    tokens = list(sys.argv[1:] if argv is None else argv)
    positional: list[str] = []
    options: list[str] = []
    fake = False
    while tokens:
        token = tokens.pop(0)
        if token == "-o" and tokens:
            options.append(tokens.pop(0))
        elif token.startswith("-o") and len(token) > 2:
            options.append(token[2:])
        elif token.startswith("-") and len(token) > 1 and set(token[1:]) <= set("sfnvrw"):
            fake = fake or "f" in token
            if "r" in token:
                options.append("ro")
        else:
            positional.append(token)
    if len(positional) != 2:
        sys.stderr.write("usage: mount.hvsock ADDRESS MOUNTPOINT [-sfnv] [-o OPTIONS]\n")
        return 1
    from .._builtin.share.mount import mount, parse_options
    from .._errors import HvsockError

    try:
        opts = ",".join(options)
        parse_options(opts)
        if fake:
            return 0
        timeout = retries = None
        for word in opts.split(","):
            key, _, value = word.partition("=")
            if key == "timeout":
                timeout = cliargs.positive_float(value)
            elif key == "retries":
                retries = cliargs.non_negative_int(value)
        mount(
            positional[0],
            positional[1],
            options=opts,
            timeout=timeout if timeout is not None else 5.0,
            retries=retries if retries is not None else 0,
        )
    except (HvsockError, OSError, ValueError, argparse.ArgumentTypeError) as exc:
        sys.stderr.write(f"mount.hvsock: {exc}\n")
        return 32
    return 0
