"""Nothing implausible is stored: non-finite and out-of-bounds values, ambiguous or impossible times, bars
off their grid; a daily bar lands on its exchange session whatever the file's midnight convention (Bifrost's
own export reads back exactly); the watermark moves only with stored rows. Backend-independent: DuckDB only."""
from __future__ import annotations

import pandas as pd
import pytest

from bifrost.core import DataError, SimulatedClock
from bifrost.data.ingest import ingest
from bifrost.data.read import read_bars
from bifrost.data.sources import SAMPLE, FeedSpec, FileSource, SampleSource, read_table
from bifrost.data.validate import Bounds
from bifrost.store import connect

CLOCK = SimulatedClock(pd.Timestamp("2026-06-30 21:00", tz="UTC").to_pydatetime())
SPY_DAILY = SampleSource().root / "daily/SPY_daily_lean.parquet"
SPY_MINUTE = SampleSource().root / "intraday/SPY_1min_lean_2013-10_and_2023-08-03.parquet"


@pytest.fixture
def store(tmp_path):
    return connect(f"duckdb:///{tmp_path}/t.duckdb")


def spy_rows(n: int = 20) -> pd.DataFrame:
    "The first `n` real SPY daily bars, every value as text (as a CSV holds them)."
    return read_table(SPY_DAILY).iloc[:n].astype(str).reset_index(drop=True)


def run(store, table: pd.DataFrame, path, spec=FeedSpec("SPY"), **kw):
    if path.suffix == ".parquet":
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)
    return ingest(store, FileSource(path, spec), clock=CLOCK, progress=False, **kw)


def reasons(store) -> dict[str, list[str]]:
    q = store.query("SELECT reason, row_ref FROM quarantine ORDER BY row_ref")
    return {r: sorted(g.row_ref.str.split(":").str[-1], key=int) for r, g in q.groupby("reason")}


# -- values ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_infinite_highs_and_volumes_when_ingested_then_quarantined_not_stored(store, tmp_path, suffix):
    t = spy_rows()
    t.loc[2, "high"], t.loc[4, "high"], t.loc[6, "volume"], t.loc[8, "volume"] = "inf", "Infinity", "1e400", "-inf"
    if suffix == ".parquet":
        t = t.astype({c: float for c in ("open", "high", "low", "close", "volume")})
    report = run(store, t, tmp_path / f"spy{suffix}")
    assert reasons(store)["non_finite"] == ["4", "6", "8", "10"]
    assert report.written == 16
    assert store.scalar("SELECT count(*) FROM bars WHERE NOT isfinite(high) OR NOT isfinite(volume)") == 0


def test_implausible_values_when_ingested_then_quarantined_against_bounds(store, tmp_path):
    t = spy_rows()
    t.loc[2, "high"], t.loc[4, "low"], t.loc[6, "volume"] = "1e308", "1e-300", "4.6e18"
    report = run(store, t, tmp_path / "spy.csv")
    assert reasons(store) == {"implausible_value": ["4", "6", "8"]}
    detail = store.scalar("SELECT detail FROM quarantine WHERE row_ref LIKE '%:4'")
    assert "outside bounds" in detail and "1e+308" in detail
    assert report.written == 17 and store.scalar("SELECT max(high) FROM bars") < 1000


def test_bounds_when_widened_by_the_feed_then_its_values_are_kept(store, tmp_path):
    t = spy_rows()
    t.loc[6, "volume"] = "4.6e18"
    report = run(store, t, tmp_path / "spy.csv", bounds=Bounds(max_volume=1e19))
    assert report.written == 20 and report.quarantined == 0
    with pytest.raises(ValueError, match="min_price < max_price"):
        Bounds(min_price=10, max_price=1)


# -- times ----------------------------------------------------------------------------------------------
def test_day_first_dates_when_the_whole_file_uses_them_then_refused_naming_the_row(store, tmp_path):
    t = spy_rows()
    t["date"] = pd.to_datetime(t.date).dt.strftime("%d/%m/%Y")  # 02/01/1998 is the 2nd of January
    with pytest.raises(DataError, match=r"spy.csv: no time .* line 2 '02/01/1998' is not an ISO 8601") as err:
        run(store, t, tmp_path / "spy.csv")
    assert "YYYY-MM-DD" in err.value.hint
    assert store.scalar("SELECT count(*) FROM bars") == 0


def test_ambiguous_dates_when_a_few_rows_use_them_then_those_rows_are_quarantined_not_read_month_first(store, tmp_path):
    t = spy_rows()
    t.loc[3, "date"], t.loc[5, "date"] = "01/07/1998", "09-01-1998"  # year-first 1998/01/09 would be fine
    report = run(store, t, tmp_path / "spy.csv")
    assert reasons(store) == {"bad_timestamp": ["5", "7"]}
    q = store.query("SELECT detail, raw FROM quarantine ORDER BY row_ref")
    assert "'01/07/1998' is not an ISO 8601" in q.detail[0] and "01/07/1998" in q.raw[0]  # the text is kept
    assert report.written == 18 and store.scalar("SELECT count(*) FROM bars WHERE ts >= '1998-07-01'") == 0


