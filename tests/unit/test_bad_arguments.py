"""Bad arguments to the framework, the built-in services and the registry raise
hvsock.ArgumentError (an HvsockError and a ValueError), with the same message on every
path for the same mistake."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import hvsock
import hvsock.services
import hvsock.windows
from hvsock import ArgumentError, HvsockError, Limits, RegistryError, Service, ServiceHost
from hvsock._builtin import bench, stress
from hvsock._server.peers import allow_rules
from hvsock.testing import MemoryRegistry


def handler(conn: object) -> None:
    return None


BAD_CALLS: list[tuple[str, Callable[[], object]]] = [
    ("Service name padded", lambda: Service(" padded ", 5000, handler)),
    ("Service name empty", lambda: Service("", 5000, handler)),
    ("Service name bytes", lambda: Service(b"x", 5000, handler)),  # type: ignore[arg-type]
    ("Service handler", lambda: Service("x", 5000, 42)),  # type: ignore[arg-type]
    ("Service limits", lambda: Service("x", 5000, handler, limits={})),  # type: ignore[arg-type]
    ("Service allow str", lambda: Service("x", 5000, handler, allow="3")),
    ("Service allow bool", lambda: Service("x", 5000, handler, allow={True})),
    ("Service allow CID", lambda: Service("x", 5000, handler, allow={-1})),
    ("Service allow uid", lambda: Service("x", 5000, handler, allow={"uid:x"})),
    ("Limits connections", lambda: Limits(max_connections=0)),
    ("Limits connections bool", lambda: Limits(max_connections=True)),
    ("Limits idle", lambda: Limits(idle_timeout=float("nan"))),
    ("Limits total", lambda: Limits(total_timeout=-1)),
    ("Limits message", lambda: Limits(max_message_size=0)),
    ("ServiceHost grace", lambda: ServiceHost(grace=-1)),
    ("ServiceHost grace type", lambda: ServiceHost(grace="1")),  # type: ignore[arg-type]
    ("rpc_handler", lambda: hvsock.rpc_handler({"": handler})),
    ("ping count", lambda: hvsock.services.ping("unix:///nonexistent", count=0)),
    ("ping size", lambda: hvsock.services.ping("unix:///nonexistent", size=True)),
    ("ping interval", lambda: hvsock.services.ping("unix:///nonexistent", interval=-1)),
    ("bench bounds", lambda: bench.round_trip("unix:///nonexistent", count=1, duration=1)),
    ("bench count", lambda: bench.round_trip("unix:///nonexistent", count=0)),
    ("bench size", lambda: bench.round_trip("unix:///nonexistent", count=1, size=0)),
    ("bench streams", lambda: bench.throughput("unix:///nonexistent", total_bytes=1, streams=0)),
    ("bench parallel", lambda: bench.connect_rate("unix:///nonexistent", count=1, parallel=0)),
    ("stress connections", lambda: stress.stress("unix:///nonexistent", connections=0)),
    ("stress timeout", lambda: stress.stress("unix:///nonexistent", timeout=0)),
    ("stress hold", lambda: stress.stress("unix:///nonexistent", hold=-1)),
    ("allow_rules", lambda: allow_rules(3)),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("call", [c for _, c in BAD_CALLS], ids=[n for n, _ in BAD_CALLS])
def test_bad_arguments_raise_argument_error(call: Callable[[], object]) -> None:
    with pytest.raises(ArgumentError) as info:
        call()
    assert isinstance(info.value, HvsockError)
    assert isinstance(info.value, ValueError)
    assert len(str(info.value)) < 300


def test_duplicate_and_empty_hosts_are_argument_errors() -> None:
    host = ServiceHost()
    host.add(Service("x", 5000, handler), "tcp://127.0.0.1:0")
    with pytest.raises(ArgumentError, match="already added"):
        host.add(Service("x", 5001, handler), "tcp://127.0.0.1:0")


@pytest.mark.parametrize("name", [" padded ", "", "tab\there", "x" * 257, "zero\u200bwidth"])
def test_a_name_gets_the_same_message_from_service_and_registration(name: str) -> None:
    with pytest.raises(ArgumentError) as declared:
        Service(name, 5000, handler)
    with pytest.raises(RegistryError) as registered:
        hvsock.windows.register_service(name, 5000, registry=MemoryRegistry())
    assert str(declared.value) == str(registered.value)


def test_a_long_bad_input_is_quoted_cut_short() -> None:
    with pytest.raises(ArgumentError) as info:
        Service(" " + "x" * 100_000 + " ", 5000, handler)
    assert len(str(info.value)) < 300
