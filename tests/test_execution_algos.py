"""TWAP and VWAP parent orders: exact schedules, a VWAP profile from real stored bars, and parents worked through
the OMS against the paper broker on real SPY minute bars — catch-up, cancellation, gate rejections, the kill
switch, zero volume, a restart — with the ledger equal to the fills, and benchmarks that agree with TCA."""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bifrost.analytics.tca import tca_orders
from bifrost.audit import AuditTrail
from bifrost.compliance.gate import Gate
from bifrost.core import AccountState, Check, Decision, Side, SimulatedClock, TradingCalendar, Verdict
from bifrost.data.ingest import ingest
from bifrost.data.sources import SAMPLE, SampleSource
from bifrost.execution.algos import (
    Algo,
    AlgoError,
    AlgoExecutor,
    OnReject,
    ParentOrder,
    ParentStatus,
    apportion,
    benchmark_prices,
    profile_from_volume,
    replay,
    session_bounds,
    slippage_bps,
    twap_schedule,
    volume_profile,
    vwap_schedule,
)
from bifrost.execution.oms import OMS, set_kill_switch
from bifrost.execution.paper import Commission, PaperBroker, Slippage
from bifrost.portfolio.ledger import Portfolio
from bifrost.risk.limits import Limits
from bifrost.store import connect

CAL = TradingCalendar("XNYS")
OPEN_1011 = datetime(2013, 10, 11, 13, 30, tzinfo=UTC)   # Friday 2013-10-11 09:30 New York
OPEN_1010 = datetime(2013, 10, 10, 13, 30, tzinfo=UTC)


@lru_cache(maxsize=1)
def _spy_minutes() -> pd.DataFrame:
    f = next(f for f in SAMPLE if f.primary and f.spec.ticker == "SPY" and f.spec.bar_size == "1min")
    return SampleSource((f,)).fetch(f.spec).bars[["ts", "open", "high", "low", "close", "volume"]]


def spy_day(day: str) -> pd.DataFrame:
    "Real SPY one-minute bars of one New York day (pre- and post-market included)."
    b = _spy_minutes()
    return b[b.ts.dt.tz_convert("America/New_York").dt.date.astype(str) == day].reset_index(drop=True)


@pytest.fixture(scope="module")
def spy_store(tmp_path_factory):
    "A DuckDB store holding the shipped SPY one-minute bars."
    s = connect(f"duckdb:///{tmp_path_factory.mktemp('algos')}/spy.duckdb")
    ingest(s, SampleSource(tuple(f for f in SAMPLE if f.primary and f.spec.ticker == "SPY"
                                 and f.spec.bar_size == "1min")), progress=False)
    yield s
    s.close()


class Desk:
    "A funded account with its ledger, a paper broker and an OMS on `store`, at `at`."

    def __init__(self, store, at: datetime, gate=None, account: str = "algo", participation="0.1"):
        store.execute("INSERT INTO instruments (symbol, name, asset_class, currency, exchange, tick_size, lot_size) "
                      "VALUES ('SPY', 'SPDR S&P 500', 'etf', 'USD', 'XNYS', 0.01, 1) ON CONFLICT DO NOTHING")
        self.store, self.clock = store, SimulatedClock(at)
        self.book = Portfolio.open(store, account, clock=self.clock)
        self.book.deposit(Decimal(5_000_000), ts=at)
        self.broker = PaperBroker(self.clock, cash=5_000_000, commission=Commission(per_share="0.005", minimum=1),
                                  slippage=Slippage(1), participation=participation, calendar=CAL)
        self.marks = {"SPY": Decimal("168.00")}
        self.gate = gate or Gate(Limits(max_order_notional=Decimal(5_000_000)))
        self.oms = self.new_oms()

    def state(self) -> AccountState:
        b = self.book.book
        return AccountState(self.book.name, self.clock.now(), b.cash()["USD"], b.positions(), self.marks)

    def new_oms(self) -> OMS:
        return OMS(self.store, self.broker, self.gate, self.state, self.book, self.clock, AuditTrail(self.store),
                   calendar=CAL, sleep=lambda s: None)

    def mark(self, ex: AlgoExecutor) -> None:
        if ex.last_price is not None:
            self.marks["SPY"] = ex.last_price

    def held(self) -> Decimal:
        return self.book.book.positions().get("SPY", Decimal(0))


