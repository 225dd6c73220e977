"Paper broker: invariants over random bars and orders, and a replay of every sample day of SPY and AAPL minutes."
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bifrost.core import (Bar, Broker, Order, OrderRejectedError, OrderStatus, OrderType, Side, SimulatedClock,
                          TimeInForce, TradingCalendar)
from bifrost.data.sources import SAMPLE, SampleSource
from bifrost.execution.costs import CENT, Commission, ImpactSlippage, Slippage
from bifrost.execution.paper import PaperBroker

T0 = datetime(2024, 3, 4, 14, 30, tzinfo=timezone.utc)
CAL = TradingCalendar("XNYS", start="2010-01-01")

prices = st.integers(9_000, 11_000)  # cents
bars_ = st.lists(st.tuples(prices, prices, prices, prices, st.integers(0, 5_000)), min_size=1, max_size=25)
orders_ = st.lists(st.tuples(st.sampled_from(["buy", "sell"]), st.integers(1, 800),
                             st.sampled_from(list(OrderType)), prices, prices,
                             st.sampled_from(list(TimeInForce)), st.integers(0, 10)), max_size=12)


def _order(k, side, qty, kind, p1, p2, tif):
    lim = Decimal(p1) / 100 if kind in (OrderType.LIMIT, OrderType.STOP_LIMIT) else None
    stop = Decimal(p2) / 100 if kind in (OrderType.STOP, OrderType.STOP_LIMIT) else None
    return Order(f"o{k}", "XYZ", Side(side), Decimal(qty), kind, tif, limit_price=lim, stop_price=stop)


@settings(max_examples=150, deadline=None)
@given(bars=bars_, orders=orders_, participation=st.sampled_from(["0.1", "0.5", "1", None]))
def test_random_books_reconcile_exactly(bars, orders, participation):
    clock = SimulatedClock(T0)
    pb = PaperBroker(clock, cash=50_000, commission=Commission(per_share="0.005", minimum=1), slippage=Slippage(5),
                     participation=participation, calendar=CAL)
    by_minute = {}
    for k, (side, qty, kind, p1, p2, tif, minute) in enumerate(orders):
        by_minute.setdefault(minute, []).append(_order(k, side, qty, kind, p1, p2, tif))
    made, sent = [], []
    for m, (a, b, c, d, v) in enumerate(bars):
        clock.set(T0 + timedelta(minutes=m))
        for o in by_minute.get(m, []):
            pb.submit(o)
            sent.append(o)
        lo, hi = min(a, b, c, d) / 100, max(a, b, c, d) / 100
        bar = Bar("XYZ", clock.now(), a / 100, hi, lo, d / 100, v)
        new = pb.on_bar(bar)
        made += new
        total = sum((f.quantity for f in new), Decimal(0))
        cap = Decimal(v) if participation is None else int(Decimal(v) * Decimal(participation))
        assert total <= cap, "a bar gave more than its share of volume"
        for f in new:
            assert Decimal(str(lo)) <= f.price <= Decimal(str(hi)), f"{f} outside its bar {bar}"
    assert pb.fills() == made
    assert len({f.fill_id for f in made}) == len(made)
    signed = sum((f.side.sign * f.quantity for f in made), Decimal(0))
    assert pb.positions().get("XYZ", Decimal(0)) == signed
    assert pb.cash() == Decimal(50_000) - sum((f.side.sign * f.quantity * f.price + f.commission for f in made),
                                              Decimal(0))
    for o in sent:
        got = pb.get_order(o.client_order_id)
        mine = [f for f in made if f.client_order_id == o.client_order_id]
        assert got.filled_quantity == sum((f.quantity for f in mine), Decimal(0)) <= o.quantity
        assert (got.status is OrderStatus.FILLED) == (got.filled_quantity == o.quantity)
        if o.order_type is OrderType.LIMIT:
            assert all(f.price <= o.limit_price if o.side is Side.BUY else f.price >= o.limit_price for f in mine)
        if o.time_in_force is TimeInForce.FOK:
            assert got.filled_quantity in (0, o.quantity)
        if o.time_in_force in (TimeInForce.IOC, TimeInForce.FOK):
            assert len({f.ts for f in mine}) <= 1, "IOC/FOK traded in more than one bar"
    open_ids = {o.client_order_id for o in pb.open_orders()}
    assert all(not pb.get_order(i).status.is_terminal for i in open_ids)


