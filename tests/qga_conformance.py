"""QGA conformance: the same requests to the real qemu-ga and to hvsock's QGA service,
answers compared field by field (shape always; values where they must agree).

Used by the host tier (both over Unix sockets) and the kernel tier (both over vsock CID 1).
Never sends guest-shutdown, guest-set-time or anything else that changes the machine.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from typing import Any

IO_TIMEOUT = 30.0


class QgaClient:
    """Line-delimited QGA over a connected socket; knows the 0xFF delimiter."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(IO_TIMEOUT)
        self.buf = bytearray()

    def send(self, request: dict[str, Any] | bytes) -> None:
        data = request if isinstance(request, bytes) else json.dumps(request).encode() + b"\n"
        self.sock.sendall(data)

    def answer(self) -> tuple[bool, Any]:
        """(delimited, parsed answer) of the next line."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise AssertionError(f"connection closed; had {bytes(self.buf)[:200]!r}")
            self.buf += chunk
        line, _, rest = bytes(self.buf).partition(b"\n")
        self.buf = bytearray(rest)
        delimited = line.startswith(b"\xff")
        return delimited, json.loads(line.lstrip(b"\xff"))

    def call(self, request: dict[str, Any] | bytes) -> Any:
        self.send(request)
        return self.answer()[1]

    def wait_exec(self, pid: int) -> Any:
        deadline = time.monotonic() + IO_TIMEOUT
        while True:
            status = self.call({"execute": "guest-exec-status", "arguments": {"pid": pid}})
            if "error" in status or status["return"]["exited"]:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"guest-exec pid {pid} did not exit")
            time.sleep(0.02)


#: (label, request, compare values exactly too)
SIMPLE: list[tuple[str, dict[str, Any] | bytes, bool]] = [
    ("ping", {"execute": "guest-ping"}, True),
    ("ping with id", {"execute": "guest-ping", "id": 5}, True),
    ("sync", {"execute": "guest-sync", "arguments": {"id": 42}}, True),
    ("unknown command", {"execute": "no-such-command"}, True),
    ("missing argument", {"execute": "guest-sync"}, True),
    ("wrong argument type", {"execute": "guest-sync", "arguments": {"id": "x"}}, True),
    ("unexpected argument", {"execute": "guest-ping", "arguments": {"x": 1}}, True),
    ("not JSON", b"garbage\n", True),
    ("not an object", b"[1]\n", True),
    ("unexpected member", b'{"foo": 1}\n', True),
    ("execute not a string", b'{"execute": 5}\n', True),
    ("arguments not an object", b'{"execute": "guest-ping", "arguments": []}\n', True),
    ("host name", {"execute": "guest-get-host-name"}, True),
    ("time", {"execute": "guest-get-time"}, False),
    ("os info", {"execute": "guest-get-osinfo"}, True),
    ("interfaces", {"execute": "guest-network-get-interfaces"}, False),
    (
        "open missing file",
        {"execute": "guest-file-open", "arguments": {"path": "/nonexistent/x"}},
        False,
    ),
    (
        "open bad mode",
        {"execute": "guest-file-open", "arguments": {"path": "/etc/hostname", "mode": "zz"}},
        True,
    ),
    ("read bad handle", {"execute": "guest-file-read", "arguments": {"handle": 99}}, True),
    ("status of no pid", {"execute": "guest-exec-status", "arguments": {"pid": 2**31 - 2}}, True),
    (
        "exec missing program",
        {"execute": "guest-exec", "arguments": {"path": "/nonexistent/prog"}},
        False,
    ),
    ("exec path with a NUL", {"execute": "guest-exec", "arguments": {"path": "/bin/t\0rue"}}, True),
    (
        "open path with a NUL",
        {"execute": "guest-file-open", "arguments": {"path": "/etc/host\0name"}},
        True,
    ),
    (
        "lone surrogate",
        b'{"execute": "guest-file-open", "arguments": {"path": "/x\\ud800"}}\n',
        True,
    ),
    (
        "arg not a string",
        {"execute": "guest-exec", "arguments": {"path": "/bin/true", "arg": ["a", 1]}},
        True,
    ),
]


def shape(value: Any) -> Any:
    """The type structure of a JSON value."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def _strip_stats(interfaces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in i.items() if k != "statistics"} for i in interfaces]


