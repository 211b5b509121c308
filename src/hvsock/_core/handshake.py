"""The hybrid-vsock handshake (Firecracker, Cloud Hypervisor), sans I/O.

The host connects to the VMM's Unix socket and writes ``CONNECT <port>\\n``; the
VMM answers ``OK <assigned_host_port>\\n`` and from then on the stream is the
guest's accepted connection. Both lines are short ASCII; anything else is a
protocol error. The parsers take the bytes read so far and say how many bytes the
line used, so bytes after it (the start of the stream) are never lost.
"""

from __future__ import annotations

import re

from .._errors import AddressError, HandshakeError
from .._validate import quote

#: Longest line either side may send: "CONNECT 4294967295\n" is 19 bytes.
MAX_LINE = 32

_U32_MAX = 0xFFFFFFFF
_CONNECT = re.compile(rb"CONNECT ([0-9]{1,10})\n\Z")
_OK = re.compile(rb"OK ([0-9]{1,10})\n\Z")


def encode_connect(port: int) -> bytes:
    """The request line asking the VMM for guest *port*."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= _U32_MAX:
        raise AddressError(f"hybrid vsock port {quote(port)} is out of range 0..4294967295")
    return b"CONNECT %d\n" % port


def encode_ok(host_port: int) -> bytes:
    """The VMM's reply line (used by the emulated muxer in :mod:`hvsock.testing`)."""
    if (
        isinstance(host_port, bool)
        or not isinstance(host_port, int)
        or not (0 <= host_port <= _U32_MAX)
    ):
        raise AddressError(f"hybrid vsock host port {quote(host_port)} is out of range")
    return b"OK %d\n" % host_port


def _line(buffer: bytes, what: str) -> bytes | None:
    end = buffer.find(b"\n", 0, MAX_LINE)
    if end < 0:
        if len(buffer) >= MAX_LINE:
            raise HandshakeError(
                f"hybrid vsock {what} line is longer than {MAX_LINE} bytes without a newline; "
                "the peer does not speak the hybrid vsock protocol "
                f"(got {quote(buffer[:MAX_LINE])})"
            )
        return None
    return buffer[: end + 1]


def _number(match: re.Match[bytes], what: str, line: bytes) -> int:
    value = int(match.group(1))
    if value > _U32_MAX:
        raise HandshakeError(f"hybrid vsock {what} {quote(line)} carries a port over 4294967295")
    return value


def parse_ok(buffer: bytes) -> tuple[int, int] | None:
    """Parse the VMM's reply from the start of *buffer*.

    Returns ``(assigned_host_port, bytes_used)``, or None when more bytes are needed.
    Raises :class:`HandshakeError` when the bytes cannot be a valid reply.
    """
    line = _line(buffer, "reply")
    if line is None:
        return None
    match = _OK.match(line)
    if match is None:
        raise HandshakeError(
            f"the VMM answered {quote(line)} instead of 'OK <port>\\n': is this a Firecracker / "
            "Cloud Hypervisor vsock socket, and is the guest port right?"
        )
    return _number(match, "reply", line), len(line)


def parse_connect(buffer: bytes) -> tuple[int, int] | None:
    """Parse a host's ``CONNECT <port>\\n`` request from the start of *buffer*.

    Returns ``(port, bytes_used)``, or None when more bytes are needed.
    Raises :class:`HandshakeError` when the bytes cannot be a valid request.
    """
    line = _line(buffer, "request")
    if line is None:
        return None
    match = _CONNECT.match(line)
    if match is None:
        raise HandshakeError(f"expected 'CONNECT <port>\\n', got {quote(line)}")
    return _number(match, "request", line), len(line)


class LineReader:
    """An incremental reader of one handshake line, fed whatever each read returned.

    The one parser every driver (blocking, asyncio, the relay's poll loop) and the
    emulated muxer use. :meth:`feed` takes the bytes a read returned (any split: byte
    by byte, with pauses, or with the stream's first bytes after the line) and returns
    how many of them belong to the line, so the caller can leave the rest where it
    was; ``value`` is set once the line is complete. At most :data:`MAX_LINE` bytes are
    ever taken, so a peer that never sends a newline is refused, not buffered.

    Raises :class:`HandshakeError` from :meth:`feed` when the bytes cannot be the line.
    """

    __slots__ = ("_buffer", "_parse", "value")

    def __init__(self, kind: str = "reply") -> None:
        if kind not in ("reply", "request"):
            raise AddressError(f"kind must be 'reply' or 'request', not {quote(kind)}")
        self._parse = parse_ok if kind == "reply" else parse_connect
        self._buffer = b""
        #: The port the line carried, once complete; None before.
        self.value: int | None = None

    @property
    def done(self) -> bool:
        """True once a whole line was read."""
        return self.value is not None

    @property
    def received(self) -> bytes:
        """The bytes of the line read so far (for messages about a cut-short reply)."""
        return self._buffer

    def wanted(self) -> int:
        """How many bytes a read may take without running past the longest line."""
        return max(1, MAX_LINE - len(self._buffer))

    def feed(self, data: bytes) -> int:
        """Take the start of *data*; return how many of its bytes belong to the line."""
        if self.value is not None:
            return 0
        start = len(self._buffer)
        # Never keep more than MAX_LINE bytes: _line raises once that many have no newline.
        buffer = self._buffer + bytes(data[: MAX_LINE - start + 1])
        parsed = self._parse(buffer)
        if parsed is None:
            self._buffer = buffer
            return len(buffer) - start
        self.value, used = parsed
        self._buffer = buffer[:used]
        return used - start
