"""The OMS end to end against the paper broker (`bifrost.execution.paper`): fills from bars land in the ledger
once, and the ledger and the broker agree on positions and cash."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from execution_helpers import T0, make_oms, seed

from bifrost.audit import AuditTrail
from bifrost.core import Bar, Order, SimulatedClock
from bifrost.core import OrderStatus as S
from bifrost.execution.oms import set_kill_switch

paper = pytest.importorskip("bifrost.execution.paper")


def bar(clock, o, h, l, c, v=1_000_000):
    clock.advance(timedelta(minutes=1))
    return Bar("SPY", clock.now(), o, h, l, c, v)


def test_paper_round_trip(store):
    clock = SimulatedClock(T0)
    portfolio = seed(store)
    broker = paper.PaperBroker(clock, cash=Decimal(100_000), participation=Decimal("0.5"))
    oms = make_oms(store, broker, portfolio, clock)
    assert oms.submit(Order("m-1", "SPY", "buy", Decimal(10))).status is S.ACCEPTED
    assert oms.submit(Order("l-1", "SPY", "buy", Decimal(20), "limit", "day", limit_price=Decimal("380.00"))).status \
        is S.ACCEPTED
    broker.on_bar(bar(clock, 385.5, 386.0, 385.0, 385.9))           # the market order fills at the open
    oms.sync()
    assert (oms.order("m-1").status, oms.order("l-1").status) == (S.FILLED, S.ACCEPTED)
    broker.on_bar(bar(clock, 381.0, 381.5, 379.0, 379.5, v=24))     # the limit crosses; half the bar's volume
    oms.sync(); oms.sync()
    rec = oms.order("l-1")
    assert rec.status is S.PARTIALLY_FILLED and rec.filled_quantity == 12
    clock.set(datetime(2021, 3, 1, 21, 0, tzinfo=UTC))   # the close: the rest of the day order expires
    oms.sync()
    assert oms.order("l-1").status is S.EXPIRED and oms.order("l-1").filled_quantity == 12
    assert portfolio.book.positions() == broker.positions() == {"SPY": Decimal(22)}
    assert portfolio.book.cash()["USD"] == broker.cash()
    assert len(oms.journal.fills()) == len(broker.fills()) == 2


def test_paper_kill_switch(store):
    clock = SimulatedClock(T0)
    portfolio = seed(store)
    broker = paper.PaperBroker(clock, cash=Decimal(100_000))
    oms = make_oms(store, broker, portfolio, clock)
    oms.submit(Order("l-1", "SPY", "buy", Decimal(20), "limit", "gtc", limit_price=Decimal("380.00")))
    set_kill_switch(store, True, "test", clock.now(), AuditTrail(store))
    oms.sync()
    assert oms.order("l-1").status is S.CANCELLED and broker.open_orders() == []


# -- issue 15: partial fills, cancels and restarts never split the ledger from the broker ------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bifrost.portfolio.ledger import Portfolio  # noqa: E402
from bifrost.store import connect  # noqa: E402

_op = st.one_of(
    st.tuples(st.just("market"), st.sampled_from(["buy", "sell"]), st.integers(1, 120)),
    st.tuples(st.just("limit"), st.sampled_from(["buy", "sell"]), st.integers(1, 120), st.integers(-150, 150)),
    st.tuples(st.just("bar"), st.integers(0, 90), st.integers(-100, 100)),
    st.tuples(st.just("cancel"), st.integers(0, 20)),
    st.tuples(st.just("restart")),
)
_runs = iter(range(10**6))


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    s = connect(f"duckdb:///{tmp_path_factory.mktemp('prop')}/p.duckdb")
    with s.session():
        yield s


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(_op, min_size=1, max_size=14))
def test_random_partial_fills_cancels_and_restarts_keep_ledger_equal_to_broker(shared_store, ops):
    "After every step (an order, a bar that fills part of it, a cancel, an OMS restart), ledger = broker to the cent."
    store, run = shared_store, next(_runs)
    clock = SimulatedClock(T0)
    portfolio = seed(store, f"prop{run}")
    broker = paper.PaperBroker(clock, cash=Decimal(100_000), participation=Decimal("0.5"))
    oms = make_oms(store, broker, portfolio, clock)
    sent, px = [], Decimal("385.00")
    for k, op in enumerate(ops):
        if op[0] in ("market", "limit"):
            coid = f"p{run}-{k}"
            kind = dict(order_type="limit", time_in_force="gtc", limit_price=px + Decimal(op[3]) / 100) \
                if op[0] == "limit" else {}
            oms.submit(Order(coid, "SPY", op[1], Decimal(op[2]), **kind))
            sent.append(coid)
        elif op[0] == "bar":
            o = px + Decimal(op[2]) / 100
            broker.on_bar(bar(clock, float(o), float(o + 1), float(o - 1), float(o), op[1]))
        elif op[0] == "cancel" and sent:
            oms.cancel(sent[op[1] % len(sent)], "changed my mind")
        elif op[0] == "restart":  # a new process: the ledger from the store, the OMS recovering its open orders
            portfolio = Portfolio.load(store, portfolio.name)
            oms = make_oms(store, broker, portfolio, clock)
            oms.recover()
        oms.sync()
        assert portfolio.book.positions() == {s: q for s, q in broker.positions().items() if q}
        assert portfolio.book.cash()["USD"] == broker.cash()
        for coid in sent:
            rec, theirs = oms.order(coid), broker.get_order(coid)
            if theirs is not None:
                assert rec.filled_quantity == theirs.filled_quantity, (coid, rec.status, theirs.status)
    assert not oms.anomalies
    booked = store.scalar("SELECT count(*) FROM order_fills f JOIN orders o ON o.client_order_id = f.client_order_id "
                          "WHERE o.account = ?", [portfolio.name])
    assert booked == len(broker.fills())  # each fill recorded exactly once
