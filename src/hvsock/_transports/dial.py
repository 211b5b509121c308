"""The one connect algorithm per transport, sans I/O waits: a generator per transport.

A dial is a generator that makes and configures its socket, starts the connect and
*yields a step* each time it would have to wait:

- :class:`Readable` / :class:`Writable`: wait until the socket is readable / writable,
  then ``send(None)``;
- :class:`InThread`: run ``step.call(remaining_seconds)`` where blocking is fine (a
  thread, or just here in the blocking driver): DNS, AF_HYPERV's connect, a Unix
  connect whose listen backlog is full; ``send`` back its result or ``throw`` its
  error;
- :class:`Pause`: sleep that long, then the next attempt starts (only between the
  attempts of :func:`dial`'s retries).

It returns the connected socket (left non-blocking: each driver sets the mode its
users expect). When the deadline passes during a wait, the driver throws
``step.stalled()`` into the generator, so the error says which stage stalled (the
connect, a full backlog, the hybrid reply) with the same words on every driver.

Three drivers run these generators: :mod:`._transports.sync` (select/poll with a
deadline), :mod:`hvsock._aio.drive` (asyncio) and :mod:`hvsock._relay.dial` (the relay's
poll loop). Dispatch on the address kind is the :data:`TRANSPORTS` table, nowhere else.
"""

from __future__ import annotations

import errno
import functools
import importlib
import os
import socket
from collections.abc import Callable, Generator

from .._core.addresses import (
    HybridAddress,
    HyperVAddress,
    SocketAddress,
    TcpAddress,
    UnixAddress,
    VsockAddress,
)
from .._errors import (
    ConnectTimeoutError,
    HvsockError,
    is_transient,
    translate,
)
from ._common import close_on_error, retry_waits, set_stream_buffer_size

TYPE_CHECKING = False  # not typing's: docs/architecture.md, "Start-up rules"
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

__all__: list[str] = []  # internal


# Plain classes, not dataclasses: these load on every `hvsock connect`, and generating
# dataclass methods costs more start-up time than the rest of this module.
class _Wait:
    __slots__ = ("sock", "stalled")

    def __init__(self, sock: socket.socket, stalled: Callable[[], HvsockError]) -> None:
        self.sock, self.stalled = sock, stalled


class Readable(_Wait):
    """Wait until *sock* is readable; *stalled* is the error if the deadline passes first."""

    __slots__ = ()


class Writable(_Wait):
    """Wait until *sock* is writable; *stalled* is the error if the deadline passes first."""

    __slots__ = ()


class InThread:
    """Run ``call(remaining)`` where blocking is allowed; it bounds itself by *remaining*.

    *discard* disposes of a result nobody will take (the dial was cancelled meanwhile).
    """

    __slots__ = ("call", "discard", "stalled")

    def __init__(
        self,
        call: Callable[[float | None], Any],
        stalled: Callable[[], HvsockError],
        discard: Callable[[Any], None] | None = None,
    ) -> None:
        self.call, self.stalled, self.discard = call, stalled, discard


