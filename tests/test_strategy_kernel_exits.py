"""Exits in the kernel: stop-loss, take-profit and trailing stop as fractions of the entry, with one intrabar rule.

The rule (`bifrost.strategy.kernel._exit_fill`): the open's orders first, then the exits on what is held; an open
beyond the stop fills at the open (a gap: no better than the open), an open beyond the target fills at the open (better
than the target); within the bar a stop touched fills at the stop, a bar touching both counts as the stop, a target
fills at the target only if the bar reached it; one exit closes the position (OCO); the trail follows the best price
up to the bar before. A slow Python twin of the walk is held against the kernel on real sample data, and the
properties are checked on every trade.
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from conftest import sample_panel

from bifrost.strategy.api import Costs, Panel, Param, SmaCross, StrategyError, on_change, rebalance
from bifrost.strategy.backtrader import run_backtrader
from bifrost.strategy.vector import grid, run_sweep, run_vectorized


@pytest.fixture(scope="module")
def spy(tmp_path_factory) -> Panel:
    return sample_panel(tmp_path_factory.mktemp("exits"), "SPY", "2007-01-01", "2020-12-31")


def guarded(sl=None, tp=None, ts=None, short=False):
    "SmaCross with exits; `short`: short while the fast average is below the slow one (exits mirrored)."
    class Guarded(SmaCross):
        stop_loss, take_profit, trailing_stop = sl, tp, ts

        def targets(self, panel):
            w = super().targets(panel)
            return -w if short else w
    return Guarded


def twin_exit(q, entry, best, sl, tp, ts, o, h, l, slip):
    "The documented rule, written again in plain Python."
    if q == 0 or o != o:
        return None
    cut = lambda p, down: (max(p * (1 - slip / 1e4), l) if down else min(p * (1 + slip / 1e4), h)) if slip else p
    if q > 0:
        stops = [entry * (1 - sl)] if sl else []
        stops += [best * (1 - ts)] if ts else []
        stop, target = max(stops, default=-np.inf), entry * (1 + tp) if tp else np.inf
        if o <= stop:
            return cut(o, True)
        if o >= target:
            return o
        if l <= stop:
            return cut(stop, True)
        return target if h >= target else None
    stops = [entry * (1 + sl)] if sl else []
    stops += [best * (1 + ts)] if ts else []
    stop, target = min(stops, default=np.inf), entry * (1 - tp) if tp else -np.inf
    if o >= stop:
        return cut(o, False)
    if o <= target:
        return o
    if h >= stop:
        return cut(stop, False)
    return target if l <= target else None


def twin_walk(strategy, panel, cash, costs):
    "One symbol, in Python: `rebalance` at the open, then the exit, then the close; the trades as (bar, shares, price, fee)."
    w = strategy.run_targets(panel).to_numpy()[:, 0]
    o, h, l, c = (getattr(panel, f).to_numpy()[:, 0] for f in ("open", "high", "low", "close"))
    sl, tp, ts = strategy.exit_rules()
    pos, entry, best, mark, out = 0, np.nan, np.nan, np.nan, []
    for t in range(len(c)):
        if t > 0:
            for _, q, p, fee in rebalance(np.array([pos]), cash, w[t - 1:t], o[t:t + 1], h[t:t + 1], l[t:t + 1],
                                          np.array([mark]), costs):
                q1 = pos + q
                if q1 == 0:
                    entry = best = np.nan
                elif pos == 0 or (pos > 0) != (q1 > 0):
                    entry = best = p
                elif abs(q1) > abs(pos):
                    entry = (abs(pos) * entry + abs(q) * p) / abs(q1)
                cash, pos = cash - q * p - fee, q1
                out.append((t, q, p, fee))
            p = twin_exit(pos, entry, best, sl, tp, ts, o[t], h[t], l[t], costs.slippage_bps)
            if p is not None:
                fee = costs.commission(-pos, p)
                cash, out = cash + pos * p - fee, out + [(t, -pos, p, fee)]
                pos, entry, best = 0, np.nan, np.nan
        mark = c[t] if c[t] == c[t] else mark
        if pos:
            best = max(best, h[t]) if pos > 0 else min(best, l[t])
    return out


CASES = [dict(sl=0.02, tp=0.04), dict(sl=0.05), dict(tp=0.03), dict(ts=0.03), dict(sl=0.02, tp=0.06, ts=0.04),
         dict(sl=0.03, tp=0.03, short=True), dict(ts=0.05, short=True)]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_kernel_exits_are_the_python_twin(spy, case):
    for (fast, slow), costs in itertools.product([(5, 20), (10, 50)], [Costs(), Costs(commission_bps=1.0, per_share=0.005,
                                                                                       minimum=1.0, slippage_bps=5.0)]):
        s = guarded(**case)(fast=fast, slow=slow)
        res = run_vectorized(s, spy, costs=costs)
        bars = spy.index.get_indexer(res.trades.ts)
        got = [(int(t), int(q), p, f) for t, q, p, f in zip(bars, res.trades.shares, res.trades.price, res.trades.commission)]
        assert got == twin_walk(s, spy, 100_000.0, costs)
        plain = run_vectorized(SmaCross(fast=fast, slow=slow), spy, costs=costs)
        assert res.final_equity != plain.final_equity  # the exits really acted


def _exit_trades(res, spy):
    "The exit fills: a trade on a bar without an order at the open for it, or the second trade of its bar."
    tr = res.trades.assign(bar=spy.index.get_indexer(res.trades.ts))
    ordered = res.targets.notna().to_numpy()[:, 0]
    second = tr.duplicated("bar", keep="first")
    return tr[second | ~ordered[tr.bar - 1]]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_fills_stay_in_the_bar_and_stops_never_fill_better_than_their_trigger(spy, case):
    costs = Costs(slippage_bps=5.0)
    s = guarded(**case)(fast=5, slow=20)
    res = run_vectorized(s, spy, costs=costs)
    o, h, l = (getattr(spy, f).to_numpy()[:, 0] for f in ("open", "high", "low"))
    bars = spy.index.get_indexer(res.trades.ts)
    assert ((res.trades.price >= l[bars] - 1e-9) & (res.trades.price <= h[bars] + 1e-9)).all()  # no fill outside the bar
    held = res.positions.to_numpy()[:, 0]
    exits = _exit_trades(res, spy)
    assert len(exits) > 0
    sl, tp, ts = s.exit_rules()
    for row in exits.itertuples():
        assert held[row.bar] == 0  # one exit closed the whole position: its sibling is cancelled (OCO)
        assert (exits.bar == row.bar).sum() == 1
        opened = res.trades[(res.trades.ts < row.ts) | ((res.trades.ts == row.ts) & (res.trades.index < row.Index))]
        last_flat = np.flatnonzero(held[:row.bar] == 0)
        entries = opened[spy.index.get_indexer(opened.ts) > (last_flat[-1] if len(last_flat) else -1)]
        entry = (entries.shares * entries.price).sum() / entries.shares.sum()
        long = row.shares < 0
        target = entry * (1 + tp) if long and tp else entry * (1 - tp) if tp else None
        at_target = target is not None and (row.price >= target if long else row.price <= target)
        if at_target:
            assert row.price == pytest.approx(max(target, o[row.bar]) if long else min(target, o[row.bar]), rel=1e-12)
            continue
        if sl and not ts:  # a stop: at its trigger less slippage, or at a worse open; never better than the trigger
            stop = entry * (1 - sl) if long else entry * (1 + sl)
            assert (row.price <= stop * (1 + 1e-12)) if long else (row.price >= stop * (1 - 1e-12))
            gap = o[row.bar] <= stop if long else o[row.bar] >= stop
            want = (max(o[row.bar] * (1 - 5e-4), l[row.bar]) if long else min(o[row.bar] * (1 + 5e-4), h[row.bar])) if gap \
                else (max(stop * (1 - 5e-4), l[row.bar]) if long else min(stop * (1 + 5e-4), h[row.bar]))
            assert row.price == pytest.approx(want, rel=1e-12)


def test_gaps_through_a_stop_fill_at_the_open(spy):
    res = run_vectorized(guarded(sl=0.01)(fast=5, slow=20), spy)
    o = spy.open.to_numpy()[:, 0]
    exits = _exit_trades(res, spy)
    gapped = exits[exits.price == o[exits.bar]]
    assert len(gapped) > 0 and (gapped.price < exits.price.max()).all()


def test_bad_exit_rules_are_refused_with_the_strategy_named(spy):
    for bad in (dict(sl=1.5), dict(ts=-0.1), dict(tp=0.0), dict(sl=1.0)):
        with pytest.raises(StrategyError, match="Guarded.*not a fraction"):
            run_vectorized(guarded(**bad)(), spy)
    with pytest.raises(StrategyError, match="backtrader engine does not place"):
        run_backtrader(guarded(sl=0.02)(), spy)


class Swept(SmaCross):
    stop_loss = Param(0.02, 0.01, 0.1, step=0.01)
    trailing_stop = Param(0.05, 0.01, 0.2, step=0.01)


def test_a_sweep_of_stop_distances_is_its_single_backtests(spy):
    combos = grid(Swept, fast=[5, 10], slow=[30], stop_loss=[0.01, 0.03], trailing_stop=[0.02, 0.1])
    sweep = run_sweep(Swept, spy, combos, costs=Costs(per_share=0.005, minimum=1.0))
    for k, c in enumerate(combos):
        single = run_vectorized(Swept(**c), spy, costs=Costs(per_share=0.005, minimum=1.0))
        np.testing.assert_array_equal(sweep.equity[k], single.equity.to_numpy())
        assert sweep.table.trades[k] == len(single.trades)
    assert sweep.table.final_equity.nunique() > 1
