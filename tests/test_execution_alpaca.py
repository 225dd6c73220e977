"AlpacaBroker end to end: the real alpaca-py client against AlpacaFake on loopback (REST and the trade_updates websocket)."
import socket
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from bifrost.core import (Broker, SimulatedClock, BrokerError, BrokerUnavailableError, ConfigError, Order, OrderRejectedError,
                          OrderStatus, OrderType, Side, TimeInForce)
from bifrost.execution.alpaca import AlpacaBroker
from bifrost.testing.alpaca_fake import AlpacaFake

KEYS = ("test-key", "test-secret")
T0 = datetime(2024, 3, 4, 15, 0, tzinfo=timezone.utc)


@pytest.fixture
def env(monkeypatch):
    for name in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "APCA_API_KEY_ID", "APCA_API_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALPACA_API_KEY", KEYS[0])
    monkeypatch.setenv("ALPACA_SECRET_KEY", KEYS[1])
    return monkeypatch


@pytest.fixture
def fake(env):
    with AlpacaFake(cash=100_000, prices={"SPY": Decimal("167.72"), "AAPL": Decimal("92.50")}, keys=KEYS,
                    clock=SimulatedClock(T0)) as f:
        yield f


@pytest.fixture
def broker(fake):
    return AlpacaBroker(url_override=fake.url, stream_url=fake.stream_url, timeout=1.0, retry_wait=0.01)


def until(cond, what, limit=2000):
    "Wait for `cond()` (a stream event crossing threads), failing after `limit` polls."
    for _ in range(limit):
        if cond():
            return
        time.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


def limit_buy(coid, qty=10, price="167.50", symbol="SPY"):
    return Order(coid, symbol, Side.BUY, Decimal(qty), OrderType.LIMIT, TimeInForce.DAY, limit_price=Decimal(price))


def test_submit_fill_and_read_back_exactly(broker, fake):
    assert isinstance(broker, Broker)
    placed = broker.submit(limit_buy("a", 30))
    assert (placed.client_order_id, placed.status, placed.filled_quantity) == ("a", OrderStatus.ACCEPTED, 0)
    fake.fill("a", 10, "167.50")
    assert broker.get_order("a").status is OrderStatus.PARTIALLY_FILLED
    fake.fill("a", 20, "167.41")
    got = broker.get_order("a")
    assert (got.status, got.filled_quantity, got.avg_fill_price) == (OrderStatus.FILLED, 30, Decimal("167.44"))
    assert broker.positions() == {"SPY": Decimal(30)}
    fills = broker.fills()
    assert broker.cash() == Decimal(100_000) - sum(f.quantity * f.price for f in fills)
    assert broker.account()["cash"] == broker.cash()
    assert [(f.client_order_id, f.quantity, f.price) for f in fills] == [("a", 10, Decimal("167.50")),
                                                                          ("a", 20, Decimal("167.41"))]


def test_every_order_type_goes_out_as_alpaca_reads_it(broker, fake):
    orders = [Order("m", "SPY", Side.SELL, Decimal(1)),
              Order("l", "SPY", Side.BUY, Decimal(1), OrderType.LIMIT, TimeInForce.GTC, limit_price=Decimal("160.01")),
              Order("s", "SPY", Side.SELL, Decimal(2), OrderType.STOP, TimeInForce.DAY, stop_price=Decimal("150.5")),
              Order("sl", "SPY", Side.BUY, Decimal(3), OrderType.STOP_LIMIT, TimeInForce.IOC,
                    limit_price=Decimal("170.25"), stop_price=Decimal("170"))]
    for o in orders:
        broker.submit(o)
    sent = {o["client_order_id"]: o for o in fake.orders.values()}
    assert [(sent[o.client_order_id]["type"], sent[o.client_order_id]["time_in_force"], sent[o.client_order_id]["qty"],
             sent[o.client_order_id]["limit_price"], sent[o.client_order_id]["stop_price"]) for o in orders] == [
        ("market", "day", "1", None, None), ("limit", "gtc", "1", "160.01", None), ("stop", "day", "2", None, "150.5"),
        ("stop_limit", "ioc", "3", "170.25", "170")]
    assert [o.client_order_id for o in broker.open_orders()] == ["m", "l", "s", "sl"]


