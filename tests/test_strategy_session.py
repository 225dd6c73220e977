"""Trading sessions replayed through the execution stack, their daily parity reports, and the promotion gate."""
import datetime as dt
import json
from decimal import Decimal

import pandas as pd
import pytest

from bifrost.audit import AuditTrail
from bifrost.core import BifrostError, SimulatedClock
from bifrost.data.ingest import ingest
from bifrost.data.sources import SAMPLE, SampleSource
from bifrost.execution.paper import PaperBroker
from bifrost.risk.limits import Limits, save_limits
from bifrost.store import connect
from bifrost.strategy.api import Costs, MeanReversion, StrategyError
from bifrost.strategy.session import compare_trades, parity_report, trade_session
from bifrost.strategy.versions import live_readiness, promote, promotions, register

EXACT = Costs(per_share=0.01, minimum=1.0)
T0 = dt.datetime(2013, 10, 1, tzinfo=dt.timezone.utc)
DAYS = [dt.date(2013, 10, d) for d in (4, 7, 8)]


def _move_price(store, fill_id, by: Decimal):
    price = Decimal(store.scalar("SELECT price FROM order_fills WHERE fill_id = ?", [fill_id]))
    store.execute("UPDATE order_fills SET price = ? WHERE fill_id = ?", [str(price + by), fill_id])


def _setup(store, account="acct", limits=Limits(max_daily_loss=Decimal("0.05"))):
    clock = SimulatedClock(T0)
    v = register(store, MeanReversion(window=20, entry=1.5), clock, name="mr")
    promote(store, "mr", v, clock, "paper")
    save_limits(store, account, limits, T0, T0, "paper account", AuditTrail(store))
    return v, clock


@pytest.fixture
def spy(tmp_path):
    s = connect(f"duckdb:///{tmp_path}/s.duckdb")
    feeds = tuple(f for f in SAMPLE if f.primary and f.spec.ticker == "SPY" and f.spec.bar_size == "1min")
    ingest(s, SampleSource(feeds), progress=False)
    return s


def test_sessions_when_replayed_then_ledger_carries_over_and_parity_reports_are_empty(spy):
    v, _ = _setup(spy)
    out = [trade_session(spy, "acct", DAYS[0], strategy="mr", symbols=["SPY"], costs=EXACT, progress=False)]
    out += [trade_session(spy, "acct", d, costs=EXACT, progress=False) for d in DAYS[1:]]  # strategy, symbols carried
    assert all(s.status == "done" and s.version == v and s.fills > 5 for s in out)
    rows = spy.query("SELECT session, status, summary FROM trading_sessions ORDER BY session")
    infos = [json.loads(x) for x in rows.summary]
    assert list(rows.status) == ["done"] * 3
    # the ledger persists: each session starts with the cash the last one ended with
    assert Decimal(infos[1]["start_cash"]) == Decimal(infos[0]["start_cash"]) + out[0].pnl
    for d in DAYS:
        assert parity_report(spy, "acct", d).empty
    assert spy.scalar("SELECT count(*) FROM parity_reports") == 0
    assert AuditTrail(spy).verify().ok
    with pytest.raises(StrategyError, match="already has a done session"):
        trade_session(spy, "acct", DAYS[0], costs=EXACT, progress=False)


