"""The retry schedule as a value: the tiers that run real dials check only that each
pause lasts at least its wait (a busy machine stretches sleeps, so the exact
schedule is checked here, where no clock is involved)."""

from __future__ import annotations

import pytest

import hvsock
from hvsock._transports._common import MAX_RETRY_WAIT, retry_waits


def test_the_waits_double_from_retry_wait() -> None:
    assert retry_waits(3, 0.2) == pytest.approx([0.2, 0.4, 0.8])
    assert retry_waits(4, 0.05) == pytest.approx([0.05, 0.1, 0.2, 0.4])
    assert retry_waits(0, 0.25) == []


def test_the_waits_stop_growing_at_the_cap() -> None:
    waits = retry_waits(10_000, 0.25)
    assert len(waits) == 10_000
    assert waits[:6] == pytest.approx([0.25, 0.5, 1.0, 2.0, 4.0, MAX_RETRY_WAIT])
    assert set(waits[5:]) == {MAX_RETRY_WAIT}
    assert retry_waits(2, 0) == [0, 0]


@pytest.mark.parametrize(
    ("retries", "retry_wait"),
    [(-1, 0.1), (10_001, 0.1), (1.5, 0.1), (2, -0.1), (2, float("nan")), (2, "1")],
)
def test_bad_values_are_argument_errors(retries: object, retry_wait: object) -> None:
    with pytest.raises(hvsock.ArgumentError):
        retry_waits(retries, retry_wait)  # type: ignore[arg-type]
