"""Value at risk and its backtest: properties on random books, the Monte Carlo error bar, bad input, and analytics' agreement."""
from __future__ import annotations

from decimal import Decimal
from itertools import pairwise

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from bifrost.core import BifrostError
from bifrost.risk.backtest import christoffersen, kupiec_pof, rolling_var, var_backtest
from bifrost.risk.var import RiskError, value_at_risk, var_contributions


def book(seed: int, T: int = 400, N: int = 5):
    rng = np.random.default_rng(seed)
    x = rng.standard_t(4, size=(T, N)) * 0.01 + rng.normal(0, 0.01, size=(T, 1))  # fat tails, one common factor
    w = rng.normal(0, 1_000, N)
    return x, w


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), confidence=st.sampled_from([0.9, 0.95, 0.975, 0.99]), horizon=st.integers(1, 5))
def test_components_add_up_and_var_is_homogeneous(seed, confidence, horizon):
    x, w = book(seed)
    for method in ("normal", "historical"):
        c = var_contributions(x, w, confidence=confidence, horizon=horizon, method=method)
        assert c.component.sum() == pytest.approx(c.total.var, rel=1e-9, abs=1e-9)
        assert c.component_cvar.sum() == pytest.approx(c.total.cvar, rel=1e-9, abs=1e-9)
        scaled = value_at_risk(x, 3 * w, confidence=confidence, horizon=horizon, method=method)
        assert scaled.var == pytest.approx(3 * c.total.var, rel=1e-9, abs=1e-9)
    h = value_at_risk(x, w, confidence=confidence, horizon=horizon)
    assert h.cvar >= h.var
    pnl = pd.Series(x @ w).rolling(horizon).sum().dropna()
    assert h.var == pytest.approx(-np.quantile(pnl, 1 - confidence), rel=1e-9, abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_more_confidence_never_means_less_var(seed):
    x, _ = book(seed, N=3)
    levels = [value_at_risk(x, confidence=c) for c in (0.9, 0.95, 0.99)]
    for lo, hi in pairwise(levels):
        assert (hi.var >= lo.var).all() and (hi.cvar >= lo.cvar).all()


def test_normal_matches_scipy_for_a_book():
    x, w = book(1)
    r = value_at_risk(x, w, method="normal", horizon=10, confidence=0.975)
    sigma = np.sqrt(w @ np.cov(x, rowvar=False) @ w)
    dist = stats.norm(10 * x.mean(axis=0) @ w, np.sqrt(10) * sigma)
    assert r.var == pytest.approx(-dist.ppf(0.025), rel=1e-12)
    assert r.cvar == pytest.approx(-dist.expect(lambda v: v, ub=dist.ppf(0.025), conditional=True), rel=1e-8)


def test_cornish_fisher_is_normal_on_symmetric_mesokurtic_moments():
    x = np.array([-1.0, 1.0] * 50) * 0.01  # skew 0, excess kurtosis -2: only the kurtosis term moves it
    cf, n = value_at_risk(x, method="cornish_fisher"), value_at_risk(x, method="normal")
    assert cf.var != n.var
    y = np.random.default_rng(0).normal(0, 0.01, 200_000)
    cf, n = value_at_risk(y, method="cornish_fisher"), value_at_risk(y, method="normal")
    assert cf.var == pytest.approx(n.var, rel=5e-3) and cf.cvar == pytest.approx(n.cvar, rel=5e-3)


def test_monte_carlo_error_bar_covers_the_exact_answer():
    "Over 40 seeds the simulated VaR falls within 2 of its own standard errors of the closed form about 95% of the time."
    rng = np.random.default_rng(5)
    cov = np.array([[4, 1, 0.5], [1, 2, 0.3], [0.5, 0.3, 1.0]]) * 1e-4
    x = rng.multivariate_normal([0.0005, 0.0002, 0.0], cov, size=3_000)
    w = np.array([1.0, -0.5, 2.0])
    exact = value_at_risk(x, w, method="normal")
    for method in ("monte_carlo", "bootstrap"):
        inside = 0
        for seed in range(40):
            mc = value_at_risk(x, w, method=method, rng=np.random.default_rng(seed), paths=5_000)
            inside += abs(mc.var - exact.var) < 2 * mc.std_error
        assert inside >= 32, (method, inside)


def test_monte_carlo_is_reproducible_and_copes_with_a_singular_covariance():
    x, w = book(2, N=3)
    x = np.column_stack([x, x[:, 0] + x[:, 1]])  # rank 3 of 4
    a = value_at_risk(x, [*w, 10.0], method="monte_carlo", rng=np.random.default_rng(9), paths=2_000)
    b = value_at_risk(x, [*w, 10.0], method="monte_carlo", rng=np.random.default_rng(9), paths=2_000)
    assert a == b and np.isfinite(a.var)
    per_series = value_at_risk(x, method="monte_carlo", rng=np.random.default_rng(9), paths=2_000)
    assert per_series.var.shape == (4,) and per_series.labels == ("0", "1", "2", "3")


def test_labels_units_and_decimal_positions():
    x, _ = book(3, N=2)
    df = pd.DataFrame(x, columns=["AAA", "BBB"])
    r = value_at_risk(df, {"AAA": Decimal("1000.50")}, money=True)
    assert r.units == "money" and r.labels == () and isinstance(r.var, float)
    assert r.var == pytest.approx(-np.quantile(x[:, 0] * 1000.5, 0.01), rel=1e-12)
    assert value_at_risk(df["AAA"]).labels == () and isinstance(value_at_risk(df["AAA"]).var, float)
    assert value_at_risk(df).labels == ("AAA", "BBB")


@pytest.mark.parametrize("kwargs, message", [
    ({"confidence": True}, "strictly between 0 and 1"),
    ({"confidence": 0}, "strictly between 0 and 1"),
    ({"horizon": 0}, "at least 1"),
    ({"method": "normal", "returns": np.zeros(1)}, "at least 2"),
    ({"returns": np.array([0.01, np.inf, 0.0])}, "NaN or infinite"),
    ({"confidence": "0.99"}, "strictly between 0 and 1"),
    ({"confidence": float("nan")}, "strictly between 0 and 1"),
    ({"horizon": True}, "whole number"),
    ({"horizon": -3}, "at least 1"),
    ({"method": "cornish_fisher", "horizon": 1, "returns": np.zeros(3)}, "at least 4"),
    ({"returns": np.zeros((10, 0))}, "empty"),
    ({"returns": np.zeros((2, 2, 2))}, "had 3 dimensions"),
    ({"returns": ["a", "b"]}, "must be numbers"),
    ({"positions": [1.0, 2.0]}, "2 values for 1 series"),
    ({"positions": [float("inf")]}, "finite"),
    ({"method": "bootstrap", "rng": np.random.RandomState(0)}, "numpy Generator"),
    ({"method": "monte_carlo", "rng": np.random.default_rng(0), "paths": 50}, "at least 100 observations, had 50"),
    ({"horizon": 500}, "at least 100 observations, had 1"),
])
def test_bad_input_is_a_clear_risk_error(kwargs, message):
    kwargs = {"returns": np.random.default_rng(0).normal(0, 0.01, 500), **kwargs}
    with pytest.raises(RiskError, match=message) as e:
        value_at_risk(**kwargs)
    assert isinstance(e.value, BifrostError) and isinstance(e.value, ValueError) and e.value.hint


def test_nan_is_refused_and_located():
    df = pd.DataFrame({"A": [0.01, 0.02, np.nan], "B": [0.0, np.nan, 0.01]})
    with pytest.raises(RiskError, match=r"2 NaN or infinite values \(first at row 1, series 'B'\)") as e:
        value_at_risk(df, method="normal")
    assert "dropna" in e.value.hint


def test_analytics_historical_var_is_risks():
    from bifrost.analytics.kernels import historical_var_cvar
    x, _ = book(4, N=4)
    for level in (0.9, 0.95, 0.99):
        ours = value_at_risk(x, confidence=level)
        var, cvar = historical_var_cvar(x, level)
        np.testing.assert_allclose(var, ours.var, rtol=1e-13)
        np.testing.assert_allclose(cvar, ours.cvar, rtol=1e-13)
    with pytest.raises(ValueError, match="level must be between 0 and 1"):
        historical_var_cvar(x, 1.2)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), window=st.integers(100, 150), method=st.sampled_from(["historical", "normal", "cornish_fisher"]))