def test_parity_report_when_fill_worse_or_missing_then_listed_with_pnl_effect(spy):
    _setup(spy)
    trade_session(spy, "acct", DAYS[1], strategy="mr", symbols=["SPY"], costs=EXACT, progress=False)
    fills = spy.query("SELECT fill_id, ts, side, quantity, price, commission FROM order_fills ORDER BY ts")
    worse, gone = fills.iloc[0], fills.iloc[3]
    _move_price(spy, worse.fill_id, Decimal("0.05"))  # a worse buy
    spy.execute("DELETE FROM order_fills WHERE fill_id = ?", [gone.fill_id])                       # a missed order
    report = parity_report(spy, "acct", DAYS[1]).set_index("kind")
    assert sorted(report.index) == ["fill_price", "missed"]
    q = int(worse.quantity) * (1 if worse.side == "buy" else -1)
    assert Decimal(report.loc["fill_price", "pnl_effect"]) == -q * Decimal("0.05")
    closes = spy.query("SELECT close FROM bars WHERE symbol = 'SPY' AND ts < ? ORDER BY ts DESC LIMIT 1",
                       [dt.datetime(2013, 10, 7, 20, 1, tzinfo=dt.timezone.utc)])  # through the bar at the close
    qg = int(gone.quantity) * (1 if gone.side == "buy" else -1)
    made = qg * (Decimal(repr(float(closes.close.iat[0]))) - Decimal(gone.price)) - Decimal(gone.commission)
    assert Decimal(report.loc["missed", "pnl_effect"]) == (-made).quantize(Decimal("0.01"))
    stored = spy.query("SELECT kind, pnl_effect FROM parity_reports ORDER BY item")
    assert sorted(stored.kind) == ["fill_price", "missed"]
    info = json.loads(spy.scalar("SELECT summary FROM trading_sessions"))
    assert info["parity"]["items"] == 2


class _Dies(PaperBroker):
    def on_bar(self, bar):
        if bar.ts.hour >= 15:
            raise RuntimeError("feed lost")
        return super().on_bar(bar)


def test_session_when_it_fails_then_marked_failed_with_the_error(spy):
    _setup(spy)
    clock = SimulatedClock(dt.datetime(2013, 10, 7, 8, tzinfo=dt.timezone.utc))
    broker = _Dies(clock, cash=Decimal(100_000), participation=None, extended_hours=True)
    with pytest.raises(RuntimeError, match="feed lost"):
        trade_session(spy, "acct", DAYS[1], strategy="mr", symbols=["SPY"], costs=EXACT, clock=clock, broker=broker,
                      progress=False)
    row = spy.query("SELECT status, summary FROM trading_sessions")
    assert row.status.iat[0] == "failed" and "feed lost" in json.loads(row.summary.iat[0])["error"]
    with pytest.raises(StrategyError, match="no finished session"):
        parity_report(spy, "acct", DAYS[1])


def test_promote_to_live_when_conditions_fail_then_refused_naming_each(spy):
    v, clock = _setup(spy, limits=Limits(max_order_notional=Decimal(1_000_000)))  # no stop-loss
    trade_session(spy, "acct", DAYS[0], strategy="mr", symbols=["SPY"], costs=EXACT, progress=False)
    with pytest.raises(StrategyError) as err:
        promote(spy, "mr", v, clock, "live", to="live", min_sessions=2)
    text = str(err.value)
    assert "1 session(s) of the 2 required" in text and "without a parity report" in text and "no stop-loss" in text
    with pytest.raises(StrategyError, match="override"):
        promote(spy, "mr", v, clock, "live", to="live", override="  ")
    promote(spy, "mr", v, clock, "live", to="live", min_sessions=2, override="desk head approved a pilot")
    rec = AuditTrail(spy).records(kind="strategy.override").iloc[-1]
    assert rec.subject == f"mr:{v}" and "pilot" in str(rec.payload)
    last = promotions(spy, "mr").iloc[-1]
    assert (last.stage, last.reason) == ("live", "live")


def test_promote_to_live_when_sessions_in_parity_and_stop_loss_then_allowed(spy):
    v, clock = _setup(spy)
    for i, d in enumerate(DAYS):
        trade_session(spy, "acct", d, strategy="mr", symbols=["SPY"], costs=EXACT, progress=False)
        if i < 2:
            parity_report(spy, "acct", d)
    assert live_readiness(spy, v, min_sessions=3) == ["1 session(s) without a parity report (first 2013-10-08)"]
    parity_report(spy, "acct", DAYS[2])
    assert live_readiness(spy, v, min_sessions=3) == []
    promote(spy, "mr", v, clock, "three clean sessions", to="live", min_sessions=3)
    assert AuditTrail(spy).records(kind="strategy.promote").subject.iloc[-1] == f"mr:{v}"
    _move_price(spy, spy.scalar("SELECT min(fill_id) FROM order_fills"), Decimal(1))
    parity_report(spy, "acct", DAYS[0])
    assert "outside ±1.00" in live_readiness(spy, v, min_sessions=3)[0]


