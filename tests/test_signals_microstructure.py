"Microstructure measures: identities and straightforward re-implementations on seeded random inputs, real ES trade signs."
import numpy as np
import pandas as pd
import pytest

from bifrost.signals.book import ES_MBP1_2024_07_01, ES_TRADES_2024_07_01, read_book_file
from bifrost.signals.microstructure import (MicrostructureError, calibrate_slippage, depth, interval_flow, kyle_lambda,
                                            lee_ready, microprice, tick_rule, trade_spreads, volume_by_time, vpin)

def test_effective_is_realised_plus_impact_on_random_quotes():
    rng = np.random.default_rng(1)
    ts = np.sort(rng.integers(0, 10**9, 400))
    bid = 100 + np.cumsum(rng.choice([-0.25, 0, 0.25], 400))
    quotes = pd.DataFrame({"ts": ts, "bid_px": bid, "ask_px": bid + 0.25 * rng.integers(1, 4, 400)})
    trades = pd.DataFrame({"ts": np.sort(rng.integers(10**6, 10**9, 300)), "price": 100.0, "size": 1.0})
    trades["price"] = np.interp(trades.ts, ts, bid) + 0.25 * rng.integers(0, 2, 300)
    s = trade_spreads(trades, quotes, horizon_ns=10**7)
    np.testing.assert_allclose(s.effective, s.realised + s.impact, atol=1e-9)
    i = np.searchsorted(ts, trades.ts, side="left") - 1      # prevailing quote: the last strictly before
    np.testing.assert_array_equal(s.bid.to_numpy(), np.where(i >= 0, bid[np.maximum(i, 0)], np.nan))

def test_unsorted_quotes_and_bad_depth_args_are_refused():
    q = pd.DataFrame({"ts": [2, 1], "bid_px": [1.0, 1.0], "ask_px": [2.0, 2.0]})
    with pytest.raises(MicrostructureError, match="not sorted"):
        trade_spreads(pd.DataFrame({"ts": [3], "price": [1.5], "size": [1]}), q, horizon_ns=1)
    b = pd.DataFrame({"price": [99.0, 98.0], "size": [1.0, 2.0]}); a = pd.DataFrame({"price": [101.0, 102.0], "size": [3.0, 4.0]})
    assert depth(b, a, levels=1) == (1.0, 3.0) and depth(b, a, within=1.5) == (1.0, 3.0) and depth(b, a, levels=5) == (3.0, 7.0)
    with pytest.raises(MicrostructureError):
        depth(b, a)

def test_tick_rule_matches_a_plain_loop():
    rng = np.random.default_rng(2)
    for _ in range(20):
        p = 100 + rng.integers(-2, 3, 200).cumsum() * 0.5
        want, last = [], 0
        for i, x in enumerate(p):
            if i and x != p[i - 1]:
                last = 1 if x > p[i - 1] else -1
            want.append(last)
        assert tick_rule(p).tolist() == want

def test_microprice_between_bid_and_ask():
    rng = np.random.default_rng(3)
    b = rng.uniform(90, 110, 100); a = b + rng.uniform(0.01, 1, 100)
    m = microprice(b, a, rng.integers(1, 100, 100), rng.integers(1, 100, 100))
    assert ((m >= b) & (m <= a)).all()

def _vpin_loop(sign, size, bucket, window):
    ois, filled, buys = [], 0.0, 0.0
    for d, v in zip(sign, size):
        while v > 0:
            take = min(v, bucket - filled)
            filled += take; buys += take if d > 0 else 0; v -= take
            if filled == bucket:
                ois.append(abs(2 * buys - bucket) / bucket); filled, buys = 0.0, 0.0
    return [np.nan if k + 1 < window else np.mean(ois[k + 1 - window:k + 1]) for k in range(len(ois))]

def test_vpin_matches_a_bucket_filling_loop():
    rng = np.random.default_rng(4)
    for _ in range(10):
        sign = rng.choice([-1, 1], 300); size = rng.integers(1, 30, 300).astype(float)
        np.testing.assert_allclose(vpin(sign, size, bucket_volume=50, window=5), _vpin_loop(sign, size, 50.0, 5), atol=1e-9)

def test_kyle_lambda_recovers_a_known_slope():
    rng = np.random.default_rng(5)
    q = rng.normal(0, 100, 2000)
    fit = kyle_lambda(q, 0.002 * q + rng.normal(0, 0.05, 2000))
    assert abs(fit.slope - 0.002) < 0.0002 and fit.t_stat > 50 and fit.intervals == 2000

def test_lee_ready_finds_the_exchange_aggressor_on_es():
    mbp = read_book_file(ES_MBP1_2024_07_01)
    t = mbp[mbp.action == "T"]
    # a T row carries the book before the resting orders are reduced: the prevailing quote
    sign = lee_ready(t.price.astype(float), t.bid_px_00.astype(float), t.ask_px_00.astype(float))
    truth = t.side.map({"B": 1, "A": -1}).to_numpy()
    assert (sign == truth).mean() > 0.95
    trades = read_book_file(ES_TRADES_2024_07_01)
    assert trades.price.tolist() == t.price.tolist() and len(trades) == 120

def test_calibration_and_flow_on_es_mbp1():
    mbp = read_book_file(ES_MBP1_2024_07_01)
    quotes = pd.DataFrame({"ts": mbp.ts_recv.astype("int64"), "bid_px": mbp.bid_px_00.astype(float), "ask_px": mbp.ask_px_00.astype(float)})
    t = mbp[mbp.action == "T"]
    trades = pd.DataFrame({"ts": t.ts_recv.astype("int64"), "price": t.price.astype(float), "size": t["size"].astype(float)})
    s = trade_spreads(trades, quotes, horizon_ns=10**9, sign=t.side.map({"B": 1, "A": -1}).to_numpy())
    flow = interval_flow(s, quotes, interval_ns=10 * 10**9)
    assert flow.volume.sum() == 253 and flow.signed_volume.sum() == s.sign.mul(s["size"]).sum()
    cal = calibrate_slippage(s, flow)
    assert cal.half_spread_bps > 0 and cal.bps(0.5) >= cal.bps(0.0)
    prof = volume_by_time(trades.ts, trades["size"], freq="1min")
    assert abs(prof.sum() - 1) < 1e-12 and len(prof) == 4
