"""bifrost.analytics: every metric against empyrical-reloaded (or a hand-worked / brute-force reference) on the
sample's real returns, bad input, attribution identities, TCA on hand-built fills.

The notebooks nbs/07*_analytics.*.ipynb hold the worked examples; these tests are the wider net: more series,
more conventions, random panels with gaps, and the edge cases.
"""
from __future__ import annotations

import empyrical as ep
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from bifrost.analytics import kernels as K
from bifrost.analytics import relative as Rel
from bifrost.analytics.attribution import brinson_fachler, brinson_fachler_terms, factor_exposure
from bifrost.analytics.bench import analytics_benchmark, bootstrap_returns
from bifrost.analytics.metrics import (
    AnalyticsWarning, UndefinedMetricWarning, align, as_returns, drawdown_table, performance_metrics,
    returns_from_nav, rolling_metrics)
from bifrost.analytics.tca import tca_orders, tca_summary

SYMBOLS = ["SPY", "QQQ", "AAPL", "IWM", "EEM", "BAC", "WM", "USO"]


@pytest.fixture(scope="module")
def rets() -> pd.DataFrame:
    "Real daily total returns, 2006–2020 (USO starts in 2006; QQQ has a gap while it traded as QQQQ)."
    return K.sample_returns(SYMBOLS, "2006-04-11", "2020-12-31")


@pytest.fixture(scope="module")
def full(rets) -> pd.DataFrame:
    "The same, on the dates every symbol has, so empyrical's NaN-naive functions can be compared column by column."
    return rets.dropna()


def per_col(f, X, *args, **kw):
    return np.array([f(X[:, j], *args, **kw) for j in range(X.shape[1])])


# --- single-series statistics against empyrical -------------------------------------------------------------

CONVENTIONS = [  # (periods per year, empyrical period name, aggregation of the daily returns)
    (252, "daily", None), (52, "weekly", "W-FRI"), (12, "monthly", "ME")]


@pytest.fixture(scope="module", params=CONVENTIONS, ids=[c[1] for c in CONVENTIONS])
def panel(request, full):
    ppy, period, rule = request.param
    r = full if rule is None else (1 + full).resample(rule).prod() - 1
    return r.to_numpy(), ppy, period


@pytest.mark.parametrize("rate", [0.0, 0.03])
def test_return_and_risk_match_empyrical(panel, rate):
    X, ppy, period = panel
    rp = K.per_period_rate(rate, ppy)
    np.testing.assert_allclose(K.total_return(X), per_col(ep.cum_returns_final, X), rtol=1e-12)
    np.testing.assert_allclose(K.cagr(X, ppy), per_col(ep.annual_return, X, period=period), rtol=1e-12)
    np.testing.assert_allclose(K.annual_volatility(X, ppy), per_col(ep.annual_volatility, X, period=period),
                               rtol=1e-12)
    np.testing.assert_allclose(K.sharpe_ratio(X, ppy, rate), per_col(ep.sharpe_ratio, X, rp, period=period),
                               rtol=1e-11)
    np.testing.assert_allclose(K.sortino_ratio(X, ppy, rate),
                               per_col(ep.sortino_ratio, X, required_return=rp, period=period), rtol=1e-11)
    np.testing.assert_allclose(K.downside_risk(X, ppy, rate),
                               per_col(ep.downside_risk, X, required_return=rp, period=period), rtol=1e-12)
    np.testing.assert_allclose(K.omega_ratio(X, ppy, rate),
                               per_col(ep.omega_ratio, X, required_return=rate, annualization=ppy), rtol=1e-12)
    np.testing.assert_allclose(K.max_drawdown(X), per_col(ep.max_drawdown, X), rtol=1e-12)
    np.testing.assert_allclose(K.calmar_ratio(X, ppy), per_col(ep.calmar_ratio, X, period=period), rtol=1e-12)


