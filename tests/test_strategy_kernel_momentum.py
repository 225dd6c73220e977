"""Momentum ranks with numpy on month ends only; it must pick exactly what pandas' row-wise ranking picked."""
import numpy as np
import pandas as pd
import pytest
from conftest import sample_store

from bifrost.strategy.api import Momentum, Panel, month_end_sessions

UNIVERSE = ["SPY", "QQQ", "IWM", "EEM", "AAPL", "BAC", "GOOG", "USO", "WM"]


def pandas_targets(s: Momentum, panel: Panel) -> pd.DataFrame:
    "The former targets: pandas ranks every row (method 'first': ties in column order)."
    close = panel.close
    past = close.shift(s.skip) / close.shift(s.skip + s.lookback) - 1
    ranks = past.rank(axis=1, ascending=False, method="first")
    chosen = (ranks <= s.top) & past.notna()
    w = chosen.astype("float64").div(chosen.sum(axis=1).clip(lower=1), axis=0)
    w[~month_end_sessions(panel.index)] = np.nan
    w.iloc[: s.warmup] = 0.0
    return w


@pytest.fixture(scope="module")
def panel(tmp_path_factory) -> Panel:
    return Panel.from_store(sample_store(tmp_path_factory.mktemp("mom"), UNIVERSE), UNIVERSE, start="2005-01-01",
                            end="2020-12-31")


def test_numpy_ranking_is_pandas_ranking_on_the_sample(panel):
    for lookback in (20, 63, 252):
        for skip in (0, 21, 42):
            for top in (1, 3, 10):
                s = Momentum(lookback=lookback, skip=skip, top=top)
                pd.testing.assert_frame_equal(s.targets(panel), pandas_targets(s, panel))


def test_ties_and_holes_rank_as_pandas_does(panel):
    close = panel.close.copy()
    close.iloc[:, 3] = close.iloc[:, 1]      # two symbols tie on every bar
    close.iloc[100:300, 2] = np.nan          # a symbol with a gap: no return to rank
    close.iloc[:400, 5] = np.nan             # one that starts late
    p = Panel(panel.open, panel.high, panel.low, close, panel.volume)
    for top in (1, 2, 3, 9):
        s = Momentum(lookback=21, skip=0, top=top)
        pd.testing.assert_frame_equal(s.targets(p), pandas_targets(s, p))
    assert (Momentum(lookback=21, skip=0, top=1).targets(p).iloc[:, 3].fillna(0) == 0).all()  # the later twin never wins