def test_rolling_forecasts_match_a_loop(seed, window, method):
    x = np.random.default_rng(seed).standard_t(3, 400) * 0.01
    f = rolling_var(x, window, 0.99, method)
    assert f.shape == (400 - window,)
    for t in (0, 137, len(f) - 1):
        assert f[t] == pytest.approx(value_at_risk(x[t : t + window], method=method).var, rel=1e-10, abs=1e-15)


@settings(max_examples=50, deadline=None)
@given(hits=st.lists(st.booleans(), min_size=2, max_size=300))
def test_christoffersen_matches_transition_counts(hits):
    lr, p = christoffersen(hits)
    pairs = list(pairwise(hits))
    n = {(a, b): sum(1 for q in pairs if q == (a, b)) for a in (False, True) for b in (False, True)}
    def ll(stay, move):
        tot = stay + move
        return sum(k * np.log(k / tot) for k in (stay, move) if k)
    full = ll(n[False, False], n[False, True]) + ll(n[True, False], n[True, True])
    pooled = ll(n[False, False] + n[True, False], n[False, True] + n[True, True])
    assert lr == pytest.approx(max(2 * (full - pooled), 0.0), abs=1e-9)
    assert 0 <= p <= 1


def test_kupiec_and_backtest_counts():
    assert kupiec_pof(10, 1000, 0.99)[0] == pytest.approx(0.0, abs=1e-12)
    x = np.random.default_rng(8).normal(0, 0.01, 3_000)
    bt = var_backtest(pd.Series(x, index=pd.bdate_range("2000-01-03", periods=3_000)), window=250, method="normal")
    assert bt.observations == 2_750 and bt.forecasts.index[0] == pd.Timestamp("2000-01-03") + pd.offsets.BDay(250)
    assert bt.exceptions == int((-x[250:] > bt.forecasts["var"].to_numpy()).sum())
    assert bt.conditional_lr == pytest.approx(bt.kupiec_lr + bt.independence_lr)
