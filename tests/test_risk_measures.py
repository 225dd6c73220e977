"""Drawdown against brute force, concentration bounds, exact exposures, and stress replayed from both store backends."""
from __future__ import annotations

from decimal import Decimal

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bifrost.data.ingest import ingest
from bifrost.data.read import read_bars
from bifrost.data.sources import SAMPLE, SampleSource
from bifrost.risk.measures import concentration, drawdown, exposures
from bifrost.risk.stress import Scenario, equity_shock, historical_scenario, stress, stress_table
from bifrost.risk.var import RiskError

navs = st.lists(st.floats(1.0, 1_000.0, allow_nan=False), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(v=navs)
def test_drawdown_matches_brute_force(v):
    d = drawdown(v)
    falls = [(1 - v[j] / max(v[: j + 1]), j) for j in range(len(v))]
    deepest = max(f for f, _ in falls)
    assert d.max_drawdown == pytest.approx(deepest, abs=1e-12)
    assert d.current_drawdown == pytest.approx(falls[-1][0], abs=1e-12)
    # the peak is the last time before the trough the curve stood at its running maximum
    t = d.trough
    assert v[d.peak] == max(v[: t + 1]) and all(v[i] < v[d.peak] for i in range(d.peak + 1, t + 1))
    later = [j for j in range(t, len(v)) if v[j] >= v[d.peak]]
    assert d.recovered == (later[0] if later else None)
    assert d.duration == (later[0] if later else len(v) - 1) - d.peak
    # the longest spell from a peak until the curve is back at it (or the end)
    longest, start, fell = 0, 0, False
    for j in range(1, len(v)):
        if v[j] >= max(v[:j]):
            longest = max(longest, j - start) if fell else longest
            start, fell = j, False
        else:
            fell = True
    assert d.longest_duration == (max(longest, len(v) - 1 - start) if fell else longest)
    assert d.current_duration == len(v) - 1 - max(j for j in range(len(v)) if v[j] >= max(v[: j + 1]))


def test_drawdown_keeps_dates():
    nav = pd.Series([100.0, 90, 95, 101], index=pd.date_range("2024-01-01", periods=4))
    d = drawdown(nav)
    assert (d.peak, d.trough, d.recovered) == tuple(pd.Timestamp(x) for x in ("2024-01-01", "2024-01-02", "2024-01-04"))


@settings(max_examples=100, deadline=None)
@given(w=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=30).filter(lambda w: any(abs(x) > 1e-3 for x in w)),
       top=st.integers(1, 40))
def test_concentration_bounds(w, top):
    c = concentration(w, top_n=top)
    nonzero = sum(1 for x in w if x != 0)
    assert 1 / nonzero - 1e-12 <= c.herfindahl <= 1 + 1e-12
    assert c.top_n_weight == pytest.approx(sum(s for _, s in c.largest))
    assert c.top_n_weight <= 1 + 1e-12 and len(c.largest) == min(top, len(w))
    shares = [s for _, s in c.largest]
    assert shares == sorted(shares, reverse=True)


@settings(max_examples=100, deadline=None)
@given(values=st.dictionaries(st.sampled_from(list("ABCDEFG")), st.decimals(-10**6, 10**6, places=2, allow_nan=False)),
       sectors=st.dictionaries(st.sampled_from(list("ABCDEFG")), st.sampled_from(["Tech", "Energy", None])))
def test_exposures_are_exact(values, sectors):
    e = exposures(values, sectors)
    assert e.gross == e.long + e.short and e.net == sum(values.values(), Decimal(0))
    assert e.short >= 0 and e.long >= 0
    assert sum(e.by_sector.values(), Decimal(0)) == e.net


@pytest.fixture
def sample_store(store):
    feeds = tuple(f for f in SAMPLE if f.primary and f.spec.ticker in ("SPY", "BAC", "GOOG", "GOOGL", "FB") and f.spec.bar_size == "1d")
    ingest(store, SampleSource(feeds), progress=False)
    return store


def test_historical_scenario_on_both_backends(sample_store):
    "The 2008 window from the store equals the ratio of the two closes in the shipped file, split-adjusted."
    before = sample_store.query("SELECT COUNT(*) AS n FROM bars").n.iloc[0]
    s = historical_scenario(sample_store, "financial crisis 2008-09", ["SPY", "BAC", "FB"], proxies={"FB": "GOOGL"})
    bars = read_bars(sample_store, ["SPY", "BAC", "GOOGL"], "1d", "2008-08-29", "2009-03-09")
    for sym in ("SPY", "BAC", "GOOGL"):
        c = bars[bars.symbol == sym].close
        assert s.returns["FB" if sym == "GOOGL" else sym] == pytest.approx(c.iloc[-1] / c.iloc[0] - 1, rel=1e-12)
    raw = pd.read_parquet(SampleSource().root / "daily" / "SPY_daily_lean.parquet")
    raw = raw.set_index(pd.to_datetime(raw.date.astype(str))).close
    assert s.returns["SPY"] == pytest.approx(raw["2009-03-09"] / raw["2008-08-29"] - 1, rel=1e-12)  # no SPY split then
    assert "FB via proxy GOOGL" in s.description
    with pytest.raises(RiskError, match=r"no return for FB \(no bars stored"):
        historical_scenario(sample_store, "financial crisis 2008-09", ["FB"])
    assert sample_store.query("SELECT COUNT(*) AS n FROM bars").n.iloc[0] == before  # replay reads only


def test_stress_table_totals_and_shorts():
    book = {"A": 1_000.0, "B": -500.0, "C": Decimal("250.25")}
    s = Scenario("mixed", {"A": -0.1, "B": -0.2}, default=0.05)
    r = stress(book, s)
    assert r.pnl == {"A": -100.0, "B": 100.0, "C": pytest.approx(12.5125)}
    assert r.total == pytest.approx(12.5125) and r.loss == pytest.approx(-12.5125)
    t = stress_table(book, [s, equity_shock(-0.5)])
    assert list(t.index) == ["A", "B", "C", "total"] and t.loc["total", "equities -50%"] == pytest.approx(-375.125)
    with pytest.raises(RiskError, match="finite"):
        stress({"A": float("nan")}, s)
