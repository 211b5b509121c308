"""The exception tree, pickling, and the one place OS errors become hvsock errors."""

from __future__ import annotations

import copy
import errno
import os
import pickle

import pytest

import hvsock
from hvsock import _errors
from hvsock._errors import (
    AddressError,
    AddressInUseError,
    ArgumentError,
    Cancelled,
    ConnectionResetByPeerError,
    ConnectTimeoutError,
    FrameTooLargeError,
    HandshakeError,
    HvsockError,
    IdleTimeoutError,
    KvpError,
    NotAllowedError,
    NothingListeningError,
    PeerClosedError,
    PermissionDeniedError,
    ProtocolError,
    RegistryError,
    RemoteError,
    TransportUnavailableError,
    UnreachableError,
    UnsupportedError,
    VmNotFoundError,
    is_transient,
    translate,
)

# class -> the builtin exceptions (besides OSError) it must also be, so existing
# `except TimeoutError` / `except ConnectionRefusedError` code keeps working.
TREE: dict[type[HvsockError], tuple[type[BaseException], ...]] = {
    HvsockError: (),
    ArgumentError: (ValueError,),
    AddressError: (ArgumentError, ValueError),
    ConnectionResetByPeerError: (ConnectionResetError, ConnectionError),
    UnsupportedError: (),
    TransportUnavailableError: (UnsupportedError,),
    NothingListeningError: (ConnectionRefusedError, ConnectionError),
    ConnectTimeoutError: (TimeoutError,),
    UnreachableError: (ConnectionError,),
    PermissionDeniedError: (PermissionError,),
    NotAllowedError: (PermissionDeniedError, PermissionError),
    AddressInUseError: (),
    HandshakeError: (),
    ProtocolError: (),
    FrameTooLargeError: (ProtocolError,),
    RemoteError: (),
    IdleTimeoutError: (TimeoutError,),
    KvpError: (),
    RegistryError: (),
    VmNotFoundError: (),
    PeerClosedError: (ProtocolError,),
    Cancelled: (),
}
# RemoteError is built from the peer's (code, message); the rest from one message.
SIMPLE = [cls for cls in TREE if cls is not RemoteError]


def test_tree_covers_every_exported_error() -> None:
    assert set(TREE) == {getattr(_errors, name) for name in _errors.__all__}
    for cls in TREE:
        assert getattr(hvsock, cls.__name__) is cls


@pytest.mark.parametrize(("cls", "bases"), TREE.items(), ids=[c.__name__ for c in TREE])
def test_exception_tree(cls: type[HvsockError], bases: tuple[type[BaseException], ...]) -> None:
    assert issubclass(cls, HvsockError)
    assert issubclass(cls, OSError)
    for base in bases:
        assert issubclass(cls, base)
    with pytest.raises(OSError, match="what to do"):
        raise (
            cls("code", "what to do")
            if cls is RemoteError  # type: ignore[call-arg]
            else cls("what to do")
        )


def test_remote_error_keeps_code_and_message_through_pickle_and_copy() -> None:
    original = RemoteError("not_found", "no key 'x'")
    for clone in (
        pickle.loads(pickle.dumps(original)),
        copy.copy(original),
        copy.deepcopy(original),
    ):
        assert type(clone) is RemoteError
        assert (clone.code, clone.remote_message, str(clone)) == (
            "not_found",
            "no key 'x'",
            "not_found: no key 'x'",
        )


@pytest.mark.parametrize(
    ("cls", "not_a"),
    [
        (AddressInUseError, ConnectionError),
        (HandshakeError, ConnectionError),
        (AddressError, ConnectionError),
        (UnreachableError, ConnectionRefusedError),
        (ConnectTimeoutError, ConnectionError),
        (UnsupportedError, ValueError),
    ],
)
def test_no_accidental_bases(cls: type[HvsockError], not_a: type[BaseException]) -> None:
    assert not issubclass(cls, not_a)