def test_distribution_and_tails_match_empyrical_and_scipy(full):
    X = full.to_numpy()
    np.testing.assert_allclose(K.tail_ratio(X), per_col(ep.tail_ratio, X), rtol=1e-12)
    np.testing.assert_allclose(K.skew(X), stats.skew(X, axis=0), rtol=1e-9)
    np.testing.assert_allclose(K.kurtosis(X), stats.kurtosis(X, axis=0), rtol=1e-9)
    for level in (0.9, 0.95, 0.99):
        var, cvar = K.historical_var_cvar(X, level)
        np.testing.assert_allclose(var, -per_col(ep.value_at_risk, X, cutoff=1 - level), rtol=1e-12)
        np.testing.assert_allclose(cvar, -per_col(ep.conditional_value_at_risk, X, cutoff=1 - level), rtol=1e-12)


def test_missing_values_are_skipped_like_empyrical_except_cagr(rets):
    "QQQ's gap: NaN-aware empyrical functions agree; CAGR annualises over observations, not rows (documented)."
    X = rets.to_numpy()
    j = SYMBOLS.index("QQQ")
    assert np.isnan(X[:, j]).sum() > 100
    np.testing.assert_allclose(K.sharpe_ratio(X), per_col(ep.sharpe_ratio, X), rtol=1e-12)
    np.testing.assert_allclose(K.max_drawdown(X), per_col(ep.max_drawdown, X), rtol=1e-12)
    np.testing.assert_allclose(K.historical_var_cvar(X)[1], -per_col(ep.conditional_value_at_risk, X), rtol=1e-12)
    q = X[:, j]
    assert K.cagr(q) == pytest.approx(ep.annual_return(q[~np.isnan(q)]), rel=1e-12)
    assert K.cagr(q) != pytest.approx(ep.annual_return(q), rel=1e-3)


# --- relative and rolling ----------------------------------------------------------------------------------

def test_benchmark_relative_match_empyrical(full):
    X, spy = full.to_numpy(), full["SPY"].to_numpy()
    rf = K.per_period_rate(0.02)
    alpha, beta = Rel.alpha_beta(X, spy, risk_free=0.02)
    np.testing.assert_allclose(beta, per_col(ep.beta, X, spy), rtol=1e-11)
    np.testing.assert_allclose(alpha, per_col(ep.alpha, X, spy, risk_free=rf), rtol=1e-10, atol=1e-14)
    ir = Rel.information_ratio(X[:, 1:], spy)
    np.testing.assert_allclose(ir, per_col(ep.excess_sharpe, X[:, 1:], spy) * np.sqrt(252), rtol=1e-11)
    te = Rel.tracking_error(X, spy)
    np.testing.assert_allclose(te, np.std(X - spy[:, None], axis=0, ddof=1) * np.sqrt(252), rtol=1e-12)


def test_per_series_benchmark(full):
    X = full.to_numpy()
    B = np.roll(X, 1, axis=1)  # each series against its neighbour
    np.testing.assert_allclose(Rel.alpha_beta(X, B)[1], [ep.beta(X[:, j], B[:, j]) for j in range(X.shape[1])],
                               rtol=1e-11)


@pytest.mark.parametrize("window", [21, 126, 252])
def test_rolling_match_empyrical(full, window):
    X, spy = full.to_numpy(), full["SPY"].to_numpy()
    rs = Rel.rolling_set(X, spy, window)
    for j in (2, 5, 7):
        np.testing.assert_allclose(rs["rolling_sharpe"][window - 1:, j], ep.roll_sharpe_ratio(X[:, j], window),
                                   rtol=1e-8)
        np.testing.assert_allclose(rs["rolling_volatility"][window - 1:, j],
                                   ep.roll_annual_volatility(X[:, j], window), rtol=1e-9)
        np.testing.assert_allclose(rs["rolling_beta"][window - 1:, j], ep.roll_beta(X[:, j], spy, window), rtol=1e-8)
    assert np.isnan(rs["rolling_sharpe"][: window - 1]).all()


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, (60, 3), elements=st.floats(-0.2, 0.2, allow_nan=False)),
       arrays(np.bool_, (60, 3)), st.integers(5, 30))
