"""Alpaca's native order classes through the real alpaca-py against AlpacaFake: bracket, OCO and OTO (legs Alpaca names
itself, held until the entry fills, one cancelling the other), trailing stops, market-on-open and -on-close; every leg
known by our client order id in answers, fills, open orders and trade updates; and the faults: a leg refused as it goes
out, the entry filled while the trade-updates stream is down, a restart between the entry's fill and its legs going out."""
from __future__ import annotations

import time
from decimal import Decimal

import pytest

from bifrost.core import (LinkedOrders, Order, OrderClass, OrderRejectedError, OrderStatus, OrderType, SimulatedClock,
                          TimeInForce, Trail, exit_id)
from bifrost.execution.alpaca import AlpacaBroker
from bifrost.testing.alpaca_fake import AlpacaFake
from test_execution_alpaca import KEYS, T0, env  # noqa: F401 (a fixture): the keys in the environment

D = Decimal
A, F, C, R = OrderStatus.ACCEPTED, OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED


@pytest.fixture
def fake(env):
    with AlpacaFake(cash=100_000, prices={"SPY": D("167.72")}, keys=KEYS, clock=SimulatedClock(T0)) as f:
        yield f


def connect(fake) -> AlpacaBroker:
    "A broker as a freshly started process has one: it remembers nothing."
    return AlpacaBroker(url_override=fake.url, stream_url=fake.stream_url, timeout=1.0, retry_wait=0.01)


@pytest.fixture
def broker(fake):
    return connect(fake)


def bracket(coid="b", qty=10, entry="167.50", tp="174.20", sl="164.15", tif=TimeInForce.GTC, **kw):
    e = Order(coid, "SPY", "buy", D(qty), OrderType.LIMIT, tif, limit_price=D(entry))
    t = Order(exit_id(coid, "take_profit"), "SPY", "sell", D(qty), OrderType.LIMIT, tif, limit_price=D(tp))
    s = Order(exit_id(coid, "stop_loss"), "SPY", "sell", D(qty), OrderType.STOP, tif, stop_price=D(sl))
    return LinkedOrders(OrderClass.BRACKET, e, t, s, **kw)


def statuses(broker, *coids):
    return [broker.get_order(c).status for c in coids]


def until(cond, what, limit=2000):
    for _ in range(limit):
        if cond():
            return
        time.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


def test_bracket_goes_out_as_alpacas_order_class_and_its_legs_answer_to_our_ids(broker, fake):
    got = broker.submit_linked(bracket())
    assert [(b.client_order_id, b.status) for b in got] == [("b", A), ("b.tp", A), ("b.sl", A)]
    parent = fake.orders[fake.by_client_id["b"]]
    legs = [fake.orders[i] for i in fake.legs[parent["id"]]]
    assert (parent["order_class"], parent["type"], parent["limit_price"], parent["time_in_force"]) == \
        ("bracket", "limit", "167.5", "gtc")
    assert [(leg["type"], leg["side"], leg["qty"], leg["limit_price"], leg["stop_price"], leg["status"])
            for leg in legs] == [("limit", "sell", "10", "174.2", None, "held"), ("stop", "sell", "10", None, "164.15", "held")]
    assert fake.requests.count(("POST", "/v2/orders")) == 1  # one request: the set or nothing
    with pytest.raises(ValueError, match="cannot fill"):
        fake.fill(fake.leg("b", "take_profit"), 10, "174.20")  # held until the entry fills
    fake.fill("b", 10, "167.50")
    assert [leg["status"] for leg in legs] == ["new", "new"]
    assert [o.client_order_id for o in broker.open_orders()] == ["b.tp", "b.sl"]
    fake.fill(fake.leg("b", "take_profit"), 10, "174.20")
    assert statuses(broker, "b", "b.tp", "b.sl") == [F, F, C]
    assert [(f.client_order_id, f.quantity) for f in broker.fills()] == [("b", 10), ("b.tp", 10)]
    assert broker.positions() == {} and broker.cash() == D(100_000) + 10 * (D("174.20") - D("167.50"))
    assert broker.open_orders() == []


