"""Live sessions through the Alpaca broker adapter: bars from the loopback market-data stream, orders through gate,
OMS and alpaca-py to the loopback trading server, which fills them at the next bar's open; the ledger books each fill
once and reconciles with the broker at the end — also when the broker times out, fails, rate-limits, refuses, loses
its stream, or the trading process is killed."""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal

import pandas as pd
import pytest

from bifrost.audit import AuditTrail
from bifrost.core import LiveClock, SimulatedClock
from bifrost.data.ingest import ingest
from bifrost.data.read import read_bars
from bifrost.data.sources import SAMPLE, SampleSource
from bifrost.execution.alpaca import AlpacaBroker
from bifrost.testing.alpaca_fake import AlpacaFake
from bifrost.pipelines.runs import run_pipeline
from bifrost.portfolio.ledger import Portfolio
from bifrost.risk.limits import Limits, save_limits
from bifrost.store import connect
from bifrost.strategy.api import MeanReversion, StrategyError
from bifrost.strategy.session import _version_of, parity_report, real_money, trade_session
from bifrost.testing.market_data_fake import MarketDataFake
from bifrost.strategy.versions import promote, register

KEYS = ("live-key", "live-secret")
T0 = dt.datetime(2013, 10, 1, tzinfo=dt.timezone.utc)
DAY = dt.date(2013, 10, 7)


@pytest.fixture(scope="module")
def day_bars(tmp_path_factory):
    "SPY's shipped minute bars of 2013-10-07, 09:30-12:00 New York: what the market-data fake streams."
    s = connect(f"duckdb:///{tmp_path_factory.mktemp('sample')}/s.duckdb")
    feeds = tuple(f for f in SAMPLE if f.primary and f.spec.ticker == "SPY" and f.spec.bar_size == "1min")
    ingest(s, SampleSource(feeds), progress=False)
    return read_bars(s, ["SPY"], "1min", "2013-10-07 13:30", "2013-10-07 16:00"), \
        s.query("SELECT * FROM instruments WHERE symbol = 'SPY'")


@pytest.fixture
def keys(monkeypatch):
    "Alpaca's own variable names (Bifrost's ALPACA_* would win over them)."
    monkeypatch.delenv("ALPACA_API_KEY", raising=False)
    monkeypatch.setenv("APCA_API_KEY_ID", KEYS[0])
    monkeypatch.setenv("APCA_API_SECRET_KEY", KEYS[1])


@pytest.fixture
def live(tmp_path, day_bars, keys):
    "A store with no bars of the day (they arrive on the stream), the strategy promoted, the account's limits."
    store = connect(f"duckdb:///{tmp_path}/live.duckdb")
    store.upsert("instruments", day_bars[1], ["symbol"])
    clock = SimulatedClock(T0)
    promote(store, "mr", register(store, MeanReversion(window=20, entry=1.5), clock, name="mr"), clock, "paper")
    save_limits(store, "acct", Limits(max_daily_loss=Decimal("0.05")), T0, T0, "live account", AuditTrail(store))
    return store


class Scripted(AlpacaFake):
    "The loopback venue, with something done to it as the n-th bar happens."
    def __init__(self, script: dict, **kw):
        super().__init__(**kw)
        self.script = dict(script)

    def _happen(self, bars):
        super()._happen(bars)
        if self._bars in self.script:
            self.script.pop(self._bars)(self)


def _trade(store, fake, bars, **kw):
    "One live session of `acct` at the loopback venue, its market data streamed by a fake that the venue trades on."
    md = MarketDataFake(bars, key=KEYS[0], secret=KEYS[1], venue=fake)
    url = md.start()
    broker = AlpacaBroker(url_override=fake.url, stream_url=fake.stream_url, timeout=1.0, retry_wait=0.01)
    try:
        return trade_session(store, "acct", DAY, strategy="mr", symbols=["SPY"], mode="live", broker=broker,
                             stream_url=url, idle=3.0, progress=False, **kw)
    finally:
        md.stop()


def _fills(store):
    return store.query("SELECT fill_id, client_order_id, ts, side, quantity, price FROM order_fills ORDER BY ts")