def test_session_when_any_backend_then_parity_and_promotion_read_it(store):
    "DuckDB and PostgreSQL: session rows, fills as exact text, parity rows and the promotion gate."
    feeds = tuple(f for f in SAMPLE if f.primary and f.spec.ticker == "SPY" and f.spec.bar_size == "1min")
    ingest(store, SampleSource(feeds), progress=False)
    v, _ = _setup(store)
    s = trade_session(store, "acct", DAYS[1], strategy="mr", symbols=["SPY"], costs=EXACT, progress=False)
    assert s.status == "done" and s.fills > 5
    assert parity_report(store, "acct", DAYS[1]).empty
    _move_price(store, store.scalar("SELECT min(fill_id) FROM order_fills"), Decimal("0.01"))
    assert parity_report(store, "acct", DAYS[1]).kind.tolist() == ["fill_price"]
    assert store.scalar("SELECT count(*) FROM parity_reports") == 1
    effect = abs(Decimal(store.scalar("SELECT pnl_effect FROM parity_reports")))
    assert live_readiness(store, v, min_sessions=1, tolerance=effect) == []
    assert "outside" in live_readiness(store, v, min_sessions=1, tolerance=effect - Decimal("0.01"))[0]


def test_live_session_when_streamed_from_loopback_then_bars_stored_and_same_as_replay(spy, tmp_path, monkeypatch):
    "alpaca-py's StockDataStream against a loopback server speaking Alpaca's protocol; then parity with the backtest."
    from bifrost.data.read import read_bars
    from bifrost.testing.market_data_fake import MarketDataFake
    monkeypatch.setenv("ALPACA_API_KEY", "k")
    monkeypatch.setenv("ALPACA_SECRET_KEY", "s")
    day = DAYS[1]
    bars = read_bars(spy, ["SPY"], "1min", "2013-10-07 13:25", "2013-10-07 16:00")  # the session's first hours
    live = connect(f"duckdb:///{tmp_path}/live.duckdb")  # no bars stored: they arrive on the stream
    live.upsert("instruments", spy.query("SELECT * FROM instruments WHERE symbol = 'SPY'"), ["symbol"])
    _setup(live)
    fake = MarketDataFake(bars, key="k", secret="s")
    url = fake.start()
    try:
        s = trade_session(live, "acct", day, strategy="mr", symbols=["SPY"], costs=EXACT, mode="live", stream_url=url,
                          idle=3.0, progress=False)
    finally:
        fake.stop()
    assert fake.sent == len(bars) and s.status == "done" and s.mode == "live"
    stored = live.query("SELECT ts, close FROM bars WHERE symbol = 'SPY' ORDER BY ts")
    assert len(stored) == len(bars) and (stored.close.to_numpy() == bars.close.to_numpy()).all()
    assert s.fills > 3 and parity_report(live, "acct", day).empty
    # a replay of the bars the stream stored trades the same, for another account
    save_limits(live, "acct2", Limits(max_daily_loss=Decimal("0.05")), T0, T0, "replay twin", AuditTrail(live))
    replayed = trade_session(live, "acct2", day, strategy="mr", symbols=["SPY"], costs=EXACT, progress=False)
    assert (s.orders, s.fills, s.pnl) == (replayed.orders, replayed.fills, replayed.pnl)


def test_live_session_when_keys_wrong_then_no_bars_and_failed(spy, tmp_path, monkeypatch):
    from bifrost.data.read import read_bars
    from bifrost.testing.market_data_fake import MarketDataFake
    monkeypatch.setenv("ALPACA_API_KEY", "wrong")
    monkeypatch.setenv("ALPACA_SECRET_KEY", "s")
    live = connect(f"duckdb:///{tmp_path}/live.duckdb")
    _setup(live)
    fake = MarketDataFake(read_bars(spy, ["SPY"], "1min", "2013-10-07 13:30", "2013-10-07 14:00"), key="k", secret="s")
    url = fake.start()
    try:
        with pytest.raises(StrategyError, match="no bars"):
            trade_session(live, "acct", DAYS[1], strategy="mr", symbols=["SPY"], costs=EXACT, mode="live",
                          stream_url=url, idle=2.0, progress=False)
    finally:
        fake.stop()
    assert fake.sent == 0 and live.scalar("SELECT status FROM trading_sessions") == "failed"


