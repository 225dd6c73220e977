"""Interactive Brokers with the tests Alpaca has: native brackets (`parentId`, an OCA group, `transmit` on the last
order), OCO, OTO and `TRAIL` through the real ib_insync against TWSFake; faults (a child rejected, a parent filled while
the connection is down, a restart between the parent's fill and its children going out); a restart that finds every
order by its client order id and sends nothing twice; and live sessions at IB through gate, OMS and ledger, which book
each fill once and reconcile with what TWS holds."""
from __future__ import annotations

import datetime as dt
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from ib_insync import IB, Stock

from bifrost.audit import AuditTrail
from bifrost.core import (BrokerUnavailableError, LinkedOrders, Order, OrderClass, OrderRejectedError, OrderStatus,
                          OrderType, SimulatedClock, TimeInForce, Trail, exit_id)
from bifrost.data.ingest import ingest
from bifrost.data.read import read_bars
from bifrost.data.sources import SAMPLE, SampleSource
from bifrost.execution.ib import IBBroker
from bifrost.portfolio.ledger import Portfolio
from bifrost.risk.limits import Limits, save_limits
from bifrost.store import connect
from bifrost.strategy.api import MeanReversion, StrategyError
from bifrost.strategy.session import trade_session
from bifrost.testing.market_data_fake import MarketDataFake
from bifrost.strategy.versions import promote, register
from bifrost.testing.ib_fake import TWSFake
from test_execution_ib import T0, session  # noqa: F401 (a fixture): a broker on TWSFake, $100,000

D = Decimal




def restart(tws: TWSFake, clock) -> tuple[IBBroker, TWSFake, IB]:
    "Our process died and a new one connects to the same TWS: a new IB, a new broker, nothing remembered."
    tws.drop()
    ib = IB()
    again = TWSFake(ib, clock, venue=tws)
    return IBBroker(ib, ack_timeout=0.2).connect(), again, ib


def bracket(coid="b", qty=10, entry="167.50", tp="174.20", sl="164.15", trail=None):
    e = Order(coid, "SPY", "buy", D(qty), OrderType.LIMIT, TimeInForce.GTC, limit_price=D(entry))
    t = Order(exit_id(coid, "take_profit"), "SPY", "sell", D(qty), OrderType.LIMIT, TimeInForce.GTC, limit_price=D(tp))
    s = Order(exit_id(coid, "stop_loss"), "SPY", "sell", D(qty), OrderType.STOP, TimeInForce.GTC, stop_price=D(sl))
    return LinkedOrders(OrderClass.BRACKET, e, t, s, trail)


def sent(tws):
    "What TWS holds, by client order id: (type, action, qty, parent's ref, OCA group, transmit, status)."
    refs = {i: o.orderRef for i, (_, o, _) in tws.orders.items()}
    return {o.orderRef: (o.orderType, o.action, o.totalQuantity, refs.get(o.parentId), o.ocaGroup, o.transmit, s)
            for _, o, s in tws.orders.values()}


def statuses(broker, *coids):
    return [broker.get_order(c).status for c in coids]


A, F, C, R = OrderStatus.ACCEPTED, OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED


def test_bracket_goes_out_with_parent_id_an_oca_group_and_one_transmit(session):
    broker, tws, _ = session
    assert broker.capabilities.cannot_link(bracket()) == []
    got = broker.submit_linked(bracket())
    assert [(b.client_order_id, b.status) for b in got] == [("b", A), ("b.tp", A), ("b.sl", A)]
    assert sent(tws) == {"b": ("LMT", "BUY", 10.0, None, "", False, "Submitted"),
                         "b.tp": ("LMT", "SELL", 10.0, "b", "oca-b", False, "PreSubmitted"),  # held until b fills
                         "b.sl": ("STP", "SELL", 10.0, "b", "oca-b", True, "PreSubmitted")}
    with pytest.raises(ValueError, match="cannot fill"):
        tws.fill("b.tp", 10, "174.20")  # a child does not work before its parent filled
    tws.fill("b", 10, "167.50")
    assert sent(tws)["b.tp"][-1] == sent(tws)["b.sl"][-1] == "Submitted"
    tws.fill("b.tp", 10, "174.20")  # the target: the stop goes with it
    assert statuses(broker, "b", "b.tp", "b.sl") == [F, F, C]
    assert broker.positions() == {} and len(broker.fills()) == 2
    assert broker.cash() == D(100_000) + 10 * (D("174.20") - D("167.50")) - 2


