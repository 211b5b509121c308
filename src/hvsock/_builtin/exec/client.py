"""Clients of the exec service: ``hvsock.exec`` (blocking), ``hvsock.exec_async`` and
:class:`ExecSession`, the blocking session ``hvsock exec`` drives.

Each is a driver of the one sans-I/O client, :class:`hvsock._core.exec_proto.ClientSession`:
it dials through :mod:`hvsock._endpoints` (VM names resolve as for ``hvsock.connect``),
sends the service hello and START, and reads the agent's frames asking for exactly what
completes the piece being read, so a data frame's output is the very ``bytes`` the read
returned.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass

from ..._core import exec_proto as ep
from ..._core import mux
from ..._core.addresses import Address
from ..._core.framing import encode_frame
from ..._errors import HvsockError, ProtocolError, RemoteError
from ..._transports._common import DEFAULT_CONNECT_TIMEOUT, sendall_parts
from ..._validate import quote

TYPE_CHECKING = False  # not typing's: docs/architecture.md, "Start-up rules"
if TYPE_CHECKING:
    # Only exec_async needs asyncio, and imports it when called: the blocking clients
    # (hvsock.exec, the CLI, the Ansible plugin, whose every task is a new process) do
    # not pay for loading it.
    import asyncio

__all__ = ["ExecResult", "exec", "exec_async"]

Sink = Callable[[bytes], object]
Input = bytes | bytearray | memoryview

#: Families whose recv takes MSG_WAITALL for any count: Linux's AF_VSOCK refuses
#: (ENOMEM) a MSG_WAITALL read of the socket's buffer size or more (256 KiB by
#: default, about 4 KiB on Hyper-V's transport), so VM sockets read without it.
_WAITALL_FAMILIES = frozenset(
    getattr(socket, name) for name in ("AF_UNIX", "AF_INET", "AF_INET6") if hasattr(socket, name)
)


def waitall_flag(family: int) -> int:
    """The recv flag asking for a whole count in one call (one system call and no
    joining per frame) on a socket of *family*; 0 where it is not safe to ask. Not on
    Windows, where not every provider is known to honour it. Reads take short
    reads either way."""
    if sys.platform == "win32" or family not in _WAITALL_FAMILIES:
        return 0
    return int(getattr(socket, "MSG_WAITALL", 0))


@dataclass(frozen=True)
class ExecResult:
    """How a remote command ended, like :class:`subprocess.CompletedProcess`.

    ``returncode`` is negative for a signal (as in :mod:`subprocess`);
    ``exit_status`` is the shell's view (128 + N), which ``hvsock exec`` exits with.
    ``stdout``/``stderr`` are what was captured (``b""`` when streamed elsewhere).
    """

    args: tuple[str, ...]
    returncode: int
    stdout: bytes = b""
    stderr: bytes = b""
    pid: int | None = None
    timed_out: bool = False
    truncated: bool = False

    @property
    def signal(self) -> int | None:
        return -self.returncode if self.returncode < 0 else None

    @property
    def exit_status(self) -> int:
        return self.returncode if self.returncode >= 0 else 128 - self.returncode

    def check_returncode(self) -> None:
        """Raise :class:`subprocess.CalledProcessError` for a non-zero return code."""
        if self.returncode:
            raise subprocess.CalledProcessError(
                self.returncode, list(self.args), self.stdout, self.stderr
            )


def make_start(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    unset: Iterable[str] = (),
    cwd: str | None = None,
    user: str | None = None,
    tty: ep.Tty | None = None,
    timeout: float | None = None,
    max_output: int | None = None,
) -> ep.Start:
    """A checked START request; raises :class:`hvsock.ArgumentError` for bad arguments."""
    from ..._errors import ArgumentError

    if isinstance(args, (str, bytes)):
        raise ArgumentError(
            f"args must be a list of strings, not one string {quote(args)}; "
            "for a shell line use ['sh', '-c', line]"
        )
    try:
        return ep.check_start(
            ep.Start(
                tuple(args), dict(env or {}), tuple(unset), cwd, user, tty, timeout, max_output
            )
        )
    except ProtocolError as exc:
        raise ArgumentError(str(exc)) from None
    except TypeError as exc:
        raise ArgumentError(f"bad exec arguments: {exc}") from None


def hello_frame(service: str | None) -> bytes:
    return encode_frame(mux.encode_hello(service), mux.MAX_HELLO) if service else b""


def _closed_at_hello() -> ProtocolError:
    return ProtocolError(
        "the agent closed the connection at the service hello: this peer "
        "may not be in its allowlist (see the agent's log), or the address "
        "is not an hvsock agent's"
    )


def _remote_error(event: ep.Error) -> RemoteError:
    return RemoteError(event.code, event.message)


def dial(
    address: Address | str,
    *,
    timeout: float | None,
    retries: int,
    reserved_port: bool | str = "try",
) -> socket.socket:
    """The one place the blocking exec clients dial: through :mod:`hvsock._endpoints`,
    so VM names resolve as for :func:`hvsock.connect` (options of the dial go here).

    On AF_VSOCK a reserved source port (<= 1023) is bound when this process may
    (``"try"``): that is how an agent's ``host:privileged`` rule, exec's default, tells
    root on the host from every other local user. ``True`` requires it."""
    from ..._endpoints import connect

    return connect(address, timeout=timeout, retries=retries, reserved_port=reserved_port)


async def dial_async(
    address: Address | str,
    *,
    timeout: float | None,
    retries: int,
    reserved_port: bool | str = "try",
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """:func:`dial` for :func:`exec_async` (the same resolution, the same options)."""
    from ..._endpoints import open_connection

    return await open_connection(
        address, timeout=timeout, retries=retries, reserved_port=reserved_port
    )


class ExecSession:
    """One running remote command over a blocking socket: a driver of
    :class:`exec_proto.ClientSession` (what :func:`exec` and the CLI use).

    ``open()`` connects, names the service, sends START; then :meth:`read_event`
    returns the agent's events one at a time (or :meth:`feed` turns bytes the caller
    read into events), :meth:`send_stdin` sends input and :meth:`send` the other
    client events (EOF, resizes, signals).
    """

    def __init__(self, sock: socket.socket, proto: ep.ClientSession | None = None) -> None:
        self.sock = sock
        self.proto = proto if proto is not None else ep.ClientSession()
        self._waitall = waitall_flag(sock.family)
        self._pending: collections.deque[ep.Event] = collections.deque()
        self._send_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        address: Address | str,
        start: ep.Start,
        *,
        service: str | None = "exec",
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        retries: int = 0,
        reserved_port: bool | str = "try",
    ) -> ExecSession:
        """Connect and start *start*. Raises :class:`hvsock.HvsockError` subclasses
        (connect failures; :class:`RemoteError` when the agent refuses the service)."""
        # The transports' frame reader, not the service framework's wrapper of it
        # (whose module loads asyncio).
        from ..._core.framing import FrameReader
        from ..._transports.recv import recv_frame

        proto = ep.ClientSession()
        start_frame = proto.start(start)
        sock = dial(address, timeout=connect_timeout, retries=retries, reserved_port=reserved_port)
        try:
            sock.settimeout(connect_timeout)
            if service:
                try:
                    sock.sendall(hello_frame(service))
                    got = recv_frame(sock, FrameReader(mux.MAX_HELLO), None)
                except ConnectionError:
                    got = None
                if got is None:
                    raise _closed_at_hello()
                mux.decode_answer(got[1])
            sock.settimeout(None)
            sock.sendall(start_frame)
        except BaseException:
            sock.close()
            raise
        return cls(sock, proto)

    def send(self, event: ep.Event) -> None:
        with self._send_lock:
            self.sock.sendall(self.proto.send(event))

    def send_stdin(self, data: Input) -> None:
        """One STDIN frame around *data* (at most :data:`CHUNK` bytes), sent without
        copying it: the frame's head and *data* go as two buffers of one ``sendmsg``."""
        with self._send_lock:
            sendall_parts(self.sock, [self.proto.stdin_head(len(data)), data])

    def read_event(self) -> ep.Event:
        """The next event, read straight off the socket: each recv asks for exactly
        the rest of a head or body, so a data frame's output is the ``bytes`` the
        socket returned (no buffer, no copy).

        Raises :class:`ProtocolError` when the agent closed or reset the connection
        before the command's exit (it refused this peer, or stopped), for a malformed
        frame and for one out of order.
        """
        while not self._pending:
            try:
                data = self.sock.recv(self.proto.wanted(), self._waitall)
            except ConnectionError:
                data = b""
            self._pending.extend(self.proto.receive(data))
        return self._pending.popleft()

    def feed(self, data: bytes) -> list[ep.Event]:
        """Events completed by *data* received from the agent (for a caller that reads
        the socket itself; not to be mixed with :meth:`read_event`)."""
        return self.proto.receive(data)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ExecSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Collector:
    """Output routing and the result, shared by the sync and async clients."""

    def __init__(self, args: tuple[str, ...], stdout: Sink | None, stderr: Sink | None) -> None:
        self.args = args
        self.out = bytearray()
        self.err = bytearray()
        self.sinks: dict[int, Sink] = {1: stdout or self.out.extend, 2: stderr or self.err.extend}
        self.pid: int | None = None

    def handle(self, event: ep.Event) -> ExecResult | None:
        if isinstance(event, ep.Output):
            self.sinks[event.fd](event.data)
        elif isinstance(event, ep.Started):
            self.pid = event.pid
        elif isinstance(event, ep.Exit):
            code = event.code if event.code is not None else -(event.signal or 0)
            return ExecResult(
                self.args,
                code,
                bytes(self.out),
                bytes(self.err),
                self.pid,
                event.timed_out,
                event.truncated,
            )
        elif isinstance(event, ep.Error):
            raise _remote_error(event)
        return None


