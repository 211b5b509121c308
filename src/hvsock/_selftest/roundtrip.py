"""A real listener and a real client exchange bytes, with a half-close, sync and asyncio.

The same code runs over any address family: the self-test uses it on
``hvsock://loopback/<id>`` (Windows) and ``vsock://1:<port>`` (Linux with
``vsock_loopback``); the host tests over Unix and TCP sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import threading
from collections.abc import Callable

from .. import _endpoints
from .._core.addresses import Address, parse_address
from .._errors import HvsockError
from .._transports._common import close_write

#: Ends a wait that would otherwise hang on a broken transport.
DEFAULT_TIMEOUT = 10.0
PAYLOAD_SIZE = 64 * 1024


class _Server:
    """Accept one connection in a thread; read to EOF, send it all back, close."""

    def __init__(self, listener: socket.socket, timeout: float) -> None:
        self.listener = listener
        self.timeout = timeout
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, name="hvsock-selftest", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.listener.settimeout(self.timeout)
            conn, _peer = self.listener.accept()
            with conn:
                conn.settimeout(self.timeout)
                received = _read_to_eof(conn)
                conn.sendall(received)
                close_write(conn)
        except BaseException as exc:  # handed to the client side, which reports it
            self.error = exc

    def abandon(self) -> None:
        """The client failed: wake an accept still waiting, and let the thread end."""
        # Not every family allows it; the accept's timeout ends the thread then.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.thread.join(self.timeout)

    def join(self) -> None:
        self.thread.join(self.timeout)
        if self.thread.is_alive():
            raise HvsockError(f"the test server did not finish within {self.timeout:g} s")
        if self.error is not None:
            raise HvsockError(f"the test server failed: {self.error}") from self.error


def _read_to_eof(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _check(payload: bytes, echoed: bytes) -> None:
    if echoed != payload:
        raise HvsockError(
            f"sent {len(payload)} bytes, got back {len(echoed)} "
            + ("(different bytes)" if len(echoed) == len(payload) else "(the stream was cut)")
        )


#: The client half of a round trip: (where to connect, what to send) -> what came back.
Talk = Callable[[Address, bytes], bytes]


def _exchange(
    listen_at: Address | str,
    connect_to: Callable[[Address], Address] | None,
    timeout: float,
    talk: Talk,
) -> str:
    address = parse_address(listen_at)
    payload = secrets.token_bytes(PAYLOAD_SIZE)
    listener = _endpoints.listen(address, backlog=1)
    try:
        actual = _endpoints.listener_address(listener, address)
        target = connect_to(actual) if connect_to is not None else actual
        server = _Server(listener, timeout)
        try:
            echoed = talk(target, payload)
        except BaseException:
            server.abandon()
            raise
        server.join()
        _check(payload, echoed)
        return str(target)
    finally:
        listener.close()
        _endpoints.remove_socket_file(address)


def round_trip(
    listen_at: Address | str,
    connect_to: Callable[[Address], Address] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """Listen on *listen_at*, connect (to *connect_to(actual listen address)*, or to
    that address), send 64 KiB, half-close, read the echo to EOF and compare.

    Returns the address connected to. Raises :class:`HvsockError` (or the OSError
    of the socket call that failed) when anything goes wrong. Leaves no socket
    open and no socket file behind.
    """

    def talk(target: Address, payload: bytes) -> bytes:
        with _endpoints.connect(target, timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(payload)
            close_write(sock)
            return _read_to_eof(sock)

    return _exchange(listen_at, connect_to, timeout, talk)


def round_trip_async(
    listen_at: Address | str,
    connect_to: Callable[[Address], Address] | None = None,
    *,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """:func:`round_trip` with an asyncio client (``hvsock.open_connection``) on a loop
    *loop_factory* makes (the proactor loop on Windows; the default loop elsewhere).

    The server side accepts in a thread, as ServiceHost does for AF_HYPERV (asyncio's
    proactor cannot accept Hyper-V sockets). Raises as :func:`round_trip`.
    """
    from .._endpoints import open_connection

    async def client(target: Address, payload: bytes) -> bytes:
        reader, writer = await open_connection(target, timeout=timeout)
        try:
            writer.write(payload)
            await asyncio.wait_for(writer.drain(), timeout)
            writer.write_eof()
            return await asyncio.wait_for(reader.read(), timeout)
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError):  # gone either way
                await asyncio.wait_for(writer.wait_closed(), timeout)

    def talk(target: Address, payload: bytes) -> bytes:
        loop = loop_factory() if loop_factory is not None else asyncio.new_event_loop()
        try:
            return loop.run_until_complete(client(target, payload))
        finally:
            loop.close()

    return _exchange(listen_at, connect_to, timeout, talk)
