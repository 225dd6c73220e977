"""The pre-trade gate: no order that breaches a limit is ever approved (property), limits and rules persist and
reload as the gate of an account, and every decision lands in the audit trail."""
from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

import bifrost
from bifrost.audit import AuditTrail
from bifrost.compliance.gate import Gate, check, load_gate, record_decision
from bifrost.compliance.rules import RuleVersion, save_rule
from bifrost.core import AccountState, Instrument, Order, OrderType, Side, Verdict
from bifrost.risk.limits import Limits, save_limits
from bifrost.store import connect

T = datetime(2024, 5, 1, 15, 0, tzinfo=timezone.utc)
SYMS = ["AAA", "BBB", "CCC", "DDD"]
SECTOR = {"AAA": "tech", "BBB": "tech", "CCC": "energy", "DDD": "energy"}

money = st.decimals(min_value=Decimal("1.00"), max_value=Decimal("900.00"), places=2)
qty = st.integers(min_value=-3000, max_value=3000)
frac = st.one_of(st.none(), st.decimals(min_value=Decimal("0.01"), max_value=Decimal("3"), places=2))
cash_amt = st.one_of(st.none(), st.decimals(min_value=Decimal(1000), max_value=Decimal(2_000_000), places=0))


@st.composite
def scenarios(draw):
    prices = {s: draw(money) for s in SYMS}
    positions = {s: Decimal(draw(qty)) for s in SYMS}
    cash = draw(st.decimals(min_value=Decimal(-200_000), max_value=Decimal(1_000_000), places=2))
    state = AccountState("acct", T, cash, positions, prices, {s: Instrument(s, sector=SECTOR[s]) for s in SYMS},
                         start_of_day_equity=draw(cash_amt), peak_equity=draw(cash_amt))
    limits = Limits(max_order_notional=draw(cash_amt), max_position_weight=draw(frac),
                    max_gross_exposure=draw(cash_amt), max_net_exposure=draw(cash_amt), max_leverage=draw(frac),
                    max_sector_weight=draw(frac), max_daily_loss=draw(frac), max_drawdown=draw(frac),
                    restricted=frozenset(draw(st.sets(st.sampled_from(SYMS), max_size=1))))
    side = draw(st.sampled_from([Side.BUY, Side.SELL]))
    limit_px = draw(st.one_of(st.none(), money))
    order = Order("c-1", draw(st.sampled_from(SYMS)), side, Decimal(draw(st.integers(1, 4000))),
                  OrderType.LIMIT if limit_px else OrderType.MARKET, limit_price=limit_px)
    return state, limits, order


def breached(state: AccountState, limits: Limits, order: Order) -> list[str]:
    "An independent statement of the limits, from first principles: which would this order break?"
    px = order.limit_price or state.prices[order.symbol]
    signed = order.quantity if order.side is Side.BUY else -order.quantity
    pos0 = dict(state.positions)
    pos1 = {**pos0, order.symbol: pos0.get(order.symbol, Decimal(0)) + signed}
    value = lambda pos: {s: q * state.prices[s] for s, q in pos.items()}
    v0, v1 = value(pos0), value(pos1)
    eq0 = state.cash + sum(v0.values(), Decimal(0))
    eq1 = state.cash - signed * px + sum(v1.values(), Decimal(0))
    gross0, gross1 = sum(map(abs, v0.values()), Decimal(0)), sum(map(abs, v1.values()), Decimal(0))
    net0, net1 = sum(v0.values(), Decimal(0)), sum(v1.values(), Decimal(0))
    grows = abs(pos1[order.symbol]) > abs(pos0.get(order.symbol, Decimal(0)))
    over = lambda x, lim: lim is not None and x > lim
    ratio = lambda x, e: x / e if e > 0 else Decimal("Infinity")
    sector = lambda v: abs(sum((x for s, x in v.items() if SECTOR[s] == SECTOR[order.symbol]), Decimal(0)))
    out = []
    if order.symbol in limits.restricted:
        out.append("restricted")
    if over(order.quantity * px, limits.max_order_notional):
        out.append("max_order_notional")
    if grows and over(ratio(abs(v1[order.symbol]), eq1), limits.max_position_weight):
        out.append("max_position_weight")
    if gross1 > gross0 and over(gross1, limits.max_gross_exposure):
        out.append("max_gross_exposure")
    if abs(net1) > abs(net0) and over(abs(net1), limits.max_net_exposure):
        out.append("max_net_exposure")
    if gross1 > gross0 and over(ratio(gross1, eq1), limits.max_leverage):
        out.append("max_leverage")
    if sector(v1) > sector(v0) and over(ratio(sector(v1), eq1), limits.max_sector_weight):
        out.append("max_sector_weight")
    if grows and state.start_of_day_equity and limits.max_daily_loss is not None and \
            (state.start_of_day_equity - eq0) / state.start_of_day_equity >= limits.max_daily_loss:
        out.append("max_daily_loss")
    if grows and state.peak_equity and limits.max_drawdown is not None and \
            (state.peak_equity - eq0) / state.peak_equity >= limits.max_drawdown:
        out.append("max_drawdown")
    if grows and eq0 <= 0:
        out.append("positive_equity")
    return sorted(out)


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_no_order_that_breaches_a_limit_is_ever_approved(case):
    state, limits, order = case
    decision = check(order, state, limits, None)
    blocked = sorted(c.name for c in decision.checks if c.verdict is Verdict.BLOCK)
    assert blocked == breached(state, limits, order)
    assert decision.approved == (not blocked)


