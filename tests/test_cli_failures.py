"""A failure a command reports exits non-zero through the real `bifrost` executable, so cron, CI and monitoring see
it: a tampered audit trail, a reconciliation break, a strategy that peeks ahead, a session an account cannot trade, a
failed pipeline run. (Before, `run()` dropped the app's return code and every one of them exited 0.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXE = Path(sys.executable).with_name("bifrost")

PEEKING = '''
from bifrost.strategy.api import Strategy

class Peek(Strategy):
    "Holds each symbol on the bars before it rises: it reads tomorrow's close."
    def targets(self, panel):
        return (panel.close.shift(-1) > panel.close).astype(float) / panel.close.shape[1]
'''


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    "A home whose store holds SPY's shipped daily bars."
    from bifrost.data.ingest import ingest
    from bifrost.data.sources import SAMPLE, SampleSource
    from bifrost.store import connect
    h = tmp_path_factory.mktemp("cli-failures")
    ingest(connect(f"duckdb:///{h}/bifrost.duckdb"),
           SampleSource(tuple(f for f in SAMPLE if f.primary and f.spec.ticker == "SPY" and f.spec.bar_size == "1d")),
           progress=False)
    (h / "peeking.py").write_text(PEEKING)
    return h


def bifrost(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BIFROST_HOME": str(home), "BIFROST_DB_URL": "", "PYTHONPATH": str(home)}
    p = subprocess.run([str(EXE), *args], capture_output=True, text=True, env=env, timeout=600)
    assert "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr
    return p


def test_a_tampered_audit_trail_exits_1(home):
    assert bifrost(home, "kill", "on", "--reason", "test").returncode == 0
    assert bifrost(home, "kill", "off", "--reason", "test").returncode == 0
    from bifrost.store import connect
    connect(f"duckdb:///{home}/bifrost.duckdb").execute("UPDATE audit_log SET payload = '{}' WHERE seq = 1")
    p = bifrost(home, "audit", "verify")
    assert p.returncode == 1 and "seq 1: edited" in p.stdout, p.stdout + p.stderr


def test_a_reconciliation_break_exits_1(home, tmp_path):
    assert bifrost(home, "portfolio", "open", "recon", "--deposit", "1000").returncode == 0
    statement = tmp_path / "statement.json"
    statement.write_text(json.dumps({"positions": {"SPY": "10"}, "cash": {"USD": "990"}}))
    p = bifrost(home, "portfolio", "reconcile", "recon", "--statement", str(statement))
    assert p.returncode == 1 and "break" in p.stderr, p.stdout + p.stderr


def test_a_strategy_that_peeks_exits_1(home):
    p = bifrost(home, "check", "lookahead", "peeking:Peek", "--start", "2019-01-01", "--end", "2019-12-31")
    assert p.returncode == 1, p.stdout + p.stderr
    assert bifrost(home, "check", "lookahead", "sma_cross", "--start", "2015-01-01", "--end", "2019-12-31").returncode == 0


def test_a_session_without_limits_is_refused_before_anything_is_written(home):
    p = bifrost(home, "strategy", "register", "sma_cross", "--name", "trend")
    assert p.returncode == 0, p.stderr
    assert bifrost(home, "strategy", "promote", "trend", p.stdout.split()[1]).returncode == 0
    p = bifrost(home, "trade", "nolimits", "--session", "2013-10-04", "--strategy", "trend", "--symbols", "SPY")
    assert p.returncode == 1 and "no risk limits" in p.stderr and "bifrost risk limits nolimits" in p.stderr, p.stderr
    p = bifrost(home, "trade", "nolimits", "--session", "2013-10-04", "--strategy", "trend", "--symbols", "NOPE")
    assert p.returncode == 2 and "no stored bars of NOPE" in p.stderr, p.stderr
    from bifrost.store import connect
    store = connect(f"duckdb:///{home}/bifrost.duckdb", read_only=True)
    for table, col in (("portfolios", "name"), ("trading_sessions", "account"), ("orders", "account")):
        assert store.query(f"SELECT * FROM {table} WHERE {col} = 'nolimits'").empty, table


def test_a_failed_pipeline_run_exits_1(home):
    p = bifrost(home, "run", "eod_report", "-p", "account=nobody", "-p", "session=2013-10-04")
    assert p.returncode == 1 and "failed" in p.stdout, p.stdout + p.stderr
