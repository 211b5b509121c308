"""Port forwarding and load tools: ``hvsock relay``, ``hvsock bench``, ``hvsock stress``.

The work is in :mod:`hvsock._relay` and :mod:`hvsock._tools`; this module parses
arguments, prints, shows progress (_cli/progress.py) and formats logs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from .._core.addresses import Address
from .._relay import Relay
from .._relay.datapath import DEFAULT_CHUNK
from .._relay.engine import DATA_PATHS, DEFAULT_BUSY_POLL
from .._tools import bench, stress
from .._transports._common import DEFAULT_CONNECT_TIMEOUT
from . import args as cliargs
from .args import Handler
from .progress import progress_bar

EXIT_OK = 0
EXIT_FAILED = 1  # stress: a connection failed or came back different

_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def size(text: str) -> int:
    """A byte count: 1000, 64K, 256M, 1GiB (binary multiples)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 4096, 64K, 256M or 1G")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def seconds_or_none(text: str) -> float | None:
    """Seconds, with 0 or "none" meaning no limit."""
    if text.strip().lower() in ("0", "none", "off"):
        return None
    return cliargs.positive_float(text)


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number of seconds >= 0")
    return value


def allow_rule(text: str) -> int | str:
    """An --allow value: digits are a CID; anything else (host, uid:N, VM id) as is."""
    text = text.strip()
    return int(text) if text.isdigit() else text


def microseconds(text: str) -> float:
    """Microseconds (0..10000) on the command line, seconds in the library."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of microseconds") from None
    if not 0 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0..10000 microseconds")
    return value / 1e6


def raise_open_files_limit() -> None:
    """Raise the soft open-files limit to the hard one: each relayed connection needs
    two sockets and, while bytes are in flight, up to two pipes."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = 1 << 20
        if soft != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- relay -------------------------------------------------------------------------------------
