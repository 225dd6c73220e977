"""A rebalance as one batch through gate, OMS, paper broker and ledger: decided in one pass, persisted in one commit
before the first order is sent, acknowledged and filled in one commit each; nothing sent twice."""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from execution_helpers import PX, T0, make_oms, seed

from bifrost.compliance.gate import Gate
from bifrost.core import Bar, Order, SimulatedClock
from bifrost.core import OrderStatus as S
from bifrost.execution.paper import PaperBroker
from bifrost.risk.limits import Limits


def _bar(clock, px=float(PX)):
    clock.advance(timedelta(minutes=1))
    return Bar("SPY", clock.now(), px, px + 0.5, px - 0.5, px, 10_000_000)


def test_rebalance_batch_round_trip(store):
    clock = SimulatedClock(T0)
    portfolio = seed(store, "batch")
    broker = PaperBroker(clock, cash=Decimal(100_000), participation=None)
    oms = make_oms(store, broker, portfolio, clock, gate=Gate(Limits(max_order_notional=Decimal(5_000))))
    persisted_when_sent = []
    oms.hook = lambda what, rec: what == "sent" and persisted_when_sent.append(
        store.row("SELECT count(*) FROM orders WHERE account = 'batch' AND status = 'pending_submit'")[0])
    orders = [Order(f"rb-{i}", "SPY", "buy", Decimal(2 + i % 3)) for i in range(12)]
    orders.append(Order("rb-big", "SPY", "buy", Decimal(100)))        # $38,559: over the order cap
    audit_before = len(oms.audit.records())
    got = oms.submit_many(orders + [orders[0]])                       # an id twice: sent once
    assert [r.status for r in got] == [S.ACCEPTED] * 12 + [S.REJECTED, S.ACCEPTED]
    assert persisted_when_sent[0] == 12          # every approved order was persisted before the first was sent
    assert len(broker.open_orders()) == 12 and "rb-big" not in {o.client_order_id for o in broker.open_orders()}
    trail = oms.audit.records().iloc[audit_before:]
    assert trail.kind.tolist()[:26] == ["order.decision"] * 13 + ["order.status"] * 13  # one batch, one commit
    broker.on_bar(_bar(clock))
    report = oms.sync()
    assert report["new_fills"] == 12 and all(oms.order(o.client_order_id).status is S.FILLED for o in orders[:12])
    assert portfolio.book.positions() == broker.positions() == {"SPY": sum(o.quantity for o in orders[:12])}
    assert portfolio.book.cash()["USD"] == broker.cash()
    assert oms.submit_many(orders[:3]) == [oms.order(o.client_order_id) for o in orders[:3]]  # known: not again
    assert len(broker.fills()) == 12                                  # the broker saw each order once
    assert oms.audit.verify().ok and not oms.anomalies
    fresh = make_oms(store, broker, portfolio, clock)                 # the store holds exactly what memory held
    assert all(fresh.order(o.client_order_id) == oms.order(o.client_order_id) for o in orders)


def test_a_batch_the_kill_switch_stops_is_persisted_as_rejected_and_nothing_is_sent(store):
    from bifrost.audit import AuditTrail
    from bifrost.execution.oms import set_kill_switch
    clock = SimulatedClock(T0)
    portfolio = seed(store, "killed")
    broker = PaperBroker(clock, cash=Decimal(100_000))
    oms = make_oms(store, broker, portfolio, clock)
    set_kill_switch(store, True, "halt", clock.now(), AuditTrail(store))
    got = oms.submit_many([Order(f"k-{i}", "SPY", "buy", Decimal(1)) for i in range(3)])
    assert [r.status for r in got] == [S.REJECTED] * 3 and broker.open_orders() == []
    assert all("kill switch" in r.reason or "trading is off" in r.reason for r in got)
