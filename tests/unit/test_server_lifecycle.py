"""StopRequest (hvsock._server.lifecycle): the one stop every server kind shares. The
shortest grace asked for wins; a stop signal asks for the server's grace the first
time and for none after; an asyncio server's waits wake on every request."""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

import hvsock
import hvsock.forwarding
import hvsock.services
from hvsock._relay.config import SETTING_DEFAULTS
from hvsock._server.lifecycle import DEFAULT_GRACE, StopRequest


def test_nothing_is_asked_until_a_request() -> None:
    stop = StopRequest(5)
    assert not stop.requested
    assert stop.deadline == math.inf
    assert stop.left() == math.inf


@given(st.lists(st.one_of(st.none(), st.floats(0, 1e6)), min_size=1, max_size=8), st.floats(0, 1e6))
def test_the_shortest_grace_asked_for_wins(graces: list[float | None], default: float) -> None:
    stop = StopRequest(default)
    woken: list[None] = []
    stop.wake = lambda: woken.append(None)
    before = time.monotonic()
    for grace in graces:
        stop.request(grace)
    after = time.monotonic()
    shortest = min(default if g is None else g for g in graces)
    assert stop.requested
    assert before + shortest <= stop.deadline <= after + shortest
    assert len(woken) == len(graces)  # every request wakes the server's loop


def test_a_second_signal_asks_for_no_grace() -> None:
    stop = StopRequest(600)
    stop.signal()
    assert 590 < stop.left() <= 600
    stop.signal()
    assert stop.left() == 0


def test_a_later_longer_request_does_not_extend_the_grace() -> None:
    stop = StopRequest(600)
    stop.request(1)
    stop.request()  # the default, 600 s: no later than the 1 s already asked for
    assert stop.left() <= 1


@pytest.mark.parametrize("grace", [-1, float("nan"), float("inf"), "1", True])
def test_a_bad_grace_is_an_argument_error(grace: object) -> None:
    with pytest.raises(hvsock.ArgumentError, match="grace"):
        StopRequest(grace)  # type: ignore[arg-type]
    stop = StopRequest(1)
    with pytest.raises(hvsock.ArgumentError, match="grace"):
        stop.request(grace)  # type: ignore[arg-type]
    assert not stop.requested  # a refused request asks for nothing


def test_every_server_kind_has_the_same_default_grace() -> None:
    assert DEFAULT_GRACE == 10.0
    assert hvsock.ServiceHost().grace == DEFAULT_GRACE
    assert hvsock.services.BenchServer("tcp://127.0.0.1:0").grace == DEFAULT_GRACE
    assert (
        hvsock.forwarding.RelayConfig.build(
            [hvsock.forwarding.Forward.build("tcp://127.0.0.1:0", "tcp://127.0.0.1:1")]
        ).grace
        == DEFAULT_GRACE
    )
    from hvsock._builtin.agent.config import AgentConfig

    assert AgentConfig().grace == DEFAULT_GRACE


def test_relays_typed_keywords_default_to_the_configs() -> None:
    """Relay(...) spells every setting as a keyword; each default is RelayConfig's."""
    parameters = inspect.signature(hvsock.forwarding.Relay).parameters
    for name, default in SETTING_DEFAULTS.items():
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert parameters[name].default == default, name
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def test_wait_out_ends_at_a_deadline_a_later_request_brings_forward() -> None:
    async def main() -> tuple[float, int]:
        stop = StopRequest(600)
        stop.attach(asyncio.get_running_loop())
        forever: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        stop.request()
        # From another thread, as a stop(grace=0) or a second signal may come.
        threading.Timer(0.05, stop.request, args=(0,)).start()
        started = time.monotonic()
        pending = await asyncio.wait_for(stop.wait_out([forever, done]), 60)
        return time.monotonic() - started, len(pending)

    took, pending = asyncio.run(main())
    assert pending == 1  # the one that never ends is handed back to be cancelled
    assert took < 30


def test_wait_requested_sees_a_request_made_before_it_waits() -> None:
    async def main() -> None:
        stop = StopRequest(1)
        stop.request()
        stop.attach(asyncio.get_running_loop())
        await asyncio.wait_for(stop.wait_requested(), 30)

    asyncio.run(main())
