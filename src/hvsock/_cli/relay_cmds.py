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
from typing import TYPE_CHECKING, Any, TextIO

from .._errors import ArgumentError
from .._transports._common import DEFAULT_CONNECT_TIMEOUT
from . import args as cliargs
from .args import Handler, allow_rule, non_negative_float, raise_open_files_limit, size

if TYPE_CHECKING:
    from .._relay.config import RelayConfig

EXIT_OK = 0
# The relay's defaults, repeated so that building the parser does not import the relay
# (tests/unit/test_cli_imports.py checks they match hvsock._relay).
DATA_PATHS = ("auto", "splice", "copy")
DEFAULT_CHUNK = 1 << 20
DEFAULT_BUSY_POLL = 200e-6
DEFAULT_BUFFER_MEMORY = 32 << 20


def seconds_or_none(text: str) -> float | None:
    """Seconds, with 0 or "none" meaning no limit."""
    if text.strip().lower() in ("0", "none", "off"):
        return None
    return cliargs.positive_float(text)


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
                obj: dict[str, Any] = {
                    "time": round(record.created, 6),
                    "level": record.levelname.lower(),
                }
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


def workers_arg(text: str) -> int | None:
    """--workers: a count, or "auto" (one per core)."""
    if text.strip().lower() == "auto":
        return None
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number of workers >= 1 or auto")
    return int(text)


#: Command-line options that are relay settings, by their RelayConfig name.
_SETTINGS = (
    "max_connections",
    "idle_timeout",
    "connect_timeout",
    "retries",
    "mode",
    "buffer_size",
    "chunk_size",
    "data_path",
    "busy_poll",
    "grace",
    "workers",
    "max_buffer_memory",
    "ready_file",
)