class Pause:
    """Sleep *seconds* before the next attempt; its deadline starts after the pause."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


Step = Readable | Writable | InThread | Pause
if TYPE_CHECKING:
    Dial = Generator[Step, Any, socket.socket]
    Resolver = Callable[[Any], SocketAddress]

#: Made non-blocking at creation where the OS can (one call fewer per connection).
_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)
_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK, errno.EALREADY})


def resume(
    gen: Dial, value: object = None, error: BaseException | None = None
) -> Step | socket.socket:
    """Answer *gen*'s last step with *value* (or throw *error* in): its next step, or
    the connected socket once it is done. Every driver steps a dial with this."""
    try:
        return gen.send(value) if error is None else gen.throw(error)
    except StopIteration as done:
        sock: socket.socket = done.value
        return sock


# -- the table -------------------------------------------------------------------------------
def attempt(
    address: SocketAddress,
    *,
    timeout: float | None,
    buffer_size: int | None,
    reserved_port: bool | str = False,
) -> Dial:
    """One connect attempt to the resolved *address* (no retries).

    *reserved_port* (True, or "try" to fall back quietly) binds an AF_VSOCK socket to a
    reserved source port first; other address kinds have none and ignore "try".
    """
    if reserved_port and isinstance(address, VsockAddress):
        return vsock_(address, timeout, buffer_size, reserved_port)
    if reserved_port is True:
        from .._errors import ArgumentError

        raise ArgumentError(
            f"reserved_port=True needs an AF_VSOCK address, not {address}: "
            "only vsock listeners judge a peer by its source port; pass "
            "reserved_port='try' to use one where there is one"
        )
    return TRANSPORTS[type(address)](address, timeout, buffer_size)


def check_reserved_port(value: object) -> None:
    """:class:`ArgumentError` unless *value* is False, True or "try"."""
    if value is not False and value is not True and value != "try":
        from .._errors import ArgumentError
        from .._validate import quote

        raise ArgumentError(f"reserved_port must be False, True or 'try', not {quote(value)}")


def dial(
    address: Any,
    *,
    timeout: float | None,
    buffer_size: int | None,
    retries: int = 0,
    retry_wait: float = 0.25,
    resolve: Resolver | None = None,
    reserved_port: bool | str = False,
) -> Dial:
    """Attempts with pauses between them: a transient failure is retried *retries* times.

    *resolve*, given by the layer above the transports, turns a named address (a VM
    name) into a socket address in a thread before each attempt; without it the address
    must already be a socket address. Retry pauses double from *retry_wait* up to 5 s
    (:func:`retry_waits`); the errors are the last attempt's.
    """
    waits = retry_waits(retries, retry_wait)
    return _dial(address, waits, timeout, buffer_size, resolve, reserved_port)


def _dial(
    address: Any,
    waits: list[float],
    timeout: float | None,
    buffer_size: int | None,
    resolve: Resolver | None,
    reserved_port: bool | str,
) -> Dial:
    for wait in [*waits, None]:
        try:
            target = address
            if resolve is not None:
                target = yield InThread(lambda _remaining: resolve(address), _resolve_stalled)
            return (
                yield from attempt(
                    target, timeout=timeout, buffer_size=buffer_size, reserved_port=reserved_port
                )
            )
        except OSError as exc:
            if wait is None or not is_transient(exc):
                raise
        yield Pause(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def _resolve_stalled() -> HvsockError:
    return ConnectTimeoutError(
        "looking the VM name up timed out; raise the timeout", errno=errno.ETIMEDOUT
    )


def where(address: SocketAddress) -> str:
    """How messages name *address* (the VMM socket for hybrid's first stage aside)."""
    return WHERE[type(address)](address)


def _connect_stalled(where: str) -> Callable[[], HvsockError]:
    return lambda: ConnectTimeoutError(
        f"connect to {where} timed out; check that the peer is running and listening, "
        "or raise the timeout",
        errno=errno.ETIMEDOUT,
    )


def _os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _so_error(sock: socket.socket) -> int:
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))


def _established(sock: socket.socket) -> bool:
    """True if a connect in progress has in fact completed (loopback completes at once).

    One call instead of a trip round the driver's wait per connection.
    """
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def _connect_nonblocking(sock: socket.socket, sockaddr: Any, family: str, where: str) -> Dial:
    """connect_ex, then wait for writability and read SO_ERROR; errors translated."""
    code = sock.connect_ex(sockaddr)
    if code in _IN_PROGRESS:
        if _established(sock):
            code = 0
        else:
            yield Writable(sock, _connect_stalled(where))
            code = _so_error(sock)
    if code:
        exc = _os_error(code)
        raise translate(exc, op="connect", family=family, where=where) from exc
    return sock


# -- TCP -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _ip_family(host: str) -> socket.AddressFamily | None:
    """AF_INET / AF_INET6 for a literal IP, None for a name or a scoped IPv6 address."""
    if "%" in host:
        return None  # let getaddrinfo work the scope out
    import ipaddress  # a few ms at start-up that Unix and vsock dials never need

    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def _getaddrinfo(address: TcpAddress) -> Callable[[float | None], list[Any]]:
    def lookup(_remaining: float | None) -> list[Any]:
        try:
            return socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise _unresolvable(address, exc) from exc

    return lookup


