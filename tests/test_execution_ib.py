"IBBroker on the real ib_insync with TWSFake standing in for its socket client: statuses, partial fills, rejections, disconnects."
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from ib_insync import IB

from bifrost.core import (BrokerUnavailableError, Order, OrderRejectedError, OrderStatus, OrderType, Side,
                          SimulatedClock, TimeInForce)
from bifrost.execution.ib import IBBroker
from bifrost.testing.ib_fake import TWSFake

T0 = datetime(2024, 3, 4, 15, 0, tzinfo=timezone.utc)


@pytest.fixture
def session():
    clock = SimulatedClock(T0)
    ib = IB()
    tws = TWSFake(ib, clock, cash=100_000)
    broker = IBBroker(ib, ack_timeout=0.2).connect()
    yield broker, tws, clock
    ib.disconnect()


def limit(coid, side="buy", qty=100, px="167.70", tif="day"):
    return Order(coid, "SPY", Side(side), Decimal(qty), OrderType.LIMIT, TimeInForce(tif), limit_price=Decimal(px))


def test_status_moves_through_partial_fills_and_each_fill_is_reported_once(session):
    broker, tws, clock = session
    seen = [broker.submit(limit("a", qty=100)).status]
    for qty, px in ((10, "167.70"), (25, "167.69"), (65, "167.65")):
        clock.advance(timedelta(seconds=5))
        tws.fill("a", qty, px, commission="0.25")
        seen.append(broker.get_order("a").status)
        assert len(broker.fills()) == len({f.fill_id for f in broker.fills()})
    assert seen == [OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED, OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED]
    fills = broker.fills()
    assert [(f.quantity, f.price) for f in fills] == [(10, Decimal("167.7")), (25, Decimal("167.69")),
                                                      (65, Decimal("167.65"))]
    got = broker.get_order("a")
    assert got.filled_quantity == sum(f.quantity for f in fills) == broker.positions()["SPY"]
    assert got.avg_fill_price * got.filled_quantity == sum(f.quantity * f.price for f in fills)
    assert broker.cash() == Decimal(100_000) - sum(f.quantity * f.price + f.commission for f in fills)
    assert [f.fill_id for f in broker.fills(since=T0 + timedelta(seconds=10))] == [f.fill_id for f in fills[1:]]


def test_every_order_type_reaches_tws_with_its_client_order_id(session):
    broker, tws, _ = session
    orders = [Order("m", "SPY", Side.SELL, Decimal(1)), limit("l", tif="gtc"),
              Order("s", "SPY", Side.SELL, Decimal(2), OrderType.STOP, TimeInForce.DAY, stop_price=Decimal("150.5")),
              Order("sl", "SPY", Side.BUY, Decimal(3), OrderType.STOP_LIMIT, TimeInForce.DAY,
                    limit_price=Decimal("170.25"), stop_price=Decimal("170"))]
    for o in orders:
        broker.submit(o)
    got = {o.orderRef: (o.orderType, o.action, o.totalQuantity, o.tif) for _, o, _ in tws.orders.values()}
    assert got == {"m": ("MKT", "SELL", 1.0, "DAY"), "l": ("LMT", "BUY", 100.0, "GTC"),
                   "s": ("STP", "SELL", 2.0, "DAY"), "sl": ("STP LMT", "BUY", 3.0, "DAY")}
    assert [o.client_order_id for o in broker.open_orders()] == ["m", "l", "s", "sl"]


def test_rejection_is_definite_and_recorded(session):
    broker, tws, _ = session
    tws.reject_next("insufficient funds")
    with pytest.raises(OrderRejectedError, match="insufficient funds"):
        broker.submit(limit("r"))
    assert broker.get_order("r").status is OrderStatus.REJECTED
    assert broker.open_orders() == []


def test_same_client_order_id_for_another_order_is_refused_and_a_resend_is_answered(session):
    broker, tws, _ = session
    first = broker.submit(limit("d"))
    assert broker.submit(limit("d")).broker_order_id == first.broker_order_id
    assert tws.received.count("placeOrder") == 1
    with pytest.raises(OrderRejectedError, match="already used"):
        broker.submit(limit("d", qty=5))


