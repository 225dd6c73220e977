"""Malformed files never end in a traceback: each file of the corpus in tests/fixtures/malformed/ gives a
`DataError` naming the file (and a hint), or its bad rows are quarantined with a reason and the good ones kept.
A few cases also go through the real `bifrost ingest file` command."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bifrost.core import DataError, SimulatedClock
from bifrost.data.ingest import ingest
from bifrost.data.sources import FeedSpec, FileSource
from bifrost.store import connect

CORPUS = Path(__file__).parent / "fixtures" / "malformed"
CLOCK = SimulatedClock(pd.Timestamp("2026-06-30 21:00", tz="UTC").to_pydatetime())
BIFROST = str(Path(sys.executable).parent / "bifrost")
MINUTE = {"naive_then_offset.csv", "sub_minute.csv"}

# file -> a DataError matching this text (the file's name is always in it, and a hint) ...
REFUSED = {
    "empty.csv": "is empty",
    "header_only.csv": "has a header and no rows",
    "blank_lines.csv": "the first line is not a header",
    "utf16.csv": "is UTF-16 text",
    "binary.csv": "is not a text file",
    "bad.parquet": "is not a readable Parquet file",
    "truncated.parquet": "is not a readable Parquet file",
    "zero_rows.parquet": "has a header and no rows",
    "epoch_seconds.parquet": "no time in column 'date' could be read",
    "day_first.csv": "'02/01/1998' is not an ISO 8601 time",
    "semicolons.csv": "expected columns date",
    "missing_column.csv": "expected columns date",
    "missing_column.parquet": "expected columns date",
    "duplicate_header.csv": "['close'] appear more than once",
}
# ... or (rows written, {reason: quarantined rows})
QUARANTINED = {
    "ragged.csv": (2, {"malformed_line": 2}),
    "thousands_unquoted.csv": (2, {"malformed_line": 1}),
    "unterminated_quote.csv": (1, {"malformed_line": 1}),
    "latin1.csv": (1, {"malformed_line": 1}),  # 'caf\xe9': Latin-1, not UTF-8
    "thousands_quoted.csv": (1, {"nan_price": 1}),
    "year_1000.csv": (1, {"implausible_timestamp": 1}),
    "naive_then_offset.csv": (3, {"bad_timestamp": 2}),
    "nan.csv": (1, {"nan_price": 3, "bad_volume": 1}),
    "negative.csv": (1, {"non_positive_price": 3, "low_above_open_close": 2}),
    "duplicates.csv": (2, {"duplicate_timestamp": 1, "conflicting_duplicate": 2, "low_above_open_close": 1}),
    "out_of_order.csv": (3, {"out_of_order": 1}),
    "non_finite.csv": (1, {"non_finite": 2, "implausible_value": 1}),
    "non_finite_utc_midnight.parquet": (1, {"non_finite": 2}),
    "text_prices.parquet": (1, {"nan_price": 2, "non_finite": 2}),
    "sub_minute.csv": (2, {"off_grid": 1}),
    "gzipped.csv": (2, {}),
    "bom_crlf_no_final_newline.csv": (2, {}),
    "newline_in_field.csv": (3, {}),
    "not_a_table.xlsx": (2, {}),  # the name says Excel, the bytes say CSV: the bytes win
}


def test_corpus_when_listed_then_every_file_has_an_expected_outcome():
    assert sorted(REFUSED.keys() | QUARANTINED.keys()) == sorted(p.name for p in CORPUS.iterdir())
    assert all(p.stat().st_size < 5000 for p in CORPUS.iterdir())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    "One store for the corpus: each file is its own feed (quarantine and bars are looked up by its source)."
    return connect(f"duckdb:///{tmp_path_factory.mktemp('fuzz')}/fuzz.duckdb")


def _ingest(path: Path, store):
    spec = FeedSpec("SPY", "1min", session="extended") if path.name in MINUTE else FeedSpec("SPY")
    return ingest(store, FileSource(path, spec), clock=CLOCK, progress=False, full=True)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_malformed_file_when_ingested_then_refused_with_a_clear_error(name, store):
    with pytest.raises(DataError) as err:
        _ingest(CORPUS / name, store)
    assert REFUSED[name] in str(err.value) and name in str(err.value) and err.value.hint
    assert store.scalar("SELECT count(*) FROM bars WHERE source = ?", [f"file:{name}"]) == 0


@pytest.mark.parametrize("name", sorted(QUARANTINED))
def test_malformed_rows_when_ingested_then_quarantined_with_a_reason_and_nothing_lost(name, store):
    report = _ingest(CORPUS / name, store)
    written, reasons = QUARANTINED[name]
    q = store.query("SELECT reason, count(*) AS n FROM quarantine WHERE source = ? GROUP BY reason", [f"file:{name}"])
    assert (report.written, dict(zip(q.reason, q.n))) == (written, reasons)
    assert report.written + report.quarantined == report.feeds[0].rows_in
    lines = store.query("SELECT row_ref, detail, raw FROM quarantine WHERE source = ?", [f"file:{name}"])
    assert lines.row_ref.str.match(rf"{name}:\d+$").all() and (lines.detail.str.len() > 0).all()


def test_malformed_line_when_quarantined_then_its_text_and_line_number_are_kept(store):
    _ingest(CORPUS / "thousands_unquoted.csv", store)
    row = store.query("SELECT row_ref, detail, raw FROM quarantine WHERE source = 'file:thousands_unquoted.csv'").iloc[0]
    assert row.row_ref == "thousands_unquoted.csv:3" and "TOO MANY COLUMNS" in row.detail
    assert row.raw == "1998-01-05,1,234.5,1,234.5,1,234.5,1,234.5,4030800"
    kept = store.query("SELECT ts FROM bars WHERE source = 'file:thousands_unquoted.csv' ORDER BY ts")
    assert kept.ts.dt.strftime("%m-%d").tolist() == ["01-02", "01-06"]


def test_directory_and_broken_links_when_given_as_the_file_then_refused(store, tmp_path):
    (tmp_path / "dir.csv").mkdir()
    (tmp_path / "dangling.csv").symlink_to(tmp_path / "nowhere.csv")
    (tmp_path / "loop.csv").symlink_to(tmp_path / "loop.csv")
    (tmp_path / "good_link.csv").symlink_to(CORPUS / "out_of_order.csv")
    for name, text in (("dir.csv", "is a directory"), ("dangling.csv", "symbolic link"), ("loop.csv", "symbolic link"),
                       ("missing.csv", "no such file")):
        with pytest.raises(DataError, match=text):
            _ingest(tmp_path / name, store)
    assert _ingest(tmp_path / "good_link.csv", store).written == 3  # a link that works is just the file


@pytest.mark.parametrize("name, code, text", [("empty.csv", 1, "is empty"), ("utf16.csv", 1, "iconv"),
                                              ("bad.parquet", 1, "not a readable Parquet file"),
                                              ("ragged.csv", 0, "2 rows quarantined"), ("(directory)", 1, "directory")])
def test_malformed_file_when_ingested_through_the_command_then_no_traceback(name, code, text, tmp_path):
    path = CORPUS / name if name != "(directory)" else tmp_path
    env = {**os.environ, "BIFROST_HOME": str(tmp_path), "BIFROST_DB_URL": f"duckdb:///{tmp_path}/cli.duckdb"}
    out = subprocess.run([BIFROST, "ingest", "file", str(path), "--symbol", "SPY", "--basis", "raw"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in out.stdout + out.stderr and text in out.stdout + out.stderr
    assert (out.returncode != 0) == bool(code)