def _unresolvable(address: TcpAddress, exc: socket.gaierror) -> HvsockError:
    from .._validate import quote

    return HvsockError(
        f"cannot resolve {quote(address.host)} ({exc.strerror}); check the "
        "host name, or give an IP address",
        errno=exc.errno,
    )


def tcp(address: TcpAddress, timeout: float | None, buffer_size: int | None) -> Dial:
    """TCP: resolve a name in a thread, then try each address in turn."""
    family = _ip_family(address.host)
    if family is not None:
        targets: list[tuple[Any, Any]] = [(family, address.sockaddr)]
    else:
        infos = yield InThread(_getaddrinfo(address), _connect_stalled(str(address)))
        targets = [(info[0], info[4]) for info in infos]
    last: OSError | None = None
    for fam, sockaddr in targets:
        sock = socket.socket(fam, socket.SOCK_STREAM | _NONBLOCK)
        with close_on_error(sock):
            try:
                if not _NONBLOCK:
                    sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if buffer_size is not None:
                    set_stream_buffer_size(sock, buffer_size)
                return (yield from _connect_nonblocking(sock, sockaddr, "tcp", str(address)))
            except ConnectTimeoutError:
                raise  # the deadline covers every address: no time left for the next
            except OSError as exc:
                if len(targets) == 1:
                    raise
                last = exc
                sock.close()
    assert last is not None
    raise last


# -- Unix and the first stage of hybrid --------------------------------------------------------
def _timeval(seconds: float) -> bytes:
    import struct  # only a full backlog needs it (hvsock connect's start-up, see above)

    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


def backlog_full(where: str) -> ConnectTimeoutError:
    """A Unix connect that waited its whole timeout for room in the listen backlog."""
    return ConnectTimeoutError(
        f"connect to {where} timed out: its listen backlog stayed full; the server is not "
        "accepting connections (overloaded or hung)",
        errno=errno.ETIMEDOUT,
    )


def _wait_for_backlog(
    sock: socket.socket, target: Any, where: str
) -> Callable[[float | None], None]:
    # A non-blocking AF_UNIX connect never completes later: with the listener's
    # backlog full Linux fails it at once with EAGAIN. A blocking connect does wait for
    # room, bounded by SO_SNDTIMEO (not by settimeout(), which would make it
    # non-blocking again); so this step runs where blocking is allowed.
    def wait(remaining: float | None) -> None:
        if remaining is not None and remaining <= 0:
            raise backlog_full(where)
        sock.setblocking(True)
        try:
            if remaining is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(remaining))
            sock.connect(target)
        except (BlockingIOError, TimeoutError) as exc:
            raise backlog_full(where) from exc
        finally:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(0))
            sock.setblocking(False)

    return wait


def _unix_connect(target: Any, where: str, family: str, buffer_size: int | None) -> Dial:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | _NONBLOCK)
    with close_on_error(sock):
        try:
            if not _NONBLOCK:
                sock.setblocking(False)
            if buffer_size is not None:
                set_stream_buffer_size(sock, buffer_size)
            try:
                sock.connect(target)
            except BlockingIOError:
                yield InThread(_wait_for_backlog(sock, target, where), lambda: backlog_full(where))
        except HvsockError:
            raise
        except OSError as exc:
            raise translate(
                exc,
                op="connect",
                family=family,
                where=where,
                path=target if isinstance(target, str) else None,
            ) from exc
    return sock


def unix(address: UnixAddress, timeout: float | None, buffer_size: int | None) -> Dial:
    """Unix: a connect that succeeds or fails at once, unless the backlog is full."""
    return _unix_connect(address.sockaddr, address.path, "unix", buffer_size)


