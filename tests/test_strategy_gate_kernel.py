"""The gate at engine speed decides exactly as the gate asked order by order did.

`run_vectorized` used to ask the Python gate about every trade (an `AccountState` of Decimals each time) and rerun
the whole kernel after each refusal. The kernel now carries the gate's array form (limits on running figures,
restricted symbols as a bar × symbol mask) and asks the gate itself only about refusals (for its words) and orders
the floats cannot settle. `reference_backtest` below is the old path, kept here as the slow reference: the two must
give the same trades, positions, cash, equity and decisions table on real sample data under limits that refuse.
"""
from __future__ import annotations

import math
from datetime import date
from decimal import Decimal

import numba
import numpy as np
import pandas as pd
import pytest
from conftest import sample_store

from bifrost.compliance.gate import Gate
from bifrost.compliance.rules import FINRA_PDT, BaseRule, RestrictedList, RuleBook, RuleVersion, register_rule
from bifrost.core import Verdict
from bifrost.risk.limits import Limits
from bifrost.strategy.api import Costs, Momentum, Panel, SmaCross, rebalance
from bifrost.strategy.kernel import BLOCK, PASS, UNSURE, gate_arrays, simulate
from bifrost.strategy.vector import DEFAULT_GATE, GateLog, _prices_for_gate, _trades_frame, run_sweep, grid, run_vectorized

UNIVERSE = ["SPY", "QQQ", "IWM", "EEM", "AAPL", "BAC", "GOOG", "USO", "WM"]


# ---- the old path, verbatim in substance: the bare kernel with a blocked mask, rerun after each refusal ----
@numba.njit(cache=True)
def _old_commission(shares, price, bps, per_share, minimum):
    if shares == 0:
        return 0.0
    return max(abs(shares) * price * bps / 1e4 + abs(shares) * per_share, minimum)


@numba.njit(cache=True)
def _old_simulate(open_, high, low, close, weights, cash0, bps, per_share, minimum, slip_bps, blocked):
    n_bars, n_sym = close.shape
    pos = np.zeros(n_sym, np.int64)
    positions = np.zeros((n_bars, n_sym), np.int64)
    cash_out, equity, marks = np.empty(n_bars), np.empty(n_bars), np.full(n_sym, np.nan)
    trades = np.empty((n_bars * n_sym, 5))
    n_trades, cash = 0, cash0
    sells, buys, deltas = np.empty(n_sym, np.int64), np.empty(n_sym, np.int64), np.zeros(n_sym, np.int64)
    for t in range(n_bars):
        if t > 0:
            value = cash
            for i in range(n_sym):
                if pos[i] != 0:
                    value += pos[i] * (open_[t, i] if open_[t, i] == open_[t, i] else marks[i])
            n_sells = n_buys = 0
            for i in range(n_sym):
                w = weights[t - 1, i]
                if w != w or open_[t, i] != open_[t, i] or blocked[t, i]:
                    continue
                delta = np.int64(math.trunc(w * value / open_[t, i])) - pos[i]
                deltas[i] = delta
                if delta < 0:
                    sells[n_sells] = i
                    n_sells += 1
                elif delta > 0:
                    buys[n_buys] = i
                    n_buys += 1
            for k in range(n_sells + n_buys):
                i = sells[k] if k < n_sells else buys[k - n_sells]
                delta = deltas[i]
                if k < n_sells:
                    price = max(open_[t, i] * (1 - slip_bps / 1e4), low[t, i]) if slip_bps else open_[t, i]
                    qty = delta
                else:
                    price = min(open_[t, i] * (1 + slip_bps / 1e4), high[t, i]) if slip_bps else open_[t, i]
                    qty = min(delta, np.int64(math.floor(cash / price)))
                    while qty > 0 and cash - qty * price - _old_commission(qty, price, bps, per_share, minimum) < 0:
                        qty -= 1
                    if qty <= 0:
                        continue
                fee = _old_commission(qty, price, bps, per_share, minimum)
                cash = cash - qty * price
                cash = cash - fee
                pos[i] += qty
                trades[n_trades, 0], trades[n_trades, 1], trades[n_trades, 2] = t, i, qty
                trades[n_trades, 3], trades[n_trades, 4] = price, fee
                n_trades += 1
        value = cash
        for i in range(n_sym):
            if close[t, i] == close[t, i]:
                marks[i] = close[t, i]
            if pos[i] != 0:
                value += pos[i] * marks[i]
        positions[t] = pos
        cash_out[t] = cash
        equity[t] = value
    return positions, cash_out, equity, trades[:n_trades]


