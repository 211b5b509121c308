"""The exception tree, and the one place where OS errors become hvsock errors.

Every error hvsock raises is an :class:`HvsockError`, itself an :class:`OSError`,
so code that already handles socket errors keeps working. Subclasses also derive
from the matching builtin (``TimeoutError``, ``ConnectionRefusedError``, ...) so
``except TimeoutError`` catches a connect timeout from any transport.
"""

from __future__ import annotations

import errno as _errno
import socket

__all__ = [
    "AddressError",
    "AddressInUseError",
    "ArgumentError",
    "Cancelled",
    "ConnectTimeoutError",
    "ConnectionResetByPeerError",
    "FrameTooLargeError",
    "HandshakeError",
    "HvsockError",
    "IdleTimeoutError",
    "KvpError",
    "NotAllowedError",
    "NothingListeningError",
    "PeerClosedError",
    "PermissionDeniedError",
    "ProtocolError",
    "RegistryError",
    "RemoteError",
    "TransportUnavailableError",
    "UnreachableError",
    "UnsupportedError",
    "VmNotFoundError",
]


class HvsockError(OSError):
    """Root of every error hvsock raises.

    ``str(error)`` is a sentence that says what happened and what to do;
    ``errno`` is kept when an OS error was the cause.
    """

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        if errno is None:
            super().__init__(message)
        else:
            super().__init__(errno, message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.message, self.errno))


def _rebuild(cls: type[HvsockError], message: str, errno: int | None) -> HvsockError:
    return cls(message, errno=errno)


class ArgumentError(HvsockError, ValueError):
    """A bad argument: wrong type, out of range, malformed. Also a ``ValueError``.

    Raised by the checks in ``hvsock._validate``, the one place arguments are checked, so
    the same mistake gives the same error on every path.
    """


class AddressError(ArgumentError):
    """An address (text or fields) is malformed or out of range."""


class UnsupportedError(HvsockError):
    """This platform, Python or kernel lacks the socket family or feature asked for."""


class TransportUnavailableError(UnsupportedError):
    """The family exists but no usable transport is loaded (e.g. no vsock module)."""


class NothingListeningError(HvsockError, ConnectionRefusedError):
    """The peer exists but nothing listens on that port / service id."""


class ConnectionResetByPeerError(HvsockError, ConnectionResetError):
    """The peer reset (or cut) a connection it had accepted: the stream is incomplete.

    On TCP and Unix a reset can only come after the peer accepted, even when it lands
    while ``connect()`` is still returning; so it is never "nothing is listening".
    """


class ConnectTimeoutError(HvsockError, TimeoutError):
    """A connect or handshake did not finish within its deadline."""


class UnreachableError(HvsockError, ConnectionError):
    """The VM or host cannot be reached now (not running, rebooting, no route)."""


class PermissionDeniedError(HvsockError, PermissionError):
    """The OS refused the operation (privileged port, another user's VM, file mode)."""


class NotAllowedError(PermissionDeniedError):
    """A service refused this peer: it is not in the service's allowlist."""


class AddressInUseError(HvsockError):
    """Something already listens on that address."""


class HandshakeError(HvsockError):
    """A peer broke a protocol (e.g. the hybrid-vsock ``CONNECT``/``OK`` exchange)."""


class ProtocolError(HvsockError):
    """A peer sent bytes that break hvsock's framing or RPC protocol."""


class FrameTooLargeError(ProtocolError):
    """A frame claims (or would need) more bytes than the maximum allowed."""


