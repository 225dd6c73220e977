"""Backoff bounds, the circuit breaker's states, and which calls may repeat."""
from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bifrost.core import BrokerUnavailableError, Order, OrderRejectedError, SimulatedClock
from bifrost.execution.resilience import (
    BrokerCaller,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    FaultyBroker,
    RetryPolicy,
)

T0 = datetime(2024, 3, 1, 15, tzinfo=UTC)


@given(st.integers(1, 10), st.floats(0, 5), st.floats(0, 60), st.integers(0, 2**32))
def test_backoff_within_bounds(attempts, base, cap, seed):
    policy, rng = RetryPolicy(attempts, base, cap), random.Random(seed)
    for retry in range(attempts):
        assert 0 <= policy.delay(retry, rng) <= min(cap, base * 2 ** retry)


def test_backoff_grows_and_is_jittered():
    policy, rng = RetryPolicy(10, 0.1, 100), random.Random(1)
    means = [sum(policy.delay(r, rng) for _ in range(2000)) / 2000 for r in range(5)]
    for r, m in enumerate(means):  # full jitter: the mean is half the ceiling
        assert abs(m - 0.1 * 2 ** r / 2) < 0.1 * 2 ** r * 0.05
    assert len({policy.delay(3, rng) for _ in range(50)}) == 50


def _caller(broker, clock, threshold=3, attempts=4):
    waits = []
    return BrokerCaller(broker, CircuitBreaker(clock, threshold, timedelta(seconds=30)), RetryPolicy(attempts, 0.1, 1),
                        sleep=waits.append, rng=random.Random(0)), waits


def test_retry_then_give_up():
    clock = SimulatedClock(T0)
    broker = FaultyBroker(clock=clock)
    caller, waits = _caller(broker, clock, threshold=10, attempts=3)
    broker.fail("fills", times=3)
    with pytest.raises(BrokerUnavailableError):
        caller.call("fills", None)
    assert broker.calls["fills"] == 3 and len(waits) == 2 and caller.stats["retries"] == 2


def test_submit_is_never_retried():
    clock = SimulatedClock(T0)
    broker = FaultyBroker(prices={"SPY": Decimal(100)}, clock=clock)
    caller, _ = _caller(broker, clock)
    broker.fail("submit", "timeout_after")
    with pytest.raises(BrokerUnavailableError):
        caller.once("submit", Order("o-1", "SPY", "buy", Decimal(1)))
    assert broker.calls["submit"] == 1 and broker.received("o-1") == 1


def test_rejection_is_an_answer():
    clock = SimulatedClock(T0)
    broker = FaultyBroker(clock=clock)
    caller, waits = _caller(broker, clock, threshold=1)
    for _ in range(3):
        with pytest.raises(OrderRejectedError):
            caller.call("cancel", "nope")
    assert broker.calls["cancel"] == 3 and not waits and caller.breaker.state is CircuitState.CLOSED


def test_breaker_cycle():
    clock = SimulatedClock(T0)
    broker = FaultyBroker(clock=clock)
    caller, _ = _caller(broker, clock, threshold=3, attempts=1)
    broker.down()
    for i in range(3):
        assert caller.breaker.state is CircuitState.CLOSED
        with pytest.raises(BrokerUnavailableError):
            caller.call("cash")
    assert caller.breaker.state is CircuitState.OPEN
    n = broker.calls["cash"]
    clock.advance(timedelta(seconds=29))
    with pytest.raises(CircuitOpenError):
        caller.call("cash")
    assert broker.calls["cash"] == n                       # not hammered
    clock.advance(timedelta(seconds=1))
    with pytest.raises(BrokerUnavailableError) as e:       # the half-open trial reaches the broker and fails
        caller.call("cash")
    assert not isinstance(e.value, CircuitOpenError) and broker.calls["cash"] == n + 1
    assert caller.breaker.state is CircuitState.OPEN and caller.breaker.times_opened == 2
    broker.down(False)
    clock.advance(timedelta(seconds=30))
    assert caller.call("cash") == Decimal(1_000_000)
    assert caller.breaker.snapshot()["state"] == "closed" and caller.breaker.failures == 0


def test_breaker_logs_state_changes(caplog):
    clock = SimulatedClock(T0)
    broker = FaultyBroker(clock=clock)
    caller, _ = _caller(broker, clock, threshold=1, attempts=1)
    broker.down()
    with caplog.at_level("WARNING", logger="bifrost.execution"), pytest.raises(BrokerUnavailableError):
        caller.call("cash")
    assert "circuit closed -> open" in caplog.text