def test_replace_then_cancel(broker, fake):
    broker.submit(limit_buy("r1", 10))
    new = broker.replace("r1", "r2", quantity=Decimal(20), limit_price=Decimal("167.60"))
    assert (new.client_order_id, new.status) == ("r2", OrderStatus.ACCEPTED)
    old = broker.get_order("r1")
    assert old.status is OrderStatus.CANCELLED and "replaced by" in old.reason
    assert fake.orders[fake.by_client_id["r2"]]["qty"] == "20"
    assert fake.orders[fake.by_client_id["r2"]]["limit_price"] == "167.6"
    assert broker.cancel("r2").status is OrderStatus.CANCELLED
    assert broker.open_orders() == []
    with pytest.raises(OrderRejectedError, match="not replaceable"):
        broker.replace("r2", "r3", limit_price=Decimal("167.70"))
    with pytest.raises(OrderRejectedError, match="no order"):
        broker.cancel("nope")


def test_cancel_of_a_filled_order_answers_its_final_state(broker, fake):
    broker.submit(limit_buy("f", 5))
    fake.fill("f", 5, "167.50")
    got = broker.cancel("f")
    assert (got.status, got.filled_quantity) == (OrderStatus.FILLED, 5)


def test_duplicate_client_order_id(broker, fake):
    first = broker.submit(limit_buy("dup", 10))
    again = broker.submit(limit_buy("dup", 10))  # a resend of the same order: Alpaca already has it
    assert again.broker_order_id == first.broker_order_id
    assert len(fake.orders) == 1
    with pytest.raises(OrderRejectedError, match="client_order_id must be unique"):
        broker.submit(limit_buy("dup", 11))  # another order under a used id


def test_insufficient_buying_power_is_a_refusal(broker, fake):
    with pytest.raises(OrderRejectedError, match="HTTP 403.*insufficient buying power"):
        broker.submit(Order("big", "SPY", Side.BUY, Decimal(1000)))
    assert broker.get_order("big") is None and fake.orders == {}


def test_rate_limit_is_retried_once_then_outcome_unknown(broker, fake):
    fake.fail(429, times=1)
    assert broker.cash() == 100_000  # one 429, retried by alpaca-py
    fake.fail(429, times=2, path="/v2/orders")
    with pytest.raises(BrokerUnavailableError, match="HTTP 429"):
        broker.submit(limit_buy("rl"))
    assert fake.requests.count(("POST", "/v2/orders")) == 2 and fake.orders == {}


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_outcome_unknown_and_never_resent(broker, fake, status):
    fake.fail(status, path="/v2/orders")
    with pytest.raises(BrokerUnavailableError, match=f"HTTP {status}"):
        broker.submit(limit_buy("e"))
    assert fake.requests.count(("POST", "/v2/orders")) == 1


def test_an_empty_answer_is_outcome_unknown(broker, fake):
    fake.fail(200, path="/v2/orders")
    with pytest.raises(BrokerUnavailableError, match="empty or unreadable"):
        broker.submit(limit_buy("x"))
    fake.fail(200, path="/v2/account")
    with pytest.raises(BrokerUnavailableError):
        broker.cash()


def test_timeout_then_get_order_finds_what_the_server_accepted(broker, fake):
    fake.slow(2.0, path="/v2/orders")  # the order is placed; the answer comes after the client's 1 s timeout
    with pytest.raises(BrokerUnavailableError, match="outcome is unknown"):
        broker.submit(limit_buy("slow"))
    got = broker.get_order("slow")
    assert got is not None and got.status is OrderStatus.ACCEPTED
    assert broker.submit(limit_buy("slow")).broker_order_id == got.broker_order_id  # a resend is answered, not doubled
    assert len(fake.orders) == 1


