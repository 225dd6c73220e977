"""`bifrost ingest file` as a user types it: a split-adjusted file declared raw is refused (not stored adjusted
twice), LEAN factor and map files come with the bars, a file whose every row is quarantined fails, and the
plausible-value bounds are flags. Backend-independent: DuckDB only."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bifrost.core import TradingCalendar
from bifrost.data.sources import FeedSpec, FileSource, SampleSource, lean_corporate_actions, read_lean_file, read_table
from bifrost.store import connect

BIFROST = str(Path(sys.executable).parent / "bifrost")
SAMPLE = SampleSource().root
LEAN = Path(__file__).parent / "fixtures" / "lean"


def run(home: Path, *args: str):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BIFROST_")}, "BIFROST_HOME": str(home)}
    out = subprocess.run([BIFROST, *args], env=env, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
    return out


def store_of(home: Path):
    return connect(f"duckdb:///{home}/bifrost.duckdb", read_only=True)


@pytest.fixture(scope="module")
def zipline_csv(tmp_path_factory) -> Path:
    "zipline's csvdir AAPL 2012-2014: split-adjusted prices, and a split column saying 7 on 2014-06-09."
    path = tmp_path_factory.mktemp("zipline") / "AAPL.csv"
    pd.read_parquet(SAMPLE / "daily/AAPL_daily_zipline_csvdir_2012-2014.parquet").to_csv(path, index=False)
    return path


def test_split_adjusted_file_when_declared_raw_then_refused_naming_the_split_and_nothing_stored(tmp_path, zipline_csv):
    out = run(tmp_path, "ingest", "file", str(zipline_csv), "--symbol", "AAPL", "--basis", "raw")
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "2014-06-09" in text and "7:1" in text and "x1.0" in text and "x0.143" in text and "--basis split" in text
    assert store_of(tmp_path).scalar("SELECT count(*) FROM bars") == 0
    ok = run(tmp_path, "ingest", "file", str(zipline_csv), "--symbol", "AAPL", "--basis", "split")
    assert ok.returncode == 0 and "754 bars written" in ok.stdout, ok.stdout + ok.stderr


def test_lean_files_when_given_with_the_bars_then_their_actions_and_history_are_stored(tmp_path):
    path = tmp_path / "aapl_2014.csv"
    read_table(SAMPLE / "daily/AAPL_daily_quandl_wiki_2014.parquet").to_csv(path, index=False)
    out = run(tmp_path, "ingest", "file", str(path), "--symbol", "AAPL", "--basis", "raw", "--vendor", "quandl",
              "--factor-file", str(LEAN / "AAPL_factor_file_lean.csv"), "--map-file", str(LEAN / "AAPL_map_file_lean.csv"))
    assert out.returncode == 0, out.stdout + out.stderr
    store = store_of(tmp_path)
    ca = store.query("SELECT ex_date, kind, value, source FROM corporate_actions WHERE symbol = 'AAPL' ORDER BY ex_date")
    splits = ca[ca.kind == "split"]
    got = {(str(pd.Timestamp(d).date()), v) for d, v in zip(splits.ex_date, splits.value)}
    assert {("2014-06-09", 7.0), ("2020-08-31", 4.0)} <= got  # all of AAPL's history, not only the file's 2014
    assert (ca.kind == "dividend").sum() >= 10
    assert set(store.query("SELECT ticker FROM ticker_history WHERE symbol = 'AAPL'").ticker) == {"AAPL"}


def test_lean_factor_file_when_read_as_lean_writes_it_or_by_read_table_then_the_same_actions(tmp_path):
    cal = TradingCalendar("XNYS")
    expected = lean_corporate_actions("AAPL", pd.read_parquet(SAMPLE / "corporate_actions/AAPL_factor_file_lean.parquet"), cal)
    # read_table gives CSV values as text: lean_corporate_actions once failed dividing them
    got = lean_corporate_actions("AAPL", read_table(LEAN / "AAPL_factor_file_lean.csv"), cal)
    pd.testing.assert_frame_equal(got, expected)
    headerless = tmp_path / "aapl.csv"  # LEAN's own format: no header, YYYYMMDD dates
    lines = (LEAN / "AAPL_factor_file_lean.csv").read_text().splitlines()[1:]
    headerless.write_text("\n".join(line.replace("-", "", 2) for line in lines) + "\n")
    pd.testing.assert_frame_equal(lean_corporate_actions("AAPL", read_lean_file(headerless, "factor"), cal), expected)
    ref = FileSource(headerless, FeedSpec("AAPL"), factor_file=headerless, map_file=LEAN / "AAPL_map_file_lean.csv").reference()
    pd.testing.assert_frame_equal(ref.corporate_actions, expected)


def test_every_row_quarantined_when_ingested_then_exit_1_and_bounds_are_flags(tmp_path):
    path = tmp_path / "spy.csv"
    read_table(SAMPLE / "daily/SPY_daily_lean.parquet").iloc[-300:].to_csv(path, index=False)  # SPY above $100
    out = run(tmp_path, "ingest", "file", str(path), "--symbol", "SPY", "--basis", "raw", "--max-price", "100")
    assert out.returncode == 1 and "none stored" in out.stderr and "bifrost data quarantine" in out.stderr, out.stderr
    assert "300 rows quarantined" in out.stdout
    q = store_of(tmp_path).query("SELECT DISTINCT reason, detail FROM quarantine")
    assert set(q.reason) == {"implausible_value"} and "price 1e-06 to 100" in q.detail.iloc[0]
    ok = run(tmp_path, "ingest", "file", str(path), "--symbol", "SPY", "--basis", "raw", "--max-price", "1e6")
    assert ok.returncode == 0 and "300 bars written" in ok.stdout, ok.stdout + ok.stderr
    for bad in (["--min-price", "5", "--max-price", "1"], ["--max-volume", "-1"]):
        usage = run(tmp_path, "ingest", "file", str(path), "--symbol", "SPY", "--basis", "raw", *bad)
        assert usage.returncode == 2 and ("--min-price" in usage.stderr or "--max-volume" in usage.stderr), usage.stderr


def test_spoiled_user_file_when_ingested_split_adjusted_then_bad_rows_quarantined_with_reasons(tmp_path, zipline_csv):
    "A NaN high, a negative low and a row repeated at the end (out of order): quarantined, never a traceback."
    df = pd.read_csv(zipline_csv)
    df.loc[5, "high"] = float("nan")
    df.loc[9, "low"] = -3.0
    path = tmp_path / "my_aapl.csv"
    pd.concat([df, df.iloc[[20]]]).to_csv(path, index=False)
    out = run(tmp_path, "ingest", "file", str(path), "--symbol", "MYAPL", "--basis", "split")
    assert out.returncode == 0 and "752 bars written, 3 rows quarantined" in out.stdout, out.stdout + out.stderr
    q = store_of(tmp_path).query("SELECT row_ref, reason FROM quarantine ORDER BY row_ref")
    assert dict(zip(q.row_ref, q.reason)) == {"my_aapl.csv:7": "nan_price", "my_aapl.csv:11": "non_positive_price",
                                              "my_aapl.csv:756": "out_of_order"}
