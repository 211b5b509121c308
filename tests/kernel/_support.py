"""Helpers for the real-kernel tier: listeners, bounded reads, threads and child processes.

Every wait here has a deadline and every loop a count bound, so a kernel or CLI
bug shows up as a clear failure instead of a hung VM.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import hvsock
import hvsock.sockets

LOOPBACK_MODULE = "/sys/module/vsock_loopback"

# Socket options at level AF_VSOCK (include/uapi/linux/vm_sockets.h), read back
# here with raw getsockopt so the tests do not trust hvsock's own constants.
SOL_VSOCK = 40
SO_VM_SOCKETS_BUFFER_SIZE = 0
SO_VM_SOCKETS_BUFFER_MIN_SIZE = 1
SO_VM_SOCKETS_BUFFER_MAX_SIZE = 2
SO_VM_SOCKETS_CONNECT_TIMEOUT = 6  # struct timeval on 64-bit: two longs

#: The only CID this tier ever connects to.
CID_LOCAL = 1
CHUNK = 64 * 1024
IO_TIMEOUT = 60.0


def open_fds() -> dict[int, str]:
    """This process's open descriptors and what each points at.

    The listing's own descriptor is closed again by the time it is read, so it
    drops out here instead of showing up as a leak.
    """
    found: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return found


def target(port: int) -> str:
    """The address a client in this tier connects to: always CID 1 (loopback)."""
    return f"vsock://{CID_LOCAL}:{port}"


def vsock_socket() -> socket.socket:
    return socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)


def unused_port() -> int:
    """A port nobody listens on: the kernel picks it for a bind, and we let it go.

    The kernel hands out ``port any`` binds from a counter, so the next bind in
    this run does not get the same one back.
    """
    with vsock_socket() as sock:
        sock.bind((hvsock.sockets.CID_ANY, hvsock.sockets.PORT_ANY))
        port: int = sock.getsockname()[1]
    return port


def get_u64(sock: socket.socket, optname: int) -> int:
    """A 64-bit AF_VSOCK option (buffer sizes).

    CPython reads options of an AF_VSOCK socket only as 8-byte integers: with a
    buffer length it raises "getsockopt string buffer not allowed".
    """
    value: int = sock.getsockopt(SOL_VSOCK, optname)
    return value


_libc = ctypes.CDLL(None, use_errno=True)


def connect_timeout_of(sock: socket.socket) -> float:
    """The kernel's SO_VM_SOCKETS_CONNECT_TIMEOUT of *sock*, in seconds.

    A 16-byte struct timeval, which CPython's getsockopt cannot read on an AF_VSOCK
    socket (see :func:`get_u64`), so this asks libc directly.
    """
    buf = ctypes.create_string_buffer(16)
    size = ctypes.c_uint32(len(buf))
    if (
        _libc.getsockopt(
            sock.fileno(), SOL_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT, buf, ctypes.byref(size)
        )
        != 0
    ):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    assert size.value == 16, size.value
    seconds, micros = struct.unpack("qq", buf.raw)
    return float(seconds + micros / 1_000_000)


@dataclass
class Listening:
    sock: socket.socket
    port: int

    def accept(self, timeout: float = 30.0) -> socket.socket:
        """Accept one connection within *timeout*; the accepted socket is blocking."""
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        conn.settimeout(None)
        return conn


@contextlib.contextmanager
def listening(address: str = "vsock://any:any", **kwargs: Any) -> Iterator[Listening]:
    with hvsock.listen(address, **kwargs) as sock:
        yield Listening(sock, sock.getsockname()[1])


def recv_until_eof(sock: socket.socket, limit: int, timeout: float = IO_TIMEOUT) -> bytes:
    """Everything *sock* sends until EOF; fails past *limit* bytes or *timeout* seconds."""
    sock.settimeout(timeout)
    parts: list[bytes] = []
    total = 0
    deadline = time.monotonic() + timeout
    while total <= limit:
        if time.monotonic() > deadline:
            raise AssertionError(f"no EOF within {timeout} s ({total} bytes read)")
        data = sock.recv(CHUNK)
        if not data:
            return b"".join(parts)
        parts.append(data)
        total += len(data)
    raise AssertionError(f"peer sent more than {limit} bytes")


def hash_until_eof(sock: socket.socket, limit: int, timeout: float = IO_TIMEOUT) -> tuple[str, int]:
    """(sha256 hex, byte count) of everything *sock* sends until EOF, without keeping it."""
    sock.settimeout(timeout)
    digest = hashlib.sha256()
    total = 0
    buf = bytearray(CHUNK)
    deadline = time.monotonic() + timeout
    while total <= limit:
        if time.monotonic() > deadline:
            raise AssertionError(f"no EOF within {timeout} s ({total} bytes read)")
        n = sock.recv_into(buf)
        if n == 0:
            return digest.hexdigest(), total
        digest.update(memoryview(buf)[:n])
        total += n
    raise AssertionError(f"peer sent more than {limit} bytes")


def send_then_close_write(sock: socket.socket, data: bytes) -> None:
    """Send all of *data* (in 1 MiB pieces), then half-close."""
    view = memoryview(data)
    for offset in range(0, len(data), 1 << 20):
        sock.sendall(view[offset : offset + (1 << 20)])
    hvsock.close_write(sock)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(size: int, seed: int) -> bytes:
    """*size* reproducible bytes that differ per seed (so a mixed-up stream is caught)."""
    out = bytearray()
    block = 0
    while len(out) < size:
        out += hashlib.sha512(f"{seed}:{block}".encode()).digest() * 32
        block += 1
    return bytes(out[:size])


class Worker(threading.Thread):
    """A thread that keeps its result or exception for :meth:`finish` to hand back."""

    def __init__(self, func: Callable[..., Any], *args: Any, name: str | None = None) -> None:
        super().__init__(name=name or getattr(func, "__name__", "worker"), daemon=True)
        self._func = func
        self._args = args
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._func(*self._args)
        except BaseException as exc:  # handed to the test thread by finish()
            self.error = exc

    def finish(self, timeout: float) -> Any:
        self.join(timeout)
        if self.is_alive():
            raise AssertionError(f"thread {self.name} still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


def started(func: Callable[..., Any], *args: Any) -> Worker:
    worker = Worker(func, *args)
    worker.start()
    return worker


class Proc:
    """A child process whose stdout is collected and stderr read line by line, in threads.

    Used as a context manager: on exit a child still running is killed, and its
    pipes are closed, so no test leaves a process or a descriptor behind.
    """

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        # A session of its own, so a kill reaches the shell and `cat` that
        # `--exec` and socat's EXEC start, and the pipes reach EOF.
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        self._stdout: list[bytes] = []
        self._stderr: list[str] = []
        self._changed = threading.Condition()
        assert self.popen.stdout is not None
        assert self.popen.stderr is not None
        self._out_reader = started(self._read_stdout, self.popen.stdout.fileno())
        self._err_reader = started(self._read_stderr, self.popen.stderr.fileno())
        self._feeder: Worker | None = None
        #: Why writing stdin failed (e.g. the child exited without reading it all).
        self.feed_error: BaseException | None = None

    # -- stdin ---------------------------------------------------------------------
    def _write(self, data: bytes, close: bool) -> None:
        assert self.popen.stdin is not None
        fd = self.popen.stdin.fileno()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if close:
            self.popen.stdin.close()

    def feed(self, data: bytes, *, close: bool = True) -> None:
        """Write *data* to the child's stdin in a thread (then close it, by default)."""
        self.wait_fed(IO_TIMEOUT)
        self._feeder = started(self._write, data, close)

    def wait_fed(self, timeout: float) -> None:
        if self._feeder is not None:
            try:
                self._feeder.finish(timeout)
            except OSError as exc:
                self.feed_error = self.feed_error or exc
            self._feeder = None

    # -- stdout / stderr -------------------------------------------------------------
    def _read_stdout(self, fd: int) -> None:
        while True:  # ends at EOF: the child exits or closes its stdout
            data = os.read(fd, CHUNK)
            if not data:
                return
            with self._changed:
                self._stdout.append(data)

    def _read_stderr(self, fd: int) -> None:
        pending = b""
        while True:  # ends at EOF: the child exits or closes its stderr
            data = os.read(fd, 4096)
            if data:
                *lines, pending = (pending + data).split(b"\n")
            else:
                lines, pending = [pending], b""
            with self._changed:
                self._stderr.extend(line.decode(errors="replace") for line in lines if line)
                self._changed.notify_all()
            if not data:
                return

    @property
    def stderr(self) -> str:
        with self._changed:
            return "\n".join(self._stderr)

    def stdout_so_far(self) -> bytes:
        with self._changed:
            return b"".join(self._stdout)

    def wait_stdout_eof(self, timeout: float) -> bytes:
        """Wait until the child closes its stdout (it may keep running); return all of it."""
        self._out_reader.finish(timeout)
        return self.stdout_so_far()

    def wait_stderr(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """Wait for a stderr line matching *pattern*: readiness, without sleeping."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self._stderr:
                    match = regex.search(line)
                    if match:
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or (not self._err_reader.is_alive() and self.popen.poll() is not None):
                    raise AssertionError(
                        f"{self.argv} printed no line matching {pattern!r} "
                        f"within {timeout} s; stderr:\n" + "\n".join(self._stderr)
                    )
                self._changed.wait(min(left, 0.5))

    # -- exit -------------------------------------------------------------------------
    def wait(self, timeout: float) -> int:
        """Exit status of the child, after stdout and stderr reached EOF."""
        try:
            status = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.argv} still running after {timeout} s; stderr:\n" + self.stderr
            ) from None
        self._out_reader.finish(10)
        self._err_reader.finish(10)
        self.wait_fed(10)
        return status

    def wait_ok(self, timeout: float) -> None:
        """Wait for the child; it must exit 0 having read all its stdin."""
        status = self.wait(timeout)
        assert status == 0, f"{self.argv} exited {status}; stderr:\n{self.stderr}"
        assert self.feed_error is None, (
            f"{self.argv} did not read all its stdin ({self.feed_error!r}); stderr:\n{self.stderr}"
        )

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        self._out_reader.join(10)
        self._err_reader.join(10)
        if self._feeder is not None:
            self._feeder.join(10)
        for pipe in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
