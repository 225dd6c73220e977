"""Ingestion end to end on both backends: the data README's traps, incremental top-up, idempotency,
a killed ingestion process, and a reader during an ingestion."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bifrost.core import DataError, SimulatedClock
from bifrost.data.ingest import ingest
from bifrost.data.quality import quality_report
from bifrost.data.read import read_bars
from bifrost.data.sources import SAMPLE, FeedSpec, FileSource, SampleSource, read_table
from bifrost.store import connect

CLOCK = SimulatedClock(pd.Timestamp("2026-06-30 21:00", tz="UTC").to_pydatetime())  # after the sample's last bar
SAMPLE_DIR = SampleSource().root


def sample_of(*stems: str) -> SampleSource:
    return SampleSource(tuple(f for f in SAMPLE if Path(f.file).stem in stems))


@pytest.fixture
def store(store_url):
    return connect(store_url)


@pytest.fixture(scope="module")
def full_sample(tmp_path_factory):
    "The whole primary sample in one DuckDB store, shared by the read-only trap tests."
    store = connect(f"duckdb:///{tmp_path_factory.mktemp('sample')}/s.duckdb")
    ingest(store, SampleSource(), clock=CLOCK, progress=False)
    return store


# -- the traps in the data README -----------------------------------------------------------------------
def test_ticker_reuse_when_wm_meant_washington_mutual_then_those_rows_are_quarantined(full_sample):
    wm = read_bars(full_sample, "WM", adjust=None).set_index("ts").close
    # Waste Management traded ~$20-60 throughout; WaMu's collapse to $0.16 must not appear
    assert wm.min() > 10
    ratio = wm / wm.shift()
    assert ratio.max() < 1.5 and ratio.min() > 0.6  # no x178 issuer switch on 2009-08-05
    q = full_sample.query("SELECT count(*) AS n, max(ts) AS last FROM quarantine WHERE symbol = 'WM'")
    assert q.n[0] == 2465 and str(q["last"][0].date()) == "2008-09-26"


def test_history_when_ticker_changed_then_stitched_from_every_ticker(full_sample):
    sources = full_sample.query("SELECT DISTINCT source FROM bars WHERE symbol = 'WM' ORDER BY source").source
    assert list(sources) == ["sample:UW_daily_lean", "sample:WMI_daily_lean", "sample:WM_daily_lean"]
    googl = full_sample.query("SELECT DISTINCT source FROM bars WHERE symbol = 'GOOGL'").source
    assert set(googl) == {"sample:GOOG_daily_lean", "sample:GOOGL_daily_lean"}


def test_share_class_split_when_goog_became_googl_then_no_unexplained_halving(full_sample):
    report = quality_report(full_sample, "1d").set_index("symbol")
    assert report.loc["GOOGL", "jumps"] == 0 and report.loc["GOOG", "jumps"] == 0
    raw = read_bars(full_sample, "GOOGL", start="2014-04-01", end="2014-04-04", adjust=None).close
    assert raw.iloc[1] / raw.iloc[2] > 1.9  # raw really halves: 2:1 stock dividend on 2014-04-03


def test_earlier_issuers_when_ticker_reused_then_quarantined_before_listing(full_sample):
    first = full_sample.query("SELECT symbol, min(ts) AS first FROM bars WHERE bar_size = '1d' GROUP BY symbol")
    first = first.set_index("symbol")["first"].dt.strftime("%Y-%m-%d")
    assert first["FB"] == "2012-05-18" and first["USO"] == "2006-04-10" and first["BNO"] == "2010-06-02"
    assert first["BAC"] == "1998-10-01"


def test_split_adjusted_source_when_it_also_lists_the_split_then_not_adjusted_twice(store):
    ingest(store, sample_of("AAPL_daily_zipline_csvdir_2012-2014"), clock=CLOCK, progress=False)
    raw = read_bars(store, "AAPL", start="2014-06-06", end="2014-06-09", adjust=None).close
    adj = read_bars(store, "AAPL", start="2012-01-03", end="2014-12-31", adjust="split").close
    quandl = read_table(SAMPLE_DIR / "daily/AAPL_daily_quandl_wiki_2014.parquet")
    assert raw.iloc[0] == pytest.approx(float(quandl.set_index("date").close["2014-06-06"]), rel=1e-3)
    # once adjusted, 2012 prices are ~58, as in the vendor's file, not 58 / 7
    assert adj.iloc[0] == pytest.approx(58.747143, rel=1e-6)


def test_vendor_bad_rows_when_low_above_open_then_quarantined_with_reason(store):
    report = ingest(store, sample_of("SPY_daily_yahoo_mplfinance_2008-2017"), clock=CLOCK, progress=False)
    q = store.query("SELECT row_ref, reason FROM quarantine ORDER BY row_ref")
    assert q.values.tolist() == [["SPY_daily_yahoo_mplfinance_2008-2017.csv:1808", "low_above_open_close"],
                                 ["SPY_daily_yahoo_mplfinance_2008-2017.csv:1825", "low_above_open_close"]]
    assert report.written == 2517


def test_two_vendors_when_feeding_one_series_then_refused(store):
    ingest(store, sample_of("AAPL_daily_lean"), clock=CLOCK, progress=False)
    with pytest.raises(DataError, match="refusing to mix"):
        ingest(store, sample_of("AAPL_daily_quandl_wiki_2014"), clock=CLOCK, progress=False)


# -- incremental and idempotent -------------------------------------------------------------------------
def _csv(tmp_path, rows: slice) -> Path:
    table = read_table(SAMPLE_DIR / "daily/SPY_daily_lean.parquet").iloc[rows]
    path = tmp_path / "spy.csv"
    table.to_csv(path, index=False)
    return path


def test_topup_when_file_grows_then_only_new_rows_are_read_and_written(store, tmp_path):
    spec = FeedSpec("SPY")
    first = ingest(store, FileSource(_csv(tmp_path, slice(0, 5000)), spec), clock=CLOCK, progress=False)
    assert first.written == 5000
    second = ingest(store, FileSource(_csv(tmp_path, slice(0, None)), spec), clock=CLOCK, progress=False)
    assert (second.feeds[0].rows_in, second.written) == (849, 849)
    third = ingest(store, FileSource(_csv(tmp_path, slice(0, None)), spec), clock=CLOCK, progress=False)
    assert (third.feeds[0].rows_in, third.written) == (0, 0)
    assert store.scalar("SELECT count(*) FROM bars") == 5849


def test_reingest_when_full_then_store_unchanged(store):
    src = sample_of("AAPL_daily_lean", "AAPL_1min_lean_2014-06-05_to_06-09_split", "FB_daily_lean")
    ingest(store, src, clock=CLOCK, progress=False)
    tables = ("bars", "quarantine", "corporate_actions", "series", "ticker_history", "instruments")
    before = {t: store.query(f"SELECT * FROM {t}") for t in tables}
    ingest(store, src, full=True, clock=CLOCK, progress=False)
    for t in tables:
        a, b = before[t], store.query(f"SELECT * FROM {t}")
        key = list(a.columns[:3])
        pd.testing.assert_frame_equal(a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True))


def test_nasty_rows_when_ingested_then_each_lands_in_quarantine_and_nothing_is_lost(store, tmp_path):
    table = read_table(SAMPLE_DIR / "daily/SPY_daily_lean.parquet").iloc[:30].astype(str)
    table.loc[3, "close"] = "nan"
    table.loc[5, "low"] = "-1"
    table.loc[7, "volume"] = "-10"
    table.loc[9, "date"] = "not a date"
    table.loc[20, "volume"] = "0"                                      # zero volume is a fact, not an error
    identical = table.iloc[[12]]                                       # the same bar twice, in place
    conflicting = table.iloc[[14]].assign(close=table.high[14])        # same time, another (valid) close
    table = pd.concat([table.iloc[:13], identical, table.iloc[13:15], conflicting, table.iloc[15:],
                       table.iloc[[2]]])                               # and a late repeat: out of order
    path = tmp_path / "nasty.csv"
    table.to_csv(path, index=False)
    report = ingest(store, FileSource(path, FeedSpec("SPY")), clock=CLOCK, progress=False)
    reasons = store.query("SELECT reason, count(*) AS n FROM quarantine GROUP BY reason").set_index("reason").n
    assert reasons.to_dict() == {"nan_price": 1, "non_positive_price": 1, "bad_volume": 1, "bad_timestamp": 1,
                                 "duplicate_timestamp": 1, "conflicting_duplicate": 2, "out_of_order": 1}
    kept = store.query("SELECT ts, volume FROM bars ORDER BY ts")
    assert report.written == len(kept) == 30 - 5 and (kept.volume == 0).sum() == 1
    assert report.written + report.quarantined == len(table)


# -- processes ------------------------------------------------------------------------------------------
def _bifrost(url: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "BIFROST_DB_URL": url}
    return subprocess.Popen([str(Path(sys.executable).parent / "bifrost"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _consistent(store) -> None:
    "Every logged feed is entirely in the store, and nothing is in it that no logged feed wrote."
    logged = store.query("SELECT source, rows_written FROM ingestions")
    bars = store.query("SELECT count(*) AS n FROM bars").n[0]
    assert bars == logged.rows_written.sum()


@pytest.mark.slow
def test_ingestion_when_killed_mid_run_then_store_holds_whole_feeds_only(store_url):
    connect(store_url)
    proc = _bifrost(store_url, "ingest", "sample")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # wait for the first committed feed ...
        try:
            if connect(store_url, read_only=True).scalar("SELECT count(*) FROM ingestions"):
                break
        except Exception:  # noqa: BLE001 - the writer may hold the DuckDB file for a moment
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # ... then kill it while the next ones are in flight
    proc.wait()
    store = connect(store_url)
    _consistent(store)
    done = store.scalar("SELECT count(*) FROM ingestions")
    assert 0 < done < len(SampleSource().specs()), "the kill should land mid-run; adjust the delay"
    again = ingest(store, SampleSource(), clock=CLOCK, progress=False)  # resumes where it stopped
    _consistent(store)
    assert again.written > 0 and store.scalar("SELECT count(*) FROM bars") == 118210


@pytest.mark.slow
def test_reader_when_ingestion_runs_in_another_process_then_keeps_reading_committed_data(store_url):
    connect(store_url)
    proc = _bifrost(store_url, "ingest", "sample")
    counts, errors = [], []
    while proc.poll() is None:
        try:
            ro = connect(store_url, read_only=True)
            counts.append(int(ro.scalar("SELECT count(*) FROM bars")))
        except Exception as err:  # noqa: BLE001 - any failure to read is what this test is about
            errors.append(repr(err))
    assert proc.returncode == 0, proc.stdout.read()
    assert not errors
    assert len(counts) > 5 and counts == sorted(counts)
    assert connect(store_url, read_only=True).scalar("SELECT count(*) FROM bars") == 118210