def test_a_resend_of_a_bracket_is_answered_and_another_under_its_ids_refused(session):
    broker, tws, _ = session
    first = broker.submit_linked(bracket())
    assert broker.submit_linked(bracket()) == first and tws.received.count("placeOrder") == 3
    with pytest.raises(OrderRejectedError, match="already used"):
        broker.submit_linked(bracket(qty=11))


def test_trailing_stops_go_out_as_trail(session):
    broker, tws, _ = session
    broker.submit_linked(bracket("t", sl="160", trail=Trail(percent=D(3))))
    broker.submit_trailing(Order("ts", "SPY", "sell", D(5)), Trail(amount=D("2.50")))
    orders = {o.orderRef: o for _, o, _ in tws.orders.values()}
    assert (orders["t.sl"].orderType, orders["t.sl"].trailingPercent, orders["t.sl"].trailStopPrice) == ("TRAIL", 3.0, 160.0)
    assert (orders["ts"].orderType, orders["ts"].auxPrice, orders["ts"].action) == ("TRAIL", 2.5, "SELL")
    assert statuses(broker, "t.sl", "ts") == [A, A]


def test_oco_of_a_position_held_and_oto(session):
    broker, tws, _ = session
    tp = Order("x.tp", "SPY", "sell", D(4), OrderType.LIMIT, limit_price=D("180"))
    sl = Order("x.sl", "SPY", "sell", D(4), OrderType.STOP, stop_price=D("150"))
    broker.submit_linked(LinkedOrders(OrderClass.OCO, take_profit=tp, stop_loss=sl))
    assert sent(tws) == {"x.tp": ("LMT", "SELL", 4.0, None, "oca-x.tp", True, "Submitted"),
                         "x.sl": ("STP", "SELL", 4.0, None, "oca-x.tp", True, "Submitted")}
    tws.fill("x.sl", 4, "149.90")
    assert statuses(broker, "x.tp", "x.sl") == [C, F]
    entry = Order("o", "SPY", "buy", D(2), OrderType.LIMIT, limit_price=D("160"))
    stop = Order("o.sl", "SPY", "sell", D(2), OrderType.STOP, stop_price=D("155"))
    broker.submit_linked(LinkedOrders(OrderClass.OTO, entry, stop_loss=stop))
    assert sent(tws)["o.sl"] == ("STP", "SELL", 2.0, "o", "", True, "PreSubmitted")
    tws.fill("o", 2, "160")
    assert statuses(broker, "o", "o.sl") == [F, A] and sent(tws)["o.sl"][-1] == "Submitted"


def test_fault_a_child_rejected_when_it_goes_out(session):
    broker, tws, _ = session
    broker.submit_linked(bracket())
    tws.reject_children["b.sl"] = "stop price too close to the market"
    tws.fill("b", 10, "167.50")
    got = broker.get_order("b.sl")
    assert got.status is R and "stop price too close" in got.reason  # definite: the position stands unprotected
    assert statuses(broker, "b", "b.tp") == [F, A] and broker.positions() == {"SPY": D(10)}
    assert [o.client_order_id for o in broker.open_orders()] == ["b.tp"]


def test_fault_the_parent_fills_while_the_connection_is_down(session):
    broker, tws, clock = session
    broker.submit_linked(bracket())
    tws.drop()
    tws.up = False  # TWS restarting
    clock.advance(timedelta(minutes=5))
    tws.fill("b", 10, "167.50")  # TWS fills it and sends the children; we hear nothing
    with pytest.raises(BrokerUnavailableError, match="not connected"):
        broker.get_order("b")
    tws.up = True  # the next call connects again
    assert statuses(broker, "b", "b.tp", "b.sl") == [F, A, A]
    fills = broker.fills()
    assert [(f.client_order_id, f.quantity, f.ts) for f in fills] == [("b", 10, T0 + timedelta(minutes=5))]
    tws.fill("b.sl", 10, "164.15")
    assert statuses(broker, "b.tp", "b.sl") == [C, F] and broker.positions() == {}
    assert [f.client_order_id for f in broker.fills()] == ["b", "b.sl"]


def test_fault_a_restart_between_the_parent_fill_and_its_children_going_out(session):
    broker, tws, clock = session
    broker.submit_linked(bracket())
    tws.hold_children = True  # TWS has filled the parent but not yet released its children
    tws.fill("b", 10, "167.50")
    broker, tws2, ib = restart(tws, clock)
    try:
        assert statuses(broker, "b", "b.tp", "b.sl") == [F, A, A]  # found by client order id, held children too
        assert broker.submit_linked(bracket())[0].status is F  # a resend is answered...
        assert tws2.received.count("placeOrder") == 0  # ...and nothing goes out again
        tws2.release_children("b")
        tws2.fill("b.tp", 10, "174.20")
        assert statuses(broker, "b.tp", "b.sl") == [F, C]
        fills = broker.fills()
        assert [f.client_order_id for f in fills] == ["b", "b.tp"] and len({f.fill_id for f in fills}) == 2
        assert broker.positions() == {}
        assert broker.cash() == D(100_000) - sum(f.side.sign * f.quantity * f.price + f.commission for f in fills)
    finally:
        ib.disconnect()


