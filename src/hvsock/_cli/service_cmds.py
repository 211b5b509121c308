"""The built-in services: ``demo``, ``echo-server``, ``ping``.

Parser set-up imports nothing heavy (the demo's transports are repeated here and
checked against :mod:`hvsock._builtin.demo` by a test); each command imports what
it runs.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, TextIO

from .._transports._common import DEFAULT_CONNECT_TIMEOUT
from . import args as cliargs
from .args import Handler

if TYPE_CHECKING:
    from .._core.addresses import Address
    from .._service.declaration import Limits

EXIT_OK = 0
#: hvsock._builtin.demo.TRANSPORTS, without importing the demo (asyncio) to build a parser.
DEMO_TRANSPORTS = ("auto", "hyperv", "vsock", "hybrid")


#: The commands this group adds (main.py builds only the chosen command's group).
COMMANDS = ("demo", "echo-server", "ping")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add this module's sub-commands to *sub*; return their handlers by name."""
    p = sub.add_parser(
        "demo",
        help="run the HV Socket Demo: a server and a client on the best transport available here",
        description="Serve a small demo service and call it from a client in "
        "the same process, on the best transport here: Hyper-V loopback on "
        "Windows, AF_VSOCK to CID 1 where vsock_loopback is loaded, else "
        "hybrid vsock through an emulated VMM. Prints what was exchanged.",
    )
    p.add_argument(
        "--transport",
        choices=DEMO_TRANSPORTS,
        default="auto",
        help="force one transport (default auto: the best available here)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser(
        "echo-server",
        help="serve the echo service (the peer of ping)",
        description="Serve the built-in echo service on ADDRESS until "
        "SIGTERM / Ctrl-C, then stop gracefully.",
    )
    p.add_argument("address")
    p.add_argument(
        "--max-connections",
        type=cliargs.non_negative_int,
        default=64,
        help="connections served at once; more wait (default 64)",
    )
    p.add_argument(
        "--idle-timeout",
        type=cliargs.positive_float,
        default=300.0,
        help="close a connection idle this many seconds (default 300)",
    )
    cliargs.add_grace(p, "in-flight connections")
    p.add_argument("--ready-file", help="write JSON {pid, services} here once listening")

    p = sub.add_parser(
        "ping",
        help="round-trip latency through an echo service",
        description="Connect to the echo service at ADDRESS (`hvsock "
        "echo-server`), time COUNT round trips of SIZE random bytes, check "
        "each reply, and print min, median, p99 and max. A reply that "
        "differs exits 5.",
    )
    p.add_argument("address")
    p.add_argument(
        "-c", "--count", type=cliargs.non_negative_int, default=10, help="round trips (default 10)"
    )
    p.add_argument(
        "-s",
        "--size",
        type=cliargs.non_negative_int,
        default=1,
        help="bytes per round trip (default 1)",
    )
    p.add_argument(
        "-i", "--interval", type=float, default=0.0, help="seconds between round trips (default 0)"
    )
    p.add_argument(
        "--timeout",
        type=cliargs.positive_float,
        default=DEFAULT_CONNECT_TIMEOUT,
        help="seconds for the connect and for each reply (default %(default)s)",
    )
    p.add_argument(
        "--retries",
        type=cliargs.non_negative_int,
        default=0,
        help="retry a failed connect this many times (default 0)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    return {"demo": cmd_demo, "echo-server": cmd_echo_server, "ping": cmd_ping}


def cmd_demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .._builtin import demo

    report = demo.run_demo(args.transport)
    if args.json:
        cliargs.print_json(
            {
                "transport": report.transport,
                "why": report.why,
                "service": report.service,
                "service_id": report.service_id,
                "address": report.address,
                "registration": report.registration,
                "exchanged": [list(e) for e in report.exchanged],
            },
            out,
        )
        return EXIT_OK
    out.write(f"{report.service}\n")
    out.write(f"transport:    {report.transport} ({report.why})\n")
    out.write(f"service id:   {report.service_id}\n")
    out.write(f"served on:    {report.address}\n")
    out.write(f"registration: {report.registration}\n")
    for who, text in report.exchanged:
        out.write(f"  {who:<16} {text}\n")
    out.write("ok\n")
    return EXIT_OK


def _limits(args: argparse.Namespace) -> Limits:
    from .._service.declaration import Limits

    # Limits raises ArgumentError (exit 2) for values the parser let through.
    return Limits(max_connections=args.max_connections, idle_timeout=args.idle_timeout)


def cmd_echo_server(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import asyncio

    from .._builtin.echo import ECHO_PORT, echo_service
    from .._core import ids
    from .._core.addresses import parse_address
    from .._service.host import ServiceHost

    address = parse_address(args.address)
    port = getattr(address, "port", None)
    service = echo_service(
        port if isinstance(port, int) and port != ids.PORT_ANY else ECHO_PORT, limits=_limits(args)
    )

    def ready(addresses: dict[str, Address]) -> None:
        err.write(f"hvsock: listening on {addresses[service.name]}\n")
        err.flush()

    host = ServiceHost(grace=args.grace, ready_file=args.ready_file, on_ready=ready)
    host.add(service, address)
    asyncio.run(host.serve())
    return EXIT_OK


def cmd_ping(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .._builtin.echo import ping

    stats = ping(
        args.address,
        count=args.count,
        size=args.size,
        interval=args.interval,
        timeout=args.timeout,
        retries=args.retries,
    )
    if args.json:
        cliargs.print_json(stats.as_dict(), out)
    else:
        out.write(
            f"{cliargs.plural(stats.count, 'round trip')} of "
            f"{cliargs.plural(stats.size, 'byte')} to {stats.address}\n"
        )
        out.write(
            f"min {stats.min_ms:.3f} ms, median {stats.median_ms:.3f} ms, "
            f"p99 {stats.p99_ms:.3f} ms, max {stats.max_ms:.3f} ms\n"
        )
    return EXIT_OK