def test_message_and_errno() -> None:
    plain = HvsockError("something went wrong; do this")
    assert str(plain) == "something went wrong; do this"
    assert plain.message == "something went wrong; do this"
    assert plain.errno is None
    with_code = NothingListeningError("nothing is listening", errno=errno.ECONNREFUSED)
    assert str(with_code) == "nothing is listening"
    assert with_code.errno == errno.ECONNREFUSED
    assert with_code.strerror == "nothing is listening"


@pytest.mark.parametrize("cls", SIMPLE, ids=[c.__name__ for c in SIMPLE])
@pytest.mark.parametrize("code", [None, errno.ECONNRESET])
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trip(cls: type[HvsockError], code: int | None, protocol: int) -> None:
    original = cls("the message; what to do", errno=code)
    copied = pickle.loads(pickle.dumps(original, protocol=protocol))
    assert type(copied) is cls
    assert str(copied) == str(original) == "the message; what to do"
    assert copied.message == original.message
    assert copied.errno == code


@pytest.mark.parametrize("cls", SIMPLE, ids=[c.__name__ for c in SIMPLE])
def test_copy(cls: type[HvsockError]) -> None:
    original = cls("copied", errno=errno.EPIPE)
    for clone in (copy.copy(original), copy.deepcopy(original)):
        assert type(clone) is cls
        assert (str(clone), clone.errno) == ("copied", errno.EPIPE)


# --------------------------------------------------------------------------------------
# translate(): real OSError instances in, hvsock errors with useful messages out
# --------------------------------------------------------------------------------------
def os_error(code: int) -> OSError:
    """An OSError as the socket module raises it on Linux (a subclass where one fits)."""
    return OSError(code, os.strerror(code))


def winsock_error(winerror: int) -> OSError:
    """An OSError as CPython's socket module raises it on Windows.

    There it is built as OSError(None, msg, None, winerror), which sets ``winerror`` and
    derives ``errno`` (WSA codes stay as they are, except a few such as WSAEACCES that
    become their C errno). Elsewhere the 4th argument does not set ``winerror``, so set
    the attribute by hand, as the Windows build would have.
    """
    code = winerror - 10000 if winerror in (10004, 10009, 10013, 10014, 10022, 10024) else winerror
    exc = OSError(code, f"[WinError {winerror}] a Windows socket error")
    exc.winerror = winerror  # type: ignore[attr-defined]
    return exc


def test_winsock_error_helper() -> None:
    exc = winsock_error(10050)
    assert exc.winerror == 10050  # type: ignore[attr-defined]
    assert exc.errno == 10050
    assert winsock_error(10013).errno == errno.EACCES


WHERE = "port 5000 of CID 3"

