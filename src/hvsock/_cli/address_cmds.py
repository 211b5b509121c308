"""`hvsock service-id`, `port`, `addr`, `cid`: the address model from the command line.

Nothing here connects or listens; `hvsock connect` and `listen` are in socket_cmds.py.
"""

from __future__ import annotations

import argparse

from . import args as cliargs
from .args import Handler

# Not typing.TYPE_CHECKING (see args.py): start-up is paid on every call.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

EXIT_OK = 0


#: The commands this group adds (main.py builds only the chosen command's group).
COMMANDS = ("service-id", "port", "addr", "cid")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add this module's sub-commands to *sub*; return their handlers by name."""
    p = sub.add_parser(
        "service-id",
        help="print the Hyper-V service id of a vsock port",
        description="Print the Hyper-V service id (GUID) that stands for vsock "
        "port PORT: what a Windows host registers and listens on so that Linux "
        "guests can reach it on that port. `hvsock port` is the reverse.",
    )
    p.add_argument("port", type=cliargs.port, help="port number (decimal or 0x hex)")

    p = sub.add_parser(
        "port",
        help="print the vsock port of a template service id",
        description="Print the vsock port a Hyper-V service id stands for "
        "(ids of the form xxxxxxxx-facb-11e6-bd58-64006a7986d3 only). The "
        "reverse of `hvsock service-id`.",
    )
    p.add_argument("guid", help="service id GUID (any case, braces optional)")

    p = sub.add_parser(
        "addr",
        help="parse an address and explain it",
        description="Parse ADDRESS and explain it: its canonical form, what "
        "it means, and the same endpoint as the other side sees it (a Linux "
        "guest's vsock:// view and the Windows host's hvsock:// view).",
    )
    p.add_argument("address")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser(
        "cid",
        help="print this machine's vsock CID",
        description="Print this machine's vsock CID (from /dev/vsock) and, on "
        "stderr, what it means. Linux only; never connects anything.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")

    return {"service-id": cmd_service_id, "port": cmd_port, "addr": cmd_addr, "cid": cmd_cid}


def cmd_service_id(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .._core import ids

    out.write(f"{ids.service_id_for_port(args.port)}\n")
    return EXIT_OK


def cmd_port(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .._core import ids

    out.write(f"{ids.port_for_service_id(ids.parse_guid(args.guid, what='service id'))}\n")
    return EXIT_OK


def cmd_addr(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .._core.addresses import describe_address, parse_address
    from . import addr_text

    address = parse_address(args.address)
    if args.json:
        cliargs.print_json(describe_address(address), out)
    else:
        out.write(addr_text.render(addr_text.explain(address)))
    return EXIT_OK


def cmd_cid(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .._transports.features import describe_cid, local_cid

    cid = local_cid()
    if args.json:
        cliargs.print_json({"cid": cid, "meaning": describe_cid(cid)}, out)
    else:
        out.write(f"{cid}\n")
        err.write(f"hvsock: CID {cid}: {describe_cid(cid)}\n")
    return EXIT_OK
