"""Order events: every state against every event, the fill arithmetic (exact), duplicates, overfills, amendments."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import product

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bifrost.core import Fill, Order
from bifrost.core import OrderStatus as S
from bifrost.execution.events import (
    EVENT_TYPES,
    EVENTS,
    TRANSITIONS,
    Accepted,
    Amended,
    Cancelled,
    Filled,
    IllegalTransitionError,
    OrderError,
    OrderRecord,
    OverfillError,
    PartiallyFilled,
    Submitted,
    Triggered,
)

T0 = datetime(2024, 3, 1, 15, tzinfo=UTC)
PX = Decimal("385.59")  # SPY's open on 1 March 2021 in the shipped sample

# Written out independently of EVENTS: the spec, state by state ("=": the status stays; absent: refused).
_END = {"cancelled": S.CANCELLED, "rejected": S.REJECTED, "expired": S.EXPIRED, "outcome_unknown": S.UNKNOWN}
SPEC = {
    S.NEW: {"submitted": S.PENDING_SUBMIT, "rejected": S.REJECTED},
    S.PENDING_SUBMIT: {"accepted": S.ACCEPTED, "partially_filled": S.PARTIALLY_FILLED, "filled": S.FILLED,
                       "cancel_requested": S.PENDING_CANCEL, **_END},
    S.ACCEPTED: {"accepted": "=", "partially_filled": S.PARTIALLY_FILLED, "filled": S.FILLED,
                 "cancel_requested": S.PENDING_CANCEL, **_END, "triggered": "=", "amended": "="},
    S.PARTIALLY_FILLED: {"accepted": "=", "partially_filled": "=", "filled": S.FILLED,
                         "cancel_requested": S.PENDING_CANCEL, "cancelled": S.CANCELLED, "expired": S.EXPIRED,
                         "outcome_unknown": S.UNKNOWN, "triggered": "=", "amended": "="},
    S.PENDING_CANCEL: {"accepted": "=", "partially_filled": "=", "filled": S.FILLED, **_END},
    S.UNKNOWN: {"submitted": S.PENDING_SUBMIT, "accepted": S.ACCEPTED, "partially_filled": S.PARTIALLY_FILLED,
                "filled": S.FILLED, "cancel_requested": S.PENDING_CANCEL, "cancelled": S.CANCELLED,
                "rejected": S.REJECTED, "expired": S.EXPIRED},
}


def _order(i=0, qty=10, **kw):
    return Order(f"o-{i}", "SPY", "buy", Decimal(qty), "limit", "gtc", limit_price=Decimal("385.60"), **kw)


def _at(status: S, qty=10) -> OrderRecord:
    "A record at `status`, reached by events only (so the test relies on nothing but apply)."
    rec = OrderRecord.new(_order(qty=qty), "acct", "paper", T0)
    path = {S.NEW: [], S.PENDING_SUBMIT: ["submitted"], S.ACCEPTED: ["submitted", "accepted"],
            S.PARTIALLY_FILLED: ["submitted", "accepted", "partially_filled"],
            S.PENDING_CANCEL: ["submitted", "accepted", "cancel_requested"],
            S.UNKNOWN: ["submitted", "outcome_unknown"], S.FILLED: ["submitted", "filled"],
            S.CANCELLED: ["submitted", "cancelled"], S.REJECTED: ["rejected"], S.EXPIRED: ["submitted", "expired"]}
    for kind in path[status]:
        rec = rec.apply(EVENT_TYPES[kind](rec.client_order_id, T0))
    assert rec.status is status
    return rec


@pytest.mark.parametrize("status,kind", list(product(S, EVENT_TYPES)), ids=lambda x: getattr(x, "value", x))
def test_every_state_against_every_event(status, kind):
    rec = _at(status)
    event = EVENT_TYPES[kind](rec.client_order_id, T0 + timedelta(seconds=1), "why")
    want = SPEC.get(status, {}).get(kind)
    if want is None:
        with pytest.raises(IllegalTransitionError, match=f"{kind} is not allowed when it is {status.value}"):
            rec.apply(event)
        return
    new = rec.apply(event)
    assert new.status is (status if want == "=" else want)
    assert (new.events, new.updated_at, new.reason) == (rec.events + 1, event.ts, "why")
    assert new.order == rec.order and new.filled_quantity == rec.filled_quantity  # no fill, no amendment: same order


@pytest.mark.parametrize("status", [S.FILLED, S.CANCELLED, S.REJECTED, S.EXPIRED])
def test_a_finished_order_takes_a_late_fill_and_keeps_its_status(status):
    rec = _at(status)
    fill = Fill("F-late", rec.client_order_id, "SPY", "buy", Decimal(4), PX, T0)
    new = rec.apply(PartiallyFilled(rec.client_order_id, T0, fill=fill))
    assert (new.status, new.filled_quantity, new.avg_fill_price) == (status, Decimal(4), PX)


def test_the_status_graph_the_events_allow():
    assert all(not TRANSITIONS[s] for s in S if s.is_terminal)          # terminal means terminal
    assert all(S.NEW not in TRANSITIONS[s] for s in S)                  # nothing goes back to new
    assert TRANSITIONS[S.UNKNOWN] >= {S.FILLED, S.CANCELLED, S.PENDING_SUBMIT}  # unknown waits for the broker
    assert all(S.UNKNOWN in TRANSITIONS[s] for s in S if not s.is_terminal and s not in (S.NEW, S.UNKNOWN))
    assert set(EVENTS) == set(S)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(30_000, 45_000)), min_size=1, max_size=12),
       st.integers(0, 50))
def test_fill_arithmetic_is_exact_and_duplicates_count_once(fills, extra):
    "Random fills in cents: the filled quantity and the average price are the exact sums; a repeat changes nothing."
    total = sum(q for q, _ in fills)
    rec = _at(S.ACCEPTED, qty=total + extra)
    seen = []
    for i, (q, cents) in enumerate(fills):
        f = Fill(f"F-{i}", rec.client_order_id, "SPY", "buy", Decimal(q), Decimal(cents).scaleb(-2), T0 + timedelta(seconds=i))
        ev = rec.fill_event(f)
        rec = rec.apply(ev)
        seen.append(f)
        assert rec.apply(rec.fill_event(seen[i // 2])) == rec  # any fill seen before, again: nothing changes
    qty = sum(Decimal(q) for q, _ in fills)
    notional = sum(Decimal(q) * Decimal(c).scaleb(-2) for q, c in fills)
    assert (rec.filled_quantity, rec.notional, rec.avg_fill_price) == (qty, notional, notional / qty)
    assert rec.status is (S.FILLED if extra == 0 else S.PARTIALLY_FILLED)
    assert rec.fill_ids == {f.fill_id for f in seen} and rec.remaining == extra


def test_an_overfill_is_refused_and_the_record_stays_as_it_was():
    rec = _at(S.PARTIALLY_FILLED)
    rec = rec.apply(rec.fill_event(Fill("F-1", "o-0", "SPY", "buy", Decimal(6), PX, T0)))
    with pytest.raises(OverfillError, match="would fill 11 of 10"):
        rec.apply(PartiallyFilled("o-0", T0, fill=Fill("F-2", "o-0", "SPY", "buy", Decimal(5), PX, T0)))
    assert (rec.status, rec.filled_quantity) == (S.PARTIALLY_FILLED, Decimal(6))
    done = rec.apply(rec.fill_event(Fill("F-3", "o-0", "SPY", "buy", Decimal(4), PX, T0)))
    assert done.status is S.FILLED and done.remaining == 0


def test_fill_events_are_checked_against_the_order():
    rec = _at(S.ACCEPTED)
    with pytest.raises(OrderError, match="partial fill"):  # a Filled event that leaves some open is not one
        rec.apply(Filled("o-0", T0, fill=Fill("F-1", "o-0", "SPY", "buy", Decimal(3), PX, T0)))
    with pytest.raises(OrderError, match="is not of order"):
        rec.apply(PartiallyFilled("o-0", T0, fill=Fill("F-1", "o-0", "SPY", "sell", Decimal(3), PX, T0)))
    with pytest.raises(OrderError, match="applied to order o-0"):
        rec.apply(Accepted("o-9", T0))
    # a partial fill that completes the order makes it filled: the record decides, not the event's name
    assert rec.apply(PartiallyFilled("o-0", T0, fill=Fill("F-2", "o-0", "SPY", "buy", Decimal(10), PX, T0))).status is S.FILLED


def test_amend_and_trigger_change_a_working_order_not_its_status():
    rec = _at(S.PARTIALLY_FILLED)
    rec = rec.apply(rec.fill_event(Fill("F-1", "o-0", "SPY", "buy", Decimal(4), PX, T0)))
    amended = rec.apply(Amended("o-0", T0, "lower limit", quantity=Decimal(8), limit_price=Decimal("385.00")))
    assert (amended.quantity, amended.limit_price, amended.status, amended.remaining) == (
        Decimal(8), Decimal("385.00"), S.PARTIALLY_FILLED, Decimal(4))
    with pytest.raises(OrderError, match="4 has filled"):
        rec.apply(Amended("o-0", T0, quantity=Decimal(4)))
    with pytest.raises(OrderError, match="amendment refused"):
        rec.apply(Amended("o-0", T0, stop_price=Decimal(380)))  # a limit order takes no stop price
    assert rec.apply(Triggered("o-0", T0)).triggered and not rec.triggered


def test_record_composes_the_order_and_events_are_frozen():
    rec = OrderRecord.new(_order(), "acct", "paper", T0)
    assert rec.order == _order(created_at=T0) and rec.created_at == T0 and rec.symbol == "SPY"
    ev = Submitted("o-0", T0)
    with pytest.raises(AttributeError):
        ev.detail = "changed"
    assert Cancelled("o-0", T0).kind == "cancelled"
