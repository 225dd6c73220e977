"""TCA from what the OMS recorded: intended quantities, partial fills and expiries give the opportunity cost,
and Perold's implementation shortfall adds up."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pandas as pd
import pytest
from execution_helpers import T0, make_oms, seed

from bifrost.analytics.tca import oms_orders, tca_orders
from bifrost.core import Bar, Order, SimulatedClock
from bifrost.execution.paper import PaperBroker


def test_partial_fill_then_expiry_costs_the_unfilled_part(store):
    clock = SimulatedClock(T0)
    portfolio = seed(store)
    broker = PaperBroker(clock, cash=Decimal(100_000), participation=Decimal("0.5"))
    oms = make_oms(store, broker, portfolio, clock)
    oms.submit(Order("m-1", "SPY", "buy", Decimal(10), created_at=clock.now()))
    oms.submit(Order("l-1", "SPY", "buy", Decimal(20), "limit", "day", limit_price=Decimal("380.00"),
                     created_at=clock.now()))
    bars = []
    for o, h, l, c, v in [(385.5, 386.0, 385.0, 385.9, 1_000_000), (381.0, 381.5, 379.0, 379.5, 24),
                          (382.0, 384.0, 381.5, 383.0, 1_000_000)]:
        clock.advance(timedelta(minutes=1))
        bars.append(Bar("SPY", clock.now(), o, h, l, c, v))
        broker.on_bar(bars[-1])
        oms.sync()
    clock.set(datetime(2021, 3, 1, 21, 0, tzinfo=UTC))  # the close: the limit order's remainder expires
    oms.sync()
    frame = pd.DataFrame([dict(symbol=b.symbol, ts=b.ts, open=b.open, high=b.high, low=b.low, close=b.close,
                               volume=b.volume) for b in bars])
    orders = oms_orders(store, portfolio.name)
    assert orders.set_index("client_order_id").order_quantity.to_dict() == {"m-1": 10.0, "l-1": 20.0}
    tca = tca_orders(oms.journal.fills(), frame, orders=orders.assign(arrival_price=385.0))
    m, lim = tca.loc["m-1"], tca.loc["l-1"]
    assert (m.unfilled, m.opportunity_cost) == (0.0, 0.0)
    assert (lim.quantity, lim.unfilled) == (12.0, 8.0)  # half the 24-share bar, then expired
    # the remainder stopped at the close, when the last bar had closed at 383.00: 8 × (383 − 385) saved
    assert lim.end_price == 383.0 and lim.opportunity_cost == pytest.approx(8 * (383.0 - 385.0))
    paper = 20 * 385.0
    assert lim.implementation_shortfall == pytest.approx(lim.shortfall + lim.commission + lim.fees + lim.opportunity_cost)
    assert lim.implementation_shortfall_bps == pytest.approx(lim.implementation_shortfall / paper * 1e4)