def _assert_books_agree(store, fake):
    "Every fill at the venue recorded once and in the ledger once; ledger = venue to the share and the cent."
    fills = _fills(store)
    assert sorted(fills.fill_id) == sorted(a["id"].split("::")[-1] for a in fake.activities)
    book = Portfolio.load(store, "acct").book
    assert set(fills.fill_id) <= book.txn_ids
    held = {s: q for s, (q, _) in fake.positions.items() if q}
    assert book.positions() == held and book.cash() == {"USD": fake.cash}


def test_live_session_at_alpaca_when_streamed_then_filled_at_next_open_booked_once_and_in_parity(live, day_bars):
    bars = day_bars[0]
    with AlpacaFake(cash=100_000, keys=KEYS) as fake:
        s = _trade(live, fake, bars)
        _assert_books_agree(live, fake)
        posts = Counter(fake.requests)[("POST", "/v2/orders")]
    assert s.status == "done" and s.mode == "live" and s.fills >= 4 and s.refused == 0
    orders = live.query("SELECT client_order_id, status, broker FROM orders ORDER BY created_at")
    assert posts == len(orders) == s.orders and set(orders.broker) == {"alpaca"}
    assert set(orders.status) <= {"filled", "cancelled"}  # what still worked at the end was cancelled
    # each fill at the open of the bar after the one its order was decided on
    opens = bars.set_index("ts").open
    fills = _fills(live)
    for f in fills.itertuples():
        assert Decimal(f.price) == Decimal(repr(float(opens[pd.Timestamp(f.ts)])))
    stored = live.query("SELECT ts, close FROM bars WHERE symbol = 'SPY' ORDER BY ts")
    assert (stored.close.to_numpy() == bars.close.to_numpy()).all()  # stored as they arrived
    row = live.query("SELECT status, summary, run_id FROM trading_sessions")
    info = json.loads(row.summary.iat[0])
    assert row.status.iat[0] == "done" and info["breaks"] == [] and info["broker"] == "alpaca"
    assert info["stream_fills"] == s.fills and row.run_id.isna().all()
    # sized at the close it was decided on, filled at the next open: on this day the same trades as the backtest
    assert parity_report(live, "acct", DAY).empty
    assert AuditTrail(live).verify().ok


def test_live_session_when_broker_misbehaves_then_nothing_sent_twice_fills_booked_once(live, day_bars):
    "A submit that times out (it took effect), a 500 and a 429 (they did not), a refusal, and a stream that dies."
    script = {2: lambda f: f.slow(2.5, path="/v2/orders", method="POST"),   # the first order: answer too late
              40: lambda f: f.fail(500, path="/v2/orders", method="POST"),  # the next: a server error
              41: lambda f: f.fail(429, path="/v2/orders", method="POST"),  # then: rate limited, retried
              60: lambda f: f.drop_stream(for_good=True),                  # trade updates gone for good
              95: lambda f: f.fail(403, path="/v2/orders", method="POST")}  # refused: insufficient buying power
    with Scripted(script, cash=100_000, keys=KEYS) as fake:
        s = _trade(live, fake, day_bars[0])
        _assert_books_agree(live, fake)
        assert fake.script == {} and fake.listening() == 0
        at_venue = {o["client_order_id"] for o in fake.orders.values()}
        posts = Counter(fake.requests)[("POST", "/v2/orders")]
    orders = live.query("SELECT client_order_id, status, reason FROM orders ORDER BY created_at")
    refused = orders[orders.status == "rejected"]
    assert len(refused) == 1 and "403" in refused.reason.iat[0] and s.refused == 1  # recorded; the session went on
    assert at_venue == set(orders.client_order_id) - set(refused.client_order_id)  # each order reached it once
    assert posts == len(at_venue) + 3  # + the 500's, the 429's and the refusal's requests, which created nothing
    assert s.status == "done" and s.fills >= 4
    info = json.loads(live.scalar("SELECT summary FROM trading_sessions"))
    assert info["stream_fills"] < s.fills  # the stream died; polling booked the rest
    events = live.query("SELECT client_order_id, to_status FROM order_events")
    assert (events.to_status == "unknown").sum() >= 2  # the timeout and the 500: unknown until asked by client id
    report = parity_report(live, "acct", DAY)
    assert set(report.kind) <= {"missed", "size", "timing"} and "missed" in set(report.kind)  # the refused entry


