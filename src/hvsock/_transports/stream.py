"""TCP and Unix-domain stream sockets: the other end of most bridges."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

from .._core.addresses import TcpAddress, UnixAddress
from .._errors import AddressInUseError, translate
from ._common import bind_and_listen, close_on_error, set_stream_buffer_size

#: Unix listeners are private unless asked otherwise: bridges that leave
#: world-writable sockets behind are a known way to leak a VM's services.
DEFAULT_UNIX_MODE = 0o600


def tcp_listen(address: TcpAddress, *, backlog: int, buffer_size: int | None) -> socket.socket:
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise translate(
            OSError(errno.EADDRNOTAVAIL, str(exc)), op="bind", family="tcp", where=str(address)
        ) from exc
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)

    def options() -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if buffer_size is not None:
            set_stream_buffer_size(sock, buffer_size)

    return bind_and_listen(
        sock, sockaddr, backlog, family="tcp", where=str(address), before_bind=options
    )


def _remove_stale(path: str) -> None:
    """Remove a socket file nobody listens on; refuse to touch anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AddressInUseError(
            f"{path} exists and is not a socket; hvsock will not remove it: "
            "choose another path or move that file",
            errno=errno.EEXIST,
        )
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
        errno=errno.EADDRINUSE,
    )


def unix_listen_path(
    path: str,
    sockaddr: str | bytes,
    *,
    backlog: int,
    mode: int | None,
    buffer_size: int | None,
    family_name: str = "unix",
) -> socket.socket:
    abstract = isinstance(sockaddr, bytes)
    if not abstract:
        try:
            _remove_stale(path)
        except AddressInUseError:
            raise
        except OSError as exc:  # e.g. a directory on the way this user cannot search
            raise translate(exc, op="bind", family=family_name, where=path, path=path) from exc
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
            raise translate(
                exc, op=op, family=family_name, where=path, path=None if abstract else path
            ) from exc
    return sock


def unix_listen(
    address: UnixAddress, *, backlog: int, mode: int | None, buffer_size: int | None
) -> socket.socket:
    return unix_listen_path(
        address.path, address.sockaddr, backlog=backlog, mode=mode, buffer_size=buffer_size
    )