class _LogLines(logging.Handler):
    """The relay's log as lines on stderr: text, or one JSON object per line."""

    def __init__(self, stream: TextIO, as_json: bool) -> None:
        super().__init__()
        self.stream = stream
        self.as_json = as_json
        self._lock_out = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] | None = getattr(record, "relay", None)
            if self.as_json:
                obj: dict[str, Any] = {"time": round(record.created, 6),
                                       "level": record.levelname.lower()}
                if fields is not None:
                    obj.update(event="connection", **fields)
                else:
                    obj.update(getattr(record, "relay_event", None) or {"event": "message"})
                    obj["message"] = record.getMessage()
                line = json.dumps(obj, sort_keys=True)
            else:
                line = f"hvsock: {record.getMessage()}"
            with self._lock_out:
                self.stream.write(line + "\n")
                self.stream.flush()
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def relay_logging(stream: TextIO, *, as_json: bool, quiet: bool) -> Iterator[None]:
    logger = logging.getLogger("hvsock.relay")
    handler = _LogLines(stream, as_json)
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def cmd_relay(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    raise_open_files_limit()
    with relay_logging(err, as_json=args.json, quiet=args.quiet):
        relay = Relay(
            args.listen, args.target, max_connections=args.max_connections,
            idle_timeout=args.idle_timeout, connect_timeout=args.connect_timeout,
            allow=args.allow or None, mode=args.mode, buffer_size=args.buffer_size,
            chunk_size=args.chunk_size, data_path=args.data_path, busy_poll=args.busy_poll,
            grace=args.grace,
            ready_file=args.ready_file)
        relay.serve(handle_signals=threading.current_thread() is threading.main_thread())
    return EXIT_OK


# -- bench --------------------------------------------------------------------------------------
TESTS = ("throughput", "parallel", "rtt", "connect")


def _tests(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return list(TESTS)
    bad = [n for n in names if n not in TESTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown test {', '.join(bad) or text!r}; choose from {', '.join(TESTS)} or all")
    return names


def cmd_bench(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.bench_mode == "server":
        raise_open_files_limit()
        server = bench.BenchServer(args.address, mode=args.mode, ready_file=args.ready_file)

        def ready(address: Address) -> None:
            err.write(f"hvsock: bench server listening on {address}\n")
            err.flush()

        server.run(on_ready=ready)
        return EXIT_OK
    return _bench_client(args, out, err)


def _bench_client(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    show = not args.no_progress and not args.json
    bounds: dict[str, Any] = ({"duration": args.duration} if args.duration is not None
                              else {})
    results: list[bench.BenchResult] = []
    common = {"timeout": args.timeout}
    for test in args.tests:
        if test in ("throughput", "parallel"):
            streams = 1 if test == "throughput" else args.streams
            with progress_bar(err, show, f"{test} ({streams} stream{'s' * (streams > 1)})",
                              "B") as update:
                results.append(bench.throughput(
                    args.address, streams=streams, buffer_size=args.buffer_size,
                    progress=update, **(bounds or {"total_bytes": args.bytes}), **common))
        elif test == "rtt":
            with progress_bar(err, show, "round trips") as update:
                results.append(bench.round_trip(
                    args.address, progress=update, **(bounds or {"count": args.count}),
                    **common))
        else:
            with progress_bar(err, show, "connections") as update:
                results.append(bench.connect_rate(
                    args.address, parallel=args.parallel, progress=update,
                    **(bounds or {"count": args.connections}), **common))
    if args.json:
        cliargs.print_json({"address": args.address,
                            "results": [r.as_dict() for r in results]}, out)
    else:
        out.write(bench.format_table(results) + "\n")
    return EXIT_OK


# -- stress -------------------------------------------------------------------------------------
def cmd_stress(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.max_size < args.min_size:
        raise ValueError(f"--max-size ({args.max_size}) is smaller than --min-size "
                         f"({args.min_size})")
    raise_open_files_limit()
    show = not args.no_progress and not args.json
    with progress_bar(err, show, "connections") as update:
        result = stress.stress(
            args.address, connections=args.connections, parallel=args.parallel,
            min_size=args.min_size, max_size=args.max_size, max_chunk=args.max_chunk,
            seed=args.seed, timeout=args.timeout, sync_start=args.sync_start, hold=args.hold,
            progress=update)
    replay = (f"hvsock stress {args.address} --connections 1 --min-size {args.min_size} "
              f"--max-size {args.max_size} --max-chunk {args.max_chunk} --seed")
    if args.json:
        obj = result.as_dict()
        for failure in obj["failures"]:
            failure["replay"] = f"{replay} {failure['seed']}"
        cliargs.print_json(obj, out)
    else:
        ok = result.connections - len(result.failures)
        rate = (result.bytes_sent + result.bytes_received) / max(result.seconds, 1e-9) / 1e6
        out.write(f"{ok}/{result.connections} connections ok ({result.parallel} at a time, "
                  f"seed {result.seed}); {result.bytes_sent} bytes sent, "
                  f"{result.bytes_received} received in {result.seconds:.2f} s "
                  f"({rate:.1f} MB/s both ways)\n")
        for failure in result.failures[:50]:
            out.write(f"FAILED connection {failure.index} (seed {failure.seed}, "
                      f"{failure.size} bytes; sent {failure.sent}, got {failure.received}): "
                      f"{failure.error}\n  replay: {replay} {failure.seed}\n")
        if len(result.failures) > 50:
            out.write(f"... and {len(result.failures) - 50} more failures\n")
    return EXIT_OK if result.ok else EXIT_FAILED


# -- parsers ------------------------------------------------------------------------------------
def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add this module's sub-commands to *sub*; return their handlers by name."""
    p = sub.add_parser(
        "relay", help="forward connections from one address to another (any kinds)",
        description="Accept connections on LISTEN and forward each to a new connection to "
        "TARGET, both ways, until SIGTERM / Ctrl-C (then in-flight connections get --grace "
        "seconds; a second signal cuts them). Half-close is carried across; a reset on "
        "one side resets the other. One log line per connection on stderr. Example: "
        "hvsock relay tcp://127.0.0.1:2222 vsock://3:22")
    p.add_argument("listen", help="address to accept on")
    p.add_argument("target", help="address each connection is forwarded to")
    p.add_argument("--max-connections", type=cliargs.non_negative_int, default=1024,
                   help="connections relayed at once; more wait in the backlog (default 1024)")
    p.add_argument("--idle-timeout", type=seconds_or_none, default=3600.0,
                   help="close a connection after this many seconds with no byte either way; "
                   "0 for never (default 3600)")
    p.add_argument("--connect-timeout", type=cliargs.positive_float,
                   default=DEFAULT_CONNECT_TIMEOUT,
                   help="seconds to connect to TARGET (default %(default)s)")
    p.add_argument("--allow", action="append", metavar="RULE", type=allow_rule,
                   help="let in only these peers (repeatable): a CID (vsock), a VM id "
                   "(hvsock), a host (tcp) or uid:N (unix)")
    p.add_argument("--mode", type=cliargs.mode, default=0o600,
                   help="file mode of a unix/hybrid LISTEN socket, octal (default 600)")
    p.add_argument("--buffer-size", type=size, default=None,
                   help="socket buffer sizes (e.g. 256K)")
    p.add_argument("--chunk-size", type=size, default=DEFAULT_CHUNK,
                   help="bytes moved per call, and pipe size (default 1M)")
    p.add_argument("--data-path", choices=DATA_PATHS, default="auto",
                   help="splice (zero-copy, Linux), copy, or auto (default): splice into "
                   "Unix and vsock sockets, copy into TCP ones (measured faster)")
    p.add_argument("--busy-poll", type=microseconds, default=DEFAULT_BUSY_POLL,
                   metavar="US", help="microseconds to keep polling after activity before "
                   "sleeping: faster round trips and connects for a little CPU; 0 = off "
                   f"(default {DEFAULT_BUSY_POLL * 1e6:g})")
    p.add_argument("--grace", type=non_negative_float, default=10.0,
                   help="seconds connections get to finish on stop (default 10)")
    p.add_argument("--ready-file", help="write JSON {pid, listen, target} here once listening")
    p.add_argument("--json", action="store_true", help="log JSON lines")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="log only problems (resets, refusals, target down)")

    p = sub.add_parser("bench", help="measure throughput, latency and connection rate",
                       description="`hvsock bench server ADDRESS` serves the benchmark; "
                       "`hvsock bench client ADDRESS` measures against it (directly, or "
                       "through a relay in between).")
    modes = p.add_subparsers(dest="bench_mode", required=True, metavar="MODE",
                             parser_class=cliargs.Parser)
    s = modes.add_parser("server", help="serve the benchmark on ADDRESS until SIGTERM")
    s.add_argument("address")
    s.add_argument("--mode", type=cliargs.mode, default=0o600,
                   help="file mode of a unix/hybrid socket, octal (default 600)")
    s.add_argument("--ready-file", help="write JSON {pid, address} here once listening")
    c = modes.add_parser("client", help="run measurements against a bench server",
                         description="Tests: throughput (one stream), parallel (--streams "
                         "streams), rtt (1-byte round trips), connect (new connections per "
                         "second). Each runs for --duration seconds, or else to its own "
                         "count (--bytes, --count, --connections).")
    c.add_argument("address")
    c.add_argument("--tests", type=_tests, default=list(TESTS),
                   help="comma-separated: throughput,parallel,rtt,connect (default all)")
    c.add_argument("--duration", type=cliargs.positive_float, default=None,
                   help="seconds per test (instead of the counts)")
    c.add_argument("--bytes", type=size, default=256 << 20,
                   help="bytes per throughput test (default 256M)")
    c.add_argument("--buffer-size", type=size, default=bench.DEFAULT_BUFFER,
                   help="bytes per write (default 256K)")
    c.add_argument("--streams", type=cliargs.non_negative_int, default=16,
                   help="streams of the parallel test (default 16)")
    c.add_argument("--count", type=cliargs.non_negative_int, default=2000,
                   help="round trips (default 2000)")
    c.add_argument("--connections", type=cliargs.non_negative_int, default=1000,
                   help="connections of the connect test (default 1000)")
    c.add_argument("--parallel", type=cliargs.non_negative_int, default=1,
                   help="connect test: connections made at once (default 1)")
    c.add_argument("--timeout", type=cliargs.positive_float, default=DEFAULT_CONNECT_TIMEOUT,
                   help="connect timeout, seconds (default %(default)s)")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser(
        "stress", help="many connections of random data through an echo server, checked",
        description="Open --connections connections, --parallel at a time, to the echo "
        "server at ADDRESS (e.g. `hvsock echo-server`); each sends a random number of "
        "random bytes in random-sized writes, half-closes and checks the SHA-256 of the "
        "echo. Exit status 1 if any connection failed or came back different; each "
        "failure is reported with its seed and the command that replays it.")
    p.add_argument("address")
    p.add_argument("-n", "--connections", type=cliargs.non_negative_int, default=100,
                   help="connections in all (default 100)")
    p.add_argument("-P", "--parallel", type=cliargs.non_negative_int, default=10,
                   help="connections open at once (default 10)")
    p.add_argument("--min-size", type=size, default=0, help="bytes per connection, at least")
    p.add_argument("--max-size", type=size, default=1 << 20,
                   help="bytes per connection, at most (default 1M)")
    p.add_argument("--max-chunk", type=size, default=stress.DEFAULT_MAX_CHUNK,
                   help="largest single write (default 64K)")
    p.add_argument("--seed", type=cliargs.non_negative_int, default=None,
                   help="base seed (connection i uses seed+i); default random")
    p.add_argument("--timeout", type=cliargs.positive_float, default=60.0,
                   help="seconds per connection (default 60)")
    p.add_argument("--sync-start", action="store_true",
                   help="the first PARALLEL connections all connect before any sends")
    p.add_argument("--hold", type=non_negative_float, default=0.0,
                   help="with --sync-start: seconds to hold them open before sending")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return {"relay": cmd_relay, "bench": cmd_bench, "stress": cmd_stress}