def run_session(client: QgaClient, tmpdir: str) -> dict[str, Any]:
    """Every case against one agent: label -> answer (or a tuple of answers)."""
    out: dict[str, Any] = {}
    for label, request, _ in SIMPLE:
        out[label] = client.call(request)
    # The delimited sync, alone and after a 0xFF (qemu-ga answers the 0xFF with an error).
    client.send({"execute": "guest-sync-delimited", "arguments": {"id": 43}})
    out["sync-delimited"] = client.answer()
    client.send(
        b"\xff"
        + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": 44}}).encode()
        + b"\n"
    )
    out["0xff then sync-delimited"] = (client.answer(), client.answer())
    client.send(b'{"execute": "guest-ping"}{"execute": "guest-ping"}')
    out["two requests, no newline"] = (client.answer(), client.answer())
    # guest-exec flows.
    flows = {
        "exec with output": {
            "path": "/bin/sh",
            "arg": ["-c", "echo out; echo err >&2; exit 3"],
            "capture-output": True,
        },
        "exec killed": {"path": "/bin/sh", "arg": ["-c", "kill -9 $$"], "capture-output": True},
        "exec with input": {
            "path": "cat",
            "input-data": base64.b64encode(b"hello").decode(),
            "capture-output": True,
        },
        "exec no capture": {"path": "true"},
        "exec env": {
            "path": "/bin/sh",
            "arg": ["-c", "echo $A"],
            "env": ["A=1", "PATH=/bin"],
            "capture-output": True,
        },
        "exec NUL in arg and env": {
            "path": "/bin/sh",
            "arg": ["-c", 'printf %s "$1$A"', "x", "a\0b"],
            "env": ["A=c\0d", "PATH=/bin:/usr/bin"],
            "capture-output": True,
        },
    }
    for label, args in flows.items():
        started = client.call({"execute": "guest-exec", "arguments": args})
        status = client.wait_exec(started["return"]["pid"])
        again = client.call(
            {"execute": "guest-exec-status", "arguments": {"pid": started["return"]["pid"]}}
        )
        out[label] = (shape(started), status, again)
    # File flows in tmpdir.
    path = f"{tmpdir}/qga-file.txt"
    w = client.call({"execute": "guest-file-open", "arguments": {"path": path, "mode": "w"}})
    h = w["return"]
    out["file open"] = shape(w)
    out["file write"] = client.call(
        {
            "execute": "guest-file-write",
            "arguments": {"handle": h, "buf-b64": base64.b64encode(b"hello world").decode()},
        }
    )
    out["file write bad base64"] = client.call(
        {"execute": "guest-file-write", "arguments": {"handle": h, "buf-b64": "!!!"}}
    )
    out["file flush"] = client.call({"execute": "guest-file-flush", "arguments": {"handle": h}})
    out["file close"] = client.call({"execute": "guest-file-close", "arguments": {"handle": h}})
    out["file close again"] = shape(
        client.call({"execute": "guest-file-close", "arguments": {"handle": h}})
    )
    r = client.call({"execute": "guest-file-open", "arguments": {"path": path}})["return"]
    out["file read 5"] = client.call(
        {"execute": "guest-file-read", "arguments": {"handle": r, "count": 5}}
    )
    out["file read rest"] = client.call({"execute": "guest-file-read", "arguments": {"handle": r}})
    out["file read at eof"] = client.call(
        {"execute": "guest-file-read", "arguments": {"handle": r}}
    )
    client.call({"execute": "guest-file-close", "arguments": {"handle": r}})
    out["info"] = client.call({"execute": "guest-info"})
    return out


