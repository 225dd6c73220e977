"""The cockpit without a browser, on DuckDB and PostgreSQL: the figures are the store's own, the kill switch is
audited with who used it and stops the OMS, a busy DuckDB file gives a clear error (never a silent no-op), and the
server refuses to leave the machine without authentication."""
from __future__ import annotations

import getpass
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from execution_helpers import T0, make_oms, seed

from bifrost.audit import AuditTrail
from bifrost.core import Order, SimulatedClock
from bifrost.core import OrderStatus as S
from bifrost.execution.oms import audit_kill_switch, kill_switch
from bifrost.execution.orders import OrderJournal
from bifrost.execution.paper import PaperBroker
from bifrost.portfolio.ledger import Portfolio
from bifrost.store import connect
from bifrost.ui.cockpit import (
    Cockpit,
    CockpitError,
    figures_html,
    is_loopback,
    sample_account,
    serve_cockpit,
    snapshot,
    take_kill_switch,
)


@pytest.fixture
def demo(store):
    return sample_account(store, "demo", resting_orders=2)


def test_snapshot_is_the_stores(store, demo):
    reader = connect(store.url, read_only=True)
    s = snapshot(reader, demo)
    book = Portfolio.load(store, demo)
    assert s.as_of == datetime(2020, 2, 28, 23, 59, 59, 999999, tzinfo=UTC)  # the day of the last order
    assert s.nav == book.nav(s.as_of) and s.nav == Decimal("924056.00")
    p = book.pnl(end=s.as_of).iloc[0]
    assert s.pnl == p.end_nav - p.start_nav - p.deposits == Decimal(-75_944)
    assert s.cash == book.cash(s.as_of).cash.sum() == Decimal(213_032)
    pos = book.positions(s.as_of)
    assert list(s.positions.quantity) == list(pos.quantity) == [Decimal(2400)]
    assert list(s.positions.market_value) == list(pos.market_value)
    open_ids = {r.client_order_id for r in OrderJournal(store, None).open_orders(demo)}
    assert set(s.open_orders.client_order_id) == open_ids == {"demo-rest-0", "demo-rest-1"}
    assert len(s.fills) == len(OrderJournal(store, None).fills()) == 3
    nav = book.nav_series(end=s.as_of)
    assert list(s.nav_series.nav) == [float(x) for x in nav.nav]
    risk = s.risk.set_index("measure")
    assert risk.at["drawdown", "value"] == "9.85%" and risk.at["drawdown", "status"] == "BREACH"
    assert list(s.alerts.kind) == ["max_drawdown"]
    assert s.kill_switch["on"] is False and s.runs.empty
    html = figures_html(s)
    assert "data-figure='nav'>924,056.00<" in html and "data-figure='open-orders'>2<" in html


def test_pipeline_runs_are_shown(store, demo):
    store.execute("INSERT INTO pipeline_runs (run_id, pipeline, params, status, started_at, host, pid, account) "
                  "VALUES ('r1', 'trade', '{}', 'running', ?, 'h', 1, ?), "
                  "('r2', 'other-account', '{}', 'failed', ?, 'h', 1, 'someone-else')",
                  [T0, demo, T0])
    runs = snapshot(connect(store.url, read_only=True), demo).runs
    assert list(runs.run_id) == ["r1"] and runs.status.iat[0] == "running"


def test_kill_switch_is_audited_and_stops_the_oms(store):
    clock = SimulatedClock(T0)
    book = seed(store)
    oms = make_oms(store, PaperBroker(clock, cash=Decimal(100_000)), book, clock)
    resting = oms.submit(Order("rest-1", "SPY", "buy", Decimal(10), "limit", "gtc", limit_price=Decimal("300.00")))
    assert resting.status is S.ACCEPTED
    state = take_kill_switch(store.url, True, "runaway strategy", "carol", clock.now())
    assert state["on"] and state["reason"] == "runaway strategy (by carol)"
    trail = AuditTrail(store)
    ui = trail.records(kind="ui.action")
    assert len(ui) == 1 and ui.account.iat[0] == "*"
    assert '"user":"carol"' in ui.payload.iat[0].replace(" ", "") and '"on":true' in ui.payload.iat[0].replace(" ", "")
    assert len(trail.records(kind="control.kill_switch")) == 1
    # the OMS refuses new orders and cancels the resting one on its next cycle
    refused = oms.submit(Order("new-1", "SPY", "buy", Decimal(1)))
    assert refused.status is S.REJECTED and "kill" in refused.reason
    oms.sync()
    assert oms.order("rest-1").status is S.CANCELLED
    rows = store.query("SELECT client_order_id, status FROM orders ORDER BY client_order_id")
    assert dict(zip(rows.client_order_id, rows.status)) == {"new-1": "rejected", "rest-1": "cancelled"}
    take_kill_switch(store.url, False, "reviewed", "carol", clock.now())
    assert not kill_switch(store)["on"]
    assert trail.verify().ok


