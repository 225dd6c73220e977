"""Paper trading through gate, OMS, paper broker and ledger trades exactly as both backtest engines on shipped data."""
from decimal import Decimal

import numpy as np
import pytest

from bifrost.audit import AuditTrail
from bifrost.compliance.gate import Gate
from bifrost.data.ingest import ingest
from bifrost.data.sources import SAMPLE, SampleSource
from bifrost.risk.limits import Limits
from bifrost.store import connect
from bifrost.strategy.api import Costs, MeanReversion, Momentum, Panel, SmaCross, StrategyError
from bifrost.strategy.backtrader import parity, run_backtrader
from bifrost.strategy.paper import run_paper
from bifrost.strategy.vector import run_vectorized

# costs both representations hold exactly: whole cents per share, a minimum, prices on the cent grid, no slippage
EXACT = Costs(per_share=0.01, minimum=1.0)
DEFAULT = Costs(commission_bps=0.5, per_share=0.005, minimum=1.0, slippage_bps=2.0)

CASES = {  # symbols whose shipped prices are on the cent grid and have no corporate action in the window
    "sma_spy_daily": (SmaCross(fast=10, slow=50), ["SPY"], "1d", "2014-06-01", "2021-03-31"),
    "momentum_six_symbols": (Momentum(lookback=63, skip=0, top=2), ["SPY", "IWM", "EEM", "BAC", "FB", "USO"], "1d",
                             "2014-06-01", "2019-12-31"),
    "mean_reversion_spy_minutes": (MeanReversion(window=20, entry=1.5), ["SPY"], "1min", "2013-10-04", "2013-10-11"),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    s = connect(f"duckdb:///{tmp_path_factory.mktemp('paper')}/p.duckdb")
    ingest(s, SampleSource(), progress=False)
    return s


def _panel(store, case):
    strategy, symbols, bar_size, start, end = CASES[case]
    return strategy, Panel.from_store(store, symbols, bar_size, start, end)


@pytest.mark.parametrize("case", list(CASES))
def test_paper_when_exact_costs_then_same_trades_and_equity_as_both_engines(data, case):
    strategy, panel = _panel(data, case)
    vec = run_vectorized(strategy, panel, costs=EXACT)
    btr = run_backtrader(strategy, panel, costs=EXACT)
    pap = run_paper(strategy, panel, data, account=f"parity-{case}", costs=EXACT)
    assert len(vec.trades) > 20
    assert parity(vec, pap).empty and parity(btr, pap).empty
    assert round(vec.final_equity, 2) == round(btr.final_equity, 2) == round(pap.final_equity, 2)
    assert (vec.positions.to_numpy() == pap.positions.to_numpy()).all()
    np.testing.assert_allclose(pap.equity.to_numpy(), vec.equity.to_numpy(), rtol=0, atol=0.005)


def test_paper_when_gate_refuses_orders_then_same_decisions_and_trades_as_engines(data):
    strategy, panel = _panel(data, "momentum_six_symbols")
    gate = Gate(Limits(max_order_notional=Decimal(60_000)))
    vec = run_vectorized(strategy, panel, costs=EXACT, gate=gate)
    btr = run_backtrader(strategy, panel, costs=EXACT, gate=gate)
    pap = run_paper(strategy, panel, data, account="parity-gated", costs=EXACT, gate=gate)
    refused = vec.decisions[~vec.decisions.approved]
    assert len(refused) > 3 and refused.reasons.str.contains("notional").all()
    cols = ["ts", "symbol", "shares", "approved"]
    assert vec.decisions[cols].equals(pap.decisions[cols]) and btr.decisions[cols].equals(pap.decisions[cols])
    assert parity(vec, pap).empty and round(vec.final_equity, 2) == round(pap.final_equity, 2)
    # the refusals went through the OMS: rejected orders with the gate's reason, audited
    rejected = data.query("SELECT reason FROM orders WHERE account = 'parity-gated' AND status = 'rejected'")
    assert len(rejected) == len(refused) and rejected.reason.str.contains("notional").all()


def test_paper_when_run_then_ledger_broker_fills_agree_and_audit_verifies(data):
    strategy, panel = _panel(data, "sma_spy_daily")
    pap = run_paper(strategy, panel, data, account="agree", costs=DEFAULT)
    fills = data.query("SELECT f.* FROM order_fills f JOIN orders o USING (client_order_id) WHERE o.account = 'agree'")
    assert len(fills) == len(pap.trades)
    ledger = data.query("SELECT * FROM ledger_transactions WHERE portfolio = 'agree' AND kind = 'fill'")
    assert sorted(ledger.txn_id) == sorted(fills.fill_id)
    assert pap.positions.iloc[-1]["SPY"] == sum(pap.trades.shares)
    assert AuditTrail(data).verify().ok


def test_paper_when_default_costs_then_differs_only_by_tick_and_cent_rounding(data):
    "Slippage moves prices off the cent grid: the broker snaps against the trader; commissions round to the cent."
    strategy, panel = _panel(data, "sma_spy_daily")
    vec = run_vectorized(strategy, panel, costs=DEFAULT)
    pap = run_paper(strategy, panel, data, account="default-costs", costs=DEFAULT)
    a, b = vec.trades, pap.trades
    assert (a.ts.to_numpy() == b.ts.to_numpy()).all() and (a.symbol.to_numpy() == b.symbol.to_numpy()).all()
    assert (a.shares - b.shares).abs().max() == 1  # the paper account has a little less cash to size with
    worse = np.sign(a.shares) * (b.price - a.price)  # paid more on buys, got less on sells
    assert ((worse >= -1e-9) & (worse < 0.01)).all() and (worse > 1e-9).any()
    assert (b.price * 100 - np.round(b.price * 100)).abs().max() < 1e-6  # on the tick
    engine_fee = [DEFAULT.commission(abs(q), px) for q, px in zip(b.shares, b.price)]  # at the broker's price
    assert (b.commission - engine_fee).abs().max() <= 0.005 + 1e-9  # the same fee, rounded to the cent
    assert pap.final_equity < vec.final_equity


def test_paper_when_account_exists_then_refused(data):
    strategy, panel = _panel(data, "sma_spy_daily")
    run_paper(strategy, panel.upto(80), data, account="twice", costs=EXACT)
    with pytest.raises(StrategyError, match="already exists"):
        run_paper(strategy, panel.upto(80), data, account="twice", costs=EXACT)


def test_paper_when_any_backend_then_same_as_vectorized(store):
    "DuckDB and PostgreSQL: the OMS, journal and ledger rows behind a paper run."
    feeds = tuple(f for f in SAMPLE if f.primary and f.spec.ticker == "SPY" and f.spec.bar_size == "1d")
    ingest(store, SampleSource(feeds), progress=False)
    panel = Panel.from_store(store, ["SPY"], "1d", "2016-01-01", "2017-12-31")
    strategy = SmaCross(fast=5, slow=20)
    vec = run_vectorized(strategy, panel, costs=EXACT)
    pap = run_paper(strategy, panel, store, account="backend", costs=EXACT)
    assert len(vec.trades) > 5 and parity(vec, pap).empty
    assert round(vec.final_equity, 2) == round(pap.final_equity, 2)