def test_cancel(session):
    broker, tws, _ = session
    broker.submit(limit("c1"))
    assert broker.cancel("c1").status is OrderStatus.CANCELLED
    broker.submit(limit("c2", qty=5))
    tws.fill("c2", 5, "167.70")
    assert broker.cancel("c2").status is OrderStatus.FILLED  # too late: it answers how it finished
    with pytest.raises(OrderRejectedError, match="no order"):
        broker.cancel("nope")


def test_unacknowledged_order_is_outcome_unknown_and_found_after_reconnect(session):
    broker, tws, _ = session
    tws.mute()  # TWS takes the order but its answers are lost
    with pytest.raises(BrokerUnavailableError, match="did not acknowledge"):
        broker.submit(limit("lost"))
    tws.drop()
    tws.mute(False)
    tws.up = False  # TWS restarting
    with pytest.raises(BrokerUnavailableError, match="not connected.*does not answer again"):
        broker.get_order("lost")
    tws.up = True
    got = broker.get_order("lost")  # the call connects again and asks
    assert got is not None and got.status is OrderStatus.ACCEPTED
    assert broker.submit(limit("lost")).broker_order_id == got.broker_order_id
    assert tws.received.count("placeOrder") == 1


def test_never_connected_is_not_connected_and_no_reconnect_means_unknown_at_once(session):
    _, tws, _ = session
    with pytest.raises(BrokerUnavailableError, match="not connected"):
        IBBroker(IB(), ack_timeout=0.2).cash()  # never connected: nothing to connect again
    ib = IB()
    again = TWSFake(ib, tws.clock, venue=tws)
    b = IBBroker(ib, ack_timeout=0.2, reconnect=False).connect()
    again.drop()
    with pytest.raises(BrokerUnavailableError, match="not connected"):
        b.cash()
    assert not ib.isConnected()


def test_disconnect_mid_fill_then_reconnect_loses_and_doubles_nothing(session):
    broker, tws, clock = session
    broker.submit(limit("x", qty=50))
    tws.fill("x", 20, "167.70")
    assert broker.get_order("x").filled_quantity == 20
    tws.drop()
    tws.up = False
    for call in (broker.positions, broker.cash, broker.fills, broker.open_orders):
        with pytest.raises(BrokerUnavailableError):
            call()
    with pytest.raises(BrokerUnavailableError, match="cannot connect"):
        broker.connect()
    tws.up = True
    assert broker.get_order("x").filled_quantity == 20  # connected again by the call
    clock.advance(timedelta(seconds=1))
    tws.fill("x", 30, "167.60")
    fills = broker.fills()
    assert [f.quantity for f in fills] == [20, 30] and len({f.fill_id for f in fills}) == 2
    got = broker.get_order("x")
    assert (got.status, got.filled_quantity) == (OrderStatus.FILLED, 50)
    assert broker.positions() == {"SPY": Decimal(50)}
    assert broker.cash() == Decimal(100_000) - sum(f.quantity * f.price + f.commission for f in fills)


def test_completed_orders_come_back_after_reconnect_with_their_fills(session):
    broker, tws, _ = session
    broker.submit(limit("done", qty=10))
    tws.fill("done", 4, "167.70")
    tws.fill("done", 6, "167.66")
    broker.submit(limit("gone", side="sell", qty=3))
    broker.cancel("gone")
    before = broker.fills()
    tws.drop()
    broker.connect()
    done = broker.get_order("done")
    assert (done.status, done.filled_quantity, done.avg_fill_price) == (OrderStatus.FILLED, 10, Decimal("167.676"))
    assert broker.get_order("gone").status is OrderStatus.CANCELLED
    assert broker.fills() == before


def test_short_sale_is_a_negative_position(session):
    broker, tws, _ = session
    broker.submit(Order("sh", "SPY", Side.SELL, Decimal(7)))
    tws.fill("sh", 7, "167.72")
    assert broker.positions() == {"SPY": Decimal(-7)}


def test_market_on_open_reaches_tws_as_opg(session):
    "A daily strategy's order trades in the next opening auction: a market order with IB's time in force OPG."
    broker, tws, _ = session
    broker.submit(Order("moo", "SPY", Side.BUY, Decimal(5), time_in_force=TimeInForce.OPG))
    got = {o.orderRef: (o.orderType, o.action, o.totalQuantity, o.tif) for _, o, _ in tws.orders.values()}
    assert got == {"moo": ("MKT", "BUY", 5.0, "OPG")}
    assert broker.get_order("moo").status is OrderStatus.ACCEPTED
