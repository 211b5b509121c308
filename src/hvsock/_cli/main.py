"""``hvsock`` command line: parse arguments, call the library, map errors to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TextIO

from .. import __version__
from .._core import ids
from .._core.addresses import (
    Address,
    HyperVAddress,
    TcpAddress,
    VsockAddress,
    describe_address,
    parse_address,
)
from .._errors import (
    AddressError,
    AddressInUseError,
    ConnectTimeoutError,
    HandshakeError,
    HvsockError,
    NothingListeningError,
    PermissionDeniedError,
    RegistryError,
    UnreachableError,
    UnsupportedError,
    VmNotFoundError,
)
from .._service.declaration import Limits
from .._service.host import ServiceHost
from .._services.echo import ECHO_PORT, echo_service, ping
from .._transports import api
from .._transports._common import DEFAULT_CONNECT_TIMEOUT
from .._transports.features import describe_cid, local_cid
from . import agent_cmds, demo, relay_cmds, stdio, windows_cmds
from . import args as cliargs

EXTENSIONS = (windows_cmds, relay_cmds, agent_cmds)

# Exit statuses, in one place (documented in docs/cli.md).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # bad arguments or a bad address
EXIT_UNSUPPORTED = 3  # family / transport missing here
EXIT_CONNECT = 4  # nothing listening, timed out, unreachable
EXIT_PROTOCOL = 5  # a peer broke the protocol
EXIT_PERMISSION = 6
EXIT_IN_USE = 7
EXIT_REGISTRY = 8  # a registration conflicts, or the registry refused it
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

_EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (AddressError, EXIT_USAGE),
    (ValueError, EXIT_USAGE),
    (UnsupportedError, EXIT_UNSUPPORTED),
    (NothingListeningError, EXIT_CONNECT),
    (ConnectTimeoutError, EXIT_CONNECT),
    (UnreachableError, EXIT_CONNECT),
    (VmNotFoundError, EXIT_CONNECT),
    (HandshakeError, EXIT_PROTOCOL),
    (PermissionDeniedError, EXIT_PERMISSION),
    (AddressInUseError, EXIT_IN_USE),
    (RegistryError, EXIT_REGISTRY),
]


class Terminated(Exception):
    """SIGTERM arrived: unwind like Ctrl-C so listeners clean up their files."""


def exit_code_for(exc: BaseException) -> int:
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = cliargs.Parser(prog="hvsock", description=(
        "Hyper-V sockets and VM sockets from the command line. Addresses: "
        "vsock://CID:PORT, hvsock://VM/SERVICE, hybrid://UDS_PATH:PORT, "
        "tcp://HOST:PORT, unix://PATH."))
    parser.add_argument("--version", action="version", version=f"hvsock {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=cliargs.Parser)

    p = sub.add_parser("service-id", help="print the Hyper-V service id of a vsock port")
    p.add_argument("port", type=cliargs.port, help="port number (decimal or 0x hex)")

    p = sub.add_parser("port", help="print the vsock port of a template service id")
    p.add_argument("guid", help="service id GUID (any case, braces optional)")

    p = sub.add_parser("addr", help="parse an address and explain it")
    p.add_argument("address")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("cid", help="print this machine's vsock CID")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser(
        "connect", help="connect; copy stdin to the socket and the socket to stdout",
        description="Connect to ADDRESS and copy stdin to it and it to stdout. stdin's EOF "
        "half-closes the connection (the peer can still answer); the peer's EOF closes "
        "stdout. Works as an ssh ProxyCommand: "
        "ssh -o ProxyCommand='hvsock connect vsock://3:22' user@vm")
    p.add_argument("address")
    p.add_argument("--timeout", type=cliargs.positive_float, default=DEFAULT_CONNECT_TIMEOUT,
                   help="seconds for each connect attempt (default %(default)s)")
    p.add_argument("--retries", type=cliargs.non_negative_int, default=0,
                   help="retry transient failures this many times (default 0)")
    p.add_argument("--retry-wait", type=cliargs.positive_float, default=0.25,
                   help="first wait between retries, doubling (default %(default)s)")
    p.add_argument("--buffer-size", type=cliargs.non_negative_int, default=None,
                   help="socket buffer size in bytes")

    p = sub.add_parser(
        "listen", help="listen; serve one connection on stdio, or each with a command",
        description="Listen on ADDRESS and print 'hvsock: listening on ADDR' to stderr "
        "once ready. Without --exec, serve one connection on stdin/stdout, then exit. With "
        "--exec, run CMD for each connection (concurrently, up to --max-connections). "
        "Unix and hybrid socket files are made with --mode and removed on exit.")
    p.add_argument("address")
    p.add_argument("--once", action="store_true",
                   help="with --exec: serve one connection, then exit (stdio always does)")
    p.add_argument("--exec", dest="exec_cmd", metavar="CMD",
                   help="run CMD (via the shell) per connection with its stdin/stdout "
                   "joined to the connection; HVSOCK_PEER names the peer")
    p.add_argument("--max-connections", type=cliargs.non_negative_int, default=64,
                   help="with --exec: concurrent connections; more wait (default 64)")
    p.add_argument("--mode", type=cliargs.mode, default=0o600,
                   help="file mode of unix/hybrid listener sockets, octal (default 600)")
    p.add_argument("--buffer-size", type=cliargs.non_negative_int, default=None,
                   help="socket buffer size in bytes")

    p = sub.add_parser("demo", help="run the HV Socket Demo: a server and a client on the "
                       "best transport available here")
    p.add_argument("--transport", choices=demo.TRANSPORTS, default="auto")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("echo-server", help="serve the echo service (the peer of ping)",
                       description="Serve the built-in echo service on ADDRESS until "
                       "SIGTERM / Ctrl-C, then stop gracefully.")
    p.add_argument("address")
    p.add_argument("--max-connections", type=cliargs.non_negative_int, default=64,
                   help="connections served at once; more wait (default 64)")
    p.add_argument("--idle-timeout", type=cliargs.positive_float, default=300.0,
                   help="close a connection idle this many seconds (default 300)")
    p.add_argument("--grace", type=cliargs.positive_float, default=5.0,
                   help="seconds in-flight connections get on stop (default 5)")
    p.add_argument("--ready-file", help="write JSON {pid, services} here once listening")

    p = sub.add_parser("ping", help="round-trip latency through an echo service")
    p.add_argument("address")
    p.add_argument("-c", "--count", type=cliargs.non_negative_int, default=10)
    p.add_argument("-s", "--size", type=cliargs.non_negative_int, default=1,
                   help="bytes per round trip (default 1)")
    p.add_argument("-i", "--interval", type=float, default=0.0,
                   help="seconds between round trips (default 0)")
    p.add_argument("--timeout", type=cliargs.positive_float, default=DEFAULT_CONNECT_TIMEOUT)
    p.add_argument("--retries", type=cliargs.non_negative_int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON")

    # Command groups kept in their own modules add their parsers and handlers here.
    for module in EXTENSIONS:
        COMMANDS.update(module.add_commands(sub))
    return parser


def cmd_service_id(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    out.write(f"{ids.service_id_for_port(args.port)}\n")
    return EXIT_OK


def cmd_port(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    out.write(f"{ids.port_for_service_id(ids.parse_guid(args.guid, what='service id'))}\n")
    return EXIT_OK


def cmd_addr(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    info = describe_address(parse_address(args.address))
    if args.json:
        cliargs.print_json(info, out)
        return EXIT_OK
    width = max(len(k) for k in info)
    for key, value in info.items():
        if value is None:
            value = "-"
        elif value is True or value is False:
            value = "yes" if value else "no"
        out.write(f"{key.replace('_', ' '):<{width}}  {value}\n")
    return EXIT_OK


def cmd_cid(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    cid = local_cid()
    if args.json:
        cliargs.print_json({"cid": cid, "meaning": describe_cid(cid)}, out)
    else:
        out.write(f"{cid}\n")
        err.write(f"hvsock: CID {cid}: {describe_cid(cid)}\n")
    return EXIT_OK


def cmd_connect(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    sock = api.connect(args.address, timeout=args.timeout, retries=args.retries,
                       retry_wait=args.retry_wait, buffer_size=args.buffer_size)
    with sock:
        out.flush()
        up, down = stdio.stdio_session(sock, sys.stdin.fileno(), out.fileno())
    for direction in (up, down):
        if direction.error is not None and not isinstance(
                direction.error, (BrokenPipeError, ConnectionResetError)):
            raise direction.error
    return EXIT_OK


def peer_text(peer: object, listen_addr: Address) -> str:
    """The accepted peer's address in hvsock's text form where it has one."""
    if isinstance(listen_addr, VsockAddress) and isinstance(peer, tuple):
        return str(VsockAddress(int(peer[0]), int(peer[1])))
    if isinstance(listen_addr, HyperVAddress) and isinstance(peer, tuple):
        with contextlib.suppress(HvsockError, ValueError):
            return str(HyperVAddress(*(ids.parse_guid(str(p)) for p in peer[:2])))
    if isinstance(listen_addr, TcpAddress) and isinstance(peer, tuple):
        return str(TcpAddress(str(peer[0]), int(peer[1])))
    return str(listen_addr) + " (peer)"


def cmd_listen(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    address = parse_address(args.address)
    listener = api.listen(address, buffer_size=args.buffer_size, mode=args.mode)
    try:
        actual = api.listener_address(listener, address)
        err.write(f"hvsock: listening on {actual}\n")
        err.flush()
        if args.exec_cmd is None:
            conn, peer = listener.accept()
            listener.close()
            err.write(f"hvsock: connection from {peer_text(peer, address)}\n")
            err.flush()
            with conn:
                out.flush()
                stdio.stdio_session(conn, sys.stdin.fileno(), out.fileno())
            return EXIT_OK
        return _serve_exec(listener, address, args, err)
    finally:
        listener.close()
        api.remove_socket_file(address)


def _serve_exec(listener: socket.socket, address: Address, args: argparse.Namespace,
                err: TextIO) -> int:
    slots = threading.BoundedSemaphore(max(1, args.max_connections))
    status = [EXIT_OK]

    def handle(conn: socket.socket, peer_name: str) -> None:
        try:
            with conn:
                env = dict(os.environ, HVSOCK_PEER=peer_name)
                status[0] = stdio.exec_session(conn, args.exec_cmd, env)
        finally:
            slots.release()

    while True:
        # Back-pressure: at the limit, stop accepting instead of dropping.
        while not slots.acquire(timeout=0.2):
            pass
        conn, peer = listener.accept()
        name = peer_text(peer, address)
        err.write(f"hvsock: connection from {name}\n")
        err.flush()
        thread = threading.Thread(target=handle, args=(conn, name), daemon=True)
        thread.start()
        if args.once:
            while thread.is_alive():
                thread.join(0.2)
            return status[0]


def cmd_demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    report = demo.run_demo(args.transport)
    if args.json:
        cliargs.print_json({"transport": report.transport, "why": report.why,
                     "service": report.service, "service_id": report.service_id,
                     "address": report.address, "registration": report.registration,
                     "exchanged": [list(e) for e in report.exchanged]}, out)
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
    try:
        return Limits(max_connections=args.max_connections, idle_timeout=args.idle_timeout)
    except ValueError as exc:
        raise AddressError(str(exc)) from None


def cmd_echo_server(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    address = parse_address(args.address)
    port = getattr(address, "port", None)
    service = echo_service(port if isinstance(port, int) and port != ids.PORT_ANY
                           else ECHO_PORT, limits=_limits(args))
    def ready(addresses: dict[str, Address]) -> None:
        err.write(f"hvsock: listening on {addresses[service.name]}\n")
        err.flush()

    host = ServiceHost(grace=args.grace, ready_file=args.ready_file, on_ready=ready)
    host.add(service, address)
    asyncio.run(host.serve())
    return EXIT_OK


def cmd_ping(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    stats = ping(args.address, count=args.count, size=args.size, interval=args.interval,
                 timeout=args.timeout, retries=args.retries)
    if args.json:
        cliargs.print_json(stats.as_dict(), out)
    else:
        out.write(f"{stats.count} round trips of {stats.size} bytes to {stats.address}\n")
        out.write(f"min {stats.min_ms:.3f} ms, median {stats.median_ms:.3f} ms, "
                  f"p99 {stats.p99_ms:.3f} ms, max {stats.max_ms:.3f} ms\n")
    return EXIT_OK


COMMANDS: dict[str, cliargs.Handler] = {
    "service-id": cmd_service_id,
    "port": cmd_port,
    "addr": cmd_addr,
    "cid": cmd_cid,
    "connect": cmd_connect,
    "listen": cmd_listen,
    "demo": cmd_demo,
    "echo-server": cmd_echo_server,
    "ping": cmd_ping,
}


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Run the CLI; return the exit status (never exits by itself)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = build_parser().parse_args(argv)
    except cliargs.UsageError as exc:
        err.write(f"{exc}\n")
        return EXIT_USAGE
    except SystemExit as exc:  # --help / --version print and "exit" 0
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return COMMANDS[args.command](args, out, err)
    except (HvsockError, ValueError) as exc:
        err.write(f"hvsock: error: {exc}\n")
        return exit_code_for(exc)
    except KeyboardInterrupt:
        err.write("hvsock: interrupted\n")
        return EXIT_INTERRUPTED
    except Terminated:
        return EXIT_TERMINATED
    except BrokenPipeError:
        # Our reader went away (e.g. `hvsock addr ... | head -1`): nothing to report.
        return EXIT_OK
    except OSError as exc:
        err.write(f"hvsock: error: {exc}\n")
        return EXIT_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
