"""The remote-exec protocol: multiplexed frames on one connection, sans I/O.

Every message is one hvsock frame (4-byte big-endian length, body). The body's
first byte says what it carries; data frames carry raw bytes after it, control
frames a small JSON object::

    client -> agent                          agent -> client
    0x01 START  {argv, env, unset, cwd,      0x10 STARTED {pid}
                 user, tty, timeout,         0x11 STDOUT  bytes
                 max_output}                 0x12 STDERR  bytes
    0x02 STDIN  bytes                        0x13 EXIT    {code | signal, timed_out,
    0x03 STDIN_EOF                                         truncated}
    0x04 RESIZE >HH rows, cols               0x14 ERROR   {code, message}
    0x05 SIGNAL >B signal number

A session is: START, then any of STDIN / STDIN_EOF / RESIZE / SIGNAL from the
client while the agent streams STARTED, STDOUT / STDERR as produced, and ends
with exactly one EXIT or ERROR. The client never half-closes the socket: the
agent reads EOF as "the client vanished" and kills the command's process group.

(Kubernetes exec uses one channel byte the same way; Docker attach an 8-byte
header. One byte inside hvsock's existing frames keeps both the length check
before buffering and the incremental decoder.)
"""

from __future__ import annotations

import json
import struct
from typing import Any

from .._errors import PeerClosedError, ProtocolError
from . import framing
from .framing import HEADER_SIZE, encode_frame, frame_length
from .values import Value, set_fields

__all__: list[str] = []  # internal: the public names live in hvsock.__init__

START = 0x01
STDIN = 0x02
STDIN_EOF = 0x03
RESIZE = 0x04
SIGNAL = 0x05
STARTED = 0x10
STDOUT = 0x11
STDERR = 0x12
EXIT = 0x13
ERROR = 0x14

#: Largest data chunk either side puts in one frame.
CHUNK = 256 * 1024
#: Largest frame the protocol uses (a START with a big environment included).
MAX_FRAME = 1024 * 1024
#: Largest value a signal number can take on the wire (Linux has 1..64).
MAX_SIGNAL = 64

_RESIZE = struct.Struct(">HH")
#: A frame's header and the exec kind byte after it: what precedes a data frame's bytes.
HEAD = struct.Struct(">IB")


def data_head(kind: int, size: int) -> bytes:
    """The 5 bytes before *size* bytes of STDIN/STDOUT/STDERR data in a frame.

    Sending them and the data as two buffers (``sendmsg``/``writev``) spares the
    copy :func:`frame` makes; :class:`ProtocolError` for a chunk over :data:`CHUNK`
    or a kind that is not a data kind.
    """
    if kind not in (STDIN, STDOUT, STDERR):
        raise ProtocolError(f"0x{kind:02x} is not a data frame kind")
    if not 0 <= size <= CHUNK:
        raise ProtocolError(f"a data frame carries 0..{CHUNK} bytes, not {size}")
    return HEAD.pack(size + 1, kind)


def parse_head(head: bytes) -> tuple[int, int]:
    """``(kind, size of the rest)`` from a frame's first :data:`HEAD` ``.size`` bytes.

    For readers that take the kind byte with the header and the rest in one piece.
    Raises :class:`FrameTooLargeError` for a length over :data:`MAX_FRAME` and
    :class:`ProtocolError` for an empty frame or a header of the wrong size.
    """
    if len(head) != HEAD.size:
        raise ProtocolError(f"a frame head is {HEAD.size} bytes, not {len(head)}")
    length = frame_length(bytes(head[:HEADER_SIZE]), MAX_FRAME)
    if length == 0:
        raise ProtocolError("empty exec frame")
    return head[HEADER_SIZE], length - 1


# The events are Values (values.py), not frozen dataclasses: a task's Ansible worker
# imports this module afresh for its one command, and generating eleven dataclasses cost
# it more than the rest of the import.


class Tty(Value):
    """A PTY request: the caller's terminal size and TERM."""

    rows: int
    cols: int
    term: str
    _fields = __match_args__ = ("rows", "cols", "term")

    def __init__(self, rows: int = 24, cols: int = 80, term: str = "xterm") -> None:
        set_fields(self, rows=rows, cols=cols, term=term)


