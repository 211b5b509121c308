"""The public namespaces: each re-exports from private modules, each name has one home,
and the top-level spellings of before 0.2 still work for one release, with a warning."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
import types
import warnings

import pytest

import hvsock
from hvsock import _moved

from .test_public_api import isort_key, public_names

#: Every namespace a user may import (hvsock.<name>).
NAMESPACES = (
    "doctor",
    "forwarding",
    "framing",
    "kvm",
    "kvp",
    "services",
    "sockets",
    "testing",
    "windows",
)

#: hvsock.__all__ of 0.1, less __version__: what the deprecation promise covers.
OLD_TOP_LEVEL = (
    "Address",
    "AddressError",
    "AddressInUseError",
    "ArgumentError",
    "AsyncRpcClient",
    "BROADCAST",
    "BenchResult",
    "BenchServer",
    "CHILDREN",
    "CID_ANY",
    "CID_HOST",
    "CID_HYPERVISOR",
    "CID_LOCAL",
    "Check",
    "ConnectTimeoutError",
    "Connection",
    "ConnectionRecord",
    "ConnectionResetByPeerError",
    "CopyResult",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_FRAME",
    "Diagnosis",
    "ECHO_PORT",
    "ErrorReply",
    "ExecResult",
    "Forward",
    "FrameDecoder",
    "FrameTooLargeError",
    "HandshakeError",
    "HostDiscovery",
    "HostVm",
    "HvsockError",
    "HybridAddress",
    "HyperVAddress",
    "IdleTimeoutError",
    "KvpError",
    "LOOPBACK",
    "Limits",
    "Machine",
    "NamedHybridAddress",
    "NamedVmAddress",
    "NamedVsockAddress",
    "NotAllowedError",
    "NothingListeningError",
    "PARENT",
    "PORT_ANY",
    "Peer",
    "PermissionDeniedError",
    "PingStats",
    "PrivilegedCid",
    "ProcessResult",
    "ProtocolError",
    "Registration",
    "RegistryBackend",
    "RegistryEdit",
    "RegistryError",
    "Relay",
    "RelayConfig",
    "RelayStats",
    "RemoteError",
    "Removal",
    "Request",
    "Response",
    "RpcClient",
    "SILOHOST",
    "Service",
    "ServiceDeclaration",
    "ServiceEntry",
    "ServiceHost",
    "SocketAddress",
    "SourceReport",
    "StressFailure",
    "StressResult",
    "SyncConnection",
    "TargetRule",
    "TcpAddress",
    "TransportUnavailableError",
    "UnixAddress",
    "UnreachableError",
    "UnsupportedError",
    "VSOCK_TEMPLATE",
    "VmDiscovery",
    "VmInfo",
    "VmNotFoundError",
    "VsockAddress",
    "VsockDevice",
    "WILDCARD",
    "ZERO",
    "close_write",
    "connect",
    "connect_socket",
    "copy",
    "copy_async",
    "decode_message",
    "describe_address",
    "diagnose",
    "discover_host_vms",
    "discover_vms",
    "echo_service",
    "encode_frame",
    "encode_message",
    "exec",
    "exec_async",
    "file_service",
    "guest_view",
    "has_hyperv",
    "has_vsock",
    "host_view",
    "is_template_service_id",
    "listen",
    "listener_address",
    "loaded_vsock_transports",
    "local_cid",
    "open_connection",
    "parse_address",
    "ping",
    "port_for_service_id",
    "read_frame",
    "recv_frame",
    "register_service",
    "registered_services",
    "registration_script",
    "relay",
    "remove_socket_file",
    "resolve_address",
    "rpc_handler",
    "send_frame",
    "service_id_for_port",
    "set_buffer_size",
    "share_service",
    "start_server",
    "stress",
    "unregister_service",
    "vsock_loopback_loaded",
    "write_frame",
)
MOVED = sorted(set(OLD_TOP_LEVEL) - set(hvsock.__all__))


def namespace(name: str) -> types.ModuleType:
    return importlib.import_module(f"hvsock.{name}")


def test_the_package_knows_the_same_namespaces() -> None:
    assert hvsock._NAMESPACES == NAMESPACES
    assert set(_moved.MOVED) <= set(NAMESPACES)


@pytest.mark.parametrize("name", NAMESPACES)
def test_each_namespaces_all_is_exactly_what_it_exports(name: str) -> None:
    module = namespace(name)
    declared = module.__all__
    assert len(declared) == len(set(declared)), "a name twice in __all__"
    assert declared == sorted(declared, key=isort_key)
    # kvp loads its service side on first use: resolve every name before comparing.
    for exported in declared:
        assert getattr(module, exported) is not None, exported
    public = public_names(module) - {"annotations", "TYPE_CHECKING", "Any"}
    assert set(declared) == public


@pytest.mark.parametrize("name", NAMESPACES)
def test_a_namespace_only_re_exports_private_definitions(name: str) -> None:
    """Namespaces are tables: what they give is defined in hvsock's private modules."""
    module = namespace(name)
    for exported in module.__all__:
        value = getattr(module, exported)
        home = getattr(value, "__module__", None)
        if (inspect.isclass(value) or inspect.isfunction(value)) and home is not None:
            assert home.startswith("hvsock._"), f"hvsock.{name}.{exported} is defined in {home}"


