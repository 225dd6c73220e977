"""A failure a command reports exits non-zero through the real `bifrost` executable, so cron, CI and monitoring see
it: a tampered audit trail, a reconciliation break, a strategy that peeks ahead, a session an account cannot trade, a
failed pipeline run. (Before, `run()` dropped the app's return code and every one of them exited 0.)

The command that fails runs in a subprocess, where the exit status is what a shell sees; what sets the scene runs in
process through `bifrost.cli.run` (the same code, without starting Python and importing the libraries again). All
tests share one home holding SPY's shipped daily bars; each works on accounts and names of its own."""
from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import sample_store

from bifrost.cli import run

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
    "A home whose store holds SPY's shipped daily bars, a module of one's own and a pipeline that fails."
    h = tmp_path_factory.mktemp("cli-failures")
    sample_store(h, ["SPY"], name="bifrost").close()
    (h / "peeking.py").write_text(PEEKING)
    (h / "pipelines").mkdir()  # `bifrost run` looks in ./pipelines first
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('raise ValueError("the feed is late")')],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "python3",
                                                           "language": "python"}})
    nbformat.write(nb, h / "pipelines" / "late_feed.ipynb")
    return h


def bifrost(home: Path, *args: str) -> subprocess.CompletedProcess:
    "The executable, as a user runs it from `home`."
    env = {**os.environ, "BIFROST_HOME": str(home), "BIFROST_DB_URL": "", "PYTHONPATH": str(home)}
    p = subprocess.run([str(EXE), *args], capture_output=True, text=True, env=env, cwd=home, timeout=600)
    assert "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr
    return p


@pytest.fixture
def in_process(home, monkeypatch):
    "`bifrost ARGS` in this process on `home`: (status, output); the store is let go before the executable opens it."
    monkeypatch.setenv("BIFROST_HOME", str(home))
    monkeypatch.setenv("BIFROST_DB_URL", "")

    def call(*args: str) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = run(list(args))
        gc.collect()  # a DuckDB file is held until its connection goes
        assert "Traceback" not in out.getvalue(), out.getvalue()
        return code, out.getvalue()
    return call


def test_a_tampered_audit_trail_exits_1(home, in_process):
    assert in_process("kill", "on", "--reason", "test")[0] == 0
    assert in_process("kill", "off", "--reason", "test")[0] == 0
    from bifrost.store import connect
    store = connect(f"duckdb:///{home}/bifrost.duckdb")
    store.execute("UPDATE audit_log SET payload = '{}' WHERE seq = 1")
    store.close()
    p = bifrost(home, "audit", "verify")
    assert p.returncode == 1 and "seq 1: edited" in p.stdout, p.stdout + p.stderr


def test_a_reconciliation_break_exits_1(home, in_process, tmp_path):
    assert in_process("portfolio", "open", "recon", "--deposit", "1000")[0] == 0
    statement = tmp_path / "statement.json"
    statement.write_text(json.dumps({"positions": {"SPY": "10"}, "cash": {"USD": "990"}}))
    p = bifrost(home, "portfolio", "reconcile", "recon", "--statement", str(statement))
    assert p.returncode == 1 and "break" in p.stderr, p.stdout + p.stderr


def test_a_strategy_that_peeks_exits_1(home, in_process):
    p = bifrost(home, "check", "lookahead", "peeking:Peek", "--start", "2019-01-01", "--end", "2019-12-31", "--cuts", "5")
    assert p.returncode == 1, p.stdout + p.stderr
    code, text = in_process("check", "lookahead", "sma_cross", "--start", "2015-01-01", "--end", "2019-12-31",
                            "--cuts", "5")
    assert code == 0, text  # one that does not peek passes


def test_a_session_without_limits_is_refused_before_anything_is_written(home, in_process):
    code, text = in_process("strategy", "register", "sma_cross", "--name", "trend")
    assert code == 0, text
    assert in_process("strategy", "promote", "trend", text.split()[1])[0] == 0
    p = bifrost(home, "trade", "nolimits", "--session", "2013-10-04", "--strategy", "trend", "--symbols", "SPY")
    assert p.returncode == 1 and "no risk limits" in p.stderr and "bifrost risk limits nolimits" in p.stderr, p.stderr
    code, text = in_process("trade", "nolimits", "--session", "2013-10-04", "--strategy", "trend", "--symbols", "NOPE")
    assert code == 2 and "no stored bars of NOPE" in text, text
    from bifrost.store import connect
    store = connect(f"duckdb:///{home}/bifrost.duckdb", read_only=True)
    for table, col in (("portfolios", "name"), ("trading_sessions", "account"), ("orders", "account")):
        assert store.query(f"SELECT * FROM {table} WHERE {col} = 'nolimits'").empty, table
    store.close()


def test_a_failed_pipeline_run_exits_1(home):
    p = bifrost(home, "run", "late_feed")
    assert p.returncode == 1 and "failed" in p.stdout and "the feed is late" in p.stderr, p.stdout + p.stderr