def parent(pid="p", qty=3000, start=OPEN_1010, minutes=360, every=30, **kw) -> ParentOrder:
    return ParentOrder(pid, "SPY", Side.BUY, Decimal(qty), start, start + timedelta(minutes=minutes),
                       timedelta(minutes=every), **kw)


def assert_consistent(desk: Desk, ex: AlgoExecutor) -> None:
    "Nothing open, the ledger and the broker hold exactly the fills, the parent never over-filled."
    pr = ex.progress()
    assert pr.open_child is None and desk.oms.status()["open"] == 0
    assert desk.held() == pr.filled == desk.broker.positions().get("SPY", Decimal(0))
    assert pr.filled <= ex.parent.quantity
    assert sum((f.quantity for f in ex.fills()), Decimal(0)) == pr.filled


# -- schedules --------------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=80), st.integers(0, 5000),
       st.sampled_from([1, 10, 100]))
def test_apportion_sums_exactly_in_whole_lots(weights, lots, lot):
    if sum(weights) == 0:
        with pytest.raises(AlgoError, match="positive sum"):
            apportion(weights, Decimal(lots * lot), lot)
        return
    q = apportion(weights, Decimal(lots * lot), lot)
    assert sum(q) == lots * lot and len(q) == len(weights)
    assert all(x >= 0 and x % lot == 0 for x in q)
    assert all(x == 0 for x, w in zip(q, weights) if w == 0)  # no volume expected: nothing scheduled


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60), st.integers(1, 100_000))
def test_twap_slices_differ_by_at_most_one_lot(n, qty):
    p = ParentOrder("t", "SPY", "buy", Decimal(qty), OPEN_1010, OPEN_1010 + n * timedelta(minutes=5))
    q = [s.quantity for s in twap_schedule(p, CAL)]
    assert len(q) == n and sum(q) == qty and max(q) - min(q) <= 1


def test_lot_sizes_and_refusals():
    p = parent(qty=1000, minutes=45, every=15)
    assert [s.quantity for s in twap_schedule(p, CAL, lot=100)] == [300, 400, 300]
    with pytest.raises(AlgoError, match="whole number of lots"):
        twap_schedule(replace(p, quantity=Decimal(1050)), CAL, lot=100)
    with pytest.raises(AlgoError, match="more than one session"):
        twap_schedule(parent(minutes=2 * 24 * 60), CAL)
    with pytest.raises(AlgoError, match="not a XNYS session"):
        twap_schedule(parent(start=datetime(2013, 10, 12, 14, tzinfo=UTC)), CAL)  # a Saturday
    with pytest.raises(AlgoError, match="outside the session"):
        twap_schedule(parent(start=OPEN_1010 + timedelta(hours=7), minutes=60), CAL)
    with pytest.raises(TypeError, match="float"):
        ParentOrder("x", "SPY", "buy", 1.5, OPEN_1010, OPEN_1010 + timedelta(hours=1))


def test_window_is_clipped_to_the_session():
    pre = parent(start=OPEN_1010 - timedelta(hours=2), minutes=3 * 60, every=30)  # 07:30-10:30 New York
    s = twap_schedule(pre, CAL)
    assert s[0].start == OPEN_1010 and s[-1].end == OPEN_1010 + timedelta(hours=1) and len(s) == 2