def test_restart_finds_every_order_by_its_id_and_books_reconcile(session):
    "The resume test: a new process asks TWS, resends nothing, and TWS's positions and cash equal its fills."
    broker, tws, clock = session
    broker.submit(Order("p1", "SPY", "buy", D(30), OrderType.LIMIT, limit_price=D("167.70")))
    broker.submit(Order("p2", "SPY", "sell", D(5), OrderType.LIMIT, TimeInForce.GTC, limit_price=D("170")))
    tws.fill("p1", 12, "167.70")
    clock.advance(timedelta(seconds=30))
    broker, tws2, ib = restart(tws, clock)
    try:
        tws.fill("p1", 18, "167.65")  # while the new process starts up
        assert statuses(broker, "p1", "p2") == [F, A]
        assert broker.submit(Order("p2", "SPY", "sell", D(5), OrderType.LIMIT, TimeInForce.GTC,
                                   limit_price=D("170"))).status is A
        assert tws2.received.count("placeOrder") == 0
        fills = broker.fills()
        assert [f.quantity for f in fills] == [12, 18] and len({f.fill_id for f in fills}) == 2
        held = sum(f.side.sign * f.quantity for f in fills)
        assert broker.positions() == {"SPY": held}
        assert broker.cash() == D(100_000) - sum(f.side.sign * f.quantity * f.price + f.commission for f in fills)
        assert [o.client_order_id for o in broker.open_orders()] == ["p2"]
    finally:
        ib.disconnect()


def test_executions_not_listed_in_time_are_outcome_unknown(session):
    broker, tws, _ = session
    broker.submit(Order("q", "SPY", "buy", D(1)))
    tws.mute()
    with pytest.raises(BrokerUnavailableError, match="did not list its executions"):
        broker.fills()
    tws.mute(False)
    assert broker.fills() == []


# live sessions at IB: the strategy, gate, OMS and ledger of test_strategy_live, trading through IBBroker

KEYS = ("live-key", "live-secret")
DAY = dt.date(2013, 10, 7)


@pytest.fixture(scope="module")
def day_bars(tmp_path_factory):
    "SPY's shipped minute bars of 2013-10-07, 09:30-12:00 New York: what the market-data fake streams."
    s = connect(f"duckdb:///{tmp_path_factory.mktemp('ibsample')}/s.duckdb")
    feeds = tuple(f for f in SAMPLE if f.primary and f.spec.ticker == "SPY" and f.spec.bar_size == "1min")
    ingest(s, SampleSource(feeds), progress=False)
    return read_bars(s, ["SPY"], "1min", "2013-10-07 13:30", "2013-10-07 16:00"), \
        s.query("SELECT * FROM instruments WHERE symbol = 'SPY'")


@pytest.fixture
def live(tmp_path, day_bars, monkeypatch):
    "A store with the strategy promoted and the account's limits; Alpaca's keys for the market-data stream."
    for name in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("APCA_API_KEY_ID", KEYS[0])
    monkeypatch.setenv("APCA_API_SECRET_KEY", KEYS[1])
    store = connect(f"duckdb:///{tmp_path}/ib.duckdb")
    store.upsert("instruments", day_bars[1], ["symbol"])
    clock = SimulatedClock(datetime(2013, 10, 1, tzinfo=timezone.utc))
    promote(store, "mr", register(store, MeanReversion(window=20, entry=1.5), clock, name="mr"), clock, "paper")
    save_limits(store, "acct", Limits(max_daily_loss=D("0.05")), clock.now(), clock.now(), "ib account",
                AuditTrail(store))
    return store


class Scripted(TWSFake):
    "TWS, with something done to it as the n-th bar happens."
    def __init__(self, ib, clock, script: dict, **kw):
        super().__init__(ib, clock, **kw)
        self.script = dict(script)

    def _happen(self, bars):
        super()._happen(bars)
        if self._book.bars in self.script:
            self.script.pop(self._book.bars)(self)


