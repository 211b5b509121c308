"""Socket commands: ``service-id``, ``port``, ``addr``, ``cid``, ``connect``, ``listen``.

Parser set-up imports nothing heavy; each command imports what it runs, so
``hvsock connect`` (an ssh ProxyCommand, paid on every call) loads only the
blocking transports.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TextIO

from .._transports._common import DEFAULT_CONNECT_TIMEOUT
from . import args as cliargs
from .args import Handler

if TYPE_CHECKING:
    import socket

    from .._core.addresses import Address

EXIT_OK = 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add this module's sub-commands to *sub*; return their handlers by name."""
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
    return {"service-id": cmd_service_id, "port": cmd_port, "addr": cmd_addr, "cid": cmd_cid,
            "connect": cmd_connect, "listen": cmd_listen}


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
    from .._transports.features import describe_cid, local_cid

    cid = local_cid()
    if args.json:
        cliargs.print_json({"cid": cid, "meaning": describe_cid(cid)}, out)
    else:
        out.write(f"{cid}\n")
        err.write(f"hvsock: CID {cid}: {describe_cid(cid)}\n")
    return EXIT_OK


def cmd_connect(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .. import _endpoints as api
    from . import stdio

    sock = api.connect(args.address, timeout=args.timeout, retries=args.retries,
                       retry_wait=args.retry_wait, buffer_size=args.buffer_size)
    with sock:
        out.flush()
        up, down = stdio.stdio_session(sock, sys.stdin.fileno(), out.fileno(),
                                       where=str(args.address))
    for direction in (down, up):
        # A reset by the peer is an error (the stream was cut); a closed stdout
        # (`| head`) is not: the reader just wanted no more.
        if direction.error is not None and not isinstance(direction.error, BrokenPipeError):
            raise direction.error
    return EXIT_OK


def peer_text(peer: object, listen_addr: Address) -> str:
    """The accepted peer's address in hvsock's text form where it has one."""
    import contextlib

    from .._core import ids
    from .._core.addresses import HyperVAddress, TcpAddress, VsockAddress
    from .._errors import HvsockError

    if isinstance(listen_addr, VsockAddress) and isinstance(peer, tuple):
        return str(VsockAddress(int(peer[0]), int(peer[1])))
    if isinstance(listen_addr, HyperVAddress) and isinstance(peer, tuple):
        with contextlib.suppress(HvsockError, ValueError):
            return str(HyperVAddress(*(ids.parse_guid(str(p)) for p in peer[:2])))
    if isinstance(listen_addr, TcpAddress) and isinstance(peer, tuple):
        return str(TcpAddress(str(peer[0]), int(peer[1])))
    return str(listen_addr) + " (peer)"


def cmd_listen(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .. import _endpoints as api
    from .._core.addresses import parse_address
    from . import stdio

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
        name = peer_text(peer, address)
        err.write(f"hvsock: connection from {name}\n")
        err.flush()
        thread = threading.Thread(target=handle, args=(conn, name), daemon=True)
        thread.start()
        if args.once:
            while thread.is_alive():
                thread.join(0.2)
            return status[0]