def test_a_resend_of_a_bracket_is_answered_and_cancelling_a_leg_takes_the_other(broker, fake):
    first = broker.submit_linked(bracket())
    assert broker.submit_linked(bracket()) == first and len(fake.orders) == 3
    with pytest.raises(OrderRejectedError, match="client_order_id must be unique"):
        broker.submit_linked(bracket(qty=11))
    fake.fill("b", 10, "167.50")
    assert broker.cancel("b.sl").status is C
    assert statuses(broker, "b.tp", "b.sl") == [C, C]


def test_oco_and_oto(broker, fake):
    tp = Order("x", "SPY", "sell", D(4), OrderType.LIMIT, limit_price=D("180"))
    sl = Order(exit_id("x", "stop_loss"), "SPY", "sell", D(4), OrderType.STOP_LIMIT, stop_price=D("150"),
               limit_price=D("149.50"))
    got = broker.submit_linked(LinkedOrders(OrderClass.OCO, take_profit=tp, stop_loss=sl))
    assert [(b.client_order_id, b.status) for b in got] == [("x", A), ("x.sl", A)]
    oco = fake.orders[fake.by_client_id["x"]]
    leg = fake.orders[fake.legs[oco["id"]][0]]
    assert (oco["order_class"], oco["type"], leg["type"], leg["stop_price"], leg["limit_price"], leg["status"]) == \
        ("oco", "limit", "stop_limit", "150", "149.5", "new")  # both exits work at once
    fake.fill(leg["client_order_id"], 4, "149.90")
    assert statuses(broker, "x", "x.sl") == [C, F]
    entry = Order("o", "SPY", "buy", D(2), OrderType.MARKET)
    stop = Order("o.sl", "SPY", "sell", D(2), OrderType.STOP, stop_price=D("140"))  # below the last trade, 149.90
    broker.submit_linked(LinkedOrders(OrderClass.OTO, entry, stop_loss=stop))
    assert fake.orders[fake.by_client_id["o"]]["order_class"] == "oto" and statuses(broker, "o", "o.sl") == [A, A]
    fake.fill("o", 2, "149.95")
    assert fake.orders[fake.by_client_id[fake.leg("o", "stop_loss")]]["status"] == "new"


def test_trailing_stops_market_on_open_and_close(broker, fake):
    got = broker.submit_trailing(Order("ts", "SPY", "sell", D(5)), Trail(percent=D(3)))
    o = fake.orders[fake.by_client_id["ts"]]
    assert (got.status, o["type"], o["trail_percent"], o["hwm"], o["stop_price"]) == \
        (A, "trailing_stop", "3", "167.72", "162.69")
    assert broker.submit_trailing(Order("ts", "SPY", "sell", D(5)), Trail(percent=D(3))) == got  # a resend
    broker.submit_trailing(Order("ta", "SPY", "sell", D(5)), Trail(amount=D("2.50")))
    assert fake.orders[fake.by_client_id["ta"]]["trail_price"] == "2.5"
    broker.submit(Order("moc", "SPY", "sell", D(1), time_in_force=TimeInForce.CLS))
    broker.submit(Order("loo", "SPY", "buy", D(1), OrderType.LIMIT, TimeInForce.OPG, limit_price=D("167")))
    assert [(fake.orders[fake.by_client_id[c]]["type"], fake.orders[fake.by_client_id[c]]["time_in_force"])
            for c in ("moc", "loo")] == [("market", "cls"), ("limit", "opg")]
    assert broker.capabilities.market_on_close and broker.capabilities.market_on_open
    with pytest.raises(OrderRejectedError, match="HTTP 422.*stop orders cannot be cls"):
        broker.submit(Order("sc", "SPY", "sell", D(1), OrderType.STOP, TimeInForce.CLS, stop_price=D("160")))