def test_compare_trades_when_size_timing_extra_then_each_effect_at_the_close():
    ts = pd.to_datetime(["2024-01-02 15:00", "2024-01-02 15:01", "2024-01-02 15:02"], utc=True)
    frame = lambda rows: pd.DataFrame(rows, columns=["ts", "symbol", "shares", "price", "commission"])
    traded = frame([(ts[0], "SPY", 100, Decimal("10.00"), Decimal("1.00")),   # 10 shares more than the backtest
                    (ts[2], "SPY", -50, Decimal("10.50"), Decimal("1.00")),   # the backtest sold these a bar earlier
                    (ts[1], "QQQ", 10, Decimal("20.00"), Decimal("1.00"))])   # the backtest never bought QQQ
    backtest = frame([(ts[0], "SPY", 90, 10.0, 1.0), (ts[1], "SPY", -50, 10.4, 1.0)])
    r = compare_trades(traded, backtest, {"SPY": Decimal("11.00"), "QQQ": Decimal("19.00")}).set_index("kind")
    assert sorted(r.index) == ["extra", "size", "timing"]
    assert Decimal(r.loc["size", "pnl_effect"]) == 10 * (Decimal("11.00") - Decimal("10.0"))
    assert Decimal(r.loc["timing", "pnl_effect"]) == -50 * (Decimal("11") - Decimal("10.50")) + 50 * (Decimal("11") - Decimal("10.4"))
    assert Decimal(r.loc["extra", "pnl_effect"]) == 10 * (Decimal("19") - Decimal("20")) - 1


# -- issue 15: fills exactly once, partial fills included -------------------------------------------------------------
from bifrost.risk.limits import open_alerts  # noqa: E402
from bifrost.strategy.api import Param, Strategy  # noqa: E402
from bifrost.ui.cockpit import snapshot  # noqa: E402

BREAKOUT_DAY = dt.date(2013, 10, 9)


class Breakout(Strategy):
    "All in when the close reaches the rolling `window`-bar high of closes, flat otherwise."
    bar_size = "1min"
    window = Param(20, 2, 500)

    @property
    def warmup(self) -> int:
        return self.window

    def targets(self, panel):
        return (panel.close >= panel.close.rolling(self.window).max()).astype(float)


def _breakout(store, account="acct"):
    clock = SimulatedClock(T0)
    v = register(store, Breakout(), clock, name="breakout")
    promote(store, "breakout", v, clock, "paper")
    save_limits(store, account, Limits(max_daily_loss=Decimal("0.05")), T0, T0, "paper account", AuditTrail(store))
    return v


def test_session_when_orders_fill_partially_then_oms_ledger_and_broker_agree(spy):
    "SPY 2013-10-09, pre-market minutes thinner than the order: partial fills, each booked once, the rest never resent."
    _breakout(spy)
    s = trade_session(spy, "acct", BREAKOUT_DAY, strategy="breakout", symbols=["SPY"], extended_hours=True,
                      progress=False)
    assert s.status == "done"
    orders = spy.query("SELECT client_order_id, side, quantity, status, filled_quantity FROM orders")
    fills = spy.query("SELECT client_order_id, side, quantity FROM order_fills")
    per_order = fills.groupby("client_order_id").quantity.agg(lambda q: sum(Decimal(x) for x in q))
    assert (fills.client_order_id.value_counts() > 1).any(), "the day should fill some order in parts"
    assert set(orders.status) <= {"filled", "cancelled"}, "nothing is left working or partially filled"
    for r in orders.itertuples():
        assert Decimal(r.filled_quantity) == per_order.get(r.client_order_id, Decimal(0)) <= Decimal(r.quantity)
    signed = sum(Decimal(q) * (1 if side == "buy" else -1) for side, q in zip(fills.side, fills.quantity))
    book = spy.query("SELECT side, quantity FROM ledger_transactions WHERE portfolio = 'acct' AND kind = 'fill'")
    assert sum(Decimal(q) * (1 if side == "buy" else -1) for side, q in zip(book.side, book.quantity)) == signed
    assert len(book) == len(fills)  # every fill in the ledger exactly once
    assert spy.scalar("SELECT count(*) FROM reconciliation_breaks") == 0


