"""Calibration of execution from the book: Kyle's lambda recovered from synthetic flow with a known slope, the
as-of join of fills to the book never looking ahead, a VWAP profile from real ES prints that sums to one and a
schedule that follows it, and each fill's slippage set beside the model's prediction."""
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bifrost.core import Fill, Side, TradingCalendar
from bifrost.execution.algos import Algo, ParentOrder, profile_from_volume, vwap_schedule
from bifrost.execution.costs import ImpactSlippage
from bifrost.signals.book import ES_MBO_2023_12_25, load_mbo
from bifrost.signals.calibration import book_at_fills, slippage_vs_model, trade_bars
from bifrost.signals.microstructure import calibrate_slippage, es_session, interval_flow, trade_spreads

SECOND = 1_000_000_000


def _synthetic_market(lam: float, half_spread: float, n: int = 400, seed: int = 7):
    "A mid that moves `lam` per unit of net signed volume each second (plus noise); trades at the mid ± the half spread."
    rng = np.random.default_rng(seed)
    sign = rng.choice([-1, 1], size=(n, 5))
    size = rng.integers(1, 11, size=(n, 5))
    mids = 100 + np.concatenate([[0.0], np.cumsum(lam * (sign * size).sum(axis=1) + rng.normal(0, 0.001, n))])
    quotes = pd.DataFrame({"ts": np.arange(n + 1) * SECOND, "bid_px": mids - half_spread, "ask_px": mids + half_spread})
    t = (np.arange(n)[:, None] * SECOND + (np.arange(5) * SECOND // 5 + SECOND // 10)[None, :]).ravel()
    trades = pd.DataFrame({"ts": t, "price": np.repeat(mids[:-1], 5) + sign.ravel() * half_spread,
                           "size": size.ravel()})
    return quotes, trades, sign.ravel()


def test_calibration_recovers_a_known_lambda():
    lam, half = 0.002, 0.01
    quotes, trades, sign = _synthetic_market(lam, half)
    spreads = trade_spreads(trades, quotes, horizon_ns=SECOND, sign=sign)
    flow = interval_flow(spreads, quotes, interval_ns=SECOND)
    cal = calibrate_slippage(spreads, flow)
    assert cal.lam.slope == pytest.approx(lam, rel=0.02) and cal.lam.t_stat > 50
    mid = np.median(spreads.mid)
    assert cal.half_spread_bps == pytest.approx(half / mid * 1e4, rel=0.01)
    assert cal.bps_per_participation == pytest.approx(cal.lam.slope * cal.interval_volume / mid * 1e4, rel=1e-12)
    model = cal.model()
    assert model == ImpactSlippage(Decimal(repr(round(cal.half_spread_bps, 4))),
                                   Decimal(repr(round(cal.bps_per_participation, 4))))
    # the model's price for a buy of 10% of an interval's volume: the mid's half spread plus lambda × that size
    x = Decimal("0.1")
    assert float(model.bps(x * 100, Decimal(100))) == pytest.approx(
        (half + lam * 0.1 * cal.interval_volume) / mid * 1e4, rel=0.03)


@settings(max_examples=200, deadline=None)
@given(quote_ts=st.lists(st.integers(0, 1_000), min_size=1, max_size=30),
       fill_ts=st.lists(st.integers(0, 1_100), min_size=1, max_size=10))
def test_the_book_at_a_fill_is_the_last_quote_strictly_before_it(quote_ts, fill_ts):
    qt = np.sort(np.array(quote_ts, dtype=np.int64))
    quotes = pd.DataFrame({"ts": qt, "bid_px": 100 + np.arange(len(qt)) * 0.01,
                           "ask_px": 100.05 + np.arange(len(qt)) * 0.01})
    fills = pd.DataFrame({"client_order_id": [f"o{k}" for k in range(len(fill_ts))], "symbol": "X", "side": "buy",
                          "quantity": 1.0, "price": 100.02, "ts": pd.to_datetime(fill_ts, utc=True)})
    got = book_at_fills(fills, quotes).set_index("client_order_id")
    for k, t in enumerate(fill_ts):
        row = got.loc[f"o{k}"]
        before = np.flatnonzero(qt < t)
        if len(before) == 0:
            assert row.quote_ts == -1 and np.isnan(row.bid) and not row.inside_touch
        else:
            assert row.quote_ts < t and row.quote_ts == qt[before[-1]]
            assert row.bid == quotes.bid_px.iloc[before[-1]]  # the last of quotes sharing that instant


@pytest.fixture(scope="module")
def es():
    return es_session(load_mbo(ES_MBO_2023_12_25))


def test_es_profile_sums_to_one_and_a_vwap_schedule_follows_it(es):
    quotes, trades, _ = es
    cme = TradingCalendar("CMES")
    prof = profile_from_volume(trades.ts, trades["size"], cme, "1min")
    assert prof.sum() == pytest.approx(1, abs=1e-12) and (prof >= 0).all()
    assert len(prof) == 24 * 60 and (prof[prof.index >= timedelta(hours=1)] == 0).all()  # only the first hour traded
    start = datetime(2023, 12, 25, 23, tzinfo=timezone.utc)
    parent = ParentOrder("es", "ESH4", Side.SELL, Decimal(1_000), start, start + timedelta(minutes=40),
                         timedelta(minutes=10), Algo.VWAP)
    slices = vwap_schedule(parent, prof, cme)
    tens = prof.iloc[:40].groupby(np.arange(40) // 10).sum().to_numpy()
    assert [s.start for s in slices] == [start + timedelta(minutes=10 * k) for k in range(4)]
    assert np.abs(np.array([float(s.quantity) for s in slices]) - 1_000 * tens / tens.sum()).max() <= 1
    assert slices[-1].cumulative == 1_000


def test_slippage_beside_the_model_by_hand():
    bars = trade_bars(pd.DataFrame({"ts": [0, 10, 20], "price": [100.0, 100.5, 99.5], "size": [400, 400, 200]}), "X")
    model = ImpactSlippage(1, 50)
    t0 = datetime(1970, 1, 1, tzinfo=timezone.utc)
    fills = [Fill("a-1", "a", "X", Side.BUY, Decimal(100), Decimal("100.02"), t0),
             Fill("b-1", "b", "X", Side.SELL, Decimal(250), Decimal("99.90"), t0 + timedelta(seconds=30))]
    got = slippage_vs_model(fills, bars, model).set_index("client_order_id")
    assert got.bar_volume.tolist() == [1_000.0, 1_000.0]
    assert got.participation.tolist() == [0.1, 0.25]
    assert got.predicted_bps.tolist() == [6.0, 13.5]           # 1 + 50 × 10%, 1 + 50 × 25%
    assert got.realised_bps.tolist() == pytest.approx([2.0, 10.0])  # 100.02 over 100, 99.90 under 100
