"""Load tools: ``hvsock bench`` (server and client) and ``hvsock stress``.

The work is in :mod:`hvsock._builtin.bench` and :mod:`hvsock._builtin.stress`
(imported when a command runs); this module parses arguments, prints, and shows
progress bars (tqdm, used only here).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, TextIO

from .._errors import ArgumentError
from .._transports._common import DEFAULT_CONNECT_TIMEOUT
from . import args as cliargs
from .args import Handler, non_negative_float, raise_open_files_limit, size
from .progress import progress_bar, wanted

if TYPE_CHECKING:
    from .._builtin import bench
    from .._core.addresses import Address

EXIT_OK = 0
EXIT_FAILED = 1  # stress: a connection failed or came back different
# Library defaults repeated so that building the parser imports neither tool (asyncio);
# tests/unit/test_cli_imports.py checks they match.
BENCH_DEFAULT_BUFFER = 256 << 10
STRESS_DEFAULT_MAX_CHUNK = 64 << 10


#: The commands this group adds (main.py builds only the chosen command's group).
COMMANDS = ("bench", "stress")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add this module's sub-commands to *sub*; return their handlers by name."""
    p = sub.add_parser(
        "bench",
        help="measure throughput, latency and connection rate",
        description="`hvsock bench server ADDRESS` serves the benchmark; "
        "`hvsock bench client ADDRESS` measures against it (directly, or "
        "through a relay in between).",
    )
    modes = p.add_subparsers(
        dest="bench_mode", required=True, metavar="MODE", parser_class=cliargs.Parser
    )
    s = modes.add_parser("server", help="serve the benchmark on ADDRESS until SIGTERM")
    s.add_argument("address")
    s.add_argument(
        "--mode",
        type=cliargs.mode,
        default=0o600,
        help="file mode of a unix/hybrid socket, octal (default 600)",
    )
    cliargs.add_grace(s)
    s.add_argument("--ready-file", help="write JSON {pid, address} here once listening")
    c = modes.add_parser(
        "client",
        help="run measurements against a bench server",
        description="Tests: throughput (one stream), parallel (--streams "
        "streams), rtt (1-byte round trips), connect (new connections per "
        "second). Each runs for --duration seconds, or else to its own "
        "count (--bytes, --count, --connections).",
    )
    c.add_argument("address")
    c.add_argument(
        "--tests",
        type=_tests,
        default=list(TESTS),
        help="comma-separated: throughput,parallel,rtt,connect (default all)",
    )
    c.add_argument(
        "--duration",
        type=cliargs.positive_float,
        default=None,
        help="seconds per test (instead of the counts)",
    )
    c.add_argument(
        "--bytes", type=size, default=256 << 20, help="bytes per throughput test (default 256M)"
    )
    c.add_argument(
        "--buffer-size",
        type=size,
        default=BENCH_DEFAULT_BUFFER,
        help="bytes per write (default 256K)",
    )
    c.add_argument(
        "--streams",
        type=cliargs.non_negative_int,
        default=16,
        help="streams of the parallel test (default 16)",
    )
    c.add_argument(
        "--count", type=cliargs.non_negative_int, default=2000, help="round trips (default 2000)"
    )
    c.add_argument(
        "--connections",
        type=cliargs.non_negative_int,
        default=1000,
        help="connections of the connect test (default 1000)",
    )
    c.add_argument(
        "--parallel",
        type=cliargs.non_negative_int,
        default=1,
        help="connect test: connections made at once (default 1)",
    )
    c.add_argument(
        "--timeout",
        type=cliargs.positive_float,
        default=DEFAULT_CONNECT_TIMEOUT,
        help="connect timeout, seconds (default %(default)s)",
    )
    c.add_argument("--json", action="store_true", help="print JSON")
    c.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (they show on stderr when that is a terminal)",
    )

    p = sub.add_parser(
        "stress",
        help="many connections of random data through an echo server, checked",
        description="Open --connections connections, --parallel at a time, to the echo "
        "server at ADDRESS (e.g. `hvsock echo-server`); each sends a random number of "
        "random bytes in random-sized writes, half-closes and checks the SHA-256 of the "
        "echo. Exit status 1 if any connection failed or came back different; each "
        "failure is reported with its seed and the command that replays it.",
    )
    p.add_argument("address")
    p.add_argument(
        "-n",
        "--connections",
        type=cliargs.non_negative_int,
        default=100,
        help="connections in all (default 100)",
    )
    p.add_argument(
        "-P",
        "--parallel",
        type=cliargs.non_negative_int,
        default=10,
        help="connections open at once (default 10)",
    )
    p.add_argument("--min-size", type=size, default=0, help="bytes per connection, at least")
    p.add_argument(
        "--max-size", type=size, default=1 << 20, help="bytes per connection, at most (default 1M)"
    )
    p.add_argument(
        "--max-chunk",
        type=size,
        default=STRESS_DEFAULT_MAX_CHUNK,
        help="largest single write (default 64K)",
    )
    p.add_argument(
        "--seed",
        type=cliargs.non_negative_int,
        default=None,
        help="base seed (connection i uses seed+i); default random",
    )
    p.add_argument(
        "--timeout",
        type=cliargs.positive_float,
        default=60.0,
        help="seconds per connection (default 60)",
    )
    p.add_argument(
        "--sync-start",
        action="store_true",
        help="the first PARALLEL connections all connect before any sends",
    )
    p.add_argument(
        "--hold",
        type=non_negative_float,
        default=0.0,
        help="with --sync-start: seconds to hold them open before sending",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (it shows on stderr when that is a terminal)",
    )
    return {"bench": cmd_bench, "stress": cmd_stress}


