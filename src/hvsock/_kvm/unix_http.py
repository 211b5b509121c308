"""``GET`` over HTTP/1.1 on a Unix socket: how Firecracker and Cloud Hypervisor answer.

Small on purpose: one request per connection, a deadline for the whole exchange (a
peer that trickles bytes cannot hold the caller), and a cap on the answer's size.
"""

from __future__ import annotations

import socket
import time

from .._errors import HvsockError
from .._validate import quote

#: Seconds one whole request may take; a VMM's API answers in milliseconds.
TIMEOUT = 3.0
#: The largest answer read: a VM's configuration is a few kilobytes.
MAX_RESPONSE = 1 << 20


def get(
    socket_path: str, target: str, *, timeout: float = TIMEOUT, limit: int = MAX_RESPONSE
) -> bytes:
    """The body of ``GET target`` from the HTTP server on Unix socket *socket_path*.

    Raises :class:`HvsockError` saying what went wrong: no such socket, nobody
    accepting, permission, a status other than 200, a stall past *timeout*, an
    answer over *limit* bytes or not HTTP.
    """
    where = f"{socket_path} (GET {target})"
    deadline = time.monotonic() + timeout
    request = (
        f"GET {target} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(request)
        return _read_response(sock, deadline, limit, where)
    except TimeoutError:
        raise HvsockError(f"{where}: no complete answer within {timeout:g} s") from None
    except FileNotFoundError:
        raise HvsockError(
            f"{where}: no such socket (the VMM is gone, or runs in another mount namespace)"
        ) from None
    except ConnectionRefusedError:
        raise HvsockError(f"{where}: nobody accepts on it (a stale socket)") from None
    except PermissionError:
        raise HvsockError(f"{where}: permission denied; run as the VMM's user or root") from None
    except OSError as exc:
        raise HvsockError(f"{where}: {exc.strerror or exc}") from None
    finally:
        sock.close()


def _read_response(sock: socket.socket, deadline: float, limit: int, where: str) -> bytes:
    data = b""
    head_end = -1
    length: int | None = None
    while True:
        if head_end < 0:
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                length = _check_head(data[:head_end], where)
                if length is not None and length > limit:
                    raise HvsockError(
                        f"{where}: the answer is {length} bytes long; at most "
                        f"{limit} here: refusing it"
                    )
        if head_end >= 0 and length is not None and len(data) - head_end - 4 >= length:
            return data[head_end + 4 : head_end + 4 + length]
        if len(data) > limit:
            raise HvsockError(f"{where}: the answer is over {limit} bytes: refusing it")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            if head_end < 0:
                raise HvsockError(
                    f"{where}: the peer closed before a whole HTTP header ({quote(data[:80])})"
                )
            if length is not None:
                raise HvsockError(
                    f"{where}: the peer closed {length - (len(data) - head_end - 4)}"
                    " bytes short of its Content-Length"
                )
            return data[head_end + 4 :]
        data += chunk


def _check_head(head: bytes, where: str) -> int | None:
    """The Content-Length of a 200 answer's header (None: until the peer closes)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HvsockError(f"{where}: not an HTTP answer ({quote(lines[0][:80])})")
    if parts[1] != "200":
        raise HvsockError(f"{where}: answered {' '.join(parts[1:])[:120]}")
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "transfer-encoding" and value.strip().lower() != "identity":
            raise HvsockError(
                f"{where}: a {value.strip()[:40]} answer, which this reader does not take"
            )
        if name == "content-length":
            if not value.strip().isdigit() or len(value.strip()) > 12:
                raise HvsockError(f"{where}: Content-Length {quote(value.strip())} is not a number")
            length = int(value.strip())
    return length
