"""A qemu-guest-agent compatible service: the commands automation sends most.

Ansible's libvirt_qemu connection, Proxmox and KubeVirt speak QGA. This service
answers them on any hvsock address (usually a vsock port), several clients at
once where qemu-ga serves one. Exec statuses and file handles belong to the
service, not the connection (as in qemu-ga), so a client that reconnects finds
them again. Commands can be allowed or blocked by name.

Unlike qemu-ga, which serves one client, this service bounds what clients can leave
behind: open file handles (:data:`MAX_FILES`, closed after :data:`FILE_IDLE` s unused),
guest-exec processes tracked (:data:`MAX_JOBS`; an exited one's status is kept
:data:`JOB_KEEP` s) and their captured output (:data:`OUTPUT_BUDGET` in all). File
operations run off the event loop, on descriptors opened non-blocking as qemu-ga opens
them, so a FIFO or a slow file system holds up no other client or service.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from .._core import qga
from .._core.qga import QgaError
from .._errors import ArgumentError
from .._service.connection import Connection
from .._service.declaration import Limits, Service
from . import sysinfo

__all__: list[str] = []

QGA_PORT = 5104
#: qemu-ga's cap on captured output per stream.
OUTPUT_CAP = 16 * 1024 * 1024
#: Captured output held at once over every guest-exec process; past it output is
#: dropped and reported truncated, as past :data:`OUTPUT_CAP`.
OUTPUT_BUDGET = 64 * 1024 * 1024
#: guest-exec processes tracked at once: running, or exited and not yet asked about.
MAX_JOBS = 64
#: Seconds an exited process's status and output wait for guest-exec-status.
JOB_KEEP = 600.0
#: guest-file-open handles open at once (each holds a descriptor of the agent's).
MAX_FILES = 64
#: Seconds a handle may go unused before the agent closes it.
FILE_IDLE = 600.0
#: Version reported by guest-info: the qemu-ga release whose answers we follow.
QGA_VERSION = "7.2.0-hvsock"
#: Largest count guest-file-read takes (qemu-ga's QGA_READ_COUNT_MAX).
READ_MAX = 48 * 1024 * 1024
_FIRST_HANDLE = 1000
# qemu-ga adds these to every mode: a FIFO or a terminal must not block or take over.
_OPEN_FLAGS = os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_MODES = {
    "r": os.O_RDONLY,
    "rb": os.O_RDONLY,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "r+": os.O_RDWR,
    "rb+": os.O_RDWR,
    "r+b": os.O_RDWR,
    "w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "wb+": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "w+b": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND,
    "ab+": os.O_RDWR | os.O_CREAT | os.O_APPEND,
    "a+b": os.O_RDWR | os.O_CREAT | os.O_APPEND,
}

ShutdownAction = Callable[[str], None]


def os_shutdown(mode: str) -> None:
    """Really power down, halt or reboot (what qemu-ga runs)."""
    flag = {"powerdown": "-P", "halt": "-H", "reboot": "-r"}[mode]
    subprocess.Popen(
        ["shutdown", flag, "+0", "hypervisor initiated shutdown"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _generic(desc: str) -> QgaError:
    return QgaError("GenericError", desc)


def _c_string(text: str) -> bytes:
    """*text* as qemu-ga hands it to the system.

    qemu's JSON parser keeps ``\\u0000`` as modified UTF-8 (C0 80), so qemu-ga's C
    strings go on past it: a path with a NUL is looked up with those bytes (and is not
    found), an argument or a variable is passed with them. So here, rather than a
    ValueError from the os module.
    """
    return text.encode("utf-8", "surrogatepass").replace(b"\0", b"\xc0\x80")


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _generic("Base64 data contains invalid characters") from None


@dataclass
class _Job:
    proc: asyncio.subprocess.Process
    capture: tuple[bool, bool]
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    truncated: list[bool] = field(default_factory=lambda: [False, False])
    done: asyncio.Task[None] | None = None
    exited_at: float | None = None


@dataclass
class _File:
    fd: int
    used: float


Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class QgaAgent:
    """The commands and their shared state; :meth:`handle` serves one connection."""

    def __init__(
        self,
        *,
        allow: Collection[str] | None = None,
        block: Collection[str] = (),
        shutdown: ShutdownAction = os_shutdown,
        max_files: int = MAX_FILES,
        file_idle: float = FILE_IDLE,
        max_jobs: int = MAX_JOBS,
        job_keep: float = JOB_KEEP,
        output_budget: int = OUTPUT_BUDGET,
        max_request: int = qga.MAX_REQUEST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._shutdown = shutdown
        self._jobs: dict[int, _Job] = {}
        self._files: dict[int, _File] = {}
        self._next_handle = _FIRST_HANDLE
        self.max_files, self.file_idle = max_files, file_idle
        self.max_jobs, self.job_keep = max_jobs, job_keep
        self.output_budget, self.max_request = output_budget, max_request
        self._clock = clock
        self._buffered = 0  # captured output bytes held by every job
        self.commands: dict[str, tuple[Handler, dict[str, tuple[str, bool]], bool]] = {
            "guest-sync-delimited": (self._sync, {"id": ("int", True)}, True),
            "guest-sync": (self._sync, {"id": ("int", True)}, True),
            "guest-ping": (self._ping, {}, True),
            "guest-info": (self._info, {}, True),
            "guest-get-osinfo": (self._osinfo, {}, True),
            "guest-get-host-name": (self._hostname, {}, True),
            "guest-get-time": (self._time, {}, True),
            "guest-network-get-interfaces": (self._interfaces, {}, True),
            "guest-exec": (
                self._exec,
                {
                    "path": ("str", True),
                    "arg": ("list", False),
                    "env": ("list", False),
                    "input-data": ("str", False),
                    "capture-output": ("any", False),
                },
                True,
            ),
            "guest-exec-status": (self._exec_status, {"pid": ("int", True)}, True),
            "guest-file-open": (
                self._file_open,
                {"path": ("str", True), "mode": ("str", False)},
                True,
            ),
            "guest-file-read": (
                self._file_read,
                {"handle": ("int", True), "count": ("int", False)},
                True,
            ),
            "guest-file-write": (
                self._file_write,
                {"handle": ("int", True), "buf-b64": ("str", True), "count": ("int", False)},
                True,
            ),
            "guest-file-flush": (self._file_flush, {"handle": ("int", True)}, True),
            "guest-file-close": (self._file_close, {"handle": ("int", True)}, True),
            "guest-shutdown": (self._do_shutdown, {"mode": ("str", False)}, False),
        }
        known = set(self.commands)
        for name in [*(allow or ()), *block]:
            if name not in known:
                raise ArgumentError(
                    f"QGA command {name!r:.60} is not one this agent "
                    f"answers; known: {', '.join(sorted(known))}"
                )
        self.enabled = {
            name for name in known if (allow is None or name in allow) and name not in block
        }

    # -- connection -----------------------------------------------------------------
    async def handle(self, conn: Connection) -> None:
        parser = qga.Parser(self.max_request)
        while True:
            data = await conn.reader.read(65536)  # no idle limit: QGA clients sit quietly
            if not data:
                return
            for item in parser.feed(data):
                if isinstance(item, qga.BadInput):
                    conn.writer.write(qga.format_error("GenericError", item.desc))
                else:
                    reply = await self.answer(item)
                    if reply:
                        conn.writer.write(reply)
            await conn.writer.drain()
            if parser.closed:
                # qemu-ga answers the same error and reads on; the rest of a request past
                # the cap is not worth reading, so the connection ends here.
                conn.log.warning(
                    "%s sent a QGA request over %d bytes; closing", conn.peer, self.max_request
                )
                return

    async def answer(self, command: qga.Command) -> bytes:
        """The bytes to send for *command* (empty for a command with no answer)."""
        rid = qga.answer_id(command)
        entry = self.commands.get(command.execute)
        if entry is None:
            return qga.format_error(
                "CommandNotFound", f"The command {command.execute} has not been found", rid
            )
        if command.execute not in self.enabled:
            return qga.format_error(
                "CommandNotFound",
                f"The command {command.execute} has been disabled for this instance",
                rid,
            )
        fn, schema, responds = entry
        self._expire()
        try:
            value = await fn(qga.check_arguments(command.arguments, schema))
        except QgaError as exc:
            return qga.format_error(exc.cls, exc.desc, rid)
        if not responds:
            return b""
        return qga.format_return(value, rid, delimited=command.execute == "guest-sync-delimited")

    def _expire(self) -> None:
        """Close handles unused for file_idle s; drop statuses unasked for job_keep s."""
        now = self._clock()
        for handle, entry in list(self._files.items()):
            if now - entry.used > self.file_idle:
                del self._files[handle]
                with contextlib.suppress(OSError):
                    os.close(entry.fd)
        for pid, job in list(self._jobs.items()):
            if job.exited_at is not None and now - job.exited_at > self.job_keep:
                self._forget(pid)

    def _forget(self, pid: int) -> _Job:
        job = self._jobs.pop(pid)
        self._buffered -= len(job.out) + len(job.err)
        return job

    async def close(self) -> None:
        for entry in self._files.values():
            with contextlib.suppress(OSError):
                os.close(entry.fd)
        self._files.clear()
        for job in self._jobs.values():
            if job.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    job.proc.kill()
            if job.done is not None:
                job.done.cancel()

    # -- commands -------------------------------------------------------------------
    async def _sync(self, args: dict[str, Any]) -> Any:
        return args["id"]

    async def _ping(self, args: dict[str, Any]) -> Any:
        return {}

    async def _info(self, args: dict[str, Any]) -> Any:
        return {
            "version": QGA_VERSION,
            "supported_commands": [
                {"enabled": name in self.enabled, "name": name, "success-response": entry[2]}
                for name, entry in self.commands.items()
            ],
        }

    async def _osinfo(self, args: dict[str, Any]) -> Any:
        return sysinfo.os_info()

    async def _hostname(self, args: dict[str, Any]) -> Any:
        return {"host-name": socket.gethostname()}

    async def _time(self, args: dict[str, Any]) -> Any:
        return time.time_ns()

    async def _interfaces(self, args: dict[str, Any]) -> Any:
        return sysinfo.network_interfaces()

    async def _exec(self, args: dict[str, Any]) -> Any:
        argv = [args["path"], *args.get("arg", [])]
        env_list = args.get("env")
        for name, values in (("arg", args.get("arg", [])), ("env", env_list or [])):
            for i, value in enumerate(values):
                if not isinstance(value, str):
                    raise _generic(f"Invalid parameter type for '{name}[{i}]', expected: string")
        if len(self._jobs) >= self.max_jobs:
            raise _generic(
                "Guest agent command failed, error was 'too many guest-exec processes: "
                f"this agent tracks {self.max_jobs} at once, running or exited with a "
                "status not yet collected; call guest-exec-status for the exited ones "
                f"(or wait: statuses nobody asks for go after {self.job_keep:g} s)'"
            )
        cargv = [_c_string(a) for a in argv]
        env = (
            None if env_list is None else dict(_c_string(e).partition(b"=")[::2] for e in env_list)
        )
        capture = args.get("capture-output", False)
        modes = {
            False: (False, False),
            True: (True, True),
            "none": (False, False),
            "stdout": (True, False),
            "stderr": (False, True),
            "separated": (True, True),
            "merged": (True, True),
        }
        if capture not in modes or (isinstance(capture, int) and not isinstance(capture, bool)):
            raise _generic("Invalid parameter type for 'capture-output', expected: boolean")
        data = _b64decode(args["input-data"]) if "input-data" in args else None
        search = (
            os.environ.get("PATH", os.defpath)
            if env is None
            else os.fsdecode(env.get(b"PATH", os.defpath.encode()))
        )
        program = shutil.which(cargv[0], path=search) if b"/" not in cargv[0] else cargv[0]
        try:
            proc = await asyncio.create_subprocess_exec(
                program or cargv[0],
                *cargv[1:],
                env=env,
                stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE if modes[capture][0] else subprocess.DEVNULL,
                stderr=(
                    subprocess.STDOUT
                    if capture == "merged"
                    else subprocess.PIPE
                    if modes[capture][1]
                    else subprocess.DEVNULL
                ),
            )
        except OSError as exc:
            raise _generic(
                f"Guest agent command failed, error was 'Failed to execute child "
                f"process \u201c{argv[0]}\u201d ({exc.strerror})'"
            ) from None
        job = _Job(proc, modes[capture])
        self._jobs[proc.pid] = job
        job.done = asyncio.create_task(self._collect(job, data))
        return {"pid": proc.pid}

    async def _collect(self, job: _Job, data: bytes | None) -> None:
        proc = job.proc

        async def feed() -> None:
            assert proc.stdin is not None
            with contextlib.suppress(OSError):
                proc.stdin.write(data or b"")
                await proc.stdin.drain()
            proc.stdin.close()

        async def drain(stream: asyncio.StreamReader | None, buf: bytearray, i: int) -> None:
            while stream is not None:
                chunk = await stream.read(65536)
                if not chunk:
                    return
                # Past the room, read on and drop (the process must not block on a full
                # pipe), as qemu-ga does past its per-stream cap.
                room = max(min(OUTPUT_CAP - len(buf), self.output_budget - self._buffered), 0)
                if len(chunk) > room:
                    job.truncated[i] = True
                    chunk = chunk[:room]
                buf += chunk
                self._buffered += len(chunk)

        parts = [drain(proc.stdout, job.out, 0), drain(proc.stderr, job.err, 1)]
        if data is not None:
            parts.append(feed())
        await asyncio.gather(*parts)
        await proc.wait()
        job.exited_at = self._clock()

    async def _exec_status(self, args: dict[str, Any]) -> Any:
        job = self._jobs.get(args["pid"])
        if job is None:
            raise _generic("Invalid parameter 'pid'")
        if job.done is None or not job.done.done():
            return {"exited": False}
        self._forget(args["pid"])
        code = job.proc.returncode
        assert code is not None
        out: dict[str, Any] = {"exited": True}
        if code < 0:
            out["signal"] = -code
        else:
            out["exitcode"] = code
        for name, buf, i in (("out", job.out, 0), ("err", job.err, 1)):
            # A stream whose every byte was dropped (the budget spent) still says so.
            if job.capture[i] and (buf or job.truncated[i]):
                out[f"{name}-data"] = base64.b64encode(bytes(buf)).decode()
                out[f"{name}-truncated"] = job.truncated[i]
        return out

    def _fd(self, handle: int) -> int:
        entry = self._files.get(handle)
        if entry is None:
            raise _generic(f"handle '{handle}' has not been found")
        entry.used = self._clock()
        return entry.fd

    async def _file_open(self, args: dict[str, Any]) -> Any:
        path, mode = args["path"], args.get("mode", "r")
        if mode not in _MODES:
            raise _generic(f"invalid file open mode '{mode}'")
        if len(self._files) >= self.max_files:
            # qemu-ga's words when it runs out of descriptors, and what to do.
            raise _generic(
                f"failed to open file '{path}' (mode: '{mode}'): Too many open files (this "
                f"agent keeps {self.max_files} handles open at once: close some with "
                f"guest-file-close; unused ones close after {self.file_idle:g} s)"
            )
        # Off the loop: an open can wait on a slow or hung file system (O_NONBLOCK makes
        # a FIFO's open return at once, as in qemu-ga, and keeps its reads from waiting).
        try:
            fd = await asyncio.to_thread(
                os.open, _c_string(path), _MODES[mode] | _OPEN_FLAGS, 0o666
            )
        except OSError as exc:
            raise _generic(
                f"failed to open file '{path}' (mode: '{mode}'): {exc.strerror}"
            ) from None
        handle = self._next_handle
        self._next_handle += 1
        self._files[handle] = _File(fd, self._clock())
        return handle

    async def _file_read(self, args: dict[str, Any]) -> Any:
        fd = self._fd(args["handle"])
        count = args.get("count", 4096)
        if not 0 <= count <= READ_MAX:
            raise _generic(f"value '{count}' is invalid for argument count")
        try:
            data = await asyncio.to_thread(os.read, fd, count) if count else b""
        except OSError as exc:
            raise _generic(f"failed to read file: {exc.strerror}") from None
        return {
            "count": len(data),
            "buf-b64": base64.b64encode(data).decode(),
            "eof": len(data) < count or count == 0,
        }

    async def _file_write(self, args: dict[str, Any]) -> Any:
        fd = self._fd(args["handle"])
        data = _b64decode(args["buf-b64"])
        count = args.get("count", len(data))
        if not 0 <= count <= len(data):
            raise _generic(f"value '{count}' is invalid for argument count")
        try:
            written = await asyncio.to_thread(os.write, fd, data[:count])
        except OSError as exc:
            raise _generic(f"failed to write to file: {exc.strerror}") from None
        return {"count": written, "eof": False}

    async def _file_flush(self, args: dict[str, Any]) -> Any:
        fd = self._fd(args["handle"])
        with contextlib.suppress(OSError):
            await asyncio.to_thread(os.fsync, fd)
        return {}

    async def _file_close(self, args: dict[str, Any]) -> Any:
        fd = self._fd(args["handle"])
        del self._files[args["handle"]]
        with contextlib.suppress(OSError):  # the descriptor is gone either way
            await asyncio.to_thread(os.close, fd)
        return {}

    async def _do_shutdown(self, args: dict[str, Any]) -> Any:
        mode = args.get("mode", "powerdown")
        if mode not in ("powerdown", "halt", "reboot"):
            raise _generic("Invalid parameter 'mode'")
        self._shutdown(mode)
        return None


def qga_service(
    *,
    port: int = QGA_PORT,
    allow: Any = None,
    commands: Collection[str] | None = None,
    block: Collection[str] = (),
    shutdown: ShutdownAction = os_shutdown,
    limits: Limits | None = None,
    **bounds: Any,
) -> Service:
    """The QGA-compatible service. *commands* (default: all) minus *block* are answered;
    *shutdown* is what guest-shutdown calls (inject a recorder in tests); *bounds* are
    :class:`QgaAgent`'s caps (``max_files``, ``file_idle``, ``max_jobs``, ``job_keep``,
    ``output_budget``, ``max_request``).
    Raises :class:`hvsock.ArgumentError` for a command name it does not know."""
    agent = QgaAgent(allow=commands, block=block, shutdown=shutdown, **bounds)
    return Service(
        "hvsock qga", port, agent.handle, allow=allow, limits=limits or Limits(idle_timeout=None)
    )