def test_commission_minimum_is_charged_once_per_order():
    clock = SimulatedClock(T0)
    pb = PaperBroker(clock, cash=0, commission=Commission(per_share="0.005", minimum=1), participation="0.1",
                     calendar=CAL)
    pb.submit(Order("a", "XYZ", Side.BUY, Decimal(300)))
    fills = pb.on_bars(pd.DataFrame({"ts": [T0 + timedelta(minutes=k) for k in range(3)], "open": 10.0,
                                     "high": 10.0, "low": 10.0, "close": 10.0, "volume": 1_000.0}), symbol="XYZ")
    assert [f.commission for f in fills] == [Decimal("1.00"), Decimal(0), Decimal("0.50")]
    assert pb.cash() == Decimal(-3000) - Decimal("1.50")


def test_an_order_never_trades_in_a_bar_that_started_before_it():
    clock = SimulatedClock(T0 + timedelta(seconds=30))
    pb = PaperBroker(clock, cash=0, calendar=CAL)
    pb.submit(Order("a", "XYZ", Side.BUY, Decimal(1)))
    assert pb.on_bar(Bar("XYZ", T0, 10, 10, 10, 10, 100)) == []
    assert [f.ts for f in pb.on_bar(Bar("XYZ", T0 + timedelta(minutes=1), 10, 10, 10, 10, 100))] == \
        [T0 + timedelta(minutes=1)]


def test_pre_market_bars_fill_nothing_unless_extended_hours():
    pre = T0 - timedelta(hours=2)
    for extended, expect in ((False, 0), (True, 1)):
        pb = PaperBroker(SimulatedClock(pre), cash=0, calendar=CAL, extended_hours=extended)
        pb.submit(Order("a", "XYZ", Side.BUY, Decimal(1), time_in_force=TimeInForce.GTC))
        assert len(pb.on_bar(Bar("XYZ", pre, 10, 10, 10, 10, 100))) == expect


def test_day_order_sent_after_the_close_works_the_next_session():
    friday_evening = datetime(2024, 3, 1, 22, 0, tzinfo=timezone.utc)
    pb = PaperBroker(SimulatedClock(friday_evening), cash=0, calendar=CAL)
    pb.submit(Order("a", "XYZ", Side.BUY, Decimal(1)))
    assert pb.get_order("a").status is OrderStatus.ACCEPTED
    assert len(pb.on_bar(Bar("XYZ", T0, 10, 10, 10, 10, 100))) == 1  # Monday's open


def test_rejections_change_nothing():
    pb = PaperBroker(SimulatedClock(T0), cash=100, calendar=CAL)
    pb.submit(Order("a", "XYZ", Side.BUY, Decimal(1)))
    with pytest.raises(OrderRejectedError, match="already used"):
        pb.submit(Order("a", "XYZ", Side.SELL, Decimal(5)))
    with pytest.raises(OrderRejectedError, match="no order"):
        pb.cancel("nope")
    assert [o.client_order_id for o in pb.open_orders()] == ["a"] and pb.cash() == 100
    assert isinstance(pb, Broker)


def _minutes(ticker):
    f = next(f for f in SAMPLE if f.spec.ticker == ticker and f.spec.bar_size == "1min")
    return SampleSource((f,)).fetch(f.spec).bars.assign(symbol=ticker)