def _trade_at_ib(store, bars, script=None):
    ib = IB()
    tws = Scripted(ib, SimulatedClock(datetime(2013, 10, 7, 13, 30, tzinfo=timezone.utc)), script or {},
                   cash=100_000, commission="0.35")
    broker = IBBroker(ib, ack_timeout=2.0).connect()
    md = MarketDataFake(bars, key=KEYS[0], secret=KEYS[1], venue=tws)
    url = md.start()
    try:
        return tws, trade_session(store, "acct", DAY, strategy="mr", symbols=["SPY"], mode="live", broker=broker,
                                  stream_url=url, idle=3.0, progress=False)
    finally:
        md.stop()
        ib.disconnect()


def _assert_books_agree(store, tws):
    "Every execution at TWS recorded once and booked once; the ledger holds what TWS holds, to the share and the cent."
    fills = store.query("SELECT fill_id, commission FROM order_fills")
    assert sorted(fills.fill_id) == sorted(e.execId for _, e, _ in tws.executions)
    book = Portfolio.load(store, "acct").book
    assert set(fills.fill_id) <= book.txn_ids
    held = {s: q for s, (_, q, _) in tws.holdings.items() if q}
    assert book.positions() == held and book.cash() == {"USD": tws.cash}


def test_live_session_at_ib_books_each_execution_once_and_reconciles(live, day_bars):
    tws, s = _trade_at_ib(live, day_bars[0])
    _assert_books_agree(live, tws)
    orders = live.query("SELECT client_order_id, status, broker FROM orders")
    placed = Counter(o.orderRef for _, o, _ in tws.orders.values())
    assert s.status == "done" and s.fills >= 4 and s.refused == 0
    assert set(orders.broker) == {"ib"} and set(placed.values()) == {1} and set(placed) == set(orders.client_order_id)
    assert set(orders.status) <= {"filled", "cancelled"}
    info = json.loads(live.scalar("SELECT summary FROM trading_sessions"))
    assert info["broker"] == "ib" and info["breaks"] == [] and info["start_cash"] == "100000.00"
    commissions = live.query("SELECT commission FROM order_fills").commission
    assert (commissions.astype(str) == "0.35").all() or (commissions == D("0.35")).all()
    assert AuditTrail(live).verify().ok


def test_live_session_at_ib_when_tws_misbehaves_then_nothing_sent_twice_fills_booked_once(live, day_bars):
    "Acknowledgements lost (TWS took the orders), a refusal, TWS restarting mid-session, and answers lost for a while."
    def restart(tws):
        tws.drop()  # the broker's next call connects again; TWS replays orders and executions
    script = {2: lambda t: t.lose_acks(2), 40: lambda t: t.reject_next("insufficient funds"), 60: restart,
              80: lambda t: t.mute(), 83: lambda t: t.mute(False)}
    tws, s = _trade_at_ib(live, day_bars[0], script)
    _assert_books_agree(live, tws)
    assert tws.script == {} and s.status == "done" and s.fills >= 4
    orders = live.query("SELECT client_order_id, status, reason FROM orders ORDER BY created_at")
    refused = orders[orders.status == "rejected"]
    assert len(refused) == 1 and "insufficient funds" in refused.reason.iat[0] and s.refused == 1
    at_tws = Counter(o.orderRef for _, o, _ in tws.orders.values())
    assert set(at_tws.values()) == {1}  # each order reached TWS once
    assert set(at_tws) == set(orders.client_order_id) - set(refused.client_order_id)
    assert tws.received.count("placeOrder") == len(at_tws) + 1  # and the refused one
    events = live.query("SELECT client_order_id, to_status FROM order_events")
    assert (events.to_status == "unknown").sum() >= 2  # the lost acknowledgements: unknown until TWS said


def test_live_session_at_ib_when_tws_disagrees_then_break_recorded_and_session_failed(live, day_bars):
    def stray(tws):
        tws.cash -= D("12.34")  # a fee the ledger was never told of
    with pytest.raises(StrategyError, match="breaks with ib"):
        _trade_at_ib(live, day_bars[0], {30: stray})
    row = live.query("SELECT status, summary FROM trading_sessions")
    info = json.loads(row.summary.iat[0])
    assert row.status.iat[0] == "failed" and [b["kind"] for b in info["breaks"]] == ["cash"]
    assert D(info["breaks"][0]["difference"]) == D("12.34")