def compare(theirs: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """Differences that matter, as readable lines (empty: conformant)."""
    problems: list[str] = []
    exact = {label for label, _, same in SIMPLE if same}

    def check(label: str, a: Any, b: Any, values: bool) -> None:
        if values and a != b:
            problems.append(f"{label}: qemu-ga {a!r:.300} != ours {b!r:.300}")
        elif not values and shape(a) != shape(b):
            problems.append(f"{label}: shape {shape(a)!r:.300} != {shape(b)!r:.300}")

    for label in theirs:
        a, b = theirs[label], ours[label]
        if label == "info":
            names = {c["name"]: c for c in a["return"]["supported_commands"]}
            for c in b["return"]["supported_commands"]:
                if c["name"] not in names:
                    problems.append(f"info: we list {c['name']}, which qemu-ga does not")
                elif c["success-response"] != names[c["name"]]["success-response"]:
                    problems.append(f"info: success-response of {c['name']} differs")
                elif set(c) != set(names[c["name"]]):
                    problems.append(f"info: entry keys of {c['name']} differ")
            check(
                "info version", shape(a["return"]["version"]), shape(b["return"]["version"]), True
            )
        elif label == "time":
            check(label, a, b, False)
            if abs(a["return"] - b["return"]) > 60e9:
                problems.append("time: the two clocks are a minute apart")
        elif label == "interfaces":
            check(label, _strip_stats(a["return"]), _strip_stats(b["return"]), True)
            for x, y in zip(a["return"], b["return"], strict=False):  # lengths checked above
                if set(x) != set(y) or (
                    "statistics" in x and set(x["statistics"]) != set(y["statistics"])
                ):
                    problems.append(f"interfaces: keys of {x.get('name')} differ")
        elif label in exact:
            # Error texts: the class must match, the description must be a string.
            if "error" in a and "error" in b:
                check(label, a["error"]["class"], b["error"]["class"], True)
                check(label + " desc", a["error"]["desc"], b["error"]["desc"], False)
            else:
                check(label, a, b, True)
        elif label in ("open missing file", "exec missing program"):
            check(label, a, b, False)
        else:
            check(label, _desc_free(a), _desc_free(b), True)
    return problems


def compare_interfaces(theirs: QgaClient, ours: QgaClient) -> list[str]:
    """guest-network-get-interfaces, whole: qemu-ga, ours, qemu-ga again.

    Everything must be equal but the counters, which may move between two questions on
    a live machine; ours must then lie between qemu-ga's before and after (a counter
    read from elsewhere, or another field's, would fall outside).
    """
    request = {"execute": "guest-network-get-interfaces"}
    before, mine, after = theirs.call(request), ours.call(request), theirs.call(request)
    problems: list[str] = []
    if _strip_stats(before["return"]) != _strip_stats(after["return"]):
        return ["interfaces: qemu-ga's own answers differ; the machine changed meanwhile"]
    if _strip_stats(before["return"]) != _strip_stats(mine["return"]):
        problems.append(f"interfaces: qemu-ga {before!r:.600} != ours {mine!r:.600}")
        return problems
    for a, b, c in zip(before["return"], mine["return"], after["return"], strict=True):
        if set(a.get("statistics", {})) != set(b.get("statistics", {})):
            problems.append(f"interfaces: statistics keys of {a['name']} differ")
            continue
        for key, low in a.get("statistics", {}).items():
            if not low <= b["statistics"][key] <= c["statistics"][key]:
                problems.append(
                    f"interfaces: {a['name']} {key} {b['statistics'][key]} is "
                    f"not within qemu-ga's {low}..{c['statistics'][key]}"
                )
    return problems


def _desc_free(value: Any) -> Any:
    """*value* with error descriptions replaced by their type (texts may differ)."""
    if isinstance(value, dict):
        return {k: ("str" if k == "desc" else _desc_free(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_desc_free(v) for v in value]
    return value