def test_vwap_profile_from_real_stored_bars(spy_store):
    prof = volume_profile(spy_store, "SPY", date(2013, 10, 11), sessions=5, calendar=CAL)
    assert prof.attrs["sessions"] == [date(2013, 10, d) for d in (4, 7, 8, 9, 10)]
    assert len(prof) == 390 and abs(prof.sum() - 1) < 1e-12 and (prof >= 0).all()
    half_hours = prof.groupby(prof.index // timedelta(minutes=30)).sum()
    midday = half_hours.iloc[4:9].max()   # 11:30-14:00
    assert half_hours.iloc[0] > midday and half_hours.iloc[-1] > midday
    # each session weighs the same: the profile is the mean of the per-session shares, checked by hand for one bar
    bars = _spy_minutes()
    shares = []
    for d in prof.attrs["sessions"]:
        o, c = CAL.schedule(d, d).iloc[0]
        day = bars[(bars.ts >= o) & (bars.ts < c)]
        shares.append(day[day.ts == o].volume.sum() / day.volume.sum())
    assert prof.iloc[0] == pytest.approx(np.mean(shares), rel=1e-12)
    fewer = volume_profile(spy_store, "SPY", date(2013, 10, 11), sessions=2, calendar=CAL)
    assert fewer.attrs["sessions"] == [date(2013, 10, 9), date(2013, 10, 10)]
    with pytest.raises(AlgoError, match="no stored"):
        volume_profile(spy_store, "SPY", date(2013, 1, 10), calendar=CAL)


def test_profile_from_single_prints_weighs_each_session_the_same():
    "Prints by hand on two New York days (and one on a half-day, one pre-market): per-session shares, then their mean."
    ny = lambda d, hm: pd.Timestamp(f"2013-10-{d} {hm}", tz="America/New_York")
    ts = [ny(10, "09:30:10"), ny(10, "09:30:50"), ny(10, "15:59:59"), ny(11, "09:31:00"), ny(11, "08:00"),
          pd.Timestamp("2013-11-29 10:00", tz="America/New_York")]
    prof = profile_from_volume(ts, [100, 100, 200, 50, 10_000, 10_000], CAL, "1min")
    assert prof.attrs["sessions"] == [date(2013, 10, 10), date(2013, 10, 11)]  # the half-day and pre-market left out
    assert len(prof) == 390 and prof.sum() == pytest.approx(1, abs=1e-12)
    # 10-10: half at 09:30, half at 15:59; 10-11: all at 09:31 -> means 0.25, 0.5, 0.25
    assert prof[prof > 0].to_dict() == {timedelta(0): 0.25, timedelta(minutes=1): 0.5, timedelta(minutes=389): 0.25}
    assert profile_from_volume(ts, [100, 100, 200, 50, 0, 0], CAL, "1min", sessions=1).attrs["sessions"] == \
        [date(2013, 10, 11)]
    with pytest.raises(AlgoError, match="no volume inside"):
        profile_from_volume(ts[4:5], [1], CAL)


def test_a_futures_session_opens_the_evening_before():
    "CME's session of 2023-12-26 opens at 17:00 Chicago on Christmas Day: a window across midnight there is one session."
    cme = TradingCalendar("CMES")
    open_, close = datetime(2023, 12, 25, 23, tzinfo=UTC), datetime(2023, 12, 26, 23, tzinfo=UTC)
    assert session_bounds(datetime(2023, 12, 25, 23, 30, tzinfo=UTC), cme) == (open_, close)
    assert session_bounds(datetime(2023, 12, 26, 12, tzinfo=UTC), cme) == (open_, close)
    night = ParentOrder("es", "ESH4", "buy", Decimal(60), open_, open_ + timedelta(hours=8), timedelta(hours=1))
    assert [s.quantity for s in twap_schedule(night, cme)] == [8, 7] * 4  # 7.5 an hour, cumulative targets rounded
    with pytest.raises(AlgoError, match="more than one session"):
        twap_schedule(replace(night, end=open_ + timedelta(hours=30)), cme)


def test_vwap_schedule_on_a_half_day(spy_store):
    "Friday 2013-11-29 closes at 13:00: the profile (October's full days) is cut there and renormalised."
    prof = volume_profile(spy_store, "SPY", date(2013, 11, 29), sessions=5, calendar=CAL, look_back=60)
    assert prof.attrs["sessions"] == [date(2013, 10, d) for d in (7, 8, 9, 10, 11)]  # the five most recent with data
    half = ParentOrder("h", "SPY", "sell", Decimal(5000), datetime(2013, 11, 29, 14, 30, tzinfo=UTC),
                       datetime(2013, 11, 29, 21, tzinfo=UTC), timedelta(minutes=30), Algo.VWAP)
    s = vwap_schedule(half, prof, CAL)
    assert len(s) == 7 and s[-1].end == datetime(2013, 11, 29, 18, tzinfo=UTC)
    assert sum(x.quantity for x in s) == 5000 and s[-1].cumulative == 5000
    morning = prof[prof.index < timedelta(hours=3, minutes=30)]
    first = float(morning[morning.index < timedelta(minutes=30)].sum() / morning.sum())
    assert abs(float(s[0].quantity) / 5000 - first) <= 1 / 5000
    twap = twap_schedule(replace(half, algo=Algo.TWAP), CAL)
    assert [x.quantity for x in twap] == [714, 715, 714, 714, 714, 715, 714]


# -- working parents ------------------------------------------------------------------------------------

@pytest.mark.parametrize("algo", [Algo.TWAP, Algo.VWAP])
def test_a_real_day_ends_with_the_ledger_equal_to_the_fills(spy_store, algo):
    desk = Desk(spy_store, OPEN_1011 - timedelta(minutes=30), account=f"day-{algo.value}")
    p = parent(f"day-{algo.value}", 10_000, OPEN_1011, minutes=390, every=15, algo=algo)
    prof = volume_profile(spy_store, "SPY", date(2013, 10, 11), sessions=5, calendar=CAL)
    slices = twap_schedule(p, CAL) if algo is Algo.TWAP else vwap_schedule(p, prof, CAL)
    ex = AlgoExecutor(desk.oms, p, slices)
    pr = replay(ex, desk.broker, spy_day("2013-10-11"), desk.clock, on_step=desk.mark)
    assert pr.status is ParentStatus.DONE and pr.filled == 10_000 and pr.pct_complete == 100
    assert_consistent(desk, ex)
    sva = ex.schedule_vs_actual()
    assert (sva.filled == sva.scheduled).all()  # 10% of SPY's volume is plenty: every slice filled on time
    fills = ex.fills()
    assert pr.avg_price == sum(f.quantity * f.price for f in fills) / 10_000
    audit = AuditTrail(spy_store).records(kind="algo.parent")
    assert audit[audit.subject == p.parent_id].payload.map(lambda x: json.loads(x)["event"]).tolist() == ["created", "done"]


def test_replay_is_deterministic(tmp_path):
    runs = []
    for k in range(2):
        desk = Desk(connect(f"duckdb:///{tmp_path}/r{k}.duckdb"), OPEN_1010 - timedelta(minutes=5))
        p = parent("det", 2000, minutes=120, every=10)
        ex = AlgoExecutor(desk.oms, p, twap_schedule(p, CAL))
        replay(ex, desk.broker, spy_day("2013-10-10"), desk.clock, on_step=desk.mark)
        runs.append([(f.fill_id, f.ts, f.quantity, f.price, f.commission) for f in ex.fills()])
    assert runs[0] == runs[1] and len(runs[0]) >= 12


def test_cancel_midway_leaves_nothing_open(store):
    desk = Desk(store, OPEN_1010, participation="0.00005")  # a child takes a quarter of an hour to fill
    p = parent("c", 3000)
    ex = AlgoExecutor(desk.oms, p, twap_schedule(p, CAL))
    bars = spy_day("2013-10-10")
    replay(ex, desk.broker, bars[bars.ts < OPEN_1010 + timedelta(minutes=95)], desk.clock)
    assert ex.open_child() is not None  # the 11:00 child is working
    pr = ex.cancel("desk says stop")
    assert pr.status is ParentStatus.CANCELLED and pr.reason == "desk says stop"
    assert 0 < pr.filled < 1000 and desk.oms.order("c-0003").status.value == "cancelled"
    assert_consistent(desk, ex)
    sent = len(ex.children)
    pr = replay(ex, desk.broker, bars[bars.ts >= OPEN_1010 + timedelta(minutes=95)], desk.clock)
    assert len(ex.children) == sent and pr.filled == desk.held()  # a cancelled parent sends nothing more
    events = AuditTrail(store).records(kind="algo.parent").payload.map(lambda x: json.loads(x)["event"]).tolist()
    assert events == ["created", "cancelled"]


def test_a_child_the_gate_blocks_stops_the_parent(store):
    "A max order notional smaller than one slice: the first child is blocked, audited, and the parent stops."
    desk = Desk(store, OPEN_1010, gate=Gate(Limits(max_order_notional=Decimal(10_000))))
    p = parent("g", 3000)  # 250 shares a slice, ~$42,000
    ex = AlgoExecutor(desk.oms, p, twap_schedule(p, CAL))
    pr = replay(ex, desk.broker, spy_day("2013-10-10"), desk.clock)
    assert pr.status is ParentStatus.STOPPED and "max_order_notional" in pr.reason
    assert pr.filled == 0 and len(ex.children) == 1 and ex.rejections[0]["quantity"] == 250
    assert_consistent(desk, ex)
    decisions = AuditTrail(store).records(kind="order.decision")
    assert decisions.payload.map(lambda x: json.loads(x)["approved"]).tolist() == [False]


def test_continue_policy_rolls_blocked_quantity_forward(store):
    "A gate that blocks between 10:00 and 11:00: those children are recorded, the rest catches up."
    def gate(order, state):
        blocked = OPEN_1010 + timedelta(minutes=30) <= state.as_of < OPEN_1010 + timedelta(minutes=90)
        return Decision(order, (Check("compliance", "quiet_period", Verdict.BLOCK if blocked else Verdict.PASS,
                                      "in the quiet period" if blocked else ""),))
    desk = Desk(store, OPEN_1010, gate=gate)
    p = parent("k", 3000, on_reject=OnReject.CONTINUE)
    ex = AlgoExecutor(desk.oms, p, twap_schedule(p, CAL))
    pr = replay(ex, desk.broker, spy_day("2013-10-10"), desk.clock, on_step=desk.mark)
    assert [r["slice"] for r in ex.rejections] == [1, 2] and [r["quantity"] for r in ex.rejections] == [250, 500]
    assert pr.status is ParentStatus.DONE and pr.filled == 3000
    sva = ex.schedule_vs_actual()
    assert sva.loc[3, "sent"] == 750  # the blocked 500 caught up with slice 3's own 250
    assert_consistent(desk, ex)


def test_kill_switch_mid_execution_stops_the_parent(store):
    desk = Desk(store, OPEN_1010, participation="0.00005")
    p = parent("ks", 3000)
    ex = AlgoExecutor(desk.oms, p, twap_schedule(p, CAL))
    bars = spy_day("2013-10-10")
    replay(ex, desk.broker, bars[bars.ts < OPEN_1010 + timedelta(minutes=61)], desk.clock)
    assert ex.open_child() is not None
    set_kill_switch(store, True, "runaway", desk.clock.now(), AuditTrail(store))
    pr = replay(ex, desk.broker, bars[bars.ts >= OPEN_1010 + timedelta(minutes=61)], desk.clock)
    assert pr.status is ParentStatus.STOPPED and pr.reason == "kill switch: runaway"
    assert len(ex.children) == 3 and 0 < pr.filled < 750
    assert desk.oms.order("ks-0002").status.value == "cancelled"
    assert_consistent(desk, ex)


def test_catch_up_after_partial_fills_never_exceeds_the_parent(store):
    "The paper broker takes 0.01% of a bar's volume: children fill partly, later children carry the rest."
    desk = Desk(store, OPEN_1010, participation="0.0001")
    p = parent("cu", 20_000, minutes=120, every=15)
    ex = AlgoExecutor(desk.oms, p, twap_schedule(p, CAL))
    worst = []

    def check(e: AlgoExecutor) -> None:
        live = e.open_child()
        worst.append(e.filled + (live.remaining if live else 0))

    pr = replay(ex, desk.broker, spy_day("2013-10-10"), desk.clock, on_step=check)
    assert max(worst) <= 20_000
    sva = ex.schedule_vs_actual()
    assert (sva.filled < sva.sent).any()                               # partial fills happened...
    assert (sva.sent.iloc[1:] > sva.scheduled.iloc[1:]).any()          # ...and were carried into later children
    assert (sva.sent <= 20_000 - sva.cum_filled.shift(fill_value=Decimal(0))).all()
    assert pr.status in (ParentStatus.DONE, ParentStatus.EXPIRED)
    assert_consistent(desk, ex)
    ids = [f.client_order_id for f in desk.broker.fills()]
    assert set(ids) <= set(ex.children) and len(set(ex.children)) == len(ex.children)


def test_participation_cap_sizes_children_from_the_last_interval(store):
    desk = Desk(store, OPEN_1010 - timedelta(minutes=30))
    p = parent("pov", 50_000, minutes=60, every=10, participation="0.001")
    ex = AlgoExecutor(desk.oms, p, twap_schedule(p, CAL))
    bars = spy_day("2013-10-10")
    replay(ex, desk.broker, bars, desk.clock)
    for r in ex._records():
        t = r.created_at
        seen = bars[(bars.ts + timedelta(minutes=1) <= t) & (bars.ts + timedelta(minutes=1) > t - p.interval)]
        assert r.quantity <= Decimal(repr(float(seen.volume.sum()))) * p.participation
    assert ex.progress().filled < 50_000 and ex.status is ParentStatus.EXPIRED


def test_zero_volume_bars_fill_nothing_and_are_caught_up(store):
    "No volume from 10:00 to 11:00: nothing fills (and, with a participation cap, nothing is sent) until it returns."
    bars = spy_day("2013-10-10")
    quiet = (bars.ts >= OPEN_1010 + timedelta(minutes=30)) & (bars.ts < OPEN_1010 + timedelta(minutes=90))
    bars.loc[quiet, "volume"] = 0.0
    desk = Desk(store, OPEN_1010)
    p = parent("z", 3000, participation="0.5")
    ex = AlgoExecutor(desk.oms, p, twap_schedule(p, CAL))
    pr = replay(ex, desk.broker, bars, desk.clock, on_step=desk.mark)
    sva = ex.schedule_vs_actual()
    # 10:00: sized on 09:30-10:00's volume, sent, never filled; 10:30 and 11:00: no volume seen, nothing sent
    assert (sva.loc[1, "sent"], sva.loc[1, "filled"], sva.loc[1, "status"]) == (250, 0, "cancelled")
    assert sva.loc[[2, 3], "sent"].tolist() == [0, 0]
    assert sva.loc[4, "sent"] == 1000 - sva.loc[0, "filled"] + 250  # everything due by 11:30 at once
    assert pr.status is ParentStatus.DONE and pr.filled == 3000
    assert_consistent(desk, ex)


def test_a_window_with_no_volume_at_all_expires_unfilled(store):
    bars = spy_day("2013-10-10").assign(volume=0.0)
    desk = Desk(store, OPEN_1010)
    p = parent("nv", 1000, minutes=60, every=15)
    ex = AlgoExecutor(desk.oms, p, twap_schedule(p, CAL))
    pr = replay(ex, desk.broker, bars, desk.clock)
    assert pr.status is ParentStatus.EXPIRED and pr.filled == 0 and "1000 unfilled" in pr.reason
    assert_consistent(desk, ex)


def test_a_restart_finds_its_children_and_sends_nothing_twice(store):
    desk = Desk(store, OPEN_1010)
    p = parent("rs", 3000)
    slices = twap_schedule(p, CAL)
    ex = AlgoExecutor(desk.oms, p, slices)
    bars = spy_day("2013-10-10")
    replay(ex, desk.broker, bars[bars.ts < OPEN_1010 + timedelta(minutes=45)], desk.clock)
    before = list(ex.children)
    desk.oms = desk.new_oms()  # the process restarts: a new OMS and executor over the same store and broker
    desk.oms.recover()
    again = AlgoExecutor(desk.oms, p, slices)
    assert again.children == before and again.status is ParentStatus.WORKING
    pr = replay(again, desk.broker, bars[bars.ts >= OPEN_1010 + timedelta(minutes=45)], desk.clock)
    assert pr.status is ParentStatus.DONE and pr.filled == 3000
    assert len(set(again.children)) == len(again.children) == 12
    assert_consistent(desk, again)


# -- benchmarks ------------------------------------------------------------------------------------------

def test_benchmarks_by_hand():
    bars = pd.DataFrame({"ts": pd.to_datetime(["2013-10-10 13:29", "2013-10-10 13:30", "2013-10-10 13:31"], utc=True),
                         "open": [10.0, 10, 12], "high": [10.0, 12, 13], "low": [10.0, 9, 11],
                         "close": [10.0, 12, 12], "volume": [5.0, 100, 300]})
    b = benchmark_prices(bars, OPEN_1010, OPEN_1010 + timedelta(minutes=2))
    assert b == {"arrival": 10.0, "twap": 11.5, "vwap": pytest.approx((11 * 100 + 12 * 300) / 400)}
    s = slippage_bps(Decimal("12.1"), Side.BUY, b)
    assert s["arrival"] == pytest.approx(2100) and slippage_bps(Decimal("12.1"), "sell", b)["arrival"] == pytest.approx(-2100)


def test_slippage_agrees_with_analytics_tca(spy_store):
    desk = Desk(spy_store, OPEN_1011 - timedelta(minutes=30), account="tca")
    p = parent("tca", 10_000, OPEN_1011, minutes=390, every=15, algo=Algo.VWAP)
    prof = volume_profile(spy_store, "SPY", date(2013, 10, 11), sessions=5, calendar=CAL)
    ex = AlgoExecutor(desk.oms, p, vwap_schedule(p, prof, CAL))
    bars = spy_day("2013-10-11")
    pr = replay(ex, desk.broker, bars, desk.clock, on_step=desk.mark)
    fills = pd.DataFrame([{"fill_id": f.fill_id, "client_order_id": p.parent_id, "symbol": f.symbol,
                           "side": f.side.value, "quantity": f.quantity, "price": f.price, "ts": f.ts,
                           "commission": f.commission} for f in ex.fills()])
    tca = tca_orders(fills, bars.assign(symbol="SPY"), "1min",
                     orders=pd.DataFrame({"client_order_id": [p.parent_id], "decision_ts": [p.start]})).iloc[0]
    # TCA's VWAP spans the bars of the first to the last fill; over the same bars the two agree
    span = benchmark_prices(bars, tca.first_ts, tca.last_ts + timedelta(minutes=1))
    ours = slippage_bps(pr.avg_price, p.side, span)
    window = benchmark_prices(bars, p.start, p.end)
    whole = slippage_bps(pr.avg_price, p.side, window)
    assert tca.avg_price == pytest.approx(float(pr.avg_price), rel=1e-12)
    assert tca.arrival_price == window["arrival"]
    assert whole["arrival"] == pytest.approx(tca.shortfall_bps, abs=1e-9)
    assert ours["vwap"] == pytest.approx(tca.vwap_slippage_bps, abs=1e-9)
    assert abs(whole["vwap"]) < 5


def test_a_parent_cancelled_before_a_restart_stays_cancelled(store):
    desk = Desk(store, OPEN_1010)
    p = parent("rc", 3000)
    slices = twap_schedule(p, CAL)
    ex = AlgoExecutor(desk.oms, p, slices)
    bars = spy_day("2013-10-10")
    replay(ex, desk.broker, bars[bars.ts < OPEN_1010 + timedelta(minutes=45)], desk.clock)
    ex.cancel("end of the trade idea")
    desk.oms = desk.new_oms()
    again = AlgoExecutor(desk.oms, p, slices)
    assert (again.status, again.reason) == (ParentStatus.CANCELLED, "end of the trade idea")
    pr = replay(again, desk.broker, bars[bars.ts >= OPEN_1010 + timedelta(minutes=45)], desk.clock)
    assert pr.filled == 500 and again.children == ["rc-0000", "rc-0001"]
    assert_consistent(desk, again)
