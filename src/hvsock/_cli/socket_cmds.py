"""Socket commands: ``connect`` and ``listen``, netcat-style.

A group of their own (the address tools are in address_cmds.py): ``hvsock connect``
is an ssh ProxyCommand, paid on every call, and builds only this group's two parsers.
Parser set-up imports nothing heavy; each command imports what it runs, so connect
loads only the blocking transports.
"""

from __future__ import annotations

import argparse
import sys

from .._transports._common import DEFAULT_CONNECT_TIMEOUT
from . import args as cliargs
from .args import Handler

# Not typing.TYPE_CHECKING (see args.py): start-up is paid on every call.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import TextIO

    from .._core.addresses import Address

EXIT_OK = 0


#: The commands this group adds (main.py builds only the chosen command's group).
COMMANDS = ("connect", "listen")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add this module's sub-commands to *sub*; return their handlers by name."""
    p = sub.add_parser(
        "connect",
        help="connect; copy stdin to the socket and the socket to stdout",
        description="Connect to ADDRESS and copy stdin to it and it to stdout. stdin's EOF "
        "half-closes the connection (the peer can still answer); the peer's EOF closes "
        "stdout. Works as an ssh ProxyCommand: "
        "ssh -o ProxyCommand='hvsock connect vsock://3:22' user@vm",
    )
    p.add_argument("address")
    p.add_argument(
        "--timeout",
        type=cliargs.positive_float,
        default=DEFAULT_CONNECT_TIMEOUT,
        help="seconds for each connect attempt (default %(default)s)",
    )
    p.add_argument(
        "--retries",
        type=cliargs.non_negative_int,
        default=0,
        help="retry transient failures this many times (default 0)",
    )
    p.add_argument(
        "--retry-wait",
        type=cliargs.positive_float,
        default=0.25,
        help="first wait between retries, doubling (default %(default)s)",
    )
    p.add_argument(
        "--buffer-size",
        type=cliargs.non_negative_int,
        default=None,
        help="socket buffer size in bytes",
    )

    p = sub.add_parser(
        "listen",
        help="listen; serve one connection on stdio, or each with a command",
        description="Listen on ADDRESS and print 'hvsock: listening on ADDR' to stderr "
        "once ready. Without --exec, serve one connection on stdin/stdout, then exit. With "
        "--exec, run CMD for each connection (concurrently, up to --max-connections). "
        "Unix and hybrid socket files are made with --mode and removed on exit.",
    )
    p.add_argument("address")
    p.add_argument(
        "--once",
        action="store_true",
        help="with --exec: serve one connection, then exit (stdio always does)",
    )
    p.add_argument(
        "--exec",
        dest="exec_cmd",
        metavar="CMD",
        help="run CMD (via the shell) per connection with its stdin/stdout "
        "joined to the connection; HVSOCK_PEER names the peer",
    )
    p.add_argument(
        "--max-connections",
        type=cliargs.non_negative_int,
        default=64,
        help="with --exec: concurrent connections; more wait (default 64)",
    )
    p.add_argument(
        "--mode",
        type=cliargs.mode,
        default=0o600,
        help="file mode of unix/hybrid listener sockets, octal (default 600)",
    )
    p.add_argument(
        "--buffer-size",
        type=cliargs.non_negative_int,
        default=None,
        help="socket buffer size in bytes",
    )
    return {"connect": cmd_connect, "listen": cmd_listen}


def cmd_connect(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .. import _endpoints
    from . import stdio

    sock = _endpoints.connect(
        args.address,
        timeout=args.timeout,
        retries=args.retries,
        retry_wait=args.retry_wait,
        buffer_size=args.buffer_size,
    )
    with sock:
        out.flush()
        up, down = stdio.stdio_session(
            sock, sys.stdin.fileno(), out.fileno(), where=str(args.address)
        )
    for direction in (down, up):
        # A reset by the peer is an error (the stream was cut); a closed stdout
        # (`| head`) is not: the reader just wanted no more.
        if direction.error is not None and not isinstance(direction.error, BrokenPipeError):
            raise direction.error
    return EXIT_OK


def peer_text(conn: socket.socket, peer: object, listen_addr: Address) -> str:
    """Who connected, as the service framework names peers: the peer's address, and for
    Unix and hybrid listeners the connecting process (pid, uid)."""
    from .._server.peers import peer_of

    return str(peer_of(conn, peer, listen_addr))


def cmd_listen(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .. import _endpoints
    from .._core.addresses import parse_address
    from . import stdio
    from .main import Terminated

    address = parse_address(args.address)
    listener = _endpoints.listen(address, buffer_size=args.buffer_size, mode=args.mode)
    try:
        actual = _endpoints.listener_address(listener, address)
        err.write(f"hvsock: listening on {actual}\n")
        err.flush()
        if args.exec_cmd is None:
            conn, peer = listener.accept()
            listener.close()
            err.write(f"hvsock: connection from {peer_text(conn, peer, address)}\n")
            err.flush()
            with conn:
                out.flush()
                stdio.stdio_session(conn, sys.stdin.fileno(), out.fileno())
            return EXIT_OK
        return _serve_exec(listener, address, args, err)
    except Terminated:
        # SIGTERM asks a server to stop: like relay and echo-server, a clean exit.
        return EXIT_OK
    finally:
        listener.close()
        _endpoints.remove_socket_file(address)


def _serve_exec(
    listener: socket.socket, address: Address, args: argparse.Namespace, err: TextIO
) -> int:
    import os
    import threading

    from . import stdio

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
        name = peer_text(conn, peer, address)
        err.write(f"hvsock: connection from {name}\n")
        err.flush()
        thread = threading.Thread(target=handle, args=(conn, name), daemon=True)
        thread.start()
        if args.once:
            while thread.is_alive():
                thread.join(0.2)
            return status[0]