def test_no_name_has_two_homes() -> None:
    homes: dict[str, list[str]] = {}
    for exported in hvsock.__all__:
        homes.setdefault(exported, []).append("hvsock")
    for name in NAMESPACES:
        for exported in namespace(name).__all__:
            homes.setdefault(exported, []).append(f"hvsock.{name}")
    twice = {n: h for n, h in homes.items() if len(h) > 1}
    assert twice == {}
    # Nor one class or function under two names.
    seen: dict[int, str] = {}
    for where, names in [
        ("hvsock", hvsock.__all__),
        *((f"hvsock.{n}", namespace(n).__all__) for n in NAMESPACES),
    ]:
        module = importlib.import_module(where)
        for exported in names:
            value = getattr(module, exported)
            if inspect.isclass(value) or inspect.isfunction(value):
                assert id(value) not in seen, f"{where}.{exported} is {seen[id(value)]}"
                seen[id(value)] = f"{where}.{exported}"


def test_every_old_top_level_name_still_has_a_home() -> None:
    moved = {n for names in _moved.MOVED.values() for n in names}
    assert moved == set(MOVED)
    assert set(OLD_TOP_LEVEL) <= set(hvsock.__all__) | moved
    for ns, names in _moved.MOVED.items():
        assert set(names) <= set(namespace(ns).__all__), ns


@pytest.mark.parametrize("name", MOVED)
def test_an_old_spelling_warns_and_is_the_same_object(name: str) -> None:
    ns = next(n for n, names in _moved.MOVED.items() if name in names)
    new_spelling = rf"^hvsock\.{name} is deprecated: use hvsock\.{ns}\.{name} "
    with pytest.warns(DeprecationWarning, match=new_spelling) as caught:
        value = getattr(hvsock, name)
    assert len(caught) == 1
    assert caught[0].filename == __file__  # it points at the caller's line
    assert value is getattr(namespace(ns), name)
    assert name not in dir(hvsock)
    assert name not in hvsock.__all__
    with pytest.warns(DeprecationWarning, match=new_spelling):  # not cached: each use warns
        getattr(hvsock, name)


def test_from_import_of_an_old_spelling_warns_too() -> None:
    with pytest.warns(DeprecationWarning, match=r"use hvsock\.windows\.WILDCARD"):
        from hvsock import WILDCARD
    import hvsock.windows

    assert WILDCARD is hvsock.windows.WILDCARD


def test_star_import_gives_no_old_spelling() -> None:
    namespace_dict: dict[str, object] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec("from hvsock import *", namespace_dict)
    assert set(namespace_dict) - {"__builtins__"} == set(hvsock.__all__)


def test_a_name_that_was_never_public_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'MAX_LINE'"):
        hvsock.MAX_LINE  # noqa: B018


def test_namespaces_load_on_first_use_and_not_before() -> None:
    """``import hvsock`` loads no namespace; ``hvsock.windows`` then works unimported."""
    loaded = f"sorted(set(sys.modules) & { ({f'hvsock.{n}' for n in NAMESPACES})!r})"
    code = (
        "import sys, hvsock\n"
        f"print({loaded})\n"
        "print(hvsock.windows.WILDCARD, 'windows' in dir(hvsock))\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    assert out == ["[]", "00000000-0000-0000-0000-000000000000 True"]