TRANSLATIONS = [
    # (exception, op, family, expected class, expected errno, fragments of the message)
    (
        os_error(errno.ECONNRESET),
        "connect",
        "vsock",
        NothingListeningError,
        errno.ECONNRESET,
        ["nothing is listening on port 5000 of CID 3", "start the service there first", "retries"],
    ),
    (
        os_error(errno.ECONNREFUSED),
        "connect",
        "tcp",
        NothingListeningError,
        errno.ECONNREFUSED,
        ["nothing is listening on port 5000 of CID 3"],
    ),
    (
        os_error(errno.ENOENT),
        "connect",
        "unix",
        NothingListeningError,
        errno.ENOENT,
        [
            "nothing is listening on port 5000 of CID 3",
            "socket file does not exist",
            "check the path",
        ],
    ),
    (
        os_error(errno.ENOENT),
        "connect",
        "hybrid",
        NothingListeningError,
        errno.ENOENT,
        ["socket file does not exist", "VMM"],
    ),
    (
        os_error(errno.ETIMEDOUT),
        "connect",
        "vsock",
        ConnectTimeoutError,
        errno.ETIMEDOUT,
        ["connect to port 5000 of CID 3 timed out", "VM is running", "raise the timeout"],
    ),
    (
        TimeoutError("timed out"),
        "connect",
        "hyperv",
        ConnectTimeoutError,
        errno.ETIMEDOUT,
        ["connect to port 5000 of CID 3 timed out", "raise the timeout"],
    ),
    (
        os_error(errno.EHOSTUNREACH),
        "connect",
        "vsock",
        UnreachableError,
        errno.EHOSTUNREACH,
        ["port 5000 of CID 3 is unreachable", "is the VM running", "CID"],
    ),
    (
        os_error(errno.ENETUNREACH),
        "connect",
        "vsock",
        UnreachableError,
        errno.ENETUNREACH,
        ["is unreachable"],
    ),
    (
        os_error(errno.ENETDOWN),
        "connect",
        "vsock",
        UnreachableError,
        errno.ENETDOWN,
        ["is unreachable: is the VM running"],
    ),
    (
        os_error(errno.EHOSTDOWN),
        "connect",
        "vsock",
        UnreachableError,
        errno.EHOSTDOWN,
        ["is unreachable"],
    ),
    (
        os_error(errno.ENODEV),
        "connect",
        "vsock",
        UnreachableError,
        errno.ENODEV,
        ["is unreachable"],
    ),
    # permissions
    (
        os_error(errno.EACCES),
        "bind",
        "vsock",
        PermissionDeniedError,
        errno.EACCES,
        [
            "bind on port 5000 of CID 3 was refused",
            "ports below 1024 need root",
            "CAP_NET_BIND_SERVICE",
            "use a port >= 1024",
        ],
    ),
    (
        os_error(errno.EPERM),
        "bind",
        "unix",
        PermissionDeniedError,
        errno.EPERM,
        ["bind on port 5000 of CID 3 was refused (Operation not permitted)", "check file modes"],
    ),
    (
        os_error(errno.EACCES),
        "connect",
        "unix",
        PermissionDeniedError,
        errno.EACCES,
        ["connect on port 5000 of CID 3 was refused (Permission denied)"],
    ),
    # binding
    (
        os_error(errno.EADDRINUSE),
        "bind",
        "vsock",
        AddressInUseError,
        errno.EADDRINUSE,
        ["port 5000 of CID 3 is already in use", "stop the other listener or pick another"],
    ),
    (
        os_error(errno.EADDRNOTAVAIL),
        "bind",
        "vsock",
        AddressError,
        errno.EADDRNOTAVAIL,
        ["port 5000 of CID 3 cannot be bound here (EADDRNOTAVAIL)", "bind CID any"],
    ),
    (
        os_error(errno.EINVAL),
        "bind",
        "vsock",
        AddressError,
        errno.EINVAL,
        ["the kernel refused bind on port 5000 of CID 3 (EINVAL)", "<= 0x7FFFFFFF"],
    ),
    (os_error(errno.EINVAL), "listen", "vsock", AddressError, errno.EINVAL, ["refused listen on"]),
    # no transport
    (
        os_error(errno.EAFNOSUPPORT),
        "socket",
        "vsock",
        TransportUnavailableError,
        errno.EAFNOSUPPORT,
        ["the kernel has no vsock transport loaded", "modprobe hv_sock", "modprobe vsock_loopback"],
    ),
    (
        os_error(errno.EPROTONOSUPPORT),
        "socket",
        "vsock",
        TransportUnavailableError,
        errno.EPROTONOSUPPORT,
        ["no vsock transport"],
    ),
    (
        os_error(errno.ESOCKTNOSUPPORT),
        "socket",
        "vsock",
        TransportUnavailableError,
        errno.ESOCKTNOSUPPORT,
        ["no vsock transport"],
    ),
    # everything else: the root class, with the OS's own words
    (
        os_error(errno.EINVAL),
        "bind",
        "tcp",
        HvsockError,
        errno.EINVAL,
        ["bind on port 5000 of CID 3 failed: Invalid argument"],
    ),
    (
        os_error(errno.ECONNRESET),
        "recv",
        "vsock",
        HvsockError,
        errno.ECONNRESET,
        ["recv on port 5000 of CID 3 failed: Connection reset by peer"],
    ),
    (
        os_error(errno.ENOENT),
        "connect",
        "vsock",
        HvsockError,
        errno.ENOENT,
        ["connect on port 5000 of CID 3 failed: No such file or directory"],
    ),
    (
        OSError("no errno at all"),
        "send",
        "tcp",
        HvsockError,
        None,
        ["send on port 5000 of CID 3 failed: no errno at all"],
    ),
    (
        os_error(errno.ETIMEDOUT),
        "accept",
        "vsock",
        HvsockError,
        errno.ETIMEDOUT,
        ["accept on port 5000 of CID 3 failed"],
    ),
    # Windows socket errors, matched by winerror
    (
        winsock_error(10050),
        "connect",
        "hyperv",
        UnreachableError,
        errno.ENETDOWN,
        [
            "port 5000 of CID 3 is unreachable (WSAENETDOWN 10050)",
            "rebooting",
            "wait for it and retry",
        ],
    ),
    (
        winsock_error(10051),
        "connect",
        "hyperv",
        UnreachableError,
        errno.ENETUNREACH,
        ["is unreachable"],
    ),
    (
        winsock_error(10065),
        "connect",
        "hyperv",
        UnreachableError,
        errno.EHOSTUNREACH,
        ["is unreachable"],
    ),
    (
        winsock_error(10064),
        "connect",
        "hyperv",
        UnreachableError,
        errno.EHOSTDOWN,
        ["is unreachable"],
    ),
    (
        winsock_error(10061),
        "connect",
        "hyperv",
        NothingListeningError,
        errno.ECONNREFUSED,
        ["nothing is listening on port 5000 of CID 3"],
    ),
    (
        winsock_error(10054),
        "connect",
        "hyperv",
        NothingListeningError,
        errno.ECONNRESET,
        ["nothing is listening"],
    ),
    (
        winsock_error(10060),
        "connect",
        "hyperv",
        ConnectTimeoutError,
        errno.ETIMEDOUT,
        ["timed out"],
    ),
    (
        winsock_error(10013),
        "bind",
        "hyperv",
        PermissionDeniedError,
        errno.EACCES,
        [
            "bind on port 5000 of CID 3 was refused (WSAEACCES 10013)",
            "another user",
            "administrator",
            "registered",
        ],
    ),
    (
        winsock_error(10013),
        "connect",
        "hyperv",
        PermissionDeniedError,
        errno.EACCES,
        ["connect on port 5000 of CID 3 was refused (WSAEACCES 10013)"],
    ),
    (
        winsock_error(10048),
        "bind",
        "hyperv",
        AddressInUseError,
        errno.EADDRINUSE,
        ["already in use"],
    ),
    (
        winsock_error(10049),
        "bind",
        "hyperv",
        AddressError,
        errno.EADDRNOTAVAIL,
        ["cannot be bound here"],
    ),
    (
        winsock_error(10050),
        "bind",
        "hyperv",
        HvsockError,
        errno.ENETDOWN,
        ["bind on port 5000 of CID 3 failed"],
    ),
]