def _bad_input(data: object, what: str = "input") -> Exception:
    from ..._errors import ArgumentError

    return ArgumentError(
        f"{what} must be bytes, not {type(data).__name__} {quote(data)}; encode text first"
    )


def _input_chunks(data: Input | None) -> list[memoryview]:
    """*data* cut into frame-sized views of it (no copies)."""
    if data is None:
        return []
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _bad_input(data)
    view = memoryview(data).cast("B")
    return [view[i : i + ep.CHUNK] for i in range(0, len(view), ep.CHUNK)]


def _piece(piece: object) -> list[memoryview]:
    if not isinstance(piece, (bytes, bytearray, memoryview)):
        raise _bad_input(piece, "each piece of input")
    return _input_chunks(piece)


def _stream_chunks(pieces: Iterable[Input]) -> Iterator[memoryview]:
    """Each of *pieces*, taken only when the previous one is sent, cut into frames."""
    for piece in pieces:
        yield from _piece(piece)


async def _stream_chunks_async(
    pieces: AsyncIterable[Input],
) -> AsyncGenerator[memoryview, None]:
    """:func:`_stream_chunks` of an asynchronous iterable."""
    async for piece in pieces:
        for chunk in _piece(piece):
            yield chunk


def _chunks(input: Input | Iterable[Input] | None) -> Iterable[memoryview]:
    """The frames' worth of *input* (bytes-like, or an iterable of bytes-like pieces).

    Raises :class:`hvsock.ArgumentError` for input that is neither, and for a list or
    tuple with a piece that is not bytes-like (all there already: checked before
    connecting); a lazy iterable's pieces are checked as they are taken."""
    if input is None or isinstance(input, (bytes, bytearray, memoryview)):
        return _input_chunks(input)
    if isinstance(input, str) or not isinstance(input, Iterable):
        raise _bad_input(input)
    if isinstance(input, (list, tuple)):
        return [chunk for piece in input for chunk in _piece(piece)]
    return _stream_chunks(input)