def test_live_session_when_venue_disagrees_then_break_recorded_and_session_failed(live, day_bars):
    "A fill the OMS never hears of (booked at the venue behind its back): the end-of-session reconciliation fails."
    def stray(fake):
        fake.cash -= Decimal("12.34")  # a fee the ledger was never told of
    with Scripted({30: stray}, cash=100_000, keys=KEYS) as fake, pytest.raises(StrategyError, match="breaks with alpaca"):
        _trade(live, fake, day_bars[0])
    row = live.query("SELECT status, summary FROM trading_sessions")
    info = json.loads(row.summary.iat[0])
    assert row.status.iat[0] == "failed" and [b["kind"] for b in info["breaks"]] == ["cash"]
    assert Decimal(info["breaks"][0]["difference"]) == Decimal("12.34")


_KILLED = """
import datetime as dt, sys
from bifrost.execution.alpaca import AlpacaBroker
from bifrost.store import connect
from bifrost.strategy.session import trade_session
store, venue, updates, bars = sys.argv[1:]
trade_session(connect(store), "acct", dt.date(2013, 10, 7), strategy="mr", symbols=["SPY"], mode="live",
              broker=AlpacaBroker(url_override=venue, stream_url=updates, timeout=1.0), stream_url=bars, idle=3.0,
              progress=False)
"""


def test_live_session_when_process_killed_then_resume_reconciles_and_sends_nothing_twice(live, day_bars, tmp_path):
    bars = day_bars[0]
    url = live.url
    del live  # the trading process has the store
    with AlpacaFake(cash=100_000, keys=KEYS) as fake:
        md = MarketDataFake(bars, key=KEYS[0], secret=KEYS[1], venue=fake)
        proc = subprocess.Popen([sys.executable, "-c", _KILLED, url, fake.url, fake.stream_url, md.start()],
                                env=os.environ.copy())
        try:
            for _ in range(6000):  # until its second order reached the venue (or it ended)
                if Counter(fake.requests)[("POST", "/v2/orders")] >= 2 or proc.poll() is not None:
                    break
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)  # no clean-up: the session row stays 'running'
            assert proc.wait(30) == -signal.SIGKILL
        finally:
            md.stop()
            fake.close_market()
        store = connect(url)
        assert store.scalar("SELECT status FROM trading_sessions") == "running"
        with pytest.raises(StrategyError, match="running session"):
            _trade(store, fake, bars)
        seen = store.query("SELECT max(ts) AS ts FROM bars").ts.iat[0]
        rest = bars[bars.ts > seen]  # the stream goes on from where it was
        s = _trade(store, fake, rest, resume=True)
        _assert_books_agree(store, fake)
        posts = Counter(fake.requests)[("POST", "/v2/orders")]
        at_venue = sorted(o["client_order_id"] for o in fake.orders.values())
    orders = store.query("SELECT client_order_id, status FROM orders")
    assert sorted(orders.client_order_id) == at_venue and posts == len(at_venue)  # nothing sent twice
    assert set(orders.status) <= {"filled", "cancelled"} and s.status == "done"
    info = json.loads(store.scalar("SELECT summary FROM trading_sessions"))
    assert info["start_cash"] == "100000.00" and info["breaks"] == []
    assert len(store.query("SELECT ts FROM bars")) == len(bars)  # every bar of the window, from one run or the other


def test_trade_pipeline_when_live_at_alpaca_then_session_records_its_run(live, day_bars, tmp_path):
    bars = day_bars[0].iloc[:40]
    with AlpacaFake(cash=100_000, keys=KEYS) as fake:
        md = MarketDataFake(bars, key=KEYS[0], secret=KEYS[1], venue=fake)
        params = {"account": "acct", "session": str(DAY), "strategy": "mr", "symbols": ["SPY"], "mode": "live",
                  "broker": "alpaca", "endpoint": fake.url, "trade_updates_url": fake.stream_url,
                  "stream_url": md.start(), "idle": 3.0}
        try:
            run = run_pipeline("trade", params, store=live, clock=LiveClock(), output_dir=tmp_path / "run")
        finally:
            md.stop()
        assert run.status == "succeeded", run.error
        _assert_books_agree(live, fake)
    row = live.query("SELECT status, mode, run_id FROM trading_sessions")
    assert (row.status.iat[0], row["mode"].iat[0], row.run_id.iat[0]) == ("done", "live", run.run_id)
    assert KEYS[1] not in (tmp_path / "run" / "trade.ipynb").read_text()  # keys came from the environment