class RemoteError(HvsockError):
    """The peer answered a request with an error reply (``code``, ``remote_message``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.remote_message = message

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.code, self.remote_message))


class IdleTimeoutError(HvsockError, TimeoutError):
    """The peer sent nothing (or took nothing) for longer than the idle timeout."""


class KvpError(HvsockError):
    """A KVP pool file is malformed (size, format) or its lock was not granted in time."""


class RegistryError(HvsockError):
    """A service registration conflicts, is malformed, or the registry refused it."""


class VmNotFoundError(HvsockError):
    """No VM has the name an address gives (or WSL's VM is not running)."""


class PeerClosedError(ProtocolError):
    """The peer closed the connection before a frame, or the answer to a request, was whole.

    A service closes a peer outside its allowlist this way; so does one that stopped.
    """


class Cancelled(HvsockError):
    """The work was cancelled from outside (a file copy whose asyncio task was cancelled).

    Internal: the asyncio twins turn it back into ``asyncio.CancelledError``.
    """


# Windows socket error numbers (winsock2.h). CPython reports them in
# ``OSError.winerror`` for socket calls, so they are matched before errno.
WSAEACCES = 10013
WSAEADDRINUSE = 10048
WSAEADDRNOTAVAIL = 10049
WSAENETDOWN = 10050
WSAENETUNREACH = 10051
WSAECONNRESET = 10054
WSAETIMEDOUT = 10060
WSAECONNREFUSED = 10061
WSAEHOSTDOWN = 10064
WSAEHOSTUNREACH = 10065

# Errors after which the same connect may succeed a moment later: nothing
# listening *yet*, timed out, VM not reachable *now* (10050 while a VM reboots).
_TRANSIENT_ERRNOS = frozenset(
    {
        _errno.ECONNREFUSED,
        _errno.ECONNRESET,
        _errno.ETIMEDOUT,
        _errno.EHOSTUNREACH,
        _errno.ENETUNREACH,
        _errno.ENETDOWN,
        _errno.EHOSTDOWN,
    }
)
_TRANSIENT_WINERRORS = frozenset(
    {
        WSAENETDOWN,
        WSAENETUNREACH,
        WSAECONNRESET,
        WSAETIMEDOUT,
        WSAECONNREFUSED,
        WSAEHOSTDOWN,
        WSAEHOSTUNREACH,
    }
)


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same connect later may succeed."""
    if isinstance(exc, (NothingListeningError, ConnectTimeoutError, UnreachableError)):
        return True
    if isinstance(exc, HvsockError):
        return False
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return True
    if not isinstance(exc, OSError):
        return False
    winerror = getattr(exc, "winerror", None)
    if winerror is not None:
        return winerror in _TRANSIENT_WINERRORS
    return exc.errno in _TRANSIENT_ERRNOS


def _code(exc: OSError) -> int | None:
    """Normalise a Windows socket error number to its errno twin."""
    winerror = getattr(exc, "winerror", None)
    return (
        {
            WSAEACCES: _errno.EACCES,
            WSAEADDRINUSE: _errno.EADDRINUSE,
            WSAEADDRNOTAVAIL: _errno.EADDRNOTAVAIL,
            WSAENETDOWN: _errno.ENETDOWN,
            WSAENETUNREACH: _errno.ENETUNREACH,
            WSAECONNRESET: _errno.ECONNRESET,
            WSAETIMEDOUT: _errno.ETIMEDOUT,
            WSAECONNREFUSED: _errno.ECONNREFUSED,
            WSAEHOSTDOWN: _errno.EHOSTDOWN,
            WSAEHOSTUNREACH: _errno.EHOSTUNREACH,
        }.get(winerror, exc.errno)
        if winerror is not None
        else exc.errno
    )


def _missing_dir(path: str | bytes | None) -> str | None:
    """The first directory on the way to *path* that does not exist, quoted; else None."""
    if not isinstance(path, str) or not path or path.startswith("\0"):
        return None
    import os.path  # only messages about socket files need it

    parent = os.path.dirname(os.path.abspath(path))
    missing = None
    while parent and not os.path.isdir(parent):
        missing = parent
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    if missing is None:
        return None
    from ._validate import quote

    return quote(missing, 200)


def _blocked_dir(path: str | bytes | None) -> str | None:
    """The first directory on the way to *path* this user cannot search, quoted; else None."""
    if not isinstance(path, str) or not path or path.startswith("\0"):
        return None
    import os

    parts = os.path.abspath(path).split(os.sep)
    current = os.sep
    for part in parts[1:-1]:
        current = os.path.join(current, part)
        if os.path.isdir(current) and not os.access(current, os.X_OK):
            from ._validate import quote

            return quote(current, 200)
    return None


def reset_by_peer(where: str, exc: OSError | None = None) -> ConnectionResetByPeerError:
    """The error for a connection the peer reset (or stopped reading) after connect."""
    return ConnectionResetByPeerError(
        f"{where} reset the connection: the stream was cut before its end "
        "(the peer crashed, was stopped, or refused this client)",
        errno=exc.errno if exc is not None and exc.errno else _errno.ECONNRESET,
    )


#: What an errno means to someone reading or writing files (family "file").
_FILE_HINTS = {
    _errno.ENOSPC: "no space left on the device; free some and try again",
    _errno.EDQUOT: "over the disk quota; free some and try again",
    _errno.EACCES: "permission denied",
    _errno.EPERM: "operation not permitted",
    _errno.EROFS: "read-only file system",
    _errno.ELOOP: "a symlink is in the way (symlinks are never followed here)",
    _errno.ENOTDIR: "a part of the path is not a directory (or is a symlink)",
    _errno.ENOENT: "no such file or directory",
    _errno.EEXIST: "it already exists",
    _errno.EISDIR: "it is a directory",
    _errno.ENAMETOOLONG: "the name is too long",
}
#: File errnos that mean "not allowed": a PermissionDeniedError, with the caller's hint.
_FILE_REFUSALS = frozenset({_errno.EACCES, _errno.EPERM, _errno.EROFS})


def translate(
    exc: BaseException,
    *,
    op: str,
    family: str,
    where: str,
    port_hint: str = "",
    path: str | bytes | None = None,
    permission_hint: str = "",
) -> BaseException:
    """Turn an OS error from *op* ("connect", "bind", ...) into an hvsock error.

    *family* names the transport ("vsock", "hyperv", "hybrid", "tcp", "unix"), or is
    ``"file"`` for a file-system operation (*op* "read", "write", "create", ...: the
    message is "cannot <op> <where>: <what the errno means>"); *where* is a human
    description of the address ("port 5000 of CID 3") or the file (quoted); *path*
    is the socket file of a Unix / hybrid address, so a missing or closed directory
    on the way is named. *permission_hint* is added to a file permission error
    (say who owns such files, what to run instead).
    Errors hvsock already raised, and non-OS errors, are returned unchanged; the
    errno is kept. The caller raises the result ``from exc`` so the original stays
    attached.
    """
    if isinstance(exc, HvsockError) or not isinstance(exc, OSError):
        return exc
    if family == "file":
        return _file_error(exc, op, where, permission_hint)
    if isinstance(exc, (socket.timeout, TimeoutError)) and exc.errno is None:
        return ConnectTimeoutError(
            f"{op} to {where} timed out; check that the peer is running, or raise the timeout",
            errno=_errno.ETIMEDOUT,
        )
    code = _code(exc)
    winerror = getattr(exc, "winerror", None)
    if op == "connect":
        if code == _errno.ECONNRESET and family in ("tcp", "unix"):
            # A TCP / Unix reset needs an accepted connection: something listens, and
            # it hung up on us (a relay whose target is down does that).
            return ConnectionResetByPeerError(
                f"{where} accepted the connection and then reset it; the service there "
                "refused or dropped it (a relay whose target is down does this): check "
                "its logs",
                errno=code,
            )
        if code in (_errno.ECONNRESET, _errno.ECONNREFUSED):
            # AF_VSOCK answers a connect to a port nobody listens on with a
            # reset, not a refusal; both mean the same thing to the user.
            return NothingListeningError(
                f"nothing is listening on {where}; start the service there first"
                f"{port_hint} (or pass retries=N to wait for it)",
                errno=code,
            )
        missing = _missing_dir(path) if code == _errno.ENOENT and path else None
        if missing is not None:
            return NothingListeningError(
                f"nothing is listening on {where}: the directory {missing} does not exist; "
                "check the path",
                errno=code,
            )
        if code == _errno.ENOENT and family in ("unix", "hybrid"):
            return NothingListeningError(
                f"nothing is listening on {where}: the socket file does not exist; "
                "check the path and that the server (or VMM) is running",
                errno=code,
            )
        if code == _errno.ETIMEDOUT:
            return ConnectTimeoutError(
                f"connect to {where} timed out; check that the VM is running and the service "
                "listens, or raise the timeout",
                errno=code,
            )
        if code == _errno.ENETDOWN and winerror is not None:
            return UnreachableError(
                f"{where} is unreachable (WSAENETDOWN 10050): the VM is starting, rebooting "
                "or stopped; wait for it and retry (pass retries=N)",
                errno=code,
            )
        if code in (
            _errno.EHOSTUNREACH,
            _errno.ENETUNREACH,
            _errno.ENETDOWN,
            _errno.EHOSTDOWN,
            _errno.ENODEV,
        ):
            return UnreachableError(
                f"{where} is unreachable: is the VM running and is its CID / id right?", errno=code
            )
    if code in (_errno.EACCES, _errno.EPERM):
        blocked = _blocked_dir(path)
        if blocked is not None:
            return PermissionDeniedError(
                f"{op} on {where} was refused: you cannot search the directory {blocked}; "
                "use a path in a directory you own, or ask its owner for access",
                errno=code,
            )
        if winerror == WSAEACCES:
            return PermissionDeniedError(
                f"{op} on {where} was refused (WSAEACCES 10013): the VM belongs to another "
                "user, or its settings do not allow this service; run as the VM's owner or "
                "an administrator, and check the service is registered",
                errno=code,
            )
        if family in ("vsock", "tcp") and op == "bind":
            return PermissionDeniedError(
                f"{op} on {where} was refused: ports below 1024 need root "
                "(CAP_NET_BIND_SERVICE); use a port >= 1024",
                errno=code,
            )
        return PermissionDeniedError(
            f"{op} on {where} was refused ({exc.strerror}); check file modes or run as a "
            "user allowed to use it",
            errno=code,
        )
    if code == _errno.EADDRINUSE:
        return AddressInUseError(
            f"{where} is already in use; stop the other listener or pick another port", errno=code
        )
    if code == _errno.EADDRNOTAVAIL:
        advice = {
            "vsock": "bind CID any or this machine's own CID",
            "tcp": "bind an address of this machine (0.0.0.0, ::, 127.0.0.1)",
        }
        return AddressError(
            f"{where} cannot be bound here (EADDRNOTAVAIL): "
            f"{advice.get(family, 'bind an address of this machine')}",
            errno=code,
        )
    if code == _errno.ENOENT and op in ("bind", "listen", "chmod"):
        missing = _missing_dir(path)
        if missing is not None:
            return AddressError(
                f"cannot listen on {where}: the directory {missing} does not exist; "
                "create it first or choose another path",
                errno=code,
            )
    if code in (_errno.EAFNOSUPPORT, _errno.EPROTONOSUPPORT, _errno.ESOCKTNOSUPPORT):
        if family != "vsock":
            return TransportUnavailableError(
                f"this system does not support {family} sockets ({exc.strerror})", errno=code
            )
        return TransportUnavailableError(
            f"the kernel has no {family} transport loaded; on a KVM guest "
            "`modprobe vmw_vsock_virtio_transport`, on Hyper-V `modprobe hv_sock`, for local "
            "tests `modprobe vsock_loopback`",
            errno=code,
        )
    if code == _errno.EINVAL and family == "vsock" and op in ("bind", "listen"):
        return AddressError(
            f"the kernel refused {op} on {where} (EINVAL): under Hyper-V, guest listen ports "
            "must be <= 0x7FFFFFFF",
            errno=code,
        )
    detail = exc.strerror or str(exc)
    if family in ("tcp", "unix") and code == _errno.ECONNRESET:
        return reset_by_peer(where, exc)
    return HvsockError(f"{op} on {where} failed: {detail}", errno=code)


def _file_error(exc: OSError, op: str, where: str, permission_hint: str) -> HvsockError:
    code = _code(exc)
    message = f"cannot {op} {where}: {_FILE_HINTS.get(code or 0, exc.strerror or str(exc))}"
    if code in _FILE_REFUSALS:
        return PermissionDeniedError(
            f"{message}; {permission_hint}" if permission_hint else message, errno=code
        )
    return HvsockError(message, errno=code)