class _Skims(PaperBroker):
    "A broker that takes a cent nobody told the ledger about, once, at noon."
    def on_bar(self, bar):
        if bar.ts.hour == 16 and bar.ts.minute == 0:
            self._cash -= Decimal("0.01")
        return super().on_bar(bar)


def test_session_when_ledger_breaks_then_recorded_alerted_audited_and_shown_in_the_cockpit(spy):
    _breakout(spy)
    clock = SimulatedClock(dt.datetime(2013, 10, 9, 8, tzinfo=dt.timezone.utc))
    broker = _Skims(clock, cash=Decimal(100_000), participation=None, extended_hours=True)
    with pytest.raises(StrategyError, match="breaks with paper"):
        trade_session(spy, "acct", BREAKOUT_DAY, strategy="breakout", symbols=["SPY"], clock=clock, broker=broker,
                      progress=False)
    row = spy.query("SELECT status, summary FROM trading_sessions")
    assert row.status.iat[0] == "failed" and "breaks with paper" in json.loads(row.summary.iat[0])["error"]
    breaks = spy.query("SELECT txn_id, kind, item, ledger, broker, difference FROM reconciliation_breaks")
    assert breaks.to_dict("records") == [{"txn_id": "session 2013-10-09", "kind": "cash", "item": "USD",
                                          "ledger": breaks.ledger.iat[0], "broker": breaks.broker.iat[0],
                                          "difference": "0.01"}]
    alerts = open_alerts(spy, "acct")
    assert alerts.kind.tolist() == ["reconciliation_break"] and alerts.severity.iat[0] == "critical"
    trail = AuditTrail(spy)
    assert trail.records(kind="reconcile.break").subject.tolist() == ["cash:USD"]
    assert "reconciliation_break" in trail.records(kind="risk.breach").subject.tolist()
    assert trail.verify().ok
    shot = snapshot(spy, "acct")
    assert shot.sessions.status.tolist() == ["failed"] and "breaks with paper" in shot.sessions.error.iat[0]
    assert shot.breaks.kind.tolist() == ["cash"] and shot.alerts.kind.tolist() == ["reconciliation_break"]


# -- issue 15: sessions refused up front, before anything is recorded; regular hours unless asked ---------------------
def _nothing_recorded(store):
    assert store.scalar("SELECT count(*) FROM trading_sessions") == 0
    assert store.scalar("SELECT count(*) FROM portfolios") == 0 and store.scalar("SELECT count(*) FROM orders") == 0


def test_session_when_account_has_no_limits_then_refused_up_front_and_traded_once_fixed(spy):
    clock = SimulatedClock(T0)
    promote(spy, "mr", register(spy, MeanReversion(window=20, entry=1.5), clock, name="mr"), clock, "paper")
    with pytest.raises(StrategyError, match="account paper1 has no risk limits") as err:
        trade_session(spy, "paper1", DAYS[0], strategy="mr", symbols=["SPY"], costs=EXACT, progress=False)
    assert "bifrost risk limits paper1 --set" in err.value.hint
    _nothing_recorded(spy)
    save_limits(spy, "paper1", Limits(max_daily_loss=Decimal("0.05")), T0, T0, "fixed", AuditTrail(spy))
    s = trade_session(spy, "paper1", DAYS[0], strategy="mr", symbols=["SPY"], costs=EXACT, progress=False)
    assert s.status == "done" and s.refused == 0 and s.fills > 0


