"""Issue 16: the kill switch is reachable during a trading session on both stores. A session trades in one process;
the real `bifrost kill on` flips the switch from another, mid-session; no order after the flip is sent."""
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from bifrost.audit import AuditTrail
from bifrost.core import SimulatedClock
from bifrost.data.ingest import ingest
from bifrost.data.sources import SAMPLE, SampleSource
from bifrost.execution.oms import kill_switch, switch_file
from bifrost.risk.limits import Limits, save_limits
from bifrost.store import connect
from bifrost.strategy.versions import promote, register
from test_strategy_session import BREAKOUT_DAY, Breakout

BIFROST = str(Path(sys.executable).with_name("bifrost"))
T0 = dt.datetime(2013, 10, 1, tzinfo=dt.timezone.utc)
TRADE = """import sys
sys.path.insert(0, sys.argv[2])
import datetime as dt
from bifrost.store import connect
import time
from bifrost.strategy import paper
from bifrost.strategy.session import trade_session
step = paper.PaperRunner.step  # paced like a live feed, compressed: a replayed day would end before the flip lands
paper.PaperRunner.step = lambda self, *a, **k: (time.sleep(0.03), step(self, *a, **k))[1]
try:
    trade_session(connect(sys.argv[1]), "acct", dt.date(2013, 10, 9), strategy="breakout", symbols=["SPY"],
                  progress=False)
    print("DONE", flush=True)
except Exception as err:
    print("FAILED", err, flush=True)
"""


def _orders(url: str) -> int:
    with connect(url, read_only=True) as s:  # on DuckDB: between the session's short leases of the file
        return int(s.scalar("SELECT count(*) FROM orders WHERE status <> 'rejected'"))