def test_what_alpaca_cannot_link_is_refused_before_anything_is_sent(broker, fake):
    with pytest.raises(OrderRejectedError, match="cannot trail their stop-loss"):
        broker.submit_linked(bracket(trail=Trail(percent=D(3))))
    with pytest.raises(OrderRejectedError, match="one time in force, day or gtc"):
        broker.submit_linked(bracket(tif=TimeInForce.IOC))
    named = LinkedOrders(OrderClass.OTO, Order("n", "SPY", "buy", D(1)),
                         stop_loss=Order("n-stop", "SPY", "sell", D(1), OrderType.STOP, stop_price=D("160")))
    with pytest.raises(ValueError, match="n-stop must be n.sl"):
        broker.submit_linked(named)
    assert fake.requests.count(("POST", "/v2/orders")) == 0
    with pytest.raises(OrderRejectedError, match="HTTP 422.*take_profit.limit_price must be >= base_price"):
        broker.submit_linked(bracket(entry="175", tp="174.20", sl="170"))  # the target below the entry
    assert fake.orders == {} and broker.get_order("b") is None and broker.get_order("b.tp") is None


def test_fault_a_leg_refused_as_it_goes_out(broker, fake):
    events = []
    broker.start_stream(on_order=events.append)
    try:
        until(lambda: fake.listening() == 1, "the stream subscribed")
        broker.submit_linked(bracket())
        fake.reject_legs[("b", "stop_loss")] = "stop price too close to the market"
        fake.fill("b", 10, "167.50")
        until(lambda: any(e.client_order_id == "b.sl" and e.status is R for e in events), "the refusal, under our id")
    finally:
        broker.stop_stream()
    assert statuses(broker, "b", "b.tp", "b.sl") == [F, A, R]  # definite: the position stands half protected
    assert broker.positions() == {"SPY": D(10)} and [o.client_order_id for o in broker.open_orders()] == ["b.tp"]


def test_fault_the_entry_fills_while_the_stream_is_down(broker, fake):
    got = []
    broker.start_stream(on_fill=got.append)
    try:
        until(lambda: fake.listening() == 1, "the stream subscribed")
        broker.submit_linked(bracket())
        fake.drop_stream(for_good=True)
        until(lambda: fake.listening() == 0, "the stream is down")
        fake.fill("b", 10, "167.50")  # nobody hears of it
        assert got == []
        assert [(f.client_order_id, f.quantity) for f in broker.fills()] == [("b", 10)]  # polling has it
        assert statuses(broker, "b", "b.tp", "b.sl") == [F, A, A]
        fake._stream_down = False  # Alpaca answers again; alpaca-py reconnects by itself
        until(lambda: fake.listening() == 1, "alpaca-py reconnected", limit=4000)
        fake.fill(fake.leg("b", "stop_loss"), 10, "164.15")
        until(lambda: len(got) == 1, "the stop's fill on the stream")
    finally:
        broker.stop_stream()
    assert [(f.client_order_id, f.quantity) for f in got] == [("b.sl", 10)]
    assert [f.fill_id for f in broker.fills()][1:] == [f.fill_id for f in got]  # the same execution, once each
    assert statuses(broker, "b.tp", "b.sl") == [C, F] and broker.positions() == {}


def test_fault_a_restart_between_the_entry_fill_and_its_legs_going_out(broker, fake):
    broker.submit_linked(bracket())
    fake.hold_legs = True  # Alpaca filled the entry and has not released its legs yet
    fake.fill("b", 10, "167.50")
    again = connect(fake)  # our process died; a new one knows nothing
    assert statuses(again, "b", "b.tp", "b.sl") == [F, A, A]  # the held legs, found under our ids
    assert [b.status for b in again.submit_linked(bracket())] == [F, A, A] and len(fake.orders) == 3  # nothing resent
    fake.release_legs("b")
    fake.fill(fake.leg("b", "stop_loss"), 10, "164.15")
    fresh = connect(fake)
    assert [(f.client_order_id, f.quantity) for f in fresh.fills()] == [("b", 10), ("b.sl", 10)]  # legs by our ids
    assert statuses(fresh, "b.tp", "b.sl") == [C, F] and fresh.open_orders() == [] and fresh.positions() == {}
