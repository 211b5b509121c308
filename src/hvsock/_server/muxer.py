"""An emulated hybrid-vsock VMM muxer: the Firecracker protocol over real Unix sockets."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
import time
from types import TracebackType

from .._core import handshake
from .._core.addresses import HybridAddress
from .._errors import ArgumentError, HandshakeError
from .._pump import splice_sockets

#: Firecracker hands out host-side ports from here upwards.
FIRST_HOST_PORT = 1 << 30


class HybridVsockMuxer:
    """A fake VMM that speaks hybrid vsock on *uds_path*, with an in-process "guest".

    Host side (the code under test): connect to ``uds_path`` and send
    ``CONNECT <port>\\n``. The muxer answers ``OK <n>\\n`` and relays bytes when a
    guest listener made with :meth:`guest_listen` exists on that port, and closes
    the connection otherwise, as Firecracker does. Guest side:
    :meth:`guest_connect` dials ``<uds_path>_<port>`` like a guest connecting to
    the host (a ``ConnectionResetError`` when nobody listens there).

    *reply_chunk* and *reply_pause* split the ``OK <n>\n`` reply the way a slow VMM
    may: writes of *reply_chunk* bytes (1: byte by byte; None: one write) with
    *reply_pause* seconds between them. *reply* replaces the reply line altogether
    (to test how clients take a bad one).

    Use as a context manager; :meth:`close` stops it and removes its files.
    """

    def __init__(
        self,
        uds_path: str,
        *,
        handshake_timeout: float = 5.0,
        reply_chunk: int | None = None,
        reply_pause: float = 0.0,
        reply: bytes | None = None,
    ) -> None:
        if reply_chunk is not None and (
            isinstance(reply_chunk, bool) or not isinstance(reply_chunk, int) or reply_chunk < 1
        ):
            raise ArgumentError(
                f"reply_chunk must be a whole number >= 1 or None, not {reply_chunk!r}"
            )
        if (
            isinstance(reply_pause, bool)
            or not isinstance(reply_pause, (int, float))
            or not (0 <= reply_pause <= 60)
        ):
            raise ArgumentError(f"reply_pause must be seconds in 0..60, not {reply_pause!r}")
        self.uds_path = uds_path
        self.handshake_timeout = handshake_timeout
        self.reply_chunk = reply_chunk
        self.reply_pause = float(reply_pause)
        self.reply = reply
        self._guest_dir = tempfile.mkdtemp(prefix="hvsock-guest-")
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._next_host_port = FIRST_HOST_PORT
        self._closed = False
        #: Protocol errors seen from host clients (malformed CONNECT lines), for tests.
        self.errors: list[str] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.bind(uds_path)
            self._listener.listen(64)
        except BaseException:
            self._listener.close()
            shutil.rmtree(self._guest_dir, ignore_errors=True)
            raise
        self._thread = threading.Thread(target=self._accept_loop, name="hvsock-muxer", daemon=True)
        self._thread.start()

    # -- guest side -------------------------------------------------------
    def address(self, port: int) -> HybridAddress:
        """The host-side address of guest *port* behind this muxer."""
        return HybridAddress(self.uds_path, port)

    def _guest_path(self, port: int) -> str:
        return os.path.join(self._guest_dir, f"port_{port}")

    def guest_listen(self, port: int, backlog: int = 64) -> socket.socket:
        """A listening socket standing for a guest program listening on vsock *port*."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            path = self._guest_path(port)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            sock.bind(path)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock

    def guest_unlisten(self, port: int) -> None:
        """Forget guest *port*'s listener (close the socket from guest_listen yourself)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._guest_path(port))

    def guest_connect(self, port: int, timeout: float | None = 5.0) -> socket.socket:
        """Connect as the guest to host *port* (the host listens at ``<uds_path>_<port>``).

        Raises ``ConnectionResetError`` when nothing listens there, as a guest sees.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(f"{self.uds_path}_{port}")
            sock.settimeout(None)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise ConnectionResetError(f"host port {port}: nothing listens") from exc
        except BaseException:
            sock.close()
            raise
        return sock

    # -- the VMM side -----------------------------------------------------
    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(
                target=self._serve, args=(conn,), name="hvsock-muxer-conn", daemon=True
            ).start()

    def _serve(self, host: socket.socket) -> None:
        try:
            port = self._read_connect(host)
        except (OSError, HandshakeError) as exc:
            if isinstance(exc, HandshakeError):
                self.errors.append(str(exc))
            # Take what was only peeked at: closing with unread bytes would send a
            # reset, where a VMM that hangs up on a bad request sends a plain EOF.
            with contextlib.suppress(OSError):
                host.setblocking(False)
                host.recv(handshake.MAX_LINE)
            host.close()
            return
        guest = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            guest.connect(self._guest_path(port))
        except OSError:
            # No guest listener: the VMM just closes, the host sees EOF.
            guest.close()
            host.close()
            return
        with self._lock:
            host_port = self._next_host_port
            self._next_host_port += 1
            if self._closed:
                guest.close()
                host.close()
                return
            self._open.update((host, guest))
        try:
            self._send_reply(
                host, handshake.encode_ok(host_port) if self.reply is None else self.reply
            )
        except OSError:
            guest.close()
            host.close()
            return
        splice_sockets(host, guest, on_close=lambda: self._forget(host, guest))

    def _forget(self, *socks: socket.socket) -> None:
        with self._lock:
            self._open.difference_update(socks)

    def _send_reply(self, host: socket.socket, line: bytes) -> None:
        chunk = self.reply_chunk or len(line) or 1
        for start in range(0, len(line), chunk):
            if start and self.reply_pause:
                time.sleep(self.reply_pause)
            host.sendall(line[start : start + chunk])

    def _read_connect(self, host: socket.socket) -> int:
        # The same incremental reader the clients use for the reply; peek, then take
        # only the line, so what the host sends after it stays for the guest.
        deadline = time.monotonic() + self.handshake_timeout
        reader = handshake.LineReader("request")
        while reader.value is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HandshakeError("no CONNECT line in time")
            host.settimeout(remaining)
            data = host.recv(reader.wanted(), socket.MSG_PEEK)
            if not data:
                raise HandshakeError(
                    f"client closed before a full CONNECT line ({reader.received!r})"
                )
            host.recv(reader.feed(data))
        host.settimeout(None)
        return reader.value

    # -- lifetime ----------------------------------------------------------
    def close(self) -> None:
        """Stop accepting, close every relayed connection, remove the muxer's files."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            open_socks = list(self._open)
            self._open.clear()
        # shutdown() wakes a thread blocked in accept(); close() alone does not.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)
        for sock in open_socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.uds_path)
        shutil.rmtree(self._guest_dir, ignore_errors=True)

    def __enter__(self) -> HybridVsockMuxer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