def reference_backtest(strategy, panel, cash=100_000.0, costs=Costs(), gate=DEFAULT_GATE, account="backtest"):
    "The pre-kernel gated backtest: ask the Python gate about each trade; a refusal blocks it and the kernel reruns."
    w = np.ascontiguousarray(strategy.run_targets(panel).to_numpy(np.float64))
    arrays = tuple(np.ascontiguousarray(getattr(panel, f).to_numpy(np.float64)) for f in ("open", "high", "low", "close"))
    blocked = np.zeros(w.shape, np.bool_)
    log, prices = GateLog(gate, account, panel.symbols), _prices_for_gate(panel)
    while True:
        positions, cash_s, equity, trades = _old_simulate(*arrays, w, cash, costs.commission_bps, costs.per_share,
                                                          costs.minimum, costs.slippage_bps, blocked)
        log.rows.clear()
        for k in range(len(trades)):  # simply ask again from the start: slow, and obviously the old semantics
            t, i, shares = int(trades[k, 0]), int(trades[k, 1]), trades[k, 2]
            if k == 0 or int(trades[k - 1, 0]) != t:
                run_cash, run_pos = cash_s[t - 1], positions[t - 1].copy()
                sod, peak = equity[t - 1], equity[:t].max()
            if not log.decide(panel.index[t].to_pydatetime(), i, shares, run_cash, run_pos, prices[t], sod, peak):
                log.refusals.append(log.rows.pop())
                blocked[t, i] = True
                break
            run_cash -= shares * trades[k, 3] + trades[k, 4]
            run_pos[i] += int(shares)
        else:
            return positions, cash_s, equity, _trades_frame(trades, panel), log.frame()


# ---- data and gates ----
@pytest.fixture(scope="module")
def panel(tmp_path_factory) -> Panel:
    store = sample_store(tmp_path_factory.mktemp("gatekernel"), UNIVERSE)
    return Panel.from_store(store, UNIVERSE, start="2012-01-01", end="2020-12-31")


@register_rule
class NoFridayBuys(BaseRule):
    "A rule the array form does not know: the kernel must ask the gate about every order while it is in force."
    name = "test_no_friday_buys"

    def check(self, order, state):
        friday = state.as_of.weekday() == 4 and order.side.sign > 0
        return self.answer(Verdict.BLOCK if friday else Verdict.PASS, "no buying on Fridays" if friday else "")


def _book(*versions):
    return RuleBook("backtest", versions)


GATES = {
    "position_weight": Gate(Limits(max_position_weight=Decimal("0.2"))),
    "gross": Gate(Limits(max_gross_exposure=Decimal("60000"))),
    "net_and_notional": Gate(Limits(max_net_exposure=Decimal("70000"), max_order_notional=Decimal("30000"))),
    "leverage": Gate(Limits(max_leverage=Decimal("0.6"))),
    "drawdown_and_daily_loss": Gate(Limits(max_drawdown=Decimal("0.05"), max_daily_loss=Decimal("0.01"))),
    "restricted": Gate(Limits(restricted=frozenset({"AAPL"})),
                       _book(RuleVersion("restricted_list", 1, date(2012, 1, 1), None,
                                         {"symbols": ["QQQ", {"symbol": "USO", "from": "2015-06-01", "until": "2017-01-01",
                                                              "reason": "research"}]}),
                             FINRA_PDT, RuleVersion("wash_sale", 1, date(2000, 1, 1)))),
    "unknown_rule": Gate(Limits(max_position_weight=Decimal("0.3")),
                         _book(RuleVersion("test_no_friday_buys", 1, date(2014, 1, 1), date(2016, 1, 1)))),
    "no_limits": Gate(None),
}


def _assert_same(new, old):
    positions, cash_s, equity, trades, decisions = old
    np.testing.assert_array_equal(new.positions.to_numpy(), positions)
    np.testing.assert_array_equal(new.cash.to_numpy(), cash_s)
    np.testing.assert_array_equal(new.equity.to_numpy(), equity)
    pd.testing.assert_frame_equal(new.trades, trades)
    pd.testing.assert_frame_equal(new.decisions, decisions)


@pytest.mark.parametrize("name", list(GATES))
def test_gated_kernel_decides_as_the_gate_asked_order_by_order(panel, name):
    gate = GATES[name]
    strategy = Momentum(lookback=63, skip=0, top=4)
    costs = Costs(commission_bps=2.0, per_share=0.005, minimum=1.0, slippage_bps=3.0)
    new = run_vectorized(strategy, panel, costs=costs, gate=gate)
    _assert_same(new, reference_backtest(strategy, panel, costs=costs, gate=gate))
    refused = new.decisions[~new.decisions.approved]
    assert len(refused) > 0, "the gate must really refuse something here"
    assert refused.reasons.str.startswith("block: ").all()
    assert new.decisions.approved.sum() == len(new.trades)