def test_rolling_agrees_with_pandas_on_panels_with_gaps(x, holes, window):
    x = np.where(holes & (np.arange(60)[:, None] % 7 == 3), np.nan, x)
    df = pd.DataFrame(x)
    ours = Rel.rolling_volatility(x, window, 1.0)
    theirs = df.rolling(window).std().to_numpy()
    # a window whose deviation is below 1e-5 of the column's scale counts as flat (documented): atol covers it
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=3e-6)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(0, 40), elements=st.floats(-0.5, 0.5) | st.just(np.nan)))
def test_kernels_never_return_inf_and_agree_with_naive(x):
    "Any series, gaps included: statistics are finite or NaN, and equal the naive formula on its values."
    v = x[~np.isnan(x)]
    ms = Rel.metric_set(x[:, None], x[:, None] * 0.5)
    for k, val in ms.items():
        assert not np.isinf(val).any(), k
    if len(v) >= 2 and np.ptp(v) > 1e-12:
        assert ms["annual_volatility"][0] == pytest.approx(np.std(v, ddof=1) * np.sqrt(252), rel=1e-9)
    if len(v):
        assert ms["total_return"][0] == pytest.approx(np.prod(1 + v) - 1, rel=1e-9, abs=1e-15)


# --- pandas face and bad input -------------------------------------------------------------------------------

def test_bad_input_says_why(rets):
    days = pd.date_range("2024-01-02", periods=30, freq="B", tz="UTC")
    with pytest.warns(UndefinedMetricWarning, match="Sharpe ratio undefined"):
        t = performance_metrics(pd.DataFrame({"flat": 0.0, "steady": 0.001}, index=days))
    why = t.attrs["undefined"]
    assert why["flat"]["sharpe"] == "all returns are zero"
    assert why["steady"]["sharpe"] == "returns are constant (zero variance)"
    assert why["steady"]["calmar"] == "there was no drawdown"
    assert t.loc["cagr", "steady"] == pytest.approx(1.001 ** 252 - 1)
    with pytest.warns(AnalyticsWarning, match="dropped 2 date"):
        r = as_returns(pd.Series([0.01, np.nan, np.nan, 0.02], days[:4]))
    assert len(r) == 2
    with pytest.raises(ValueError, match="duplicate dates"):
        as_returns(pd.Series([0.01, 0.02], [days[0], days[0]]))
    with pytest.raises(ValueError, match="must be positive"):
        returns_from_nav(pd.Series([1.0, 0.0, 1.0], days[:3]))
    with pytest.warns(UndefinedMetricWarning):
        one = performance_metrics(pd.Series([0.02], days[:1], name="x"))
    assert one.loc["total_return", "x"] == pytest.approx(0.02, rel=1e-14)
    assert one.attrs["undefined"]["x"]["sharpe"] == "needs at least 2 observations, has 1"


def test_benchmark_on_other_dates_is_aligned_with_a_warning(rets):
    aapl = rets["AAPL"].dropna()
    bench = rets["SPY"].iloc[::2]  # every other day
    with pytest.warns(AnalyticsWarning, match=r"dates of the returns have no benchmark value"):
        t = performance_metrics(aapl, bench)
    a, b = aapl.loc[bench.index], bench
    assert t.loc["beta", "AAPL"] == pytest.approx(ep.beta(a.to_numpy(), b.to_numpy()), rel=1e-12)
    assert t.loc["observations", "AAPL"] == len(aapl)  # own statistics keep every date
    with pytest.raises(ValueError, match="no date in common"):
        align(aapl, bench.set_axis(bench.index + pd.Timedelta(days=20000)))


def test_drawdown_table_against_brute_force(rets):
    r = rets["AAPL"].dropna()
    dt = drawdown_table(r, top=3)
    nav = np.r_[1.0, (1 + r).cumprod().to_numpy()]
    # brute force the deepest drawdown: for each trough, the highest earlier NAV
    peaks = np.maximum.accumulate(nav)
    k = int(np.argmin(nav / peaks))
    assert dt.depth.iloc[0] == pytest.approx(nav[k] / peaks[k] - 1, rel=1e-12)
    assert dt.trough.iloc[0] == r.index[k - 1]
    assert dt.peak.iloc[0] == r.index[int(np.argmax(nav[:k + 1])) - 1]
    rec = k + int(np.argmax(nav[k:] >= peaks[k] * (1 - 1e-12)))
    assert dt.recovery.iloc[0] == r.index[rec - 1]
    assert dt.depth.is_monotonic_increasing


