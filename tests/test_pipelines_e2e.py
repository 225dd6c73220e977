"""The shipped pipelines under the runner on PostgreSQL: trade sessions (strategy and symbols carried over from
the account's last session), then the end-of-day report with its parity section and tear sheet.

The same pipelines on the embedded DuckDB store run in `bifrost demo` and in the journeys (tests/journeys), through
the real executable; running this one on both backends bought nothing but three minutes."""
from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from bifrost.audit import AuditTrail
from bifrost.core import LiveClock, SimulatedClock
from bifrost.data.ingest import ingest
from bifrost.data.sources import SAMPLE, SampleSource
from bifrost.pipelines.runs import list_runs, run_pipeline
from bifrost.risk.limits import Limits, save_limits
from bifrost.store import connect
from bifrost.strategy.api import MeanReversion
from bifrost.strategy.session import trade_session
from bifrost.strategy.versions import promote, register


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_trade_then_eod_report(store_url, tmp_path):
    store = connect(store_url)
    ingest(store, SampleSource(tuple(f for f in SAMPLE if f.primary and f.spec.ticker == "SPY")), progress=False)
    setup = SimulatedClock(datetime(2013, 10, 1, tzinfo=timezone.utc))
    promote(store, "mr", register(store, MeanReversion(window=20, entry=1.5), setup, name="mr"), setup, "paper")
    save_limits(store, "desk", Limits(max_daily_loss=Decimal("0.05")), setup.now(), setup.now(), "test", AuditTrail(store))
    trade_session(store, "desk", date(2013, 10, 4), strategy="mr", symbols=["SPY"], progress=False)  # NAV history
    planned = datetime(2013, 10, 7, 13, 30, tzinfo=timezone.utc)
    first = run_pipeline("trade", {"account": "desk", "session": "2013-10-07"},
                         store=store, clock=LiveClock(), output_dir=tmp_path / "t1", scheduled_for=planned)
    assert first.status == "succeeded", first.error
    assert first.scheduled_for == planned
    second = run_pipeline("trade", {"account": "desk", "session": "2013-10-08"}, store=store, clock=LiveClock(),
                          output_dir=tmp_path / "t2")
    assert second.status == "succeeded", second.error
    sessions = store.query("SELECT session, status FROM trading_sessions WHERE account = 'desk' ORDER BY session")
    assert list(pd.to_datetime(sessions.session).dt.date) == [date(2013, 10, 4), date(2013, 10, 7), date(2013, 10, 8)]
    assert set(sessions.status) == {"done"}

    report = run_pipeline("eod_report", {"account": "desk", "session": "2013-10-08"}, store=store, clock=LiveClock(),
                          output_dir=tmp_path / "eod")
    assert report.status == "succeeded", report.error
    text = Path(report.output_path).read_text()
    assert "differences from the backtest" in text and "audit trail intact" in text
    assert (tmp_path / "eod" / "eod_desk_2013-10-08.html").stat().st_size > 10_000
    assert list(list_runs(store).status) == ["succeeded"] * 3