def test_replay_of_every_sample_day_reconciles_with_its_fills():
    "Both one-minute samples, SPY and AAPL (its 7:1 split day included), every day, one interleaved tape."
    bars = pd.concat([_minutes("SPY"), _minutes("AAPL")], ignore_index=True).sort_values(["ts", "symbol"])
    clock = SimulatedClock(bars.ts.iloc[0].to_pydatetime())
    pb = PaperBroker(clock, cash=1_000_000, commission=Commission(bps=1, minimum=1), slippage=Slippage(2),
                     participation="0.02", calendar=CAL)
    n = 0
    for row in bars.itertuples():
        t = row.ts.to_pydatetime()
        pb.on_bar(Bar(row.symbol, t, row.open, row.high, row.low, row.close, row.volume))
        if t + timedelta(minutes=1) > clock.now():
            clock.set(t + timedelta(minutes=1))  # the bar is over: what is decided now trades in a later bar
        if f"{row.ts.tz_convert('America/New_York'):%H:%M}" == "15:50":  # too big to fill before the close
            pb.submit(Order(f"big{t:%m%d}{row.symbol}", row.symbol, Side.BUY, Decimal(1_000_000)))
        if t.minute % 15 == 0:  # alternate buying and selling 3,000 at market, limits around the close
            n += 1
            side = Side.BUY if n % 2 else Side.SELL
            pb.submit(Order(f"m{n}", row.symbol, side, Decimal(3000)))
            off = Decimal("-0.05") if side is Side.BUY else Decimal("0.05")
            pb.submit(Order(f"l{n}", row.symbol, side, Decimal(700), OrderType.LIMIT, TimeInForce.GTC,
                            limit_price=Decimal(repr(row.close)).quantize(Decimal("0.01")) + off))
    fills = pb.fills()
    assert len(fills) > 300
    counts = pd.Series([f.client_order_id for f in fills]).value_counts()
    assert counts.max() > 1, "no order filled in parts"
    assert any(pb.get_order(k).status is OrderStatus.EXPIRED for k in counts.index), "no partly filled order expired"
    for sym in ("SPY", "AAPL"):
        assert pb.positions().get(sym, Decimal(0)) == sum((f.side.sign * f.quantity for f in fills if f.symbol == sym),
                                                          Decimal(0))
    assert pb.cash() == Decimal(1_000_000) - sum((f.side.sign * f.quantity * f.price + f.commission for f in fills),
                                                 Decimal(0))
    by_order = {}
    for f in fills:
        by_order[f.client_order_id] = by_order.get(f.client_order_id, Decimal(0)) + f.quantity
    assert all(pb.get_order(k).filled_quantity == q for k, q in by_order.items())


def test_fills_since_is_inclusive_and_survives_bars_out_of_order():
    clock = SimulatedClock(T0)
    pb = PaperBroker(clock, cash=0, calendar=CAL)
    for k, minute in enumerate([0, 1, 2, 1]):  # the last bar is late: another symbol's tape, replayed behind
        sym = "XYZ" if k < 3 else "ABC"
        pb.submit(Order(f"o{k}", sym, Side.BUY, Decimal(1), time_in_force=TimeInForce.GTC))
        pb.on_bar(Bar(sym, T0 + timedelta(minutes=minute), 10, 10, 10, 10, 100))
    times = [f.ts for f in pb.fills()]
    assert times == [T0 + timedelta(minutes=m) for m in (0, 1, 2, 1)]
    for m in range(4):
        since = T0 + timedelta(minutes=m)
        assert pb.fills(since) == [f for f in pb.fills() if f.ts >= since]


def test_quotes_fill_at_the_touch_within_the_size_shown():
    pb = PaperBroker(SimulatedClock(T0), cash=0, calendar=CAL)
    pb.submit(Order("b", "XYZ", Side.BUY, Decimal(300), OrderType.LIMIT, TimeInForce.IOC, limit_price=Decimal("10.01")))
    fills = pb.on_quote("XYZ", T0, Decimal("10.00"), Decimal("10.01"), ask_size=120)
    assert [(f.quantity, f.price) for f in fills] == [(120, Decimal("10.01"))]
    assert pb.get_order("b").status is OrderStatus.CANCELLED  # IOC: the rest is gone
    with pytest.raises(ValueError, match="timezone-aware"):
        pb.on_quote("XYZ", T0.replace(tzinfo=None), 10, 10.01)


@settings(max_examples=300, deadline=None)
@given(bps=st.integers(0, 50), per_share=st.integers(0, 100), minimum=st.integers(0, 500), slip=st.integers(0, 100),
       shares=st.integers(1, 100_000), cents=st.integers(100, 100_000), spread=st.integers(0, 500))
def test_cost_models_agree_with_the_backtest_engines_costs(bps, per_share, minimum, slip, shares, cents, spread):
    "The paper broker's models charge what `bifrost.strategy.api.Costs` charges, up to the cent and the tick."
    from bifrost.strategy.api import Costs
    from bifrost.execution.costs import cost_models
    costs = Costs(commission_bps=bps / 10, per_share=per_share / 10_000, minimum=minimum / 100, slippage_bps=slip / 10)
    commission, slippage = cost_models(costs.commission_bps, costs.per_share, costs.minimum, costs.slippage_bps)
    price = Decimal(cents) / 100
    exact = commission.total(Decimal(shares), shares * price)
    assert abs(float(exact) - costs.commission(shares, float(price))) <= 0.005 + 1e-9
    low, high = price - Decimal(spread) / 100, price + Decimal(spread) / 100
    tick = Decimal("0.01")
    buy = slippage.price(Side.BUY, price, low, high, tick)
    sell = slippage.price(Side.SELL, price, low, high, tick)
    assert -1e-9 <= float(buy) - costs.buy_price(float(price), float(high)) < 0.01 + 1e-9  # rounded up to the tick
    assert -1e-9 <= costs.sell_price(float(price), float(low)) - float(sell) < 0.01 + 1e-9  # rounded down


