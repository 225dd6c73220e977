"""Journey: "my own data" — a user's CSV with corporate actions and bad rows, through the real `bifrost` executable.

The file is AAPL 2012–2014 as zipline's csvdir bundle keeps it (shipped in the sample): split-adjusted prices with a
`split` column (7 for 1 on 2014-06-09) and a `dividend` column. We spoil it the way real files are spoiled — a NaN
high, a negative low, a row repeated — and walk it as a user would: ingest (first with the wrong basis), look at the
quarantine and the quality report, read the raw prices around the split, backtest, track, and write the tear sheet.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from journey_helpers import SAMPLE, bifrost


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("my_own_data")


@pytest.fixture(scope="module")
def my_csv(home):
    df = pd.read_parquet(SAMPLE / "daily" / "AAPL_daily_zipline_csvdir_2012-2014.parquet")
    df.loc[5, "high"] = np.nan            # 2012-01-10
    df.loc[9, "low"] = -3.0               # 2012-01-13
    df = pd.concat([df, df.iloc[[20]]])   # 2012-02-02 again, out of order at the end
    path = home / "my_aapl.csv"
    df.to_csv(path, index=False)
    return path


def test_wrong_basis_is_refused_and_stores_nothing(home, my_csv):
    # the prices are split-adjusted (≈ $58 in 2012, not ≈ $410): declared raw, they would be adjusted twice
    r = bifrost(home, "ingest", "file", str(my_csv), "--symbol", "MYAPL", "--basis", "raw", ok=False)
    assert r.returncode == 1 and "split" in r.stdout + r.stderr
    assert "MYAPL" not in bifrost(home, "data", "list").stdout


def test_ingest_quarantines_bad_rows_with_reasons(home, my_csv):
    r = bifrost(home, "ingest", "file", str(my_csv), "--symbol", "MYAPL", "--basis", "split")
    assert re.search(r"752 bars written, 3 rows quarantined", r.stdout), r.stdout
    q = bifrost(home, "data", "quarantine").stdout
    assert "MYAPL" in q and "nan" in q.lower() and ("out_of_order" in q or "duplicate" in q), q
    again = bifrost(home, "ingest", "file", str(my_csv), "--symbol", "MYAPL", "--basis", "split")
    assert "0 bars written" in again.stdout  # idempotent: nothing new to store


def test_raw_prices_show_the_split(home, my_csv):
    out = bifrost(home, "data", "show", "MYAPL", "--start", "2014-06-06", "--end", "2014-06-09", "--adjust", "none").stdout
    # the day before the 7:1 split AAPL closed at $645.57 raw; on the ex-date at $93.70
    assert re.search(r"645\.57", out) and re.search(r"93\.(69|70)", out), out
    assert "MYAPL" in bifrost(home, "data", "quality").stdout


def test_backtest_track_and_tear_sheet(home, my_csv):
    r = bifrost(home, "backtest", "sma_cross", "--symbols", "MYAPL", "--param", "fast=10", "--param", "slow=50", "--track")
    out = r.stdout
    for figure in ("total return", "sharpe", "max drawdown"):
        assert figure in out.lower(), out
    run_id = re.search(r"tracked in MLflow: run (\w+)", out).group(1)
    html = home / "my_aapl.html"
    bifrost(home, "report", run_id, "-o", str(html))
    page = html.read_text()
    assert "MYAPL" in page and "No trades were given" not in page