def test_session_when_symbol_unknown_or_bar_size_not_the_strategys_then_refused_and_no_account_created(spy):
    _setup(spy)
    with pytest.raises(BifrostError, match="no 1min bars (of|for) \\['NOPE'\\]"):
        trade_session(spy, "acct", DAYS[0], strategy="mr", symbols=["NOPE"], costs=EXACT, progress=False)
    with pytest.raises(StrategyError, match="was built for 1min bars, not 1d") as err:
        trade_session(spy, "acct", DAYS[0], strategy="mr", symbols=["SPY"], bar_size="1d", progress=False)
    assert "--bar-size" in err.value.hint
    _nothing_recorded(spy)


def test_session_when_before_the_ledgers_last_entry_then_refused_up_front_and_nothing_sent(spy):
    "An account funded today cannot replay 2013: its fills could not be booked, so no order goes out (a user found the orders sent and every fill refused)."
    from bifrost.portfolio.ledger import Portfolio
    _setup(spy)
    with spy.transaction():
        Portfolio.open(spy, "acct", opened_at=T0 + dt.timedelta(days=30)).deposit("100000", ts=T0 + dt.timedelta(days=30))
    with pytest.raises(StrategyError, match="ledger holds entries up to 2013-10-31 00:00 UTC, after session 2013-10-04") as err:
        trade_session(spy, "acct", DAYS[0], strategy="mr", symbols=["SPY"], costs=EXACT, progress=False)
    assert "bifrost portfolio open NAME --deposit 100000 --as-of 2013-10-04" in err.value.hint
    assert spy.scalar("SELECT count(*) FROM orders") == 0 and spy.scalar("SELECT count(*) FROM trading_sessions") == 0


class StoppedReversion(MeanReversion):
    "Mean reversion with a 2% stop: the engine simulates the stop, sessions do not place it yet."
    stop_loss = 0.02


def test_session_when_strategy_has_exit_rules_then_refused_up_front(spy):
    clock = SimulatedClock(T0)
    promote(spy, "stopped", register(spy, StoppedReversion(window=20, entry=1.5), clock, name="stopped"), clock, "paper")
    save_limits(spy, "acct", Limits(max_daily_loss=Decimal("0.05")), T0, T0, "paper account", AuditTrail(spy))
    with pytest.raises(StrategyError, match="has exit rules .* sessions do not place them yet"):
        trade_session(spy, "acct", DAYS[0], strategy="stopped", symbols=["SPY"], costs=EXACT, progress=False)
    _nothing_recorded(spy)


def test_replay_when_not_asked_then_regular_hours_only(spy):
    _setup(spy)
    trade_session(spy, "acct", DAYS[0], strategy="mr", symbols=["SPY"], costs=EXACT, progress=False)
    ts = pd.to_datetime(spy.query("SELECT ts FROM order_fills").ts, utc=True).dt.tz_convert("America/New_York")
    assert len(ts) and ts.min().time() >= dt.time(9, 30) and ts.max().time() <= dt.time(16, 0)  # the close: last
    assert json.loads(spy.scalar("SELECT summary FROM trading_sessions"))["bar_size"] == "1min"


# -- issue 15: a daily strategy trades at its own cadence: decided after the close, filled at the next open ------------
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from bifrost.core import TradingCalendar  # noqa: E402
from bifrost.strategy.api import Panel, SmaCross  # noqa: E402
from bifrost.strategy.session import traded_fills  # noqa: E402
from bifrost.strategy.vector import run_vectorized  # noqa: E402

DAILY = SmaCross(fast=4, slow=5)  # on SPY: long at the open of 2013-10-07, out on the 8th, long again on the 14th
DAILY_DAYS = [d.date() for d in TradingCalendar("XNYS").sessions(dt.date(2013, 10, 7), dt.date(2013, 10, 15))]


