"""Walk the public API with bad arguments: only HvsockError subclasses may come out.

Each function gets a safe call (addresses where nothing can be reached: a Unix path
in a directory that does not exist, never AF_VSOCK), then one argument at a time is
replaced by a hostile value: wrong types, out of range, NaN, huge numbers, huge strings.
The call may succeed (the value was fine after all) or raise; what it raises must be
an ``hvsock.HvsockError`` whose message stays short (user input is quoted cut short).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hvsock
import hvsock.framing
import hvsock.sockets
import hvsock.windows

NOWHERE = "unix:///nonexistent-hvsock-dir/x.sock"
VM = uuid.UUID("5d1b3f57-1f3e-4c8d-9b6a-0123456789ab")
TEMPLATE = hvsock.windows.VSOCK_TEMPLATE

#: Hostile values for any argument. Text never contains "://", so no generated value
#: can become a reachable address (and certainly not a vsock one).
HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([-1, 0, 2**32, 2**64, 10**5000, -(10**5000)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40).filter(lambda s: "://" not in s),
    st.sampled_from(["x" * 100_000, "\0", "٣", "0" * 10_000 + "1", " 5 ", "{}", "-"]),
    st.binary(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.builds(object),
    st.just(uuid.uuid4()),
)


def _run(coro_fn: Callable[..., Any]) -> Callable[..., Any]:
    return lambda *a, **k: asyncio.run(coro_fn(*a, **k))


# name -> (callable, safe positional args, safe keyword args)
CASES: dict[str, tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = {
    "connect": (
        hvsock.connect,
        (NOWHERE,),
        {"timeout": 0.5, "retries": 0, "retry_wait": 0.0, "buffer_size": 65536},
    ),
    "connect_socket": (
        _run(hvsock.connect_socket),
        (NOWHERE,),
        {"timeout": 0.5, "retries": 0, "retry_wait": 0.0},
    ),
    "open_connection": (
        _run(hvsock.open_connection),
        (NOWHERE,),
        {"timeout": 0.5, "retries": 0, "retry_wait": 0.0},
    ),
    "listen": (hvsock.listen, (NOWHERE,), {"backlog": 1, "buffer_size": 65536, "mode": 0o600}),
    "parse_address": (hvsock.parse_address, ("tcp://127.0.0.1:1",), {}),
    "describe_address": (hvsock.describe_address, (hvsock.TcpAddress("127.0.0.1", 1),), {}),
    "host_view": (
        hvsock.windows.host_view,
        (hvsock.VsockAddress(hvsock.sockets.CID_HOST, 5), VM),
        {},
    ),
    "guest_view": (
        hvsock.windows.guest_view,
        (hvsock.HyperVAddress(VM, TEMPLATE),),
        {"guest_listens": False},
    ),
    "port_for_service_id": (hvsock.windows.port_for_service_id, (TEMPLATE,), {}),
    "service_id_for_port": (hvsock.windows.service_id_for_port, (5,), {}),
    "is_template_service_id": (hvsock.windows.is_template_service_id, (TEMPLATE,), {}),
    "listener_address": (hvsock.sockets.listener_address, (None, "tcp://127.0.0.1:1"), {}),
    "remove_socket_file": (hvsock.sockets.remove_socket_file, (NOWHERE,), {}),
    "VsockAddress": (hvsock.VsockAddress, (3, 5), {}),
    "HyperVAddress": (hvsock.HyperVAddress, (VM, TEMPLATE), {}),
    "NamedVmAddress": (hvsock.NamedVmAddress, ("MyVM", TEMPLATE), {}),
    "HybridAddress": (hvsock.HybridAddress, ("/nonexistent-hvsock-dir/v.sock", 52), {}),
    "TcpAddress": (hvsock.TcpAddress, ("127.0.0.1", 1), {}),
    "UnixAddress": (hvsock.UnixAddress, ("/nonexistent-hvsock-dir/x.sock",), {}),
    "encode_frame": (hvsock.framing.encode_frame, (b"x",), {"max_size": 1024}),
    "FrameDecoder": (hvsock.framing.FrameDecoder, (), {"max_size": 1024}),
    "decode_message": (hvsock.framing.decode_message, (b"{}",), {}),
}


def _slots(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[int | str]:
    return [*range(len(args)), *kwargs]


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_bad_arguments_raise_only_hvsock_errors(name: str, data: st.DataObject) -> None:
    function, args, kwargs = CASES[name]
    slot = data.draw(st.sampled_from(_slots(args, kwargs)), label="argument")
    value = data.draw(HOSTILE, label="value")
    call_args, call_kwargs = list(args), dict(kwargs)
    if isinstance(slot, int):
        call_args[slot] = value
    else:
        call_kwargs[slot] = value
    try:
        result = function(*call_args, **call_kwargs)
    except hvsock.HvsockError as exc:
        message = str(exc)
    else:
        message = ""
        _close(result)
    assert len(message) < 2000, f"{name}: a {len(message)}-character message"


def _close(result: object) -> None:
    """Close what an accepted call made (nothing is reachable, so this is rare)."""
    close = getattr(result, "close", None)
    if callable(close) and not isinstance(result, (hvsock.framing.FrameDecoder,)):
        close()
    if isinstance(result, tuple) and len(result) == 2 and hasattr(result[1], "close"):
        result[1].close()  # pragma: no cover - a StreamWriter (never reached: NOWHERE)