@pytest.mark.parametrize(
    ("exc", "op", "family", "cls", "code", "fragments"),
    TRANSLATIONS,
    ids=[
        f"{op}-{family}-{getattr(e, 'winerror', None) or e.errno}-{i}"
        for i, (e, op, family, *_) in enumerate(TRANSLATIONS)
    ],
)
def test_translate(
    exc: OSError,
    op: str,
    family: str,
    cls: type[HvsockError],
    code: int | None,
    fragments: list[str],
) -> None:
    result = translate(exc, op=op, family=family, where=WHERE)
    assert type(result) is cls
    assert isinstance(result, HvsockError)
    assert result.errno == code
    message = str(result)
    for fragment in fragments:
        assert fragment in message
    # the caller chains it: nothing of the original is lost
    with pytest.raises(cls) as info:
        raise result from exc
    assert info.value.__cause__ is exc


def test_translate_port_hint() -> None:
    result = translate(
        os_error(errno.ECONNRESET),
        op="connect",
        family="hyperv",
        where="service 5000 on parent",
        port_hint=" (a Linux guest must listen on vsock://any:5000)",
    )
    assert str(result) == (
        "nothing is listening on service 5000 on parent; start the service there first"
        " (a Linux guest must listen on vsock://any:5000) (or pass retries=N to "
        "wait for it)"
    )


