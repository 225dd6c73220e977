"""The fast sweep path gives exactly what the single-run engine gives (correctness only; speed is `bifrost bench backtest`).

`run_sweep` takes three shortcuts to be fast: SmaCross builds every pair's targets with its own rolling-mean
kernel, the kernel walks equity only (no trade list, no positions), and the Sharpe ratio is summed in the
kernel. Each must agree with the reference bit for bit: pandas' `rolling().mean()`, the full walk, and numpy.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import sample_panel

from bifrost.strategy import vector
from bifrost.strategy.api import FIELDS, Costs, Momentum, Panel, SmaCross, _rolling_mean, _rolling_means, on_change
from bifrost.strategy.research import sharpe
from bifrost.strategy.kernel import FULL, NO_GATE, _numpy_sum, _sharpe, _sweep, simulate, simulate_many, walk
from bifrost.strategy.vector import grid, run_sweep, run_vectorized

COSTS = Costs(commission_bps=1.0, per_share=0.005, minimum=1.0, slippage_bps=2.0)


@pytest.fixture(scope="module")
def spy(tmp_path_factory) -> Panel:
    return sample_panel(tmp_path_factory.mktemp("sweep"), "SPY", "2011-01-01", "2020-12-31")


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Panel:
    "SPY and QQQ daily with holes: QQQ has no bar on 40 random days (NaN open/high/low/close)."
    folder = tmp_path_factory.mktemp("sweep2")
    a, b = (sample_panel(folder, s, "2015-01-01", "2020-12-31") for s in ("SPY", "QQQ"))
    frames = {f: pd.concat([getattr(a, f), getattr(b, f)], axis=1) for f in FIELDS}
    holes = np.random.default_rng(7).choice(len(frames["close"]), 40, replace=False)
    for f in FIELDS:
        frames[f].iloc[holes, 1] = np.nan
    return Panel(*(frames[f] for f in FIELDS))


def test_rolling_mean_matches_pandas_bit_for_bit():
    rng = np.random.default_rng(0)
    for trial in range(300):
        m = int(rng.integers(1, 400))
        x = rng.normal(100, 20, m) * rng.choice([1.0, -1.0, 1e-3, 1e6])
        if trial % 3 == 0:
            x[rng.random(m) < 0.1] = np.nan
        if trial % 4 == 0:
            x[m // 3: m // 2] = x[m // 3]  # a run of one value
        if trial % 5 == 0:
            x = np.round(x, 1)
        for n in (1, 2, 3, 5, 17, 50):
            np.testing.assert_array_equal(_rolling_mean(x, n), pd.Series(x).rolling(n).mean().to_numpy())


def test_rolling_means_of_a_panel(two):
    windows = np.array([2, 7, 30, 200], np.int64)
    got = _rolling_means(np.ascontiguousarray(two.close.to_numpy()), windows)
    for k, n in enumerate(windows):
        np.testing.assert_array_equal(got[k], two.close.rolling(int(n)).mean().to_numpy())


def _pandas_sma_targets(s: SmaCross, panel: Panel) -> pd.DataFrame:
    "SmaCross's rule written with pandas' rolling means: what its targets (computed by the numba kernels) must equal."
    close = panel.close
    fast, slow = close.rolling(s.fast).mean(), close.rolling(s.slow).mean()
    return on_change((fast > slow).astype("float64").where(slow.notna(), 0.0) / close.shape[1])


def test_targets_batch_is_each_strategys_targets(spy, two):
    for panel in (spy, two):
        strategies = [SmaCross(**c) for c in grid(SmaCross, fast=[2, 5, 13, 40], slow=[5, 21, 60, 150])]
        batch = SmaCross.targets_batch(panel, strategies)
        assert batch.shape == (len(strategies),) + panel.close.shape
        for k, s in enumerate(strategies):
            pd.testing.assert_frame_equal(s.run_targets(panel), _pandas_sma_targets(s, panel))
            np.testing.assert_array_equal(batch[k], s.run_targets(panel).to_numpy())


def test_numpy_sum_is_numpys_sum():
    rng = np.random.default_rng(1)
    for m in [*range(300), 1000, 2516, 8191, 8192, 8193, 20_000, 100_001]:
        x = rng.normal(0, 1e-2, m)
        assert _numpy_sum(x) == x.sum()
        assert _numpy_sum(x) == np.stack([x, x]).sum(axis=1)[0]  # what run_sweep's table used to reduce


def test_sharpe_is_the_research_formula():
    rng = np.random.default_rng(2)
    for m in (3, 4, 10, 129, 2517, 30_000):
        equity = 1e5 * np.cumprod(1 + rng.normal(3e-4, 1e-2, m))
        rets = np.diff(equity) / equity[:-1]
        assert _sharpe(rets.copy(), 252) == sharpe(equity, 252)
    assert np.isnan(_sharpe(np.zeros(50), 252))  # never varies
    assert np.isnan(_sharpe(np.zeros(1), 252))


def _arrays(panel):
    return tuple(np.ascontiguousarray(getattr(panel, f).to_numpy(np.float64)) for f in ("open", "high", "low", "close"))


def test_equity_only_walk_is_the_full_walk_on_random_weights(two):
    "Random targets (some NaN: hold; some negative: short), random costs, a panel with holes."
    rng = np.random.default_rng(3)
    arrays = _arrays(two)
    for trial in range(40):
        w = rng.choice([np.nan, np.nan, np.nan, 0.0, 0.3, 0.5, 0.9, -0.2], size=arrays[0].shape)
        if trial % 2:
            w[rng.random(w.shape) < 0.9] = np.nan
        costs = Costs(*(float(rng.choice(v)) for v in ([0.0, 5.0], [0.0, 0.01], [0.0, 2.0], [0.0, 10.0])))
        cash = float(rng.choice([1_000.0, 100_000.0]))
        full = walk(arrays, w, cash, costs, NO_GATE, FULL)
        rets = np.empty(len(full.equity) - 1)
        lean = walk(arrays, w, cash, costs, NO_GATE, 0, rets=rets)
        np.testing.assert_array_equal(lean.equity, full.equity)
        np.testing.assert_array_equal(rets, np.diff(full.equity) / full.equity[:-1])
        assert lean.n_trades == len(full.trades) and lean.trades.shape == (0, 5) and lean.positions.shape[0] == 0


def test_simulate_many_and_sweep_agree_with_simulate(two):
    arrays = _arrays(two)
    rng = np.random.default_rng(4)
    weights = rng.choice([np.nan, np.nan, 0.0, 0.5], size=(9,) + arrays[0].shape)
    equity, n_trades = simulate_many(*arrays, weights, 50_000.0, 1.0, 0.0, 1.0, 5.0)
    eq2, n2, sh, status = np.empty_like(equity), np.empty(len(weights), np.int64), np.empty(len(weights)), np.empty(len(weights), np.int64)
    _sweep(*arrays, weights, 50_000.0, np.array([1.0, 0.0, 1.0, 5.0]), NO_GATE.limits, NO_GATE.verdicts,
           np.full((len(weights), 3), np.nan), 0, 252.0, eq2, n2, sh, status)
    blocked = np.zeros(arrays[0].shape, np.bool_)
    for c in range(len(weights)):
        _, _, e, trades = simulate(*arrays, weights[c], 50_000.0, 1.0, 0.0, 1.0, 5.0, blocked)
        np.testing.assert_array_equal(equity[c], e)
        np.testing.assert_array_equal(eq2[c], e)
        assert n_trades[c] == n2[c] == len(trades) and status[c] == 0
        assert sh[c] == sharpe(e) or (np.isnan(sh[c]) and np.isnan(sharpe(e)))


def test_every_sweep_row_is_its_single_backtest(spy):
    combos = grid(SmaCross, fast=range(5, 51, 5), slow=range(20, 201, 5))
    sweep = run_sweep(SmaCross, spy, combos, costs=COSTS)
    assert list(sweep.table.columns) == ["fast", "slow", "final_equity", "total_return", "sharpe", "trades"]
    assert sweep.table.trades.dtype == np.int64 and sweep.equity.shape == (len(combos), len(spy))
    for k in np.random.default_rng(5).choice(len(combos), 12, replace=False):
        row, single = sweep.table.iloc[k], run_vectorized(SmaCross(**combos[k]), spy, costs=COSTS)
        np.testing.assert_array_equal(sweep.equity[k], single.equity.to_numpy())
        assert row.final_equity == single.final_equity and row.trades == len(single.trades)
        assert row.total_return == single.final_equity / 100_000.0 - 1
        assert row.sharpe == sharpe(single.equity.to_numpy())


def test_chunks_threads_and_the_per_strategy_path_change_nothing(spy, two, monkeypatch):
    combos = grid(SmaCross, fast=[5, 10, 20], slow=[30, 60, 90])
    whole, chunked = run_sweep(SmaCross, spy, combos), run_sweep(SmaCross, spy, combos, chunk=4)
    monkeypatch.setattr(vector, "_PARALLEL_FROM", 0)  # the threaded kernel, as a large sweep runs
    threaded = run_sweep(SmaCross, spy, combos, chunk=4)
    for other in (chunked, threaded):
        pd.testing.assert_frame_equal(whole.table, other.table)
        np.testing.assert_array_equal(whole.equity, other.equity)
    # a strategy without targets_batch: targets run per combination
    combos = grid(Momentum, lookback=[21, 63], skip=[0, 21], top=[1, 2])
    sweep = run_sweep(Momentum, two, combos, costs=COSTS)
    for k, c in enumerate(combos):
        single = run_vectorized(Momentum(**c), two, costs=COSTS)
        np.testing.assert_array_equal(sweep.equity[k], single.equity.to_numpy())
        assert sweep.table.trades[k] == len(single.trades)


def test_the_table_is_the_combinations_with_their_results(spy):
    combos = [{"fast": 5, "slow": 30}, {"fast": 10}, {"slow": 90, "fast": 20}]  # a default left out; keys reordered
    sweep = run_sweep(SmaCross, spy, combos)
    expected = pd.DataFrame(combos).assign(final_equity=sweep.equity[:, -1],
                                           total_return=sweep.equity[:, -1] / 100_000.0 - 1,
                                           sharpe=[sharpe(e) for e in sweep.equity], trades=sweep.table.trades)
    pd.testing.assert_frame_equal(sweep.table, expected)
    assert sweep.table.slow.isna().tolist() == [False, True, False]
    assert sweep.equity[1].tolist() == run_vectorized(SmaCross(fast=10), spy).equity.tolist()
