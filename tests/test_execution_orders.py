"""The order journal on both store backends: random event walks persisted and audited exactly, racing writers."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import duckdb
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bifrost.audit import AuditTrail
from bifrost.core import Check, Decision, Fill, Order, Verdict
from bifrost.core import OrderStatus as S
from bifrost.execution.events import (EVENTS, Accepted, IllegalTransitionError, OrderRecord, Rejected, Submitted,
                                      Triggered)
from bifrost.execution.orders import OrderJournal

T0 = datetime(2024, 3, 1, 15, tzinfo=UTC)
PX = Decimal("385.59")


def _order(i=0):
    return Order(f"wk-{i}", "SPY", "buy", Decimal(10), "limit", "gtc", limit_price=Decimal("385.60"))


@st.composite
def walks(draw):
    "A random legal path of events from NEW (fills of 1 share each, so any path stays within the order)."
    path, cur = [], S.NEW
    for _ in range(draw(st.integers(1, 8))):
        moves = sorted((e for e in EVENTS[cur] if not cur.is_terminal), key=lambda e: e.kind)
        if not moves:
            break
        ev = draw(st.sampled_from(moves))
        path.append(ev)
        to = EVENTS[cur][ev]
        cur = cur if to is None else to
    return path


def test_walks_persist_exactly(store):
    "Random legal event walks are persisted event by event and audited; a refused event after writes nothing."
    audit = AuditTrail(store)
    journal = OrderJournal(store, audit)

    @settings(max_examples=15, deadline=None)
    @given(walks())
    def run(path):
        run.i = getattr(run, "i", 0) + 1
        rec = OrderRecord.new(_order(run.i), "acct", "paper", T0)
        at, kinds = T0, []
        for k, kind in enumerate(path):
            at += timedelta(seconds=1)
            fill = Fill(f"F-{run.i}-{k}", rec.client_order_id, "SPY", "buy", Decimal(1), PX, at) \
                if kind.kind in ("partially_filled", "filled") and rec.filled_quantity < 9 else None
            ev = rec.fill_event(fill, at) if fill is not None else kind(rec.client_order_id, at, f"step {k}")
            new = rec.apply(ev)
            if fill is not None:
                assert journal.add_fill("paper", fill, "acct", change=(rec, new, ev))
            else:
                journal.record([(rec, new, ev)])
            rec = new
            kinds.append(ev.kind)
        n_audit = len(audit.records())
        with pytest.raises(IllegalTransitionError):
            rec.apply(_illegal(rec, at))
        assert len(audit.records()) == n_audit
        assert journal.get(rec.client_order_id) == rec  # the record read back equals the one in memory, fills and all
        rows = journal.events(rec.client_order_id)
        assert rows.event.tolist() == kinds and rows.seq.tolist() == list(range(1, len(kinds) + 1))
        assert audit.records(kind="order.status").subject.tolist().count(rec.client_order_id) == len(path)

    run()
    assert audit.verify().ok


def _illegal(rec, at):
    "An event the record's state refuses (terminal states refuse all but late fills; others refuse something)."
    for kind in (Submitted, Accepted, Rejected, Triggered):
        if kind not in EVENTS[rec.status] or rec.status.is_terminal:
            return kind(rec.client_order_id, at)
    raise AssertionError(rec.status)


def test_racing_writers_collide(store):
    "Two OMS processes moving the same order from the same state: the second is refused, nothing half-written."
    journal = OrderJournal(store, AuditTrail(store))
    new = OrderRecord.new(_order(), "acct", "paper", T0)
    rec = new.apply(ev := Submitted("wk-0", T0))
    journal.record([(new, rec, ev)], decisions=[(Decision(_order(), (Check("risk", "x", Verdict.PASS),)), "acct", T0)])
    journal.record([(rec, rec.apply(a := Accepted("wk-0", T0, broker_order_id="B-1")), a)])
    n = len(journal.audit.records())
    with pytest.raises((duckdb.ConstraintException, psycopg.errors.UniqueViolation)):
        journal.record([(rec, rec.apply(r := Rejected("wk-0", T0)), r)])  # stale: built from pending_submit
    assert journal.get("wk-0").status is S.ACCEPTED and journal.get("wk-0").broker_order_id == "B-1"
    assert len(journal.audit.records()) == n


def test_a_batch_of_decisions_is_one_transaction(store):
    "A rebalance's submitted events and decisions commit together; one bad row takes the whole batch back."
    journal = OrderJournal(store, AuditTrail(store))
    batch = []
    for i in range(5):
        new = OrderRecord.new(_order(100 + i), "acct", "paper", T0)
        batch.append((new, new.apply(ev := Submitted(new.client_order_id, T0, "passed the gate")), ev))
    decisions = [(Decision(n.order, ()), "acct", T0) for n, _, _ in batch]
    journal.record(batch, decisions=decisions)
    assert [r.client_order_id for r in journal.open_orders("acct")] == [f"wk-{100 + i}" for i in range(5)]
    kinds = journal.audit.records().kind.tolist()
    assert kinds == ["order.decision"] * 5 + ["order.status"] * 5
    again = [(n, r, e) for n, r, e in batch[:1]]
    fresh = OrderRecord.new(_order(200), "acct", "paper", T0)
    with pytest.raises((duckdb.ConstraintException, psycopg.errors.UniqueViolation)):
        journal.record([(fresh, fresh.apply(e := Submitted("wk-200", T0)), e)] + again)  # wk-100 exists already
    assert journal.get("wk-200") is None and len(journal.audit.records()) == 10