@pytest.mark.parametrize(
    "exc",
    [
        AddressError("already ours"),
        NothingListeningError("already ours", errno=errno.ECONNREFUSED),
        ValueError("not an OS error"),
        KeyboardInterrupt(),
    ],
)
def test_translate_passes_through_what_it_does_not_own(exc: BaseException) -> None:
    assert translate(exc, op="connect", family="vsock", where=WHERE) is exc


@pytest.mark.parametrize(
    "exc",
    [
        NothingListeningError("x"),
        ConnectTimeoutError("x"),
        UnreachableError("x"),
        TimeoutError(),
        TimeoutError("timed out"),  # what socket.timeout is since 3.10
        *(
            os_error(code)
            for code in (
                errno.ECONNREFUSED,
                errno.ECONNRESET,
                errno.ETIMEDOUT,
                errno.EHOSTUNREACH,
                errno.ENETUNREACH,
                errno.ENETDOWN,
                errno.EHOSTDOWN,
            )
        ),
        *(winsock_error(w) for w in (10050, 10051, 10054, 10060, 10061, 10064, 10065)),
    ],
    ids=repr,
)
def test_transient(exc: BaseException) -> None:
    assert is_transient(exc) is True


@pytest.mark.parametrize(
    "exc",
    [
        HvsockError("x"),
        HvsockError("x", errno=errno.ECONNREFUSED),  # our own errors go by class, not errno
        AddressError("x"),
        UnsupportedError("x"),
        TransportUnavailableError("x"),
        PermissionDeniedError("x"),
        AddressInUseError("x"),
        HandshakeError("x"),
        OSError("no errno"),
        *(
            os_error(code)
            for code in (
                errno.EACCES,
                errno.EPERM,
                errno.EADDRINUSE,
                errno.EINVAL,
                errno.ENOENT,
                errno.EPIPE,
                errno.EAFNOSUPPORT,
            )
        ),
        # winerror wins over errno
        *(winsock_error(w) for w in (10013, 10048, 10049)),
        ValueError("x"),
        KeyboardInterrupt(),
    ],
    ids=repr,
)
def test_not_transient(exc: BaseException) -> None:
    assert is_transient(exc) is False


@pytest.mark.parametrize(
    "exc",
    [
        os_error(errno.ECONNREFUSED),
        os_error(errno.ECONNRESET),
        os_error(errno.ETIMEDOUT),
        os_error(errno.EHOSTUNREACH),
        os_error(errno.ENETUNREACH),
        os_error(errno.EHOSTDOWN),
        TimeoutError("timed out"),
        winsock_error(10050),
        winsock_error(10061),
    ],
    ids=repr,
)
def test_transient_errors_stay_transient_once_translated(exc: OSError) -> None:
    translated = translate(exc, op="connect", family="vsock", where=WHERE)
    assert is_transient(translated) is True


def test_translated_errors_pickle() -> None:
    result = translate(winsock_error(10050), op="connect", family="hyperv", where=WHERE)
    copied = pickle.loads(pickle.dumps(result))
    assert type(copied) is UnreachableError
    assert str(copied) == str(result)
    assert copied.errno == errno.ENETDOWN


# -- translation knows the transport ----------------------------------------------------------
@pytest.mark.parametrize("family", ["vsock", "hyperv", "hybrid"])
def test_a_reset_during_connect_is_nothing_listening_on_vm_sockets(family: str) -> None:
    exc = OSError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))
    assert isinstance(translate(exc, op="connect", family=family, where="x"), NothingListeningError)


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_a_reset_during_connect_is_a_reset_on_tcp_and_unix(family: str) -> None:
    exc = OSError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))
    error = translate(exc, op="connect", family=family, where="tcp://127.0.0.1:7004")
    assert isinstance(error, ConnectionResetByPeerError)
    assert isinstance(error, ConnectionResetError)
    assert "nothing is listening" not in str(error)
    assert not is_transient(error)