@pytest.fixture
def spy_daily(spy_daily_file, tmp_path):
    "SPY's shipped daily bars (1998-2021), the daily SmaCross registered and promoted, limits for `acct`."
    shutil.copy(spy_daily_file, tmp_path / "d.duckdb")
    s = connect(f"duckdb:///{tmp_path}/d.duckdb")
    clock = SimulatedClock(T0)
    promote(s, "sma", register(s, DAILY, clock, name="sma"), clock, "paper")
    since = dt.datetime(1998, 1, 1, tzinfo=dt.timezone.utc)
    save_limits(s, "acct", Limits(max_daily_loss=Decimal("0.05")), since, T0, "paper account", AuditTrail(s))
    return s


def test_daily_sessions_when_traded_then_fills_at_each_next_open_date_for_date_with_the_backtest(spy_daily):
    out = [trade_session(spy_daily, "acct", DAILY_DAYS[0], strategy="sma", symbols=["SPY"], costs=EXACT,
                         progress=False)]
    out += [trade_session(spy_daily, "acct", d, costs=EXACT, progress=False) for d in DAILY_DAYS[1:]]
    assert [s.status for s in out] == ["done"] * len(DAILY_DAYS) and {s.fills for s in out} == {0, 1}
    infos = [json.loads(x) for x in spy_daily.query("SELECT summary FROM trading_sessions ORDER BY session").summary]
    assert {i["bar_size"] for i in infos} == {"1d"} and len({i["history_from"] for i in infos}) == 1
    # the backtest of the same bars: the sessions' history (the strategy's warmup) through the last session
    panel = Panel.from_store(spy_daily, ["SPY"], "1d", infos[0]["history_from"], DAILY_DAYS[-1])
    assert len(panel) == DAILY.warmup + len(DAILY_DAYS)
    bt = run_vectorized(DAILY, panel, cash=100_000.0, costs=EXACT)
    traded = traded_fills(spy_daily, "acct", "2013-10-01", "2013-10-20")
    ny = traded.ts.dt.tz_convert("America/New_York")
    assert (ny.dt.time == dt.time(9, 30)).all()  # every fill at a session's open
    assert list(zip(ny.dt.date, traded.shares, traded.price.map(float), traded.commission.map(float))) == list(
        zip(bt.trades.ts.dt.date, bt.trades.shares, bt.trades.price, bt.trades.commission))
    assert [d for d, s in zip(bt.trades.ts.dt.date, bt.trades.shares)] == [dt.date(2013, 10, d) for d in (7, 8, 14)]
    for d in DAILY_DAYS:
        assert parity_report(spy_daily, "acct", d).empty
    # decided after each close, sent market-on-open; the ledger ends where the backtest ends
    assert set(spy_daily.query("SELECT time_in_force FROM orders").time_in_force) == {"opg"}
    assert abs(float(Decimal(infos[-1]["start_cash"])) - bt.cash.iloc[-2]) < 1e-6 and bt.positions.SPY.iloc[-1] == 590
    assert spy_daily.scalar("SELECT count(*) FROM reconciliation_breaks") == 0 and AuditTrail(spy_daily).verify().ok


def test_daily_session_when_history_too_short_or_day_not_stored_then_refused_up_front(spy_daily):
    with pytest.raises(StrategyError, match="decides on 5 1d bars .*; 1 of \\['SPY'\\] are stored before 1998-01-05"):
        trade_session(spy_daily, "acct", dt.date(1998, 1, 5), strategy="sma", symbols=["SPY"], progress=False)
    with pytest.raises(StrategyError, match="no 1d bars of \\['SPY'\\] stored for 2021-04-01") as err:
        trade_session(spy_daily, "acct", dt.date(2021, 4, 1), strategy="sma", symbols=["SPY"], progress=False)
    assert "after the day's close" in err.value.hint
    _nothing_recorded(spy_daily)