def test_unreachable_server_is_outcome_unknown(env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    dead = AlpacaBroker(url_override=f"http://127.0.0.1:{port}", timeout=1.0)
    with pytest.raises(BrokerUnavailableError, match="could not be reached"):
        dead.submit(limit_buy("z"))
    with pytest.raises(BrokerUnavailableError):
        dead.get_order("z")


def test_keys_come_from_the_environment(env, fake):
    env.delenv("ALPACA_API_KEY")
    with pytest.raises(ConfigError, match="ALPACA_API_KEY"):
        AlpacaBroker(url_override=fake.url)
    env.setenv("APCA_API_KEY_ID", "wrong")
    env.setenv("APCA_API_SECRET_KEY", "keys")
    with pytest.raises(BrokerError, match="HTTP 401"):
        AlpacaBroker(url_override=fake.url).cash()


def test_fills_since_and_pages(broker, fake):
    broker.submit(Order("many", "AAPL", Side.BUY, Decimal(250)))
    for k in range(250):
        fake.clock.advance(timedelta(milliseconds=250))
        fake.fill("many", 1, f"92.{k % 100:02d}")
    fills = broker.fills()
    assert len(fills) == 250 and len({f.fill_id for f in fills}) == 250
    assert sum(f.quantity for f in fills) == 250 == broker.positions()["AAPL"]
    assert fills[0].ts == T0 + timedelta(milliseconds=250)
    assert [f.fill_id for f in broker.fills(since=fills[120].ts)] == [f.fill_id for f in fills[120:]]
    assert broker.fills(since=fills[-1].ts + timedelta(seconds=1)) == []


def test_short_position_is_negative(broker, fake):
    broker.submit(Order("short", "SPY", Side.SELL, Decimal(7)))
    fake.fill("short", 7, "167.72")
    assert broker.positions() == {"SPY": Decimal(-7)}


def test_trade_updates_deliver_each_fill_once_across_repeats_and_reconnects(broker, fake):
    got, events = [], []
    broker.start_stream(on_fill=got.append, on_order=events.append)
    try:
        until(lambda: fake.listening() == 1, "the stream subscribed")
        broker.submit(limit_buy("s", 30))
        fake.fill("s", 10, "167.50")
        fake.resend(fake.sent[-1])  # the same partial fill again
        until(lambda: len(events) == 3, "new, partial fill and its repeat")
        assert [f.quantity for f in got] == [10]
        fake.drop_stream()
        until(lambda: fake.listening() == 0, "the server dropped the stream")
        until(lambda: fake.listening() == 1, "alpaca-py reconnected", limit=4000)
        fake.fill("s", 20, "167.45")
        until(lambda: len(got) == 2, "the fill after the reconnect")
        fake.resend(fake.sent[-1])
        broker.submit(limit_buy("t", 1))  # one more event, to know the repeat was handled before it
        until(lambda: any(o.client_order_id == "t" for o in events), "the last event")
        assert [f.fill_id for f in got] == [f.fill_id for f in broker.fills()]
        assert [f.quantity for f in got] == [10, 20] and broker.stream_fills == got
        assert events[-2].status is OrderStatus.FILLED
    finally:
        broker.stop_stream()
    assert not broker._stream_thread.is_alive()


def test_stream_with_a_refused_key_delivers_nothing(env, fake):
    env.setenv("ALPACA_SECRET_KEY", "wrong")
    bad = AlpacaBroker(url_override=fake.url, stream_url=fake.stream_url)
    bad.start_stream()
    try:
        time.sleep(0.3)
        assert fake.listening() == 0
    finally:
        bad.stop_stream()


def test_market_on_open_goes_out_as_opg(broker, fake):
    "A daily strategy's order, decided after the close, trades in the next opening auction: Alpaca's time_in_force opg."
    broker.submit(Order("moo", "SPY", Side.BUY, Decimal(5), time_in_force=TimeInForce.OPG))
    sent = fake.orders[fake.by_client_id["moo"]]
    assert (sent["type"], sent["time_in_force"], sent["qty"]) == ("market", "opg", "5")
    assert [o.client_order_id for o in broker.open_orders()] == ["moo"]