def _next_chunk(chunks: Iterator[memoryview], failed: list[BaseException]) -> memoryview | None:
    """The next chunk; None at the end, and when the caller's iterable failed (its
    exception is then in *failed*). Apart from sending, so that an error of the send
    (the connection cut) is never taken for the caller's."""
    try:
        return next(chunks, None)
    except Exception as exc:
        failed.append(exc)
        return None


def exec(
    address: Address | str,
    args: Sequence[str],
    *,
    input: Input | Iterable[Input] | None = None,
    env: Mapping[str, str] | None = None,
    unset: Iterable[str] = (),
    cwd: str | None = None,
    user: str | None = None,
    timeout: float | None = None,
    max_output: int | None = None,
    stdout: Sink | None = None,
    stderr: Sink | None = None,
    service: str | None = "exec",
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    retries: int = 0,
    reserved_port: bool | str = "try",
) -> ExecResult:
    """Run *args* through the agent at *address*; return an :class:`ExecResult`.

    *input* (bytes, or any bytes-like object: it is sent without a copy) goes to the
    command's stdin (then EOF). It may also be an iterable of bytes-like pieces (a
    generator, a file opened in binary mode): each piece is taken only when the one
    before it is sent, from a thread of its own while the output arrives, so a generator
    may wait for what the command prints before giving more (answering a prompt) and a
    large file is sent without being read whole. Output is captured, or handed live to
    *stdout* / *stderr* callables as it arrives. *timeout* (seconds) and *max_output*
    (bytes) are enforced by the agent, which kills the command's process group.
    *service* is the name sent in the service hello (``None`` for an address that serves
    exec alone). *reserved_port* (``"try"`` by default) binds a reserved AF_VSOCK source
    port when this process may, which an agent's default ``host:privileged`` rule
    requires; ``True`` requires it (:class:`hvsock.PermissionDeniedError` without root),
    ``False`` never binds one.

    Raises :class:`hvsock.ArgumentError` for bad arguments (*input* that is not
    bytes-like among them), the connect errors of
    :func:`hvsock.connect`, :class:`hvsock.RemoteError` when the agent cannot run
    the command (``code`` ``not_found``, ``forbidden``, ...), and
    :class:`hvsock.ProtocolError` if the connection breaks before the exit.
    """
    start = make_start(
        args, env=env, unset=unset, cwd=cwd, user=user, timeout=timeout, max_output=max_output
    )
    chunks = iter(_chunks(input))
    collector = _Collector(start.argv, stdout, stderr)
    failed: list[BaseException] = []
    with ExecSession.open(
        address,
        start,
        service=service,
        connect_timeout=connect_timeout,
        retries=retries,
        reserved_port=reserved_port,
    ) as session:

        def feed() -> None:
            # An OSError here is the connection's (cut, or closed as the session ended):
            # the reading side reports it.
            with contextlib.suppress(OSError):
                while (chunk := _next_chunk(chunks, failed)) is not None:
                    session.send_stdin(chunk)
                if failed:  # the caller's iterable failed: end the session
                    session.sock.shutdown(socket.SHUT_RDWR)
                    return
                session.send(ep.StdinEof())

        writer = threading.Thread(target=feed, name="hvsock-exec-stdin", daemon=True)
        writer.start()
        try:
            while True:
                try:
                    result = collector.handle(session.read_event())
                except HvsockError:
                    if failed:
                        raise failed[0] from None
                    raise
                if result is not None:
                    return result
        finally:
            # Closing the socket wakes a writer blocked on a full socket buffer.
            with contextlib.suppress(OSError):
                session.sock.shutdown(socket.SHUT_RDWR)
            writer.join(5)