def test_rolling_metrics_with_gappy_benchmark(rets):
    with pytest.warns(AnalyticsWarning):
        roll = rolling_metrics(rets["AAPL"], rets["QQQ"], window=63)
    qqq_missing = rets["QQQ"].isna()
    first_ok = qqq_missing[qqq_missing].index.max()
    assert roll.beta.loc[:first_ok].isna().all()
    assert roll.sharpe.notna().sum() == len(roll) - 62


def test_factor_regression_single_factor_is_beta(full):
    fx = factor_exposure(full[["AAPL", "BAC"]], full["SPY"].rename("mkt"))
    for s in ("AAPL", "BAC"):
        lr = stats.linregress(full["SPY"].to_numpy(), full[s].to_numpy())
        assert fx.loc[s, "mkt"] == pytest.approx(lr.slope, rel=1e-10)
        assert fx.loc[s, "alpha"] == pytest.approx(lr.intercept * 252, rel=1e-8)
        assert fx.loc[s, "r2"] == pytest.approx(lr.rvalue ** 2, rel=1e-10)


# --- attribution -----------------------------------------------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(st.integers(1, 5), st.integers(2, 6), st.integers(0, 2 ** 31))
def test_brinson_terms_sum_to_active_return(periods, groups, seed):
    rng = np.random.default_rng(seed)
    wp, wb = rng.dirichlet(np.ones(groups), periods), rng.dirichlet(np.ones(groups), periods)
    wp[:, 0] = 0  # a group the portfolio skips
    wp /= wp.sum(axis=1, keepdims=True)
    rp, rb = rng.normal(0, 0.05, (periods, groups)), rng.normal(0, 0.05, (periods, groups))
    a, s, i = brinson_fachler_terms(wp, wb, wp * rp, wb * rb)
    np.testing.assert_allclose((a + s + i).sum(axis=1), (wp * rp).sum(axis=1) - (wb * rb).sum(axis=1), atol=1e-15)


def test_brinson_over_time_links_to_compounded_active_return(full):
    monthly = ((1 + full).resample("ME").prod() - 1)
    names = ["AAPL", "BAC", "WM", "USO", "EEM"]
    rng = np.random.default_rng(7)
    port = pd.DataFrame(rng.dirichlet(np.ones(5), len(monthly)) * 0.9, monthly.index, names)  # 10% cash
    bench = pd.DataFrame(0.2, monthly.index, names)
    att = brinson_fachler(port, bench, monthly[names], {n: n[0] for n in names})
    assert att.total[["allocation", "selection", "interaction"]].to_numpy().sum() == pytest.approx(
        att.active_return, abs=1e-12)
    expected = (1 + (port * monthly[names]).sum(axis=1)).prod() - (1 + (bench * monthly[names]).sum(axis=1)).prod()
    assert att.active_return == pytest.approx(expected, rel=1e-12)


# --- transaction costs -------------------------------------------------------------------------------------------