def test_trade_pipeline_when_daily_then_one_session_through_papermill_in_parity(spy_daily, tmp_path):
    url = spy_daily.url
    spy_daily.close()
    env = {**os.environ, "BIFROST_DB_URL": url, "BIFROST_HOME": str(tmp_path)}
    run = subprocess.run([str(Path(sys.executable).with_name("bifrost")), "run", "trade", "-p", "store=settings",
                          "-p", "account=acct", "-p", "session=2013-10-07", "-p", "strategy=sma", "-p", "symbols=[SPY]"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    s = connect(url)
    row = s.query("SELECT status, run_id, summary FROM trading_sessions")
    assert row.status.tolist() == ["done"] and row.run_id.iat[0]
    assert json.loads(row.summary.iat[0])["bar_size"] == "1d"
    fills = traded_fills(s, "acct", "2013-10-07", "2013-10-08")
    assert fills.shares.tolist() == [597] and parity_report(s, "acct", dt.date(2013, 10, 7)).empty


# -- issue 16: each session's audit records are anchored outside the store when it ends -----------------------------
from bifrost.audit import AnchorLog  # noqa: E402


class _DiesAtOnce(PaperBroker):
    def on_bar(self, bar):
        raise RuntimeError("feed lost")


def _head_anchored(store):
    anchors, bad = AnchorLog.for_store(store).read()
    head = store.query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").iloc[0]
    return not bad and anchors and (anchors[-1].seq, anchors[-1].hash) == (int(head.seq), head.hash)


def test_session_when_done_or_failed_then_its_audit_head_is_anchored_outside_the_store(spy_daily):
    trade_session(spy_daily, "acct", DAILY_DAYS[0], strategy="sma", symbols=["SPY"], costs=EXACT, progress=False)
    assert spy_daily.scalar("SELECT count(*) FROM audit_log WHERE kind LIKE 'order.%'") > 0
    assert _head_anchored(spy_daily)
    clock = SimulatedClock(dt.datetime(2013, 10, 8, 8, tzinfo=dt.timezone.utc))
    dies = _DiesAtOnce(clock, cash=Decimal(100_000), participation=None, extended_hours=True)
    with pytest.raises(RuntimeError, match="feed lost"):
        trade_session(spy_daily, "acct", DAILY_DAYS[1], costs=EXACT, clock=clock, broker=dies, progress=False)
    assert spy_daily.scalar("SELECT status FROM trading_sessions WHERE session = ?", [DAILY_DAYS[1]]) == "failed"
    assert _head_anchored(spy_daily) and AuditTrail(spy_daily).verify().ok


def test_trade_cli_when_daily_then_own_bar_size_by_default_and_refusals_are_one_paragraph(spy_daily, tmp_path):
    url = spy_daily.url
    spy_daily.close()
    env = {**os.environ, "BIFROST_DB_URL": url, "BIFROST_HOME": str(tmp_path)}
    cli = lambda *a: subprocess.run([str(Path(sys.executable).with_name("bifrost")), "trade", "acct", *a], env=env,
                                    capture_output=True, text=True, timeout=300)
    first = ("--strategy", "sma", "--symbols", "SPY")
    refusals = [(cli("--session", "2013-10-07", *first, "--bar-size", "1min"), 1, "was built for 1d bars, not 1min",
                 "leave --bar-size out"),
                (cli("--session", "1998-01-05", *first), 1, "decides on 5 1d bars", "bifrost ingest"),
                (cli("--session", "2013-10-08"), 1, "no earlier session", "--strategy NAME --symbols"),
                (cli("--session", "2013-10-07", "--strategy", "sma", "--symbols", "NOPE"), 2, "NOPE", "--help")]
    for run, code, message, hint in refusals:
        err = run.stderr.strip()
        assert run.returncode == code and "Traceback" not in run.stdout + err, err
        assert err.startswith("error:") and message in err and hint in err and "\n\n" not in err, err
    s = connect(url)
    assert s.scalar("SELECT count(*) FROM trading_sessions") == 0 and s.scalar("SELECT count(*) FROM orders") == 0
    s.close()
    done = cli("--session", "2013-10-07", *first, "--extended-hours")
    assert done.returncode == 0 and "1 orders, 1 fills" in done.stdout and done.stdout.rstrip().endswith("done"), \
        done.stdout + done.stderr
    info = json.loads(connect(url).scalar("SELECT summary FROM trading_sessions"))
    assert info["bar_size"] == "1d" and info["extended_hours"] is True
