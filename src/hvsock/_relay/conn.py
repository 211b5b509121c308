"""One relayed connection's state, how it ended, and the relay's counters."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._errors import HvsockError

if TYPE_CHECKING:
    from .._server.peers import Peer
    from .config import Forward
    from .datapath import Flow
    from .dial import Dial

# How a connection ended (ConnectionRecord.end).
END_CLOSED = "closed"  # both directions reached EOF and were passed on
END_CLIENT_RESET = "client reset"
END_TARGET_RESET = "target reset"
END_IDLE = "idle timeout"
END_TARGET_DOWN = "target down"
END_DENIED = "denied"
END_STOPPED = "stopped"

# The counters each worker publishes (a row of int64s, summed by the relay), by index;
# RelayStats.of names each one.
ACCEPTED, ACTIVE, DENIED, TARGET_DOWN, ENDED, BYTES_UP, BYTES_DOWN, BUFFERED, PEAK = range(9)
STAT_FIELDS = 9

_LINGER_RESET = struct.pack("ii", 1, 0)
IP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


@dataclass(frozen=True)
class ConnectionRecord:
    """What the relay logs when a connection ends.

    *bytes_up* went from the client to the target, *bytes_down* back; *end* is
    one of "closed", "client reset", "target reset", "idle timeout",
    "target down", "denied", "stopped"; *error* says more where there is more.
    """

    id: int
    peer: str
    target: str
    bytes_up: int
    bytes_down: int
    duration: float
    end: str
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies, a cost paid per connection.
        return {
            "id": self.id,
            "peer": self.peer,
            "target": self.target,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "duration": self.duration,
            "end": self.end,
            "error": self.error,
        }

    def __str__(self) -> str:
        text = (
            f"#{self.id} {self.peer} -> {self.target}: {self.end}, up {self.bytes_up} B, "
            f"down {self.bytes_down} B, {self.duration:.3f} s"
        )
        return f"{text} ({self.error})" if self.error else text


@dataclass(frozen=True)
class RelayStats:
    """Counters since the relay started (a snapshot, summed over its workers).

    *buffered* is the bytes the relay holds in flight now (its own buffers and
    pipes), *buffered_peak* the most it ever held; both stay within
    ``max_buffer_memory`` plus a small floor per stalled direction.
    """

    accepted: int
    active: int
    denied: int
    target_down: int
    ended: int
    bytes_up: int
    bytes_down: int
    buffered: int = 0
    buffered_peak: int = 0

    @classmethod
    def of(cls, counters: Sequence[int]) -> RelayStats:
        """The stats in a row of counters (indexed by ACCEPTED, ACTIVE, ...)."""
        return cls(
            accepted=counters[ACCEPTED],
            active=counters[ACTIVE],
            denied=counters[DENIED],
            target_down=counters[TARGET_DOWN],
            ended=counters[ENDED],
            bytes_up=counters[BYTES_UP],
            bytes_down=counters[BYTES_DOWN],
            buffered=counters[BUFFERED],
            buffered_peak=counters[PEAK],
        )


class Conn:
    """One client and its target: sockets, poll masks, dial in progress, the two flows."""

    __slots__ = (
        "cfd",
        "client",
        "cmask",
        "deadline",
        "dial",
        "down",
        "ended",
        "forward",
        "id",
        "last",
        "listening",
        "peer",
        "started",
        "target",
        "tfd",
        "tmask",
        "up",
    )

    def __init__(
        self, conn_id: int, client: socket.socket, peer: Peer, forward: Forward, now: float
    ) -> None:
        self.id = conn_id
        self.client = client
        self.cfd = client.fileno()
        self.peer = peer
        self.forward = forward
        #: The worker's Listening this client came through (its splice choices).
        self.listening: Any = None
        self.started = now
        self.last = now
        self.target: socket.socket | None = None
        self.tfd = -1
        #: Poll masks; None while the socket is not in the poller.
        self.cmask: int | None = None
        self.tmask: int | None = None
        self.dial: Dial | None = None
        self.deadline: float | None = None
        self.up: Flow | None = None
        self.down: Flow | None = None
        self.ended = False


def abort(sock: socket.socket) -> None:
    """Make the coming close() a reset where the transport has one (TCP)."""
    if sock.family in IP_FAMILIES:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


def pending_error(sock: socket.socket) -> int:
    """The socket's pending error number (a reset), 0 for none; reading it clears it."""
    try:
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
    except OSError as exc:
        return exc.errno or errno.EBADF


def os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def describe(error: BaseException) -> str:
    """An error as a log line's tail: ours as they are, OS errors by errno name."""
    if isinstance(error, HvsockError):
        return str(error)
    if isinstance(error, OSError) and error.errno is not None:
        name = errno.errorcode.get(error.errno, str(error.errno))
        return f"{name}: {error.strerror}"
    return str(error) or type(error).__name__


def hand_over(
    on_close: Callable[[ConnectionRecord], None] | None, record: ConnectionRecord
) -> None:
    """Give *record* to the user's callback; its failure is logged, never raised."""
    if on_close is not None:
        try:
            on_close(record)
        except Exception:
            logging.getLogger("hvsock.relay").exception("on_close callback failed")
