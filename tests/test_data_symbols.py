"""Symbols follow one grammar at every entry — ingestion (the real `bifrost` command), orders, limits, rules —
and a refusal states the rule."""
from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from bifrost.compliance.rules import normalise_symbol
from bifrost.core import SYMBOL_RULE, Order, Side, SymbolError
from bifrost.data.sources import FeedSpec, SampleSource, read_table
from bifrost.risk.limits import Limits
from bifrost.store import connect

BAD = {"blank": " ", "long": "A" * 10_000, "newline": "SPY\nQQQ", "rtl_override": "SPY\u202eXX", "empty": ""}
BIFROST = str(Path(sys.executable).parent / "bifrost")


@pytest.mark.parametrize("name", list(BAD))
def test_bad_symbol_at_every_entry_when_given_then_refused_with_the_rule(name):
    bad = BAD[name]
    for build in (lambda: FeedSpec(bad), lambda: Order("c-1", bad, Side.BUY, Decimal(1)),
                  lambda: Limits(restricted=frozenset({bad})), lambda: normalise_symbol(bad + "\x00")):
        with pytest.raises(SymbolError, match="is not a valid symbol: 1 to 21 characters") as err:
            build()
        assert len(str(err.value)) < 400  # ten thousand characters are not echoed back


def test_good_symbols_when_given_then_accepted():
    for ok in ("SPY", "BRK.A", "BF-B", "EUR/USD", "A" * 21):
        assert FeedSpec(ok).ticker == ok and Order("c-1", ok, Side.BUY, Decimal(1)).symbol == ok
    assert FeedSpec("spy").ticker == "SPY" and normalise_symbol(" brk.a ") == "BRK.A"
    assert "upper-case letters" in SYMBOL_RULE


@pytest.mark.parametrize("name", ["blank", "long", "newline", "rtl_override"])
def test_bad_symbol_when_ingested_through_the_command_then_refused_without_a_traceback(name, tmp_path):
    path = tmp_path / "spy.csv"
    read_table(SampleSource().root / "daily/SPY_daily_lean.parquet").iloc[:5].to_csv(path, index=False)
    url = f"duckdb:///{tmp_path}/s.duckdb"
    env = {**os.environ, "BIFROST_HOME": str(tmp_path), "BIFROST_DB_URL": url}
    out = subprocess.run([BIFROST, "ingest", "file", str(path), "--symbol", BAD[name], "--basis", "raw"],
                         env=env, capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert "Traceback" not in text and "is not a valid symbol" in text and out.returncode != 0
    assert connect(url).scalar("SELECT count(*) FROM instruments") == 0


def test_old_bad_symbol_row_when_left_in_the_store_then_other_accounts_open_and_show(tmp_path):
    "A ' ' instrument written before symbols were checked (here by SQL) must not break every account's reads."
    url = f"duckdb:///{tmp_path}/s.duckdb"
    store = connect(url)
    store.execute("INSERT INTO instruments (symbol, name, asset_class, currency, exchange, tick_size, lot_size) "
                  "VALUES (' ', '', 'equity', 'USD', 'XNYS', 0.01, 1)")
    env = {**os.environ, "BIFROST_HOME": str(tmp_path), "BIFROST_DB_URL": url}
    for args in (["portfolio", "open", "main", "--deposit", "100000"], ["portfolio", "show", "main"]):
        out = subprocess.run([BIFROST, *args], env=env, capture_output=True, text=True, timeout=120)
        text = out.stdout + out.stderr
        assert out.returncode == 0 and "Traceback" not in text, text
    assert "100,000" in text or "100000" in text, text
    from bifrost.portfolio.market import load_instruments
    assert " " not in load_instruments(store)
