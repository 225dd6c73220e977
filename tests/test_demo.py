"""`bifrost demo` — the README's first command — runs end to end offline on a fresh home, and again idempotently."""
from __future__ import annotations

import re

from typer.testing import CliRunner

from bifrost.cli import DEMO_STEPS, app


def test_demo_runs_end_to_end_and_reruns(tmp_path):
    env = {"BIFROST_HOME": str(tmp_path), "BIFROST_DB_URL": ""}
    first = CliRunner().invoke(app, ["demo"], env=env)
    assert first.exit_code == 0, first.output
    out = first.output
    assert all(f"== {i}/{len(DEMO_STEPS)}" in out for i in range(1, len(DEMO_STEPS) + 1))
    assert re.search(r"parity: \d+ trades, 0 differences", out)
    assert "historical" in out and "covid crash 2020" in out
    assert "buy 300 QQQ: APPROVED" in out and "block: compliance/restricted_list v1: BAC" in out
    assert "audit trail intact: 6 records" in out
    second = CliRunner().invoke(app, ["demo"], env=env)
    assert second.exit_code == 0, second.output
    assert "audit trail intact: 9 records" in second.output  # limits and rules were recorded once, decisions again