def test_live_session_at_ib_when_tws_holds_what_the_ledger_does_not_then_nothing_sent(live, day_bars):
    ib = IB()
    tws = TWSFake(ib, SimulatedClock(datetime(2013, 10, 7, 13, 30, tzinfo=timezone.utc)), cash=100_000)
    tws.holdings["SPY"] = (Stock("SPY", "SMART", "USD"), D(10), D("1675.00"))  # bought elsewhere: not in the ledger
    broker = IBBroker(ib, ack_timeout=2.0)
    try:
        broker.connect()
        with pytest.raises(StrategyError, match="missing_in_ledger SPY"):
            trade_session(live, "acct", DAY, strategy="mr", symbols=["SPY"], mode="live", broker=broker,
                          stream_url="ws://127.0.0.1:9", idle=0.5, progress=False)
        assert "placeOrder" not in tws.received
    finally:
        ib.disconnect()
    info = json.loads(live.scalar("SELECT summary FROM trading_sessions"))
    assert [(b["kind"], b["item"], b["broker"]) for b in info["breaks"]] == [("missing_in_ledger", "SPY", "10")]


_KILLED = """
import datetime as dt, sys
import pandas as pd
from ib_insync import IB
from bifrost.core import SimulatedClock
from bifrost.execution.ib import IBBroker
from bifrost.store import connect
from bifrost.strategy.session import trade_session
from bifrost.testing.market_data_fake import MarketDataFake
from bifrost.testing.ib_fake import TWSFake
store, state, bars, key, secret = sys.argv[1:]
ib = IB()
tws = TWSFake(ib, SimulatedClock(dt.datetime(2013, 10, 7, 13, 30, tzinfo=dt.timezone.utc)), cash=100_000,
              commission="0.35", state=state)
md = MarketDataFake(pd.read_pickle(bars), key=key, secret=secret, venue=tws)
trade_session(connect(store), "acct", dt.date(2013, 10, 7), strategy="mr", symbols=["SPY"], mode="live",
              broker=IBBroker(ib, ack_timeout=2.0).connect(), stream_url=md.start(), idle=3.0, progress=False)
"""


def test_live_session_at_ib_when_process_killed_then_resume_reconciles_and_sends_nothing_twice(live, day_bars,
                                                                                                tmp_path):
    "TWS outlives the trading process (its state in a file): a resumed session asks it, books what filled, resends nothing."
    bars, url, state = day_bars[0], live.url, tmp_path / "tws.state"
    bars.to_pickle(tmp_path / "bars.pkl")
    del live  # the trading process has the store
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, url, str(state), str(tmp_path / "bars.pkl"), *KEYS],
                            env=os.environ.copy())
    placed = lambda: len(pickle.loads(state.read_bytes())["orders"]) if state.exists() else 0
    try:
        for _ in range(12000):  # until its second order reached TWS (or it ended)
            if placed() >= 2 or proc.poll() is not None:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # no clean-up: the session row stays 'running'
        assert proc.wait(30) == -signal.SIGKILL
    except BaseException:
        proc.kill()
        raise
    store = connect(url)
    assert store.scalar("SELECT status FROM trading_sessions") == "running" and placed() >= 2
    ib = IB()
    tws = TWSFake(ib, SimulatedClock(datetime(2013, 10, 7, 13, 30, tzinfo=timezone.utc)), commission="0.35",
                  state=state)
    before = {o.orderRef for _, o, _ in tws.orders.values()}
    broker = IBBroker(ib, ack_timeout=2.0).connect()
    seen = store.query("SELECT max(ts) AS ts FROM bars").ts.iat[0]
    md = MarketDataFake(bars[bars.ts > seen], key=KEYS[0], secret=KEYS[1], venue=tws)  # the stream goes on
    try:
        with pytest.raises(StrategyError, match="running session"):
            trade_session(store, "acct", DAY, strategy="mr", symbols=["SPY"], mode="live", broker=broker,
                          stream_url="ws://127.0.0.1:9", idle=0.5, progress=False)
        s = trade_session(store, "acct", DAY, strategy="mr", symbols=["SPY"], mode="live", broker=broker,
                          stream_url=md.start(), idle=3.0, progress=False, resume=True)
    finally:
        md.stop()
        ib.disconnect()
    _assert_books_agree(store, tws)
    orders = store.query("SELECT client_order_id, status FROM orders")
    refs = Counter(o.orderRef for _, o, _ in tws.orders.values())
    assert set(refs.values()) == {1} and set(refs) == set(orders.client_order_id)  # each order reached TWS once
    assert tws.received.count("placeOrder") == len(refs) - len(before)  # the resumed run sent only new orders
    assert set(orders.status) <= {"filled", "cancelled"} and s.status == "done"
    info = json.loads(store.scalar("SELECT summary FROM trading_sessions"))
    assert info["start_cash"] == "100000.00" and info["breaks"] == []
    assert len(store.query("SELECT ts FROM bars")) == len(bars)  # every bar of the window, from one run or the other