# -- bench --------------------------------------------------------------------------------------
TESTS = ("throughput", "parallel", "rtt", "connect")


def _tests(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return list(TESTS)
    bad = [n for n in names if n not in TESTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown test {', '.join(bad) or text!r}; choose from {', '.join(TESTS)} or all"
        )
    return names


def cmd_bench(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .._builtin import bench

    if args.bench_mode == "server":
        raise_open_files_limit()
        server = bench.BenchServer(
            args.address, mode=args.mode, grace=args.grace, ready_file=args.ready_file
        )

        def ready(address: Address) -> None:
            err.write(f"hvsock: bench server listening on {address}\n")
            err.flush()

        server.run(on_ready=ready)
        return EXIT_OK
    return _bench_client(args, out, err)


def _bench_client(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .._builtin import bench

    show = wanted(err, args.no_progress or args.json)
    bounds: dict[str, Any] = {"duration": args.duration} if args.duration is not None else {}
    results: list[bench.BenchResult] = []
    common = {"timeout": args.timeout}
    for test in args.tests:
        if test in ("throughput", "parallel"):
            streams = 1 if test == "throughput" else args.streams
            with progress_bar(
                err, show, f"{test} ({streams} stream{'s' * (streams > 1)})", "B"
            ) as update:
                results.append(
                    bench.throughput(
                        args.address,
                        streams=streams,
                        buffer_size=args.buffer_size,
                        progress=update,
                        **(bounds or {"total_bytes": args.bytes}),
                        **common,
                    )
                )
        elif test == "rtt":
            with progress_bar(err, show, "round trips") as update:
                results.append(
                    bench.round_trip(
                        args.address, progress=update, **(bounds or {"count": args.count}), **common
                    )
                )
        else:
            with progress_bar(err, show, "connections") as update:
                results.append(
                    bench.connect_rate(
                        args.address,
                        parallel=args.parallel,
                        progress=update,
                        **(bounds or {"count": args.connections}),
                        **common,
                    )
                )
    if args.json:
        cliargs.print_json(
            {"address": args.address, "results": [r.as_dict() for r in results]}, out
        )
    else:
        out.write(bench.format_table(results) + "\n")
    return EXIT_OK


# -- stress -------------------------------------------------------------------------------------
def cmd_stress(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .._builtin import stress

    if args.max_size < args.min_size:
        raise ArgumentError(
            f"--max-size ({args.max_size}) is smaller than --min-size ({args.min_size})"
        )
    raise_open_files_limit()
    show = wanted(err, args.no_progress or args.json)
    with progress_bar(err, show, "connections") as update:
        result = stress.stress(
            args.address,
            connections=args.connections,
            parallel=args.parallel,
            min_size=args.min_size,
            max_size=args.max_size,
            max_chunk=args.max_chunk,
            seed=args.seed,
            timeout=args.timeout,
            sync_start=args.sync_start,
            hold=args.hold,
            progress=update,
        )
    replay = (
        f"hvsock stress {args.address} --connections 1 --min-size {args.min_size} "
        f"--max-size {args.max_size} --max-chunk {args.max_chunk} --seed"
    )
    if args.json:
        obj = result.as_dict()
        for failure in obj["failures"]:
            failure["replay"] = f"{replay} {failure['seed']}"
        cliargs.print_json(obj, out)
    else:
        ok = result.connections - len(result.failures)
        rate = (result.bytes_sent + result.bytes_received) / max(result.seconds, 1e-9) / 1e6
        out.write(
            f"{ok}/{result.connections} connections ok ({result.parallel} at a time, "
            f"seed {result.seed}); {result.bytes_sent} bytes sent, "
            f"{result.bytes_received} received in {result.seconds:.2f} s "
            f"({rate:.1f} MB/s both ways)\n"
        )
        for failure in result.failures[:50]:
            out.write(
                f"FAILED connection {failure.index} (seed {failure.seed}, "
                f"{failure.size} bytes; sent {failure.sent}, got {failure.received}): "
                f"{failure.error}\n  replay: {replay} {failure.seed}\n"
            )
        if len(result.failures) > 50:
            out.write(f"... and {len(result.failures) - 50} more failures\n")
    return EXIT_OK if result.ok else EXIT_FAILED