def test_tcp_bind_advice_never_mentions_vsock() -> None:
    for code in (errno.EADDRNOTAVAIL, errno.EACCES, errno.EAFNOSUPPORT):
        error = translate(
            OSError(code, os.strerror(code)), op="bind", family="tcp", where="tcp://192.0.2.1:80"
        )
        assert isinstance(error, HvsockError)
        assert "CID" not in str(error)
        assert "vsock" not in str(error)
        assert "modprobe" not in str(error)


def test_a_missing_directory_is_named(tmp_path: object) -> None:
    path = f"{tmp_path}/no/such/dir/s.sock"
    exc = OSError(errno.ENOENT, os.strerror(errno.ENOENT))
    listen_error = translate(exc, op="bind", family="unix", where=path, path=path)
    assert isinstance(listen_error, AddressError)
    assert f"{tmp_path}/no'" in str(listen_error)
    connect_error = translate(exc, op="connect", family="unix", where=path, path=path)
    assert isinstance(connect_error, NothingListeningError)
    assert f"{tmp_path}/no'" in str(connect_error)


# translate(family="file"): the one translation of file-system errors (file copy, KVP pools)

FILE_TABLE = [
    # errno, the class it becomes, what the message says
    (errno.ENOSPC, HvsockError, "no space left on the device; free some and try again"),
    (errno.EDQUOT, HvsockError, "over the disk quota"),
    (errno.EACCES, PermissionDeniedError, "permission denied"),
    (errno.EPERM, PermissionDeniedError, "operation not permitted"),
    (errno.EROFS, PermissionDeniedError, "read-only file system"),
    (errno.ELOOP, HvsockError, "a symlink is in the way"),
    (errno.ENOTDIR, HvsockError, "a part of the path is not a directory"),
    (errno.ENOENT, HvsockError, "no such file or directory"),
    (errno.EEXIST, HvsockError, "it already exists"),
    (errno.EISDIR, HvsockError, "it is a directory"),
    (errno.ENAMETOOLONG, HvsockError, "the name is too long"),
    (errno.EIO, HvsockError, os.strerror(errno.EIO)),  # no advice: the system's words
]


@pytest.mark.parametrize(
    ("code", "cls", "says"), FILE_TABLE, ids=[errno.errorcode[c] for c, _, _ in FILE_TABLE]
)
def test_translate_file_errors(code: int, cls: type[HvsockError], says: str) -> None:
    exc = OSError(code, os.strerror(code))
    result = translate(exc, op="write", family="file", where="'a/b'")
    assert type(result) is cls
    assert isinstance(result, HvsockError)
    assert str(result).startswith(f"cannot write 'a/b': {says}")
    assert result.errno == code  # kept, and set by the constructor (pickles with it)
    assert pickle.loads(pickle.dumps(result)).errno == code


def test_translate_file_permission_hint_only_on_refusals() -> None:
    hint = "pool files belong to root: run as root"
    for code in (errno.EACCES, errno.EPERM, errno.EROFS):
        refused = translate(
            OSError(code, os.strerror(code)),
            op="write",
            family="file",
            where="pool 0",
            permission_hint=hint,
        )
        assert isinstance(refused, PermissionDeniedError)
        assert str(refused).endswith("; " + hint)
    other = translate(
        OSError(errno.ENOSPC, "full"),
        op="write",
        family="file",
        where="pool 0",
        permission_hint=hint,
    )
    assert hint not in str(other)


def test_translate_file_passes_through_what_it_does_not_own() -> None:
    ours = ProtocolError("x")
    assert translate(ours, op="read", family="file", where="f") is ours
    not_os = ValueError("y")
    assert translate(not_os, op="read", family="file", where="f") is not_os
    # A file timeout is not a connect timeout.
    timeout = translate(
        TimeoutError(errno.ETIMEDOUT, "timed out"), op="read", family="file", where="f"
    )
    assert not isinstance(timeout, ConnectTimeoutError)
    assert str(timeout).startswith("cannot read f: ")
