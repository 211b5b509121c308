"""Port forwarding: ``hvsock relay``.

The work is in :mod:`hvsock._relay` (imported when the command runs, not to build
the parser); this module parses arguments and formats the relay's log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from .._transports._common import DEFAULT_CONNECT_TIMEOUT
from . import args as cliargs
from .args import Handler, non_negative_float, raise_open_files_limit, size

EXIT_OK = 0
# The relay's defaults, repeated so that building the parser does not import the relay
# (tests/unit/test_cli_imports.py checks they match hvsock._relay).
DATA_PATHS = ("auto", "splice", "copy")
DEFAULT_CHUNK = 1 << 20
DEFAULT_BUSY_POLL = 200e-6

def seconds_or_none(text: str) -> float | None:
    """Seconds, with 0 or "none" meaning no limit."""
    if text.strip().lower() in ("0", "none", "off"):
        return None
    return cliargs.positive_float(text)


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
    from .._relay import Relay

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

    return {"relay": cmd_relay}