def test_kill_switch_from_another_process_mid_session_then_no_order_after_it_is_sent(store, tmp_path):
    feeds = tuple(f for f in SAMPLE if f.primary and f.spec.ticker == "SPY" and f.spec.bar_size == "1min")
    ingest(store, SampleSource(feeds), progress=False)
    clock = SimulatedClock(T0)
    promote(store, "breakout", register(store, Breakout(), clock, name="breakout"), clock, "paper")
    save_limits(store, "acct", Limits(max_daily_loss=Decimal("0.05")), T0, T0, "paper account", AuditTrail(store))
    url = store.url
    store.close()
    env = {**os.environ, "BIFROST_DB_URL": url, "BIFROST_HOME": str(tmp_path)}
    session = subprocess.Popen([sys.executable, "-c", TRADE, url, str(Path(__file__).parent)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _orders(url) < 5:  # mid-session: it has traded, and keeps trading
            assert session.poll() is None and time.monotonic() < deadline, session.communicate()
            time.sleep(0.2)
        seen: list[float] = []
        watcher = connect(url, read_only=True, migrate=False) if url.startswith("duckdb") else connect(url)
        def watch():
            while not seen and time.monotonic() < started + 60:
                if kill_switch(watcher)["on"]:
                    seen.append(time.monotonic())
                time.sleep(0.02)
        started = time.monotonic()
        threading.Thread(target=watch, daemon=True).start()
        flip = subprocess.run([BIFROST, "kill", "on", "--reason", "flip mid-session"], env=env, capture_output=True,
                              text=True, timeout=120)
        took = time.monotonic() - started
        out, err = session.communicate(timeout=120)
    finally:
        session.kill()
    assert flip.returncode == 0 and "kill switch ON" in flip.stdout, flip.stdout + flip.stderr
    assert out.startswith("FAILED") and "trading stopped by the kill switch: flip mid-session" in out, out + err
    time.sleep(0.1)
    assert seen, "the switch was never seen on"
    s = connect(url)
    if url.startswith("duckdb"):  # the switch's own latency inside the command: set time to the file written
        path = switch_file(s)
        state = json.loads(path.read_text())
        latency = path.stat().st_mtime - dt.datetime.fromisoformat(state["set_at"]).timestamp()
        assert latency < 1.0, f"the switch took {latency:.2f}s to set"
        print(f"\nduckdb: set {latency * 1000:.0f} ms after the command read the time", end="")
    print(f"\n{s.dialect}: `bifrost kill on` ran {took:.2f}s (process start included), seen on after "
          f"{seen[0] - started:.2f}s")
    trail = AuditTrail(s).records()
    flipped = trail[(trail.kind == "control.kill_switch")].seq.tolist()
    assert len(flipped) == 1  # audited once: by the command, or by the session's OMS before it acted on it
    after = trail[trail.seq > flipped[0]]
    sent = [r for r in after.itertuples() if r.kind == "order.status" and json.loads(r.payload)["to"] == "pending_submit"]
    assert sent == [], "an order was sent after the kill switch was set"
    before = trail[(trail.seq < flipped[0]) & (trail.kind == "order.status")]
    assert len(before) >= 5
    row = s.query("SELECT status, summary FROM trading_sessions")
    assert row.status.iat[0] == "failed" and "kill switch" in json.loads(row.summary.iat[0])["error"]
    assert s.scalar("SELECT count(*) FROM orders WHERE status IN ('pending_submit', 'accepted', "
                    "'partially_filled', 'pending_cancel', 'unknown')") == 0  # nothing left working
    assert AuditTrail(s).verify().ok


HOLD = """import sys, time
from pathlib import Path
from bifrost.store import connect
s = connect(sys.argv[1])
with s.transaction():  # a long write: the DuckDB file stays locked by this process until the release file appears
    s.execute("INSERT INTO trading_controls (name, value, set_at, reason) VALUES ('hold', 'x', now(), 'held')")
    print("HELD", flush=True)
    while not Path(sys.argv[2]).exists():
        time.sleep(0.02)
print("RELEASED", flush=True)
"""


def test_kill_cli_when_another_process_holds_the_duckdb_store_then_set_at_once_and_audited_later(tmp_path):
    "`bifrost kill on|status` beside a writer inside a long transaction: set and read from the switch file, no wait."
    url = f"duckdb:///{tmp_path}/held.duckdb"
    connect(url).close()  # migrated, as a home that has been used
    env = {**os.environ, "BIFROST_DB_URL": url, "BIFROST_HOME": str(tmp_path)}
    release = tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, url, str(release)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD", holder.stderr.read()
        flip = subprocess.run([BIFROST, "kill", "on", "--reason", "desk halt"], env=env, capture_output=True,
                              text=True, timeout=120)
        status = subprocess.run([BIFROST, "kill", "status"], env=env, capture_output=True, text=True, timeout=120)
        assert holder.poll() is None, "the writer must still hold the store: kill never waited for it"
    finally:
        release.touch()
        out, err = holder.communicate(timeout=60)
    assert "RELEASED" in out, err
    assert flip.returncode == 0 and "kill switch ON" in flip.stdout and "desk halt" in flip.stdout, flip.stdout + flip.stderr
    assert "Traceback" not in flip.stderr + status.stderr
    assert status.returncode == 0 and "kill switch ON" in status.stdout, status.stdout + status.stderr
    s = connect(url)
    state = json.loads(switch_file(s).read_text())
    latency = switch_file(s).stat().st_mtime - dt.datetime.fromisoformat(state["set_at"]).timestamp()
    assert state["on"] and latency < 1.0, f"the switch took {latency:.2f}s to set"
    assert kill_switch(s)["on"]
    # the change waits in the file for the store: the next OMS (or command) writes its audit record, once
    from bifrost.execution.oms import audit_kill_switch
    assert audit_kill_switch(s, AuditTrail(s)) == 1 and audit_kill_switch(s, AuditTrail(s)) == 0
    assert AuditTrail(s).records(kind="control.kill_switch").payload.str.contains("desk halt").tolist() == [True]
