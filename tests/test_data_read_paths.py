"""A small CSV is read in one pass and surveyed from what was read; a large one is surveyed first and then streamed.
Both paths must give the same feed — rows, lines, malformed lines, times, corporate actions — or the same refusal."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import bifrost.data.sources as sources
from bifrost.core import DataError
from bifrost.data.sources import SAMPLE, FeedSpec, FileSource, SampleSource

CORPUS = Path(__file__).parent / "fixtures" / "malformed"
MINUTE = {"naive_then_offset.csv", "sub_minute.csv"}


def _read(path: Path, spec: FeedSpec, monkeypatch, one_pass: bool):
    "Every chunk of the file (seven rows each, so a file spans chunks), or the refusal, by one of the two paths."
    monkeypatch.setattr(sources, "ONE_PASS_BYTES", 1 << 40 if one_pass else 0)
    try:
        return list(FileSource(path, spec, chunk_rows=7).stream(spec))
    except DataError as err:
        return str(err).split(":")[0]  # the file's name; the wording after it may name the pass


def _same(path: Path, spec: FeedSpec, monkeypatch) -> None:
    once, streamed = _read(path, spec, monkeypatch, True), _read(path, spec, monkeypatch, False)
    assert type(once) is type(streamed)
    if isinstance(once, str):
        assert once == streamed
        return
    assert len(once) == len(streamed)
    for a, b in zip(once, streamed):
        pd.testing.assert_frame_equal(a.bars, b.bars)
        pd.testing.assert_frame_equal(a.rejects.reset_index(drop=True), b.rejects.reset_index(drop=True))
        pd.testing.assert_series_equal(a.splits, b.splits)
        pd.testing.assert_series_equal(a.dividends, b.dividends)
        assert (a.expected_rows, a.spec) == (b.expected_rows, b.spec)


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*.csv")))
def test_malformed_csv_when_read_in_one_pass_then_the_same_feed_as_surveyed_and_streamed(name, monkeypatch):
    _same(CORPUS / name, FeedSpec("SPY", "1min", session="extended") if name in MINUTE else FeedSpec("SPY"), monkeypatch)


@pytest.mark.parametrize("stem", ["AAPL_daily_quandl_wiki_2014", "AAPL_daily_zipline_csvdir_2012-2014",
                                  "EWG_daily_yfinance_2022-2024"])
def test_sample_csv_with_splits_and_dividends_when_read_either_way_then_the_same_feed(stem, tmp_path, monkeypatch):
    """Real files whose split and dividend columns the survey collects (AAPL's 7:1 split of 2014; zipline's and
    yfinance's prices split-adjusted, so undone on reading; yfinance's times carry a UTC offset)."""
    f = next(f for f in SAMPLE if Path(f.file).stem == stem)
    path = tmp_path / f"{stem}.csv"
    pd.read_parquet(SampleSource().root / f.file).to_csv(path, index=False)
    _same(path, f.spec, monkeypatch)
    feed = _read(path, f.spec, monkeypatch, True)[0]
    assert len(feed.splits) + len(feed.dividends) > 0, "the file should list corporate actions"
