"""Every example strategy trades identically in the vectorised and backtrader engines on shipped data."""
import pytest
from conftest import sample_copy

from bifrost.strategy.api import Costs, MeanReversion, Momentum, Panel, SmaCross
from bifrost.strategy.backtrader import parity, run_backtrader
from bifrost.strategy.vector import run_vectorized

COSTS = Costs(commission_bps=0.5, per_share=0.005, minimum=1.0, slippage_bps=2.0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return sample_copy(tmp_path_factory.mktemp("parity"))


CASES = {
    "sma_spy_daily": (SmaCross(fast=10, slow=50), ["SPY"], "1d", "2005-01-01", "2021-03-31"),
    "sma_aapl_through_splits": (SmaCross(fast=5, slow=30), ["AAPL"], "1d", "2004-01-01", "2021-03-31"),
    "momentum_nine_symbols": (Momentum(lookback=63, skip=0, top=2), ["SPY", "QQQ", "IWM", "EEM", "AAPL", "BAC",
                                                                    "GOOG", "USO", "WM"], "1d", "2014-06-01", "2021-03-31"),
    "mean_reversion_spy_minutes": (MeanReversion(window=20, entry=1.5), ["SPY"], "1min", "2013-10-04", "2013-10-11"),
    "mean_reversion_aapl_split_week": (MeanReversion(window=15, entry=1.0), ["AAPL"], "1min", "2014-06-05", "2014-06-09"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_engines_when_same_strategy_and_costs_then_identical_trades_and_equity(store, case):
    strategy, symbols, bar_size, start, end = CASES[case]
    panel = Panel.from_store(store, symbols, bar_size, start, end)
    vec = run_vectorized(strategy, panel, costs=COSTS)
    btr = run_backtrader(strategy, panel, costs=COSTS)
    assert len(vec.trades) > 5, "a parity test needs trades to compare"
    assert parity(vec, btr).empty
    assert round(vec.final_equity, 2) == round(btr.final_equity, 2)
    assert (vec.positions.to_numpy() == btr.positions.to_numpy()).all()


def test_backtrader_when_recomputing_every_bar_then_same_as_precomputed(store):
    panel = Panel.from_store(store, ["SPY", "QQQ"], "1d", "2018-01-01", "2019-12-31")
    strategy = SmaCross(fast=10, slow=40)
    once = run_backtrader(strategy, panel, costs=COSTS)
    every_bar = run_backtrader(strategy, panel, costs=COSTS, recompute=True)
    assert parity(once, every_bar).empty and len(once.trades) > 5


def test_engines_agree_where_symbols_miss_bars(store):
    "The README's `bifrost backtest momentum --symbols SPY,QQQ,IWM,EEM,AAPL --engine backtrader`: the whole history,"
    "QQQ missing bars (before 2011-03-22 and gaps in the shipped file); both engines trade only on a symbol's own bars."
    panel = Panel.from_store(store, ["SPY", "QQQ", "IWM", "EEM", "AAPL"], "1d")
    assert panel.close["QQQ"].isna().any()
    vec = run_vectorized(Momentum(), panel, costs=COSTS)
    btr = run_backtrader(Momentum(), panel, costs=COSTS)
    assert len(vec.trades) > 5 and parity(vec, btr).empty
    assert (vec.positions.to_numpy() == btr.positions.to_numpy()).all()
    assert abs(vec.equity - btr.equity).max() < 1e-6 * vec.equity.max()