async def exec_async(
    address: Address | str,
    args: Sequence[str],
    *,
    input: Input | Iterable[Input] | AsyncIterable[Input] | None = None,
    env: Mapping[str, str] | None = None,
    unset: Iterable[str] = (),
    cwd: str | None = None,
    user: str | None = None,
    timeout: float | None = None,
    max_output: int | None = None,
    stdout: Sink | None = None,
    stderr: Sink | None = None,
    service: str | None = "exec",
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    retries: int = 0,
    reserved_port: bool | str = "try",
) -> ExecResult:
    """The asyncio twin of :func:`exec`: same arguments, result and errors.

    *input* may also be an asynchronous iterable of bytes-like pieces (an async
    generator): each piece is awaited only when the one before it is sent, while the
    output arrives, so it may wait for what the command prints. A plain iterable's
    pieces are taken in the event loop's thread, so it must not block (a file's
    reads, a list)."""
    import asyncio

    start = make_start(
        args, env=env, unset=unset, cwd=cwd, user=user, timeout=timeout, max_output=max_output
    )
    achunks: AsyncGenerator[memoryview, None] | None = None
    chunks: Iterator[memoryview] = iter(())
    if isinstance(input, AsyncIterable):
        achunks = _stream_chunks_async(input)
    else:
        chunks = iter(_chunks(input))
    failed: list[BaseException] = []
    collector = _Collector(start.argv, stdout, stderr)
    proto = ep.ClientSession()
    start_frame = proto.start(start)
    reader, writer = await dial_async(
        address, timeout=connect_timeout, retries=retries, reserved_port=reserved_port
    )

    async def next_chunk() -> memoryview | None:
        if achunks is None:
            return _next_chunk(chunks, failed)
        try:
            return await anext(achunks)
        except StopAsyncIteration:
            return None
        except Exception as exc:  # the caller's iterable, not the connection
            failed.append(exc)
            return None

    async def feed() -> None:
        with contextlib.suppress(OSError):  # the session ended, or the connection broke
            while (chunk := await next_chunk()) is not None:
                writer.writelines([proto.stdin_head(len(chunk)), chunk])
                await writer.drain()
            if failed:  # the caller's iterable failed: end the session
                writer.transport.abort()
                return
            writer.write(proto.send(ep.StdinEof()))
            await writer.drain()

    feeder: asyncio.Task[None] | None = None
    try:
        if service:
            from ..._service.frames import read_frame

            try:
                writer.write(hello_frame(service))
                answer = await asyncio.wait_for(read_frame(reader, mux.MAX_HELLO), connect_timeout)
            except ConnectionError:
                answer = None
            if answer is None:
                raise _closed_at_hello()
            mux.decode_answer(answer)
        writer.write(start_frame)
        feeder = asyncio.create_task(feed())
        while True:
            try:
                data = await reader.read(proto.wanted())
            except ConnectionError:
                data = b""
            try:
                events = proto.receive(data)
            except HvsockError:
                if failed:
                    raise failed[0] from None
                raise
            for event in events:
                result = collector.handle(event)
                if result is not None:
                    return result
    finally:
        if feeder is not None:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await feeder
        try:
            if achunks is not None:
                await achunks.aclose()  # here, not by the loop's finalizer some time later
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