def test_no_reason_writes_nothing(store):
    with pytest.raises(CockpitError, match="NOT set: it needs a reason"):
        take_kill_switch(store.url, True, " ", "dave", T0)
    assert AuditTrail(store).records().empty and not kill_switch(store)["on"]


def test_cockpit_action_takes_the_os_user_and_refreshes(store, demo):
    view = Cockpit(store.url, demo, lock_timeout=2)
    assert view.last.kill_switch["on"] is False
    view.act(True)
    assert view.last.kill_switch["on"] is True
    assert f"Trading STOPPED by {getpass.getuser()}" in view._message.object
    assert "data-figure='kill-switch'>STOPPED<" in view._figures.object
    payload = AuditTrail(store).records(kind="ui.action").payload.iat[0]
    assert getpass.getuser() in payload


HOLD = """import duckdb, sys, time
con = duckdb.connect(sys.argv[1])
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def held_duckdb(tmp_path):
    "A DuckDB store with the demo account, and a way to hold its file from another process."
    url = f"duckdb:///{tmp_path}/held.duckdb"
    sample_account(connect(url), "demo")
    procs = []
    def hold(seconds: float):
        p = subprocess.Popen([sys.executable, "-c", HOLD, url.removeprefix("duckdb:///"), str(seconds)],
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "held"
        procs.append(p)
        return p
    yield url, hold
    for p in procs:
        p.kill()
        p.wait()


def test_kill_switch_on_a_held_duckdb_file_is_set_anyway_and_audited_by_the_next_oms(held_duckdb):
    "Issue 16: a writer holding the DuckDB file (a session, an ingestion) cannot keep the switch from being set."
    url, hold = held_duckdb
    view = Cockpit(url, "demo", lock_timeout=0.5)
    holder = hold(60)
    state = take_kill_switch(url, True, "halt", "erin", T0, lock_timeout=0.5)
    assert state["on"] and "by erin via the cockpit" in state["reason"]
    view.act(True)  # the button works too; the page keeps its last figures while the store is busy
    assert "Trading STOPPED by" in view._message.object
    assert "store busy" in view._status.object
    holder.kill()
    holder.wait()
    store = connect(url)
    assert kill_switch(store)["on"] is True
    assert AuditTrail(store).records(kind="control.kill_switch").empty  # the holder could not be asked to write it
    assert audit_kill_switch(store, AuditTrail(store)) == 2            # what an OMS does before acting on it
    assert AuditTrail(store).records(kind="control.kill_switch").payload.str.contains("via the cockpit").all()
    assert AuditTrail(store).verify().ok


def test_a_short_writer_only_delays_the_switch(held_duckdb):
    "A writer holding the file for less than the timeout (as the OMS's short transactions do) only makes it wait."
    url, hold = held_duckdb
    holder = hold(1.0)
    assert take_kill_switch(url, True, "halt", "erin", T0, lock_timeout=30)["on"]
    holder.wait()


@pytest.mark.parametrize("address", ["0.0.0.0", "192.0.2.10", "", "::"])
def test_serving_beyond_the_machine_needs_auth(tmp_path, address):
    url = f"duckdb:///{tmp_path}/s.duckdb"
    sample_account(connect(url), "demo") if address == "0.0.0.0" else connect(url)
    with pytest.raises(CockpitError, match="without authentication"):
        serve_cockpit(url, "demo", address=address, start=False)


def test_serve_with_auth_or_on_loopback(tmp_path):
    url = f"duckdb:///{tmp_path}/s.duckdb"
    sample_account(connect(url), "demo")
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.10") and not is_loopback(None)
    server = serve_cockpit(url, "demo", port=0, address="0.0.0.0", basic_auth="a long password", start=False)
    assert server is not None
    assert serve_cockpit(url, "demo", port=0, start=False) is not None
    with pytest.raises(CockpitError, match="no portfolio named 'nobody'"):
        serve_cockpit(url, "nobody", start=False)