def test_daily_smacross_under_a_drawdown_stop(panel):
    one = Panel(*(getattr(panel, f)[["SPY"]] for f in ("open", "high", "low", "close", "volume")))
    gate = Gate(Limits(max_drawdown=Decimal("0.04")))
    for fast, slow in [(5, 30), (10, 50), (20, 120)]:
        s = SmaCross(fast=fast, slow=slow)
        new = run_vectorized(s, one, gate=gate)
        _assert_same(new, reference_backtest(s, one, gate=gate))
    assert (~new.decisions.approved).any()


def test_an_order_at_the_edge_of_a_limit_is_the_gates_to_answer(panel):
    "A limit set exactly at an order's weight: floats cannot tell, so the gate itself decides (and the paths agree)."
    s = Momentum(lookback=63, skip=0, top=1)
    free = run_vectorized(s, panel)
    first = free.trades.iloc[0]
    weight = Decimal(int(first.shares)) * Decimal(f"{panel.open.loc[first.ts, first.symbol]:.6f}") / Decimal("100000.000000")
    gate = Gate(Limits(max_position_weight=weight))
    new = run_vectorized(s, panel, gate=gate)
    _assert_same(new, reference_backtest(s, panel, gate=gate))
    assert new.decisions.approved.iloc[0]  # within the limit to the last digit


def test_gate_arrays_mark_restricted_symbols_by_their_dates(panel):
    g = gate_arrays(GATES["restricted"], panel.index, panel.symbols)
    col = {s: j for j, s in enumerate(panel.symbols)}
    days = panel.index.tz_convert("America/New_York").date
    uso = g.verdicts[:, col["USO"]]
    inside = np.array([date(2015, 6, 1) <= d < date(2017, 1, 1) for d in days])
    assert (uso[inside] == BLOCK).all() and (uso[~inside] == PASS).all()
    assert (g.verdicts[:, col["AAPL"]] == BLOCK).all() and (g.verdicts[:, col["QQQ"]] == BLOCK).all()
    assert (g.verdicts[:, col["SPY"]] == PASS).all()
    unknown = gate_arrays(GATES["unknown_rule"], panel.index, panel.symbols)
    in_force = np.array([date(2014, 1, 1) <= d < date(2016, 1, 1) for d in days])
    assert (unknown.verdicts[in_force] == UNSURE).all() and (unknown.verdicts[~in_force] == PASS).all()
    assert not unknown.compact


def test_bare_kernel_is_rebalance_bar_by_bar(panel):
    "`rebalance` (the Python twin the paper broker and backtrader engine call) gives the kernel's trades on every bar."
    rng = np.random.default_rng(11)
    arrays = tuple(np.ascontiguousarray(getattr(panel, f).to_numpy(np.float64)) for f in ("open", "high", "low", "close"))
    costs = Costs(commission_bps=1.0, per_share=0.01, minimum=1.0, slippage_bps=5.0)
    w = rng.choice([np.nan, np.nan, 0.0, 0.1, 0.2, -0.1], size=arrays[0].shape)
    positions, cash_s, _, trades = simulate(*arrays, w, 100_000.0, costs.commission_bps, costs.per_share, costs.minimum,
                                            costs.slippage_bps, np.zeros(w.shape, np.bool_))
    marks = pd.DataFrame(arrays[3]).ffill().to_numpy()
    for t in range(1, len(w)):
        want = [(int(i), int(q), p, f) for _, i, q, p, f in trades[trades[:, 0] == t]]
        got = rebalance(positions[t - 1], cash_s[t - 1], w[t - 1], arrays[0][t], arrays[1][t], arrays[2][t],
                        marks[t - 1], costs)
        assert got == want, t


@pytest.mark.parametrize("name", ["position_weight", "restricted", "unknown_rule"])
def test_gated_sweep_rows_are_the_gated_backtests(panel, name):
    gate = GATES[name]
    combos = grid(Momentum, lookback=[42, 63], skip=[0], top=[2, 4])
    swept = run_sweep(Momentum, panel, combos, gate=gate)
    for k, c in enumerate(combos):
        single = run_vectorized(Momentum(**c), panel, gate=gate)
        np.testing.assert_array_equal(swept.equity[k], single.equity.to_numpy())
        assert swept.table.trades[k] == len(single.trades)