@settings(max_examples=300, deadline=None)
@given(half=st.integers(0, 200), k=st.integers(0, 2_000), qty=st.integers(1, 5_000), volume=st.integers(0, 5_000),
       open_=st.integers(9_000, 11_000), down=st.integers(0, 300), up=st.integers(0, 300),
       side=st.sampled_from([Side.BUY, Side.SELL]))
def test_impact_slippage_is_the_fixed_model_at_its_own_bps(half, k, qty, volume, open_, down, up, side):
    "At any size, ImpactSlippage prices exactly as Slippage would at the bps the participation gives: same cap, same tick."
    impact = ImpactSlippage(Decimal(half) / 10, Decimal(k) / 10)
    o, lo, hi = Decimal(open_) / 100, Decimal(open_ - down) / 100, Decimal(open_ + up) / 100
    q, v = Decimal(qty), Decimal(volume)
    px = impact.price(side, o, lo, hi, CENT, q, v)
    assert px == Slippage(impact.bps(q, v)).price(side, o, lo, hi, CENT)
    assert lo <= px <= hi and px % CENT == 0
    assert (px >= o) if side is Side.BUY else (px <= o)
    bigger = impact.price(side, o, lo, hi, CENT, q + 1, v)
    assert (bigger >= px) if side is Side.BUY else (bigger <= px), "more size never costs less"


def test_paper_broker_charges_each_fill_its_own_participation():
    "Two orders share a bar: each pays for its own share of the volume; the rest of a big sell is capped at the low."
    pb = PaperBroker(SimulatedClock(T0), cash=0, slippage=ImpactSlippage(1, 100), participation="0.5", calendar=CAL)
    pb.submit(Order("small", "XYZ", Side.BUY, Decimal(100)))
    pb.submit(Order("big", "XYZ", Side.BUY, Decimal(1_900)))
    fills = pb.on_bar(Bar("XYZ", T0, 50.00, 50.40, 49.90, 50.10, 4_000))
    # 1 + 100 × 2.5% = 3.5 bp -> 50.0175 up to 50.02; the big one takes the 1,900 left of 2,000: 1 + 47.5 = 48.5 bp
    # -> 50.2425 up to 50.25
    assert [(f.client_order_id, f.quantity, f.price) for f in fills] == \
        [("small", 100, Decimal("50.02")), ("big", 1_900, Decimal("50.25"))]
    pb.submit(Order("dump", "XYZ", Side.SELL, Decimal(3_000), time_in_force=TimeInForce.IOC))
    (f,) = pb.on_bar(Bar("XYZ", T0 + timedelta(minutes=1), 50.00, 50.10, 49.80, 49.90, 4_000))
    assert (f.quantity, f.price) == (2_000, Decimal("49.80"))  # 101 bp below 50.00 is 49.495: capped at the low
    assert pb.get_order("dump").status is OrderStatus.CANCELLED


def test_impact_slippage_leaves_quotes_and_limits_alone():
    "Quotes trade at the touch (the spread is the cost); a marketable limit never pays past its limit."
    pb = PaperBroker(SimulatedClock(T0), cash=0, slippage=ImpactSlippage(5, 1_000), calendar=CAL)
    pb.submit(Order("q", "XYZ", Side.BUY, Decimal(10)))
    assert [f.price for f in pb.on_quote("XYZ", T0, Decimal("10.00"), Decimal("10.01"), ask_size=10)] == \
        [Decimal("10.01")]
    pb.submit(Order("l", "XYZ", Side.BUY, Decimal(500), OrderType.LIMIT, limit_price=Decimal("10.03")))
    (f,) = pb.on_bar(Bar("XYZ", T0, 10.00, 10.20, 9.95, 10.10, 1_000))
    assert f.price == Decimal("10.03")  # 5 + 500 bp would be 10.505; the limit binds
