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
