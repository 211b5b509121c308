"""TCP and Unix-domain stream sockets: the other end of most bridges."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import struct

from .._core.addresses import TcpAddress, UnixAddress
from .._errors import AddressInUseError, ConnectTimeoutError, HvsockError, translate
from ._common import bind_and_listen, close_on_error, set_stream_buffer_size

#: Unix listeners are private unless asked otherwise: bridges that leave
#: world-writable sockets behind are a known way to leak a VM's services.
DEFAULT_UNIX_MODE = 0o600


def backlog_full(where: str) -> ConnectTimeoutError:
    """A Unix connect that waited its whole timeout for room in the listen backlog."""
    return ConnectTimeoutError(
        f"connect to {where} timed out: its listen backlog stayed full; the server is not "
        "accepting connections (overloaded or hung)", errno=errno.ETIMEDOUT)


def unresolvable(address: TcpAddress, exc: socket.gaierror) -> HvsockError:
    return HvsockError(f"cannot resolve {address.host!r} ({exc.strerror}); check the host "
                       "name, or give an IP address", errno=exc.errno)


def tcp_connect(address: TcpAddress, *, timeout: float | None,
                buffer_size: int | None) -> socket.socket:
    try:
        sock = socket.create_connection(address.sockaddr, timeout=timeout)
    except socket.gaierror as exc:
        raise unresolvable(address, exc) from exc
    except OSError as exc:
        raise translate(exc, op="connect", family="tcp", where=str(address)) from exc
    with close_on_error(sock):
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if buffer_size is not None:
            set_stream_buffer_size(sock, buffer_size)
    return sock


def tcp_listen(address: TcpAddress, *, backlog: int, buffer_size: int | None) -> socket.socket:
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise translate(OSError(errno.EADDRNOTAVAIL, str(exc)), op="bind", family="tcp",
                        where=str(address)) from exc
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)

    def options() -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if buffer_size is not None:
            set_stream_buffer_size(sock, buffer_size)

    return bind_and_listen(sock, sockaddr, backlog, family="tcp", where=str(address),
                           before_bind=options)


_NO_TIMEOUT = struct.pack("ll", 0, 0)


def unix_connect_path(path: str | bytes, where: str, *, timeout: float | None,
                      family_name: str = "unix") -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with close_on_error(sock):
        try:
            # A Unix connect waits only while the listener's backlog is full. In
            # non-blocking mode (what settimeout() would use) Linux then fails at
            # once with EAGAIN, so keep the socket blocking and bound that wait
            # with SO_SNDTIMEO instead, reset afterwards.
            if timeout is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(timeout))
            sock.connect(path)
            if timeout is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _NO_TIMEOUT)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise backlog_full(where) from exc
            raise translate(exc, op="connect", family=family_name, where=where) from exc
    return sock


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


def unix_connect(address: UnixAddress, *, timeout: float | None,
                 buffer_size: int | None) -> socket.socket:
    sock = unix_connect_path(address.sockaddr, address.path, timeout=timeout)
    with close_on_error(sock):
        if buffer_size is not None:
            set_stream_buffer_size(sock, buffer_size)
    return sock


def _remove_stale(path: str) -> None:
    """Remove a socket file nobody listens on; refuse to touch anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AddressInUseError(
            f"{path} exists and is not a socket; hvsock will not remove it: "
            "choose another path or move that file", errno=errno.EEXIST)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except OSError:
        pass
    finally:
        probe.close()
    raise AddressInUseError(
        f"something already listens on {path}; stop it or choose another path",
        errno=errno.EADDRINUSE)


def unix_listen_path(path: str, sockaddr: str | bytes, *, backlog: int, mode: int | None,
                     buffer_size: int | None, family_name: str = "unix") -> socket.socket:
    abstract = isinstance(sockaddr, bytes)
    if not abstract:
        _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with close_on_error(sock):
        op = "bind"
        try:
            if buffer_size is not None:
                set_stream_buffer_size(sock, buffer_size)
            sock.bind(sockaddr)
            if mode is not None and not abstract:
                # Before listen() nobody can connect, so setting the mode after
                # bind leaves no window in which a wider mode is usable.
                op = "chmod"
                os.chmod(path, mode)
            op = "listen"
            sock.listen(backlog)
        except OSError as exc:
            if op != "bind" and not abstract:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise translate(exc, op=op, family=family_name, where=path) from exc
    return sock


def unix_listen(address: UnixAddress, *, backlog: int, mode: int | None,
                buffer_size: int | None) -> socket.socket:
    return unix_listen_path(address.path, address.sockaddr, backlog=backlog, mode=mode,
                            buffer_size=buffer_size)