def test_tca_on_hand_built_fills():
    """A sell of 1,000 in two fills and a buy of 500 in one, on two 5-minute bars; every figure by hand.

    Bars (XYZ, 5min): 15:00 O 50.00 H 50.40 L 49.80 C 50.20 V 10,000; 15:05 O 50.20 H 50.60 L 50.00 C 50.30 V 30,000.
    s1 sells 1,000 decided at 50.10: 400 @ 50.00 (15:01), 600 @ 50.25 (15:07); $5 commission, $1.11 fees.
      avg 50.15 -> shortfall = -(50.15 - 50.10)/50.10 = -9.98 bp (sold above the decision price: a gain)
      VWAP = (50.1333.. * 10,000 + 50.30 * 30,000) / 40,000 = 50.258333..; slippage = -(50.15/VWAP - 1) = +21.55 bp
    s2 buys 500 @ 50.40 (15:06), decided at 50.30, $2.50 commission: shortfall 19.88 bp, fees 0.99 bp.
    """
    t = pd.Timestamp("2024-05-01 15:00", tz="UTC")
    bars = pd.DataFrame({"symbol": "XYZ", "ts": [t, t + pd.Timedelta(minutes=5)], "open": [50.0, 50.2],
                         "high": [50.4, 50.6], "low": [49.8, 50.0], "close": [50.2, 50.3], "volume": [1e4, 3e4]})
    fills = pd.DataFrame({
        "client_order_id": ["a", "a", "b"], "strategy": ["s1", "s1", "s2"], "symbol": "XYZ",
        "side": ["sell", "sell", "buy"], "quantity": [400, 600, 500], "price": [50.00, 50.25, 50.40],
        "ts": [t + pd.Timedelta(minutes=1), t + pd.Timedelta(minutes=7), t + pd.Timedelta(minutes=6)],
        "commission": [2.0, 3.0, 2.5], "fees": [0.5, 0.61, 0.0], "arrival_price": [50.10, 50.10, 50.30]})
    o = tca_orders(fills, bars, "5min")
    a, b = o.loc["a"], o.loc["b"]
    assert a.avg_price == pytest.approx(50.15)
    assert a.shortfall_bps == pytest.approx(-(50.15 / 50.10 - 1) * 1e4)
    assert a.shortfall == pytest.approx(-50.0)
    vwap = ((50.4 + 49.8 + 50.2) / 3 * 1e4 + (50.6 + 50.0 + 50.3) / 3 * 3e4) / 4e4
    assert a.vwap == pytest.approx(vwap)
    assert a.vwap_slippage_bps == pytest.approx(-(50.15 / vwap - 1) * 1e4)
    assert a.open_slippage_bps == pytest.approx((400 * 0.0 + 600 * -(50.25 / 50.2 - 1) * 1e4) / 1000)
    assert a.fees_bps == pytest.approx(6.11 / (1000 * 50.10) * 1e4)
    assert np.isnan(a.fee_share)  # the order made money on price
    assert b.shortfall_bps == pytest.approx((50.40 / 50.30 - 1) * 1e4)
    assert b.total_cost == pytest.approx(500 * 0.10 + 2.5)
    assert b.fee_share == pytest.approx(2.5 / 52.5)
    assert b.close_slippage_bps == pytest.approx((50.40 / 50.30 - 1) * 1e4)
    s = tca_summary(o)
    assert s.loc["s1", "fills"] == 2 and s.loc["s2", "orders"] == 1
    overall = tca_summary(o, by=None).iloc[0]
    assert overall.total_cost == pytest.approx(a.total_cost + b.total_cost)
    assert overall.total_cost_bps == pytest.approx((a.total_cost + b.total_cost) / (50.10 * 1000 + 50.30 * 500) * 1e4)


def test_tca_refuses_malformed_fills():
    base = {"client_order_id": ["a"], "symbol": ["X"], "side": ["buy"], "quantity": [1], "price": [1.0],
            "ts": [pd.Timestamp("2024-01-02", tz="UTC")]}
    with pytest.raises(ValueError, match="side must be"):
        tca_orders(pd.DataFrame({**base, "side": ["hold"]}))
    with pytest.raises(ValueError, match="must be positive"):
        tca_orders(pd.DataFrame({**base, "quantity": [-1]}))
    mixed = pd.DataFrame({k: v * 2 for k, v in base.items()}).assign(side=["buy", "sell"])
    with pytest.raises(ValueError, match="share one symbol and one side"):
        tca_orders(mixed)


# --- benchmark plumbing (timings are reported by `bifrost bench analytics`, never asserted) ----------------------

def test_analytics_benchmark_runs_small():
    out = analytics_benchmark(n_series=20, years=1, empyrical_series=3, repeats=1)
    assert out["series"] == 20 and out["periods"] == 252 and out["empyrical_series_timed"] == 3
    assert out["bifrost_seconds"] > 0 and out["speedup_vs_empyrical"] > 0
    R, B = bootstrap_returns(4, 100, seed=3)
    assert R.shape == B.shape == (100, 4)
