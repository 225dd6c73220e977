"""`bifrost demo` — the README's first command — runs end to end offline on a fresh home, and again idempotently."""
from __future__ import annotations

import re

from typer.testing import CliRunner

from bifrost.cli import app
from bifrost.demo import DEMO_STEPS


def test_demo_runs_end_to_end_and_reruns(tmp_path):
    env = {"BIFROST_HOME": str(tmp_path), "BIFROST_DB_URL": ""}
    first = CliRunner().invoke(app, ["demo"], env=env)
    assert first.exit_code == 0, first.output
    out = first.output
    assert all(f"== {i}/{len(DEMO_STEPS)}" in out for i in range(1, len(DEMO_STEPS) + 1))
    assert re.search(r"parity: \d+ trades, 0 differences", out)
    assert "historical" in out and "covid crash 2020" in out
    assert "buy 300 QQQ: APPROVED" in out and "block: compliance/restricted_list v1: BAC" in out
    assert "audit trail intact: 6 records" in out  # limits, two rules, three decisions
    assert "ledger holds 10000 SPY, the broker 10000; child orders {'filled': 26}, open 0, unknown 0" in out
    assert re.search(r"walk-forward: \d+ windows, in-sample Sharpe", out)
    assert out.count("— done") == 3 and "parity: traded exactly as its backtest" in out
    assert "end-of-day report (succeeded)" in out and re.search(r"tear sheet: .*eod_demo-paper_2013-10-08\.html", out)
    second = CliRunner().invoke(app, ["demo"], env=env)
    assert second.exit_code == 0, second.output
    records = lambda text: int(re.search(r"audit trail intact: (\d+) records", text).group(1))
    # the second run records limits and rules no more, only its three decisions, after the first run's paper day
    assert records(second.output) > records(out) + 3
    assert "ledger holds 10000 SPY, the broker 10000" in second.output
    assert second.output.count("— done") == 2  # the sessions not traded yet, and only those
