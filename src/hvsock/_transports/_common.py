"""What every transport shares: deadlines, retries, closing on error, buffer sizes."""

from __future__ import annotations

import errno
import select
import socket
import time
from collections.abc import Callable

from .._errors import ArgumentError, translate
from .._validate import non_negative_number, positive_number, whole_number

TYPE_CHECKING = False  # not typing's: docs/architecture.md, "Start-up rules"
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Any

#: Default deadline for one connect attempt, in seconds. Never None by default:
#: a Hyper-V connect with no listener can otherwise block for ~30 s.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Longest timeout taken (about 115 days); None means no limit.
MAX_TIMEOUT = 1e7
#: Longest sleep between two retries.
MAX_RETRY_WAIT = 5.0


class _CloseOnError:
    # A class, not @contextlib.contextmanager: every connect enters one, and the
    # generator-based form costs ~2.5 us a use against ~0.3 us.
    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def __enter__(self) -> socket.socket:
        return self.sock

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.sock.close()


def close_on_error(sock: socket.socket) -> _CloseOnError:
    """Close *sock* if the block raises (anything, KeyboardInterrupt included)."""
    return _CloseOnError(sock)


class Deadline:
    """A point in monotonic time; ``remaining()`` is what is left, None for no limit."""

    def __init__(self, timeout: float | None) -> None:
        check_timeout(timeout)
        self._end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        if self._end is None:
            return None
        return max(0.0, self._end - time.monotonic())


def check_timeout(timeout: float | None, what: str = "timeout") -> None:
    """:class:`ArgumentError` unless *timeout* is a positive number of seconds or None."""
    seconds = positive_number(timeout, f"{what} (seconds)", optional=True)
    if seconds is not None and seconds > MAX_TIMEOUT:
        # Clocks and poll() cannot take any float: past this, None says "no limit".
        raise ArgumentError(
            f"{what} {seconds:g} s is over {MAX_TIMEOUT:g} s; pass None for no limit"
        )


def retry_waits(retries: int, retry_wait: float) -> list[float]:
    """The sleeps between attempts: *retry_wait*, doubling, capped at MAX_RETRY_WAIT.

    Raises :class:`ArgumentError` for a bad *retries* or *retry_wait*.
    """
    whole_number(retries, "retries", 0, 10_000)
    wait = non_negative_number(retry_wait, "retry_wait (seconds)")
    assert wait is not None
    return [min(wait * 2 ** min(i, 32), MAX_RETRY_WAIT) for i in range(retries)]


def set_stream_buffer_size(sock: socket.socket, size: int) -> None:
    """Set SO_SNDBUF and SO_RCVBUF (the Hyper-V rings, TCP and Unix buffers)."""
    check_buffer_size(size)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def check_buffer_size(size: int) -> None:
    """:class:`ArgumentError` unless *size* is a whole number of bytes in 1..1 GiB."""
    whole_number(size, "buffer size (bytes)", 1, 1 << 30)


def close_write(sock: socket.socket) -> None:
    """Half-close: tell the peer no more data comes, and keep reading what it sends.

    A peer that is already gone is not an error here: there is nothing left to tell it.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        return
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise


def bind_and_listen(
    sock: socket.socket,
    sockaddr: Any,
    backlog: int,
    *,
    family: str,
    where: str,
    before_bind: Callable[[], None] | None = None,
) -> socket.socket:
    """Bind and listen *sock* (a fresh socket); close it and explain the error on failure."""
    with close_on_error(sock):
        op = "bind"
        try:
            if before_bind is not None:
                before_bind()
            sock.bind(sockaddr)
            op = "listen"
            sock.listen(backlog)
        except OSError as exc:
            raise translate(exc, op=op, family=family, where=where) from exc
    return sock


def sendall_parts(sock: socket.socket, parts: list[bytes | bytearray | memoryview]) -> None:
    """Send *parts* one after the other, as ``sock.sendall(b"".join(parts))`` would.

    Where the socket has ``sendmsg`` (not on Windows) the parts go as they are,
    gathered by the kernel: a header and a large payload cost no joined copy. A
    short send (a timeout socket, a signal) resumes where it stopped. Raises what
    ``sendall`` raises.
    """
    sendmsg = getattr(sock, "sendmsg", None)
    if sendmsg is None or len(parts) == 1:
        sock.sendall(parts[0] if len(parts) == 1 else b"".join(parts))
        return
    views = [view for view in (memoryview(p).cast("B") for p in parts) if view]
    while views:
        sent = sendmsg(views)
        while sent:  # drop what went; a part sent in part keeps its rest
            first = views[0]
            if sent >= len(first):
                sent -= len(first)
                del views[0]
            else:
                views[0] = first[sent:]
                sent = 0


def wait_ready(sock: socket.socket | int, writable: bool, timeout: float | None) -> bool:
    """True once *sock* (a socket or its descriptor) is readable, or writable; False
    when *timeout* seconds (None: no limit) passed first. Errors and hang-ups count
    as ready: the next call on the socket reports them."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLOUT if writable else select.POLLIN)
        return bool(poller.poll(None if timeout is None else max(0, timeout * 1000)))
    rlist, wlist, xlist = ([], [sock], [sock]) if writable else ([sock], [], [sock])
    ready = select.select(rlist, wlist, xlist, timeout)  # pragma: no cover - Windows
    return any(ready)  # pragma: no cover - Windows