def relay_config(args: argparse.Namespace) -> RelayConfig:
    """The checked configuration from the command line (and --config's file).

    Raises :class:`hvsock.ArgumentError`.
    """
    from .._relay.config import Forward, RelayConfig, parse_toml

    given = {name: getattr(args, name) for name in _SETTINGS}
    if args.config is not None:
        if args.listen is not None or args.target is not None or args.allow:
            raise ArgumentError(
                "--config names the forwards: give LISTEN, TARGET and "
                "--allow in the file, not on the command line"
            )
        try:
            with open(args.config, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ArgumentError(f"cannot read --config {args.config}: {exc.strerror}") from None
        # Only what was typed overrides the file (argparse defaults are None here).
        config = parse_toml(
            text, args.config, **{k: v for k, v in given.items() if k in args.explicit}
        )
        if args.allow_target:
            config = config.with_(
                allow_targets=RelayConfig.build(
                    config.forwards,
                    allow_targets=[*(r.text for r in config.allow_targets), *args.allow_target],
                ).allow_targets
            )
        return config
    if args.listen is None or args.target is None:
        raise ArgumentError("LISTEN and TARGET are required (or --config relay.toml)")
    settings = {k: (v if v is not None else _DEFAULTS[k]) for k, v in given.items()}
    return RelayConfig.build(
        [Forward.build(args.listen, args.target, args.allow or None)],
        allow_targets=args.allow_target or None,
        **settings,
    )


_DEFAULTS: dict[str, Any] = {
    "max_connections": 1024,
    "idle_timeout": 3600.0,
    "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
    "retries": 0,
    "mode": 0o600,
    "buffer_size": None,
    "chunk_size": DEFAULT_CHUNK,
    "data_path": "auto",
    "busy_poll": DEFAULT_BUSY_POLL,
    "grace": 10.0,
    "workers": None,
    "max_buffer_memory": DEFAULT_BUFFER_MEMORY,
    "ready_file": None,
}


class _Explicit(argparse.Action):
    """Stores the value and notes that the option was typed (it overrides --config)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        explicit = set(getattr(namespace, "explicit", None) or ())
        explicit.add(self.dest)
        namespace.explicit = explicit


def cmd_relay(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .._relay import Relay

    config = relay_config(args)
    raise_open_files_limit()
    with relay_logging(err, as_json=args.json, quiet=args.quiet):
        relay = Relay(config=config)
        relay.serve(handle_signals=threading.current_thread() is threading.main_thread())
    return EXIT_OK


# -- parsers ------------------------------------------------------------------------------------
#: The commands this group adds (main.py builds only the chosen command's group).
COMMANDS = ("relay",)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add this module's sub-commands to *sub*; return their handlers by name."""
    p = sub.add_parser(
        "relay",
        help="forward connections from one address to another (any kinds)",
        description="Accept connections on LISTEN and forward each to a new connection to "
        "TARGET, both ways, until SIGTERM / Ctrl-C (then in-flight connections get --grace "
        "seconds; a second signal cuts them). Half-close is carried across; a reset on "
        "one side resets the other. One log line per connection on stderr. Example: "
        "hvsock relay tcp://127.0.0.1:2222 vsock://3:22",
    )
    p.add_argument("listen", nargs="?", help="address to accept on")
    p.add_argument("target", nargs="?", help="address each connection is forwarded to")
    p.add_argument(
        "--config",
        metavar="FILE",
        help="relay.toml: several [[forward]] tables (listen, target, allow) and "
        "settings; options typed here override the file's",
    )
    e: dict[str, Any] = {"action": _Explicit, "default": None}
    p.add_argument(
        "--workers",
        type=workers_arg,
        metavar="N",
        **e,
        help="event loops, each a process (default auto: one per core)",
    )
    p.add_argument(
        "--max-connections",
        type=cliargs.non_negative_int,
        **e,
        help="connections relayed at once by the whole relay; more wait in the "
        "backlog (default 1024)",
    )
    p.add_argument(
        "--max-buffer-memory",
        type=size,
        metavar="SIZE",
        **e,
        help="bytes the relay may hold in flight; past it a stalled client's "
        "data waits in the kernel (default 32M)",
    )
    p.add_argument(
        "--idle-timeout",
        type=seconds_or_none,
        **e,
        help="close a connection after this many seconds with no byte either way; "
        "0 for never (default 3600)",
    )
    p.add_argument(
        "--connect-timeout",
        type=cliargs.positive_float,
        **e,
        help=f"seconds to connect to TARGET (default {DEFAULT_CONNECT_TIMEOUT:g})",
    )
    p.add_argument(
        "--retries",
        type=cliargs.non_negative_int,
        **e,
        help="tries more for a TARGET that is not up yet (default 0)",
    )
    p.add_argument(
        "--allow",
        action="append",
        metavar="RULE",
        type=allow_rule,
        help="let in only these peers (repeatable): a CID (vsock), a VM id "
        "(hvsock), a host (tcp) or uid:N (unix)",
    )
    p.add_argument(
        "--allow-target",
        action="append",
        metavar="PATTERN",
        help="refuse to start unless every TARGET matches one of these "
        "(repeatable): tcp://10.0.0.0/8:443, tcp://*.example.com:*, vsock://3:*, "
        "unix:///run/app/*.sock (a glob per path component; no '..')",
    )
    p.add_argument(
        "--mode",
        type=cliargs.mode,
        **e,
        help="file mode of a unix/hybrid LISTEN socket, octal (default 600)",
    )
    p.add_argument("--buffer-size", type=size, **e, help="socket buffer sizes (e.g. 256K)")
    p.add_argument(
        "--chunk-size", type=size, **e, help="bytes moved per call, and pipe size (default 1M)"
    )
    p.add_argument(
        "--data-path",
        choices=DATA_PATHS,
        **e,
        help="splice (zero-copy, Linux), copy, or auto (default): splice into "
        "Unix and vsock sockets, copy into TCP ones (measured faster)",
    )
    p.add_argument(
        "--busy-poll",
        type=microseconds,
        metavar="US",
        **e,
        help="microseconds to keep polling after activity before "
        "sleeping: faster round trips and connects for a little CPU; 0 = off "
        f"(default {DEFAULT_BUSY_POLL * 1e6:g})",
    )
    p.add_argument(
        "--grace",
        type=non_negative_float,
        **e,
        help="seconds connections get to finish on stop (default 10)",
    )
    p.add_argument(
        "--ready-file",
        **e,
        help="write JSON {pid, listen, target, workers} here once every worker is listening",
    )
    p.add_argument("--json", action="store_true", help="log JSON lines")
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="log only problems (resets, refusals, target down)",
    )
    p.set_defaults(explicit=())
    return {"relay": cmd_relay}