def test_runner_at_a_broker_when_fills_lag_then_plans_from_ledger_and_working_orders(live, keys):
    "Hand-driven fills: an order not yet filled, or half filled, is counted, so the same target sends nothing more."
    from bifrost.core import SimulatedClock as Clock
    from bifrost.strategy.paper import PaperRunner
    clock = Clock(dt.datetime(2013, 10, 7, 13, 30, tzinfo=dt.timezone.utc))
    ts = lambda m: pd.Timestamp("2013-10-07 13:30", tz="UTC") + pd.Timedelta(minutes=m)
    px = lambda p: pd.Series([p]).to_numpy(float)
    with AlpacaFake(cash=10_000, keys=KEYS, clock=clock) as fake:
        broker = AlpacaBroker(url_override=fake.url, timeout=1.0, retry_wait=0.01)
        runner = PaperRunner(live, "acct", ["SPY"], clock, broker=broker, strategy="test")
        assert runner.venue and runner.ledger_cash() == Decimal(10_000)  # funded with what the broker holds
        runner.close_step(ts(0), px(1.0), px(100.0))
        first = [o["client_order_id"] for o in fake.orders.values()]
        assert [o["qty"] for o in fake.orders.values()] == ["100"] and list(runner.pending()) == [100]
        runner.close_step(ts(1), px(1.0), px(100.0))  # not filled yet: the same target sends nothing
        assert len(fake.orders) == 1
        fake.fill(first[0], 40, "100.00")
        runner.close_step(ts(2), px(1.0), px(100.0))  # 40 booked, 60 working: still nothing more
        assert len(fake.orders) == 1 and list(runner.positions()) == [40] and list(runner.pending()) == [60]
        runner.close_step(ts(3), px(0.0), px(100.0))  # go flat: sell the 40 held and the 60 still to come
        sells = [o for o in fake.orders.values() if o["side"] == "sell"]
        assert [o["qty"] for o in sells] == ["100"]
        fake.fill(first[0], 60, "100.00")
        fake.fill(sells[0]["client_order_id"], 100, "101.00")
        assert runner.finish().empty  # flat, with the cash the broker has
        assert runner.ledger_cash() == Decimal(10_100) and list(runner.positions()) == [0]


def test_live_session_when_broker_holds_what_the_ledger_does_not_then_nothing_sent(live, day_bars):
    with AlpacaFake(cash=100_000, keys=KEYS) as fake:
        fake.positions["SPY"] = (Decimal(10), Decimal("1675.00"))  # bought elsewhere: the ledger never heard of it
        with pytest.raises(StrategyError, match="missing_in_ledger SPY"):
            _trade(live, fake, day_bars[0].iloc[:30])
        assert ("POST", "/v2/orders") not in fake.requests
    info = json.loads(live.scalar("SELECT summary FROM trading_sessions"))
    assert [(b["kind"], b["item"], b["broker"]) for b in info["breaks"]] == [("missing_in_ledger", "SPY", "10")]


def test_real_money_trades_only_the_version_promoted_to_live(live, day_bars):
    "A broker's real-money account refuses a version promoted to paper, before any order; the live gate lets it in."
    version = live.query("SELECT version FROM strategy_versions").version.iat[0]
    with AlpacaFake(cash=100_000, keys=KEYS) as fake:
        real = AlpacaBroker(paper=False, url_override=fake.url, timeout=1.0)
        with pytest.raises(StrategyError, match="may not trade real money: mr's promoted version is .* at stage paper"):
            trade_session(live, "acct", DAY, strategy="mr", symbols=["SPY"], mode="live", broker=real,
                          stream_url="ws://127.0.0.1:9", idle=0.1, progress=False)
        assert fake.requests == [] and live.query("SELECT * FROM trading_sessions").empty
        promote(live, "mr", version, SimulatedClock(T0), "go live", to="live", override="tested on the fake venue")
        assert real_money(real) and not real_money(AlpacaBroker(url_override=fake.url)) and not real_money(None)
        assert _version_of(live, "mr", None, live=True) == version  # the session runs as in the tests above
        other = register(live, MeanReversion(window=30, entry=1.5), SimulatedClock(T0), name="mr")
        with pytest.raises(StrategyError, match=f"mr {other} may not trade real money"):
            _version_of(live, "mr", other, live=True)  # a version given by hand is not the one that passed the gate
