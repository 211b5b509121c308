"""AF_VSOCK (Linux): KVM/QEMU guests and hosts, Hyper-V Linux guests, the loopback transport."""

from __future__ import annotations

import functools
import os
import socket
import struct

from .._core import ids
from .._core.addresses import VsockAddress
from .._errors import AddressInUseError, PermissionDeniedError, translate
from ._common import bind_and_listen, check_buffer_size, close_on_error
from .features import require_vsock

TYPE_CHECKING = False  # not typing's: docs/architecture.md, "Start-up rules"
if TYPE_CHECKING:
    import ctypes

# Option names at level AF_VSOCK (vm_sockets.h); CPython exports only the first three.
SO_VM_SOCKETS_BUFFER_SIZE = 0
SO_VM_SOCKETS_BUFFER_MIN_SIZE = 1
SO_VM_SOCKETS_BUFFER_MAX_SIZE = 2
SO_VM_SOCKETS_PEER_HOST_VM_ID = 3
SO_VM_SOCKETS_TRUSTED = 5
# The 64-bit layout (a struct timeval of two longs); 8 is the y2038 variant.
SO_VM_SOCKETS_CONNECT_TIMEOUT = 6
SO_VM_SOCKETS_NONBLOCK_TXRX = 7


def where(address: VsockAddress) -> str:
    cid = ids.CID_NAMES.get(address.cid)
    cid_text = f"CID {address.cid}" + (f" ({cid})" if cid else "")
    return f"port {address.port} of {cid_text}"


def new_socket() -> socket.socket:
    family = require_vsock()
    try:
        return socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise translate(exc, op="socket", family="vsock", where="AF_VSOCK") from exc


# CPython handles options on AF_VSOCK sockets specially: setsockopt takes only an
# int (passed to the kernel as 64 bits) and getsockopt returns one, with no raw
# buffers either way. That suits the buffer sizes; the connect timeout is a
# struct timeval, which only libc's setsockopt can pass (see _setsockopt_raw).


def set_buffer_size(sock: socket.socket, size: int) -> None:
    """Set the vsock buffer size, widening the min/max bounds when *size* is outside them."""
    check_buffer_size(size)
    level = sock.family
    if size > sock.getsockopt(level, SO_VM_SOCKETS_BUFFER_MAX_SIZE):
        sock.setsockopt(level, SO_VM_SOCKETS_BUFFER_MAX_SIZE, size)
    if size < sock.getsockopt(level, SO_VM_SOCKETS_BUFFER_MIN_SIZE):
        sock.setsockopt(level, SO_VM_SOCKETS_BUFFER_MIN_SIZE, size)
    sock.setsockopt(level, SO_VM_SOCKETS_BUFFER_SIZE, size)


def ensure_buffer_size(sock: socket.socket, size: int) -> None:
    """At least *size* bytes of vsock buffer (receive credit) if *sock* is AF_VSOCK;
    another family, or a buffer already that big, is left as it is."""
    if sock.family == getattr(socket, "AF_VSOCK", None) and get_buffer_size(sock) < size:
        set_buffer_size(sock, size)


def get_buffer_size(sock: socket.socket) -> int:
    return int(sock.getsockopt(sock.family, SO_VM_SOCKETS_BUFFER_SIZE))


def timeval(timeout: float) -> bytes:
    """*timeout* seconds as a 64-bit struct timeval."""
    seconds = int(timeout)
    micros = round((timeout - seconds) * 1_000_000)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, 0
    return struct.pack("qq", seconds, micros)


@functools.cache
def _libc() -> ctypes.CDLL:
    import ctypes  # only vsock connects need it: keep it off every start-up

    return ctypes.CDLL(None, use_errno=True)


def _setsockopt_raw(sock: socket.socket, level: int, optname: int, value: bytes) -> None:
    import ctypes

    buf = ctypes.create_string_buffer(value, len(value))
    if _libc().setsockopt(sock.fileno(), level, optname, buf, len(value)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def set_connect_timeout(sock: socket.socket, timeout: float) -> None:
    """The kernel's own connect timeout (default 2 s), so it agrees with ours."""
    _setsockopt_raw(sock, sock.family, SO_VM_SOCKETS_CONNECT_TIMEOUT, timeval(timeout))


def prepare(
    address: VsockAddress, *, timeout: float | None, buffer_size: int | None
) -> socket.socket:
    """A new, unconnected vsock socket with the buffer size and kernel connect timeout set."""
    sock = new_socket()
    with close_on_error(sock):
        try:
            if buffer_size is not None:
                set_buffer_size(sock, buffer_size)
            if timeout is not None:
                set_connect_timeout(sock, timeout)
        except OSError as exc:
            raise translate(exc, op="connect", family="vsock", where=where(address)) from exc
    return sock


#: The reserved source ports, highest first, as BSD's rresvport(3) counts them; a
#: listener's privileged rule accepts any port <= 1023 (Linux's LAST_RESERVED_PORT).
RESERVED_PORTS = range(1023, 511, -1)


class _Rotation:
    """Where the next search for a reserved port starts: at a random place in a new
    process, then just below the port last taken. Starting at 1023 every time reused the
    port, and with it the whole address pair, of a connection that had just closed:
    the peer, still closing its side of that one, took the new connection for it and
    reset it (seen on virtio-vsock between a KVM host and its guest)."""

    start = int.from_bytes(os.urandom(2), "big") % len(RESERVED_PORTS)

    @classmethod
    def order(cls) -> list[int]:
        return [*RESERVED_PORTS[cls.start :], *RESERVED_PORTS[: cls.start]]

    @classmethod
    def took(cls, port: int) -> None:
        cls.start = (RESERVED_PORTS.index(port) + 1) % len(RESERVED_PORTS)


def bind_reserved(sock: socket.socket, address: VsockAddress, *, required: bool) -> int | None:
    """Bind *sock* to a free reserved source port (in 512-1023, each call starting just
    below the last one taken: see :class:`_Rotation`); return it.

    Linux lets only a process with CAP_NET_BIND_SERVICE bind a vsock port <= 1023, so
    a listener that sees one knows root (in the peer's kernel) connected. Without the
    capability: :class:`PermissionDeniedError` when *required*, else None (the
    connect then takes an ordinary port). All ports in use: :class:`AddressInUseError`
    when *required*, else None.
    """
    import errno

    for port in _Rotation.order():
        try:
            sock.bind((ids.CID_ANY, port))
            _Rotation.took(port)
            return port
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                continue
            if exc.errno in (errno.EACCES, errno.EPERM):
                if not required:
                    return None
                raise PermissionDeniedError(
                    f"cannot bind a reserved source port for {where(address)}: only root "
                    "(CAP_NET_BIND_SERVICE) may; run as root, or connect with "
                    "reserved_port='try' to fall back to an ordinary port (services that "
                    "need a privileged peer will refuse it)",
                    errno=exc.errno,
                ) from exc
            raise translate(exc, op="bind", family="vsock", where=where(address)) from exc
    if not required:
        return None
    raise AddressInUseError(
        f"every reserved vsock source port ({RESERVED_PORTS[-1]}-{RESERVED_PORTS[0]}) is in "
        "use; close some connections and retry",
        errno=98,
    )


def listen(address: VsockAddress, *, backlog: int, buffer_size: int | None) -> socket.socket:
    sock = new_socket()
    return bind_and_listen(
        sock,
        address.sockaddr,
        backlog,
        family="vsock",
        where=where(address),
        before_bind=None if buffer_size is None else lambda: set_buffer_size(sock, buffer_size),
    )