# -- hybrid vsock ------------------------------------------------------------------------------
def hybrid_(address: HybridAddress, timeout: float | None, buffer_size: int | None) -> Dial:
    """Hybrid: the VMM's Unix socket, ``CONNECT <port>\\n``, then its ``OK <n>\\n`` reply."""
    from .._core import handshake
    from . import hybrid

    sock = yield from _unix_connect(
        address.uds_path, hybrid.vmm_where(address), "hybrid", buffer_size
    )
    stalled = lambda: hybrid.reply_timeout(address)  # noqa: E731
    with close_on_error(sock):
        try:
            request = memoryview(handshake.encode_connect(address.port))
            while request:
                try:
                    request = request[sock.send(request) :]
                except BlockingIOError:
                    yield Writable(sock, stalled)
            reader = handshake.LineReader("reply")
            while not reader.done:
                yield Readable(sock, stalled)
                # Peek, then take only the reply's bytes: what follows the line is the
                # guest's stream and stays queued for the caller.
                try:
                    data = sock.recv(reader.wanted(), socket.MSG_PEEK)
                except (BlockingIOError, InterruptedError):
                    continue
                if not data:
                    raise hybrid.reply_cut_short(address, reader.received)
                used = reader.feed(data)
                sock.recv(used)
        except HvsockError:
            raise
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise hybrid.no_listener(address, exc.errno) from exc
        except OSError as exc:
            raise translate(
                exc, op="connect", family="hybrid", where=hybrid.where(address)
            ) from exc
    return sock


# -- AF_VSOCK ----------------------------------------------------------------------------------
def vsock_(
    address: VsockAddress,
    timeout: float | None,
    buffer_size: int | None,
    reserved_port: bool | str = False,
) -> Dial:
    """vsock: the kernel's own connect timeout set to ours, then a non-blocking connect
    (from a reserved source port first when asked: see :func:`vsock.bind_reserved`)."""
    from . import vsock

    sock = vsock.prepare(address, timeout=timeout, buffer_size=buffer_size)
    with close_on_error(sock):
        if reserved_port:
            vsock.bind_reserved(sock, address, required=reserved_port is True)
        sock.setblocking(False)
        return (
            yield from _connect_nonblocking(sock, address.sockaddr, "vsock", vsock.where(address))
        )


# -- AF_HYPERV ---------------------------------------------------------------------------------
def hyperv_(
    address: HyperVAddress, timeout: float | None, buffer_size: int | None
) -> Dial:  # pragma: no cover - Windows only
    """AF_HYPERV: a blocking connect bounded by HVSOCKET_CONNECT_TIMEOUT, in a thread.

    Asyncio's proactor cannot connect this family and its non-blocking connect is
    unverified, so the blocking call is the one path every driver shares.
    """
    from . import hyperv

    sock = hyperv.new_socket()
    where = hyperv.where(address)

    def connect(remaining: float | None) -> None:
        try:
            if remaining is not None:
                # Without this option a connect to a service nobody listens on
                # blocks for ~30 s whatever Python's own timeout says.
                sock.setsockopt(
                    hyperv.HV_PROTOCOL_RAW,
                    hyperv.HVSOCKET_CONNECT_TIMEOUT,
                    hyperv.connect_timeout_ms(remaining),
                )
            sock.connect(address.sockaddr)
        except OSError as exc:
            raise translate(exc, op="connect", family="hyperv", where=where) from exc

    with close_on_error(sock):
        if buffer_size is not None:
            set_stream_buffer_size(sock, buffer_size)
        yield InThread(connect, _connect_stalled(where))
        sock.setblocking(False)
    return sock


def family_module(name: str) -> ModuleType:
    """The transport module *name*, imported on first use: a Unix or TCP connect (the
    ssh ProxyCommand case, paid on every call) never loads the VM-socket modules."""
    return importlib.import_module(f"{__package__}.{name}")


TRANSPORTS: dict[type, Callable[[Any, float | None, int | None], Dial]] = {
    TcpAddress: tcp,
    UnixAddress: unix,
    HybridAddress: hybrid_,
    VsockAddress: vsock_,
    HyperVAddress: hyperv_,
}

WHERE: dict[type, Callable[[Any], str]] = {
    TcpAddress: str,
    UnixAddress: lambda a: a.path,
    HybridAddress: lambda a: family_module("hybrid").where(a),
    VsockAddress: lambda a: family_module("vsock").where(a),
    HyperVAddress: lambda a: family_module("hyperv").where(a),
}