def test_two_unreadable_times_when_validated_then_both_quarantined_not_an_index_error(store, tmp_path):
    t = spy_rows()
    t.loc[3, "date"], t.loc[7, "date"], t.loc[9, "date"] = "garbage", "", "1998-13-45"
    report = run(store, t, tmp_path / "spy.csv")
    assert reasons(store) == {"bad_timestamp": ["5", "9", "11"]}
    assert report.written == 17


def test_year_1000_and_2099_when_ingested_then_quarantined_as_implausible_times(store, tmp_path):
    t = spy_rows()
    t.loc[3, "date"], t.loc[19, "date"] = "1000-01-05", "2099-01-02"
    run(store, t, tmp_path / "spy.csv")
    assert reasons(store) == {"implausible_timestamp": ["5", "21"]}


def test_naive_then_offset_times_when_mixed_then_the_minority_is_quarantined(store, tmp_path):
    t = spy_rows()
    t.loc[15:, "date"] = t.date[15:] + "T00:00:00-05:00"
    report = run(store, t, tmp_path / "spy.csv")
    assert reasons(store) == {"bad_timestamp": ["17", "18", "19", "20", "21"]}
    assert "has a UTC offset, unlike most rows" in store.scalar("SELECT min(detail) FROM quarantine")
    assert report.written == 15


def test_minute_bars_when_stamped_at_30_seconds_then_quarantined_off_grid(store, tmp_path):
    t = read_table(SPY_MINUTE).iloc[100:110].reset_index(drop=True)
    t.loc[4, "datetime"] = t.datetime[4][:-2] + "30"
    report = run(store, t, tmp_path / "spy1m.csv", FeedSpec("SPY", "1min", session="extended"))
    assert reasons(store) == {"off_grid": ["6"]}
    assert report.written == 9


# -- a daily bar's session -------------------------------------------------------------------------------
def test_own_export_when_ingested_back_then_every_bar_lands_on_its_session_exactly(store, tmp_path):
    ingest(store, SampleSource(tuple(f for f in SAMPLE if f.file == "daily/SPY_daily_lean.parquet")),
           clock=CLOCK, progress=False)
    exported = read_bars(store, "SPY", start="2020-01-01", end="2020-03-31", adjust=None)
    assert len(exported) == 62
    for suffix in (".csv", ".parquet"):  # text `...T00:00:00+00:00`, and typed UTC midnight
        path = tmp_path / f"export{suffix}"
        table = exported.drop(columns="symbol").rename(columns={"ts": "date"})
        table.to_csv(path, index=False) if suffix == ".csv" else table.to_parquet(path, index=False)
        back = connect(f"duckdb:///{tmp_path}/back{suffix}.duckdb")
        report = ingest(back, FileSource(path, FeedSpec("SPY")), clock=CLOCK, progress=False)
        assert (report.written, report.quarantined) == (62, 0)
        pd.testing.assert_frame_equal(read_bars(back, "SPY", adjust=None), exported)


@pytest.mark.parametrize("stamp", ["{d}T00:00:00+00:00", "{d} 00:00:00-05:00", "{d}T21:00:00Z", "{d} 16:00:00-05:00",
                                   "{d}T05:00:00Z", "{d}"])
def test_daily_stamps_when_any_midnight_or_close_convention_then_the_session_date(store, tmp_path, stamp):
    t = spy_rows(5)
    t["date"] = [stamp.format(d=d) for d in t.date]
    run(store, t, tmp_path / "spy.csv")
    stored = store.query("SELECT ts FROM bars ORDER BY ts").ts.dt.strftime("%Y-%m-%d %H:%M").tolist()
    assert stored == [f"{d} 00:00" for d in spy_rows(5).date]


# -- watermarks ------------------------------------------------------------------------------------------
def test_quarantined_future_row_when_file_grows_then_later_rows_are_still_read(store, tmp_path):
    t = spy_rows(40)
    first = pd.concat([t.iloc[:20], t.iloc[[0]].assign(date="2099-01-02")], ignore_index=True)
    assert run(store, first, tmp_path / "spy.csv").written == 20
    grown = pd.concat([first, t.iloc[20:]], ignore_index=True)
    again = run(store, grown, tmp_path / "spy.csv")
    assert again.written == 20  # no `full=True` needed
    assert store.scalar("SELECT count(*) FROM bars") == 40
    assert store.scalar("SELECT max(last_ts) FROM ingestions") == pd.Timestamp(t.date[39], tz="UTC")


def test_watermark_left_in_the_future_by_an_older_version_when_ingesting_then_ignored(store, tmp_path):
    t = spy_rows(40)
    run(store, t.iloc[:20], tmp_path / "spy.csv")
    store.execute("UPDATE ingestions SET last_ts = '2099-01-02 00:00:00+00'")
    assert run(store, t, tmp_path / "spy.csv").written == 40  # re-read from the start: upserts change nothing
    assert store.scalar("SELECT count(*) FROM bars") == 40