class Start(Value):
    """What to run and how. ``env`` is applied after ``unset``; ``None`` means "no limit"."""

    argv: tuple[str, ...]
    env: dict[str, str]
    unset: tuple[str, ...]
    cwd: str | None
    user: str | None
    tty: Tty | None
    timeout: float | None
    max_output: int | None
    _fields = __match_args__ = (
        "argv",
        "env",
        "unset",
        "cwd",
        "user",
        "tty",
        "timeout",
        "max_output",
    )

    def __init__(
        self,
        argv: tuple[str, ...],
        env: dict[str, str] | None = None,
        unset: tuple[str, ...] = (),
        cwd: str | None = None,
        user: str | None = None,
        tty: Tty | None = None,
        timeout: float | None = None,
        max_output: int | None = None,
    ) -> None:
        set_fields(
            self,
            argv=argv,
            env={} if env is None else env,
            unset=unset,
            cwd=cwd,
            user=user,
            tty=tty,
            timeout=timeout,
            max_output=max_output,
        )


class Stdin(Value):
    data: bytes
    _fields = __match_args__ = ("data",)

    def __init__(self, data: bytes) -> None:
        set_fields(self, data=data)


class StdinEof(Value):
    _fields = __match_args__ = ()


class Resize(Value):
    rows: int
    cols: int
    _fields = __match_args__ = ("rows", "cols")

    def __init__(self, rows: int, cols: int) -> None:
        set_fields(self, rows=rows, cols=cols)


class Signal(Value):
    signo: int
    _fields = __match_args__ = ("signo",)

    def __init__(self, signo: int) -> None:
        set_fields(self, signo=signo)


class Started(Value):
    pid: int
    _fields = __match_args__ = ("pid",)

    def __init__(self, pid: int) -> None:
        set_fields(self, pid=pid)


class Output(Value):
    """Bytes the command wrote: ``fd`` is 1 (stdout) or 2 (stderr)."""

    fd: int
    data: bytes
    _fields = __match_args__ = ("fd", "data")

    def __init__(self, fd: int, data: bytes) -> None:
        set_fields(self, fd=fd, data=data)


class Exit(Value):
    """How the command ended: a ``code`` or a ``signal`` (exactly one is set)."""

    code: int | None
    signal: int | None
    timed_out: bool
    truncated: bool
    _fields = __match_args__ = ("code", "signal", "timed_out", "truncated")

    def __init__(
        self,
        code: int | None = None,
        signal: int | None = None,
        timed_out: bool = False,
        truncated: bool = False,
    ) -> None:
        set_fields(self, code=code, signal=signal, timed_out=timed_out, truncated=truncated)

    @property
    def status(self) -> int:
        """The shell's view: the code, or 128 + the signal number (like ssh)."""
        return self.code if self.code is not None else 128 + (self.signal or 0)


class Error(Value):
    """The agent could not run the command (``code`` e.g. ``not_found``)."""

    code: str
    message: str
    _fields = __match_args__ = ("code", "message")

    def __init__(self, code: str, message: str) -> None:
        set_fields(self, code=code, message=message)


Event = Start | Stdin | StdinEof | Resize | Signal | Started | Output | Exit | Error


def _json(kind: int, obj: dict[str, Any]) -> bytes:
    return bytes([kind]) + json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a string, not {type(value).__name__}")
    if "\0" in value:
        raise ProtocolError(f"{what} contains a NUL byte")
    return value