def test_unknown_instrument_and_missing_limits_block():
    state = AccountState("acct", T, Decimal(1000), {}, {"AAA": Decimal(10)})
    assert not check(Order("c", "ZZZ", Side.BUY, Decimal(1)), state, Limits(), None).approved
    assert not check(Order("c", "AAA", Side.BUY, Decimal(1)), state, None, None).approved
    assert check(Order("c", "AAA", Side.BUY, Decimal(1)), state, Limits(), None).approved


def test_gate_is_loaded_from_the_store_and_decisions_are_audited(store_url):
    store = connect(store_url)
    audit = AuditTrail(store)
    save_limits(store, "acct", Limits(max_order_notional=Decimal(10_000)), T.replace(year=2020), T, "initial", audit)
    save_rule(store, "acct", RuleVersion("restricted_list", 1, date(2024, 1, 1), None, {"symbols": ["BBB"]}), T)
    gate = load_gate(store, "acct", as_of=T)
    state = AccountState("acct", T, Decimal(100_000), {}, {"AAA": Decimal(100), "BBB": Decimal(50)})
    orders = [Order("ok", "AAA", Side.BUY, Decimal(10)), Order("big", "AAA", Side.BUY, Decimal(200)),
              Order("restricted", "BBB", Side.BUY, Decimal(1))]
    decisions = [gate(o, state) for o in orders]
    assert [d.approved for d in decisions] == [True, False, False]
    for d in decisions:
        record_decision(audit, "acct", d, T)
    rows = audit.records(kind="order.decision")
    assert rows.subject.tolist() == ["ok", "big", "restricted"]
    assert '"approved":false' in rows.payload.iat[1] and "max_order_notional" in rows.payload.iat[1]
    assert audit.verify().ok
    # an account nobody configured: the gate loads, and blocks everything
    assert not load_gate(store, "other")(orders[0], state).approved


# -- batches: a rebalance gated as one pass, each order against the account the approved ones before it leave ----------
@settings(max_examples=150, deadline=None)
@given(scenarios(), st.lists(st.tuples(st.sampled_from(SYMS), st.sampled_from([Side.BUY, Side.SELL]),
                                       st.integers(1, 2000)), min_size=1, max_size=8))
def test_batch_decides_as_the_one_order_gate_on_the_account_moved_by_each_approved_order(scenario, more):
    state, limits, first = scenario
    orders = [first] + [Order(f"c-{i}", s, side, Decimal(q)) for i, (s, side, q) in enumerate(more, 2)]
    gate = Gate(limits)
    batch = gate.batch(orders, state)
    twin, moved = [], state  # the Python twin: a new AccountState after each approved order
    for o in orders:
        d = gate(o, moved)
        twin.append(d)
        if d.approved:
            moved = moved.after(o, o.limit_price or moved.prices[o.symbol])
    assert batch == twin


def _close(symbol: str) -> Decimal:
    import pandas as pd
    df = pd.read_parquet(Path(bifrost.__file__).parent / "sample" / "daily" / f"{symbol}_daily_lean.parquet")
    return Decimal(f"{float(df.close.iloc[-1]):.2f}")


def test_batch_on_the_sample_a_rebalance_sells_to_make_room_for_its_buys():
    prices = {s: _close(s) for s in ("SPY", "QQQ", "IWM", "AAPL")}
    state = AccountState("acct", T, Decimal(10_000), {"SPY": Decimal(200)}, prices)
    gross = 200 * prices["SPY"]
    limits = Limits(max_gross_exposure=gross + 1000)  # fully invested: a buy fits only once the sell has made room
    buys = [Order(f"b-{s}", s, Side.BUY, (gross / 3 / prices[s]).to_integral_value(rounding="ROUND_FLOOR"))
            for s in ("QQQ", "IWM", "AAPL")]
    sell = Order("s-SPY", "SPY", Side.SELL, Decimal(200))
    assert [d.approved for d in Gate(limits).batch(buys, state)] == [False, False, False]
    assert [d.approved for d in Gate(limits).batch([sell, *buys], state)] == [True, True, True, True]
    assert not Gate(None).batch([sell], state)[0].approved  # no limits configured: blocked, as one order would be
