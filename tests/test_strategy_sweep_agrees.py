"""A sweep is a fast way to run many backtests, never a different backtest: each row equals `run_vectorized` of the
same strategy through the same gate — for a subclass that changes `targets`, and under a gate that refuses orders."""
from decimal import Decimal

import numpy as np
import pytest

from conftest import sample_panel
from bifrost.compliance.gate import Gate
from bifrost.risk.limits import Limits
from bifrost.strategy.api import Costs, SmaCross, on_change
from bifrost.strategy.vector import _sharpe, grid, run_sweep, run_vectorized


class Contrarian(SmaCross):
    "Long while the fast average is BELOW the slow one: SmaCross's parameters, its own targets."
    def targets(self, panel):
        fast, slow = panel.close.rolling(self.fast).mean(), panel.close.rolling(self.slow).mean()
        return on_change((fast < slow).astype("float64").where(slow.notna(), 0.0) / panel.close.shape[1])


@pytest.fixture(scope="module")
def spy(tmp_path_factory):
    return sample_panel(tmp_path_factory.mktemp("sweep"), "SPY", "2015-01-01", "2018-12-31")


def _rows_equal_single_backtests(cls, panel, combos, costs, **gate):
    swept = run_sweep(cls, panel, combos, costs=costs, **gate).table
    for row, combo in zip(swept.itertuples(), combos):
        single = run_vectorized(cls(**combo), panel, costs=costs, **gate)
        eq = single.equity.to_numpy()
        assert row.final_equity == single.final_equity, combo
        assert row.trades == len(single.trades), combo
        assert row.sharpe == _sharpe(np.diff(eq) / eq[:-1], 252) or (np.isnan(row.sharpe) and len(single.trades) == 0)
    return swept


def test_sweep_of_a_subclass_that_overrides_targets_equals_its_single_backtests(spy):
    combos = grid(Contrarian, fast=[5, 10, 20], slow=[30, 60])
    swept = _rows_equal_single_backtests(Contrarian, spy, combos, Costs(per_share=0.005, minimum=1.0))
    parent = run_sweep(SmaCross, spy, combos, costs=Costs(per_share=0.005, minimum=1.0)).table
    assert (swept.final_equity != parent.final_equity).all()  # it really is another strategy


def test_sweep_under_a_gate_equals_the_gated_single_backtests_row_for_row(spy):
    gate = Gate(Limits(max_drawdown=Decimal("0.04")))  # after a 4% fall from the peak only risk-reducing orders pass
    combos = grid(SmaCross, fast=[5, 10, 20], slow=[30, 60, 120])
    gated = _rows_equal_single_backtests(SmaCross, spy, combos, Costs(), gate=gate)
    ungated = run_sweep(SmaCross, spy, combos).table
    assert (gated.final_equity != ungated.final_equity).any()  # the gate refused something, and the sweep knew


def test_sweep_through_the_default_gate_equals_single_backtests(spy):
    _rows_equal_single_backtests(SmaCross, spy, grid(SmaCross, fast=[5, 10], slow=[20, 50]), Costs(commission_bps=1.0))