def _check_int(value: object, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ProtocolError(f"{what} must be a whole number in {lo}..{hi}, not {value!r:.40}")
    return value


def _check_seconds(value: object, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < 10**9):
        raise ProtocolError(f"{what} must be a positive number of seconds, not {value!r:.40}")
    return float(value)


def check_start(start: Start) -> Start:
    """*start*, validated the same way on both sides; raises :class:`ProtocolError`."""
    if not start.argv:
        raise ProtocolError("a command needs at least a program name")
    for arg in start.argv:
        _check_text(arg, "a command argument")
    if not start.argv[0]:
        raise ProtocolError("the program name is empty")
    for key, value in start.env.items():
        _check_text(key, "an environment name")
        _check_text(value, f"the value of {key}")
        if not key or "=" in key:
            raise ProtocolError(f"environment name {key!r:.40} is empty or has '='")
    for key in start.unset:
        _check_text(key, "an environment name to unset")
    if start.cwd is not None:
        _check_text(start.cwd, "the working directory")
    if start.user is not None and not _check_text(start.user, "the user"):
        raise ProtocolError("the user name is empty")
    if start.tty is not None:
        _check_int(start.tty.rows, "tty rows", 0, 0xFFFF)
        _check_int(start.tty.cols, "tty cols", 0, 0xFFFF)
        _check_text(start.tty.term, "TERM")
    _check_seconds(start.timeout, "timeout")
    if start.max_output is not None:
        _check_int(start.max_output, "max_output", 1, 2**62)
    return start


def encode(event: Event) -> bytes:
    """The frame body for *event*; :class:`ProtocolError` for values the wire cannot carry."""
    if isinstance(event, Start):
        check_start(event)
        obj: dict[str, Any] = {"argv": list(event.argv)}
        if event.env:
            obj["env"] = dict(event.env)
        if event.unset:
            obj["unset"] = list(event.unset)
        for key in ("cwd", "user", "timeout", "max_output"):
            if getattr(event, key) is not None:
                obj[key] = getattr(event, key)
        if event.tty is not None:
            obj["tty"] = {"rows": event.tty.rows, "cols": event.tty.cols, "term": event.tty.term}
        return _json(START, obj)
    if isinstance(event, Stdin):
        return bytes([STDIN]) + event.data
    if isinstance(event, StdinEof):
        return bytes([STDIN_EOF])
    if isinstance(event, Resize):
        _check_int(event.rows, "rows", 0, 0xFFFF)
        _check_int(event.cols, "cols", 0, 0xFFFF)
        return bytes([RESIZE]) + _RESIZE.pack(event.rows, event.cols)
    if isinstance(event, Signal):
        return bytes([SIGNAL, _check_int(event.signo, "signal", 1, MAX_SIGNAL)])
    if isinstance(event, Started):
        return _json(STARTED, {"pid": _check_int(event.pid, "pid", 0, 2**31)})
    if isinstance(event, Output):
        if event.fd not in (1, 2):
            raise ProtocolError(f"output goes to fd 1 or 2, not {event.fd!r}")
        return bytes([STDOUT if event.fd == 1 else STDERR]) + event.data
    if isinstance(event, Exit):
        if (event.code is None) == (event.signal is None):
            raise ProtocolError("an exit has exactly one of a code and a signal")
        obj = {"timed_out": bool(event.timed_out), "truncated": bool(event.truncated)}
        if event.code is not None:
            obj["code"] = _check_int(event.code, "exit code", 0, 255)
        else:
            obj["signal"] = _check_int(event.signal, "signal", 1, MAX_SIGNAL)
        return _json(EXIT, obj)
    if isinstance(event, Error):
        _check_text(event.code, "error code")
        _check_text(event.message, "error message")
        return _json(ERROR, {"code": event.code, "message": event.message})
    raise ProtocolError(f"not an exec event: {type(event).__name__}")


def frame(event: Event) -> bytes:
    """*event* as a complete frame, ready to send."""
    return encode_frame(encode(event), MAX_FRAME)


def _load(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"exec control frame is not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("exec control frame must hold a JSON object")
    return obj


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _flag(obj: dict[str, Any], key: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError(f"{key} must be true or false")
    return value


def _decode_start(obj: dict[str, Any]) -> Start:
    argv = obj.get("argv")
    if not isinstance(argv, list):
        raise ProtocolError("START needs argv, a list of strings")
    env = obj.get("env", {})
    if not isinstance(env, dict):
        raise ProtocolError("env must be an object of strings")
    unset = obj.get("unset", [])
    if not isinstance(unset, list):
        raise ProtocolError("unset must be a list of names")
    tty_obj = obj.get("tty")
    tty = None
    if tty_obj is not None:
        if not isinstance(tty_obj, dict):
            raise ProtocolError("tty must be an object {rows, cols, term}")
        tty = Tty(tty_obj.get("rows", 24), tty_obj.get("cols", 80), tty_obj.get("term", "xterm"))
    max_output = obj.get("max_output")
    return check_start(
        Start(
            tuple(argv),
            dict(env),
            tuple(unset),
            obj.get("cwd"),
            obj.get("user"),
            tty,
            _check_seconds(obj.get("timeout"), "timeout"),
            max_output,
        )
    )


def decode(body: bytes) -> Event:
    """The event in a frame body; any malformed body raises only :class:`ProtocolError`."""
    if not body:
        raise ProtocolError("empty exec frame")
    return decode_kind(body[0], bytes(body[1:]))


def decode_kind(kind: int, rest: bytes) -> Event:
    """:func:`decode` for a body already split into its kind byte and the rest.

    Data frames keep *rest* as it is (no copy). Raises only :class:`ProtocolError`.
    """
    if kind == STDIN:
        return Stdin(rest)
    if kind == STDOUT:
        return Output(1, rest)
    if kind == STDERR:
        return Output(2, rest)
    if kind == STDIN_EOF:
        if rest:
            raise ProtocolError("STDIN_EOF carries no body")
        return StdinEof()
    if kind == RESIZE:
        if len(rest) != _RESIZE.size:
            raise ProtocolError("RESIZE carries 4 bytes: rows, cols")
        return Resize(*_RESIZE.unpack(rest))
    if kind == SIGNAL:
        if len(rest) != 1:
            raise ProtocolError("SIGNAL carries 1 byte")
        return Signal(_check_int(rest[0], "signal", 1, MAX_SIGNAL))
    if kind == START:
        return _decode_start(_load(rest))
    if kind == STARTED:
        return Started(_check_int(_load(rest).get("pid"), "pid", 0, 2**31))
    if kind == EXIT:
        obj = _load(rest)
        code, sig = obj.get("code"), obj.get("signal")
        if (code is None) == (sig is None):
            raise ProtocolError("EXIT needs exactly one of code and signal")
        return Exit(
            None if code is None else _check_int(code, "exit code", 0, 255),
            None if sig is None else _check_int(sig, "signal", 1, MAX_SIGNAL),
            _flag(obj, "timed_out"),
            _flag(obj, "truncated"),
        )
    if kind == ERROR:
        obj = _load(rest)
        return Error(
            _check_text(obj.get("code"), "error code"),
            _check_text(obj.get("message"), "error message"),
        )
    raise ProtocolError(f"unknown exec frame kind 0x{kind:02x}")


# -- the client's side of a session, sans I/O --------------------------------------

#: States of a :class:`ClientSession`, in the order a session goes through them.
IDLE = "idle"  # nothing sent yet
STARTING = "starting"  # START sent; the agent has not answered STARTED yet
RUNNING = "running"  # STARTED received; output may flow
DONE = "done"  # EXIT or ERROR received: the session is over
BROKEN = "broken"  # the agent broke the protocol (or closed early); close the connection


class FrameReader(framing.FrameReader):
    """Exec's frames: tagged with their kind byte, at most :data:`MAX_FRAME`.

    The one frame reader (:class:`hvsock._core.framing.FrameReader`), set up for exec:
    ``feed`` gives ``(kind, rest)``, and a driver that reads exactly :meth:`wanted`
    bytes gets a data frame's bytes as the very object its read returned.
    """

    __slots__ = ()
    EMPTY = "empty exec frame: every exec frame starts with its kind byte"

    def __init__(self) -> None:
        super().__init__(MAX_FRAME, tagged=True)


_AGENT_KINDS = frozenset({STARTED, STDOUT, STDERR, EXIT, ERROR})


class ClientSession:
    """The client's half of one exec session as a state machine, h11-style.

    Bytes from the agent go in through :meth:`receive` and come out as events;
    the client's events go in through :meth:`start` / :meth:`send` (and
    :meth:`stdin_head` for data sent as two buffers) and come out as bytes to send.
    Every step out of order raises :class:`ProtocolError`: from the agent (output or
    EXIT before STARTED, anything after EXIT/ERROR, an event only clients send, EOF
    before the command's end) it also leaves the session :data:`BROKEN`; from the
    caller (STDIN after STDIN_EOF, a second START, sending after the end) it sends
    nothing and changes nothing. No I/O happens here; the blocking, asyncio and CLI
    clients are drivers around one of these.
    """

    def __init__(self) -> None:
        self.state = IDLE
        self.stdin_open = True
        self.pid: int | None = None
        #: The EXIT or ERROR that ended the session, once it ended.
        self.outcome: Exit | Error | None = None
        self._reader = FrameReader()

    # -- what the client sends ---------------------------------------------------

    def start(self, start: Start) -> bytes:
        """The START frame for *start* (checked): the first thing a session sends."""
        if self.state != IDLE:
            raise ProtocolError(f"START is sent once, first (the session is {self.state})")
        data = frame(start)
        self.state = STARTING
        return data

    def _check_send(self, what: str) -> None:
        if self.state not in (STARTING, RUNNING):
            raise ProtocolError(f"cannot send {what} when the session is {self.state}")

    def send(self, event: Event) -> bytes:
        """The frame for *event*: :class:`Stdin`, :class:`StdinEof`, :class:`Resize`
        or :class:`Signal`, once START went and until the session ends."""
        if isinstance(event, Start):
            return self.start(event)
        if not isinstance(event, (Stdin, StdinEof, Resize, Signal)):
            raise ProtocolError(f"a client does not send {type(event).__name__}")
        self._check_send(type(event).__name__)
        if isinstance(event, (Stdin, StdinEof)):
            if not self.stdin_open:
                raise ProtocolError("stdin was already closed (STDIN_EOF sent)")
            if isinstance(event, StdinEof):
                self.stdin_open = False
            elif len(event.data) > CHUNK:
                raise ProtocolError(f"a data frame carries 0..{CHUNK} bytes, not {len(event.data)}")
        return frame(event)

    def stdin_head(self, size: int) -> bytes:
        """The head of a STDIN frame of *size* bytes, to send followed by the bytes
        themselves (``sendmsg``/``writev`` of both: no joined copy)."""
        self._check_send("STDIN")
        if not self.stdin_open:
            raise ProtocolError("stdin was already closed (STDIN_EOF sent)")
        return data_head(STDIN, size)

    # -- what the agent sends ----------------------------------------------------

    def wanted(self) -> int:
        """How many bytes to read next for a whole head or body (see :class:`FrameReader`)."""
        return self._reader.wanted()

    def receive(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """The events completed by *data* from the agent; ``b""`` means the agent
        closed the connection, which is legal only after EXIT/ERROR."""
        if self.state == BROKEN:
            raise ProtocolError("the session already broke; close the connection")
        if not data:
            if self.state == DONE:
                return []
            what = (
                "before the command's exit was reported"
                if self._reader.at_boundary()
                else "in the middle of a frame"
            )
            raise self._broken(
                f"the agent closed the connection {what} (agent stopped or "
                "restarted, or this peer is not in its allowlist: see its log)"
            )
        try:
            frames = self._reader.feed(data)
            if self._reader.broken:
                self._reader.feed(b"")  # the bad header's error, now: the session ends there
            return [self._event(kind, rest) for kind, rest in frames]
        except ProtocolError:
            self.state = BROKEN
            raise

    def _event(self, kind: int, rest: bytes) -> Event:
        if self.state == IDLE:
            raise ProtocolError("the agent spoke before START was sent")
        if self.state == DONE:
            raise ProtocolError("the agent sent more after the command's EXIT/ERROR")
        if kind not in _AGENT_KINDS:
            raise ProtocolError(
                f"the agent sent frame kind 0x{kind:02x}, which only clients send"
                if kind in (START, STDIN, STDIN_EOF, RESIZE, SIGNAL)
                else f"unknown exec frame kind 0x{kind:02x}"
            )
        event = decode_kind(kind, rest)
        if isinstance(event, Started):
            if self.state != STARTING:
                raise ProtocolError("the agent sent STARTED twice")
            self.state, self.pid = RUNNING, event.pid
        elif isinstance(event, Output):
            if self.state != RUNNING:
                raise ProtocolError("the agent sent output before STARTED")
        elif isinstance(event, Exit):
            if self.state != RUNNING:
                raise ProtocolError("the agent sent EXIT before STARTED")
            self.state, self.outcome = DONE, event
        elif isinstance(event, Error):  # legal before STARTED: the command never ran
            self.state, self.outcome = DONE, event
        return event

    def _broken(self, message: str) -> PeerClosedError:
        self.state = BROKEN
        return PeerClosedError(message)
