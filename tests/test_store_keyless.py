"""DuckDB keeps `bars` without its primary key (migration 12: the key's index is held in memory for every row a
transaction inserts, so a large ingestion grew without bound). Uniqueness of (symbol, bar_size, ts) then rests on
the writers: every write path that reaches `bars` is driven here, twice and concurrently, and no key is ever held
twice. PostgreSQL keeps its key; the same tests run there too."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

import bifrost.store as store_module
from bifrost.core import SimulatedClock
from bifrost.data.ingest import ingest
from bifrost.data.quality import quality_report
from bifrost.data.read import read_bars
from bifrost.data.sources import SAMPLE, FeedSpec, FileSource, SampleSource, read_table
from bifrost.store import connect

CLOCK = SimulatedClock(pd.Timestamp("2026-06-30 21:00", tz="UTC").to_pydatetime())
SAMPLE_DIR = SampleSource().root
KEY = ["symbol", "bar_size", "ts"]
SPY_DAILY = read_table(SAMPLE_DIR / "daily/SPY_daily_lean.parquet")  # 5,849 real sessions


def repeated_keys(store) -> int:
    "How many (symbol, bar_size, ts) the store holds more than once."
    return int(store.scalar("SELECT count(*) FROM (SELECT symbol, bar_size, ts FROM bars GROUP BY symbol, bar_size, ts "
                            "HAVING count(*) > 1) AS d"))


def spy_csv(folder: Path, rows: slice, name: str = "spy.csv") -> Path:
    path = folder / name
    SPY_DAILY.iloc[rows].to_csv(path, index=False)
    return path


def spy_bars(rows: slice, close_shift: float = 0.0) -> pd.DataFrame:
    "SPY's real daily bars as `bars` rows."
    t = SPY_DAILY.iloc[rows]
    return pd.DataFrame({"symbol": "SPY", "bar_size": "1d", "ts": pd.to_datetime(t.date, utc=True),  # a session at midnight UTC
                         "open": t.open.to_numpy(float), "high": t.high.to_numpy(float), "low": t.low.to_numpy(float),
                         "close": t.close.to_numpy(float) + close_shift, "volume": t.volume.to_numpy(float),
                         "source": "test"}).reset_index(drop=True)


# -- the schema -----------------------------------------------------------------------------------------
def test_bars_key_when_migrated_then_only_postgresql_keeps_the_primary_key(store):
    if store.dialect == "duckdb":
        kinds = {r[0] for r in store.rows("SELECT constraint_type FROM duckdb_constraints() WHERE table_name = 'bars'")}
        assert "PRIMARY KEY" not in kinds and "UNIQUE" not in kinds
    else:
        assert store.scalar("SELECT count(*) FROM information_schema.table_constraints WHERE table_name = 'bars' "
                            "AND constraint_type = 'PRIMARY KEY' AND table_schema = current_schema()") == 1
    assert store.version() == store_module.LATEST_VERSION >= 12


def test_migration_12_when_bars_were_stored_under_the_key_then_every_row_kept(tmp_path, monkeypatch):
    url = f"duckdb:///{tmp_path}/old.duckdb"
    monkeypatch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:11])
    monkeypatch.setattr(store_module, "LATEST_VERSION", 11)
    old = connect(url)
    assert old.version() == 11
    feeds = tuple(f for f in SAMPLE if f.primary and f.spec.ticker in ("SPY", "AAPL") and f.spec.bar_size == "1d")
    ingest(old, SampleSource(feeds), clock=CLOCK, progress=False)
    before = old.query("SELECT * FROM bars ORDER BY symbol, bar_size, ts")
    assert "PRIMARY KEY" in {r[0] for r in old.rows("SELECT constraint_type FROM duckdb_constraints() "
                                                    "WHERE table_name = 'bars'")}
    monkeypatch.undo()
    new = connect(url)
    assert new.version() == store_module.LATEST_VERSION
    assert "PRIMARY KEY" not in {r[0] for r in new.rows("SELECT constraint_type FROM duckdb_constraints() "
                                                        "WHERE table_name = 'bars'")}
    pd.testing.assert_frame_equal(new.query("SELECT * FROM bars"), before)  # in key order, as rebuilt
    assert len(before) > 10_000
    # and the store keeps working: a top-up adds nothing twice
    ingest(new, SampleSource(feeds), full=True, clock=CLOCK, progress=False)
    assert repeated_keys(new) == 0 and new.scalar("SELECT count(*) FROM bars") == len(before)


# -- every write path: no key twice --------------------------------------------------------------------
def test_upsert_when_written_twice_then_replaced_not_repeated(store):
    first = spy_bars(slice(0, 300))
    store.upsert("bars", first, KEY)
    store.upsert("bars", spy_bars(slice(100, 400), close_shift=1.0), KEY)  # 200 replaced, 100 new
    assert repeated_keys(store) == 0 and store.scalar("SELECT count(*) FROM bars") == 400
    got = store.query("SELECT ts, close FROM bars ORDER BY ts")
    assert (got.close.iloc[100:].to_numpy() == spy_bars(slice(100, 400)).close.to_numpy() + 1.0).all()
    assert (got.close.iloc[:100].to_numpy() == first.close.iloc[:100].to_numpy()).all()
    store.upsert("bars", spy_bars(slice(350, 450), close_shift=5.0), KEY, update=False)  # keeps what it holds
    assert repeated_keys(store) == 0 and store.scalar("SELECT count(*) FROM bars") == 450
    kept = store.query("SELECT close FROM bars WHERE ts = ?", (spy_bars(slice(350, 351)).ts[0],)).close[0]
    assert kept == spy_bars(slice(350, 351), close_shift=1.0).close[0]


def test_upsert_when_a_transaction_rolls_back_then_nothing_deleted(store):
    store.upsert("bars", spy_bars(slice(0, 50)), KEY)
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.upsert("bars", spy_bars(slice(0, 50), close_shift=9.0), KEY)
            raise RuntimeError("after the delete and the insert")
    pd.testing.assert_frame_equal(store.query("SELECT * FROM bars ORDER BY ts"), spy_bars(slice(0, 50)),
                                  check_dtype=False)


def test_ingest_when_repeated_overlapping_and_full_then_each_bar_once(store, tmp_path):
    spec = FeedSpec("SPY")
    ingest(store, FileSource(spy_csv(tmp_path, slice(0, 3000)), spec), clock=CLOCK, progress=False)
    ingest(store, FileSource(spy_csv(tmp_path, slice(0, 3000)), spec), clock=CLOCK, progress=False)  # again
    # another file of the same series overlapping the first by 1,000 rows: a new feed, no watermark of its own
    ingest(store, FileSource(spy_csv(tmp_path, slice(2000, 4500), "spy_b.csv"), spec), clock=CLOCK, progress=False)
    assert repeated_keys(store) == 0 and store.scalar("SELECT count(*) FROM bars") == 4500
    ingest(store, FileSource(spy_csv(tmp_path, slice(0, None)), spec), full=True, clock=CLOCK, progress=False)
    assert repeated_keys(store) == 0 and store.scalar("SELECT count(*) FROM bars") == len(SPY_DAILY)
    report = quality_report(store, "1d").set_index("symbol")
    assert report.loc["SPY", "duplicates"] == 0 and report.loc["SPY", "bars"] == len(SPY_DAILY)


def test_streamed_bars_when_a_time_comes_twice_then_stored_once(store):
    from bifrost.strategy.stream import store_stream
    from types import SimpleNamespace
    rows = spy_bars(slice(0, 20))
    events = [SimpleNamespace(symbol="SPY", timestamp=r.ts, open=r.open, high=r.high, low=r.low, close=r.close,
                              volume=r.volume) for r in rows.itertuples()]
    end = pd.Timestamp("2100-01-01", tz="UTC")
    list(store_stream(store, events, ["SPY"], "1d", end, "stream:test"))
    list(store_stream(store, events[5:] + events[:5], ["SPY"], "1d", end, "stream:test"))  # a reconnect replays
    assert repeated_keys(store) == 0 and store.scalar("SELECT count(*) FROM bars") == 20


def test_writers_when_threads_of_one_process_race_then_each_key_once(store_url, tmp_path):
    """Threads of one process on one DuckDB file meet no file lock and, without the key, no conflict at commit:
    a lock per file held to the end of each write keeps them in turn (PostgreSQL's key and locks do it there)."""
    connect(store_url)
    errors = []
    def upsert_all(shift):
        try:
            s = connect(store_url, migrate=False)
            for i in range(0, 400, 40):  # many small transactions, interleaving with the others'
                s.upsert("bars", spy_bars(slice(i, i + 40), close_shift=shift), KEY)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(repr(err))
    def ingest_file(n):
        try:
            path = spy_csv(tmp_path, slice(0, 600), f"spy_{n}.csv")
            ingest(connect(store_url, migrate=False), FileSource(path, FeedSpec("SPY"), vendor="test"),
                   clock=CLOCK, progress=False)
        except Exception as err:  # noqa: BLE001
            errors.append(repr(err))
    threads = [threading.Thread(target=upsert_all, args=(k,)) for k in range(3)]
    threads += [threading.Thread(target=ingest_file, args=(k,)) for k in range(2)]
    store = connect(store_url, migrate=False)
    with store.session():  # one connection open throughout: DuckDB builds a file's instance once, not per thread
        for t in threads:  # (threads racing to rebuild it can miss its pandas scan: a DuckDB race, not ours)
            t.start()
        for t in threads:
            t.join(120)
    assert repeated_keys(store) == 0
    if store.dialect == "duckdb":  # the writers took turns: none failed
        assert not errors and store.scalar("SELECT count(*) FROM bars") == 600
    else:  # an ingest that read the series before a racing upsert committed is refused by the key, whole
        assert all("duplicate key" in e for e in errors), errors
        assert store.scalar("SELECT count(*) FROM bars") in (400, 600)


@pytest.mark.slow
def test_ingest_when_two_processes_feed_one_series_then_each_bar_once(store_url, tmp_path):
    connect(store_url)
    path = spy_csv(tmp_path, slice(0, None))
    code = ("import sys; from bifrost.store import connect; from bifrost.data.ingest import ingest; "
            "from bifrost.data.sources import FileSource, FeedSpec; "
            "ingest(connect(sys.argv[1]), FileSource(sys.argv[2], FeedSpec('SPY')), full=True, progress=False)")
    procs = [subprocess.Popen([sys.executable, "-c", code, store_url, str(path)], stderr=subprocess.PIPE, text=True,
                              env={**os.environ}) for _ in range(2)]
    outs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    store = connect(store_url)
    assert repeated_keys(store) == 0 and store.scalar("SELECT count(*) FROM bars") == len(SPY_DAILY)
    assert len(read_bars(store, "SPY", "1d")) == len(SPY_DAILY)


def test_quality_when_a_bar_is_stored_twice_then_counted(tmp_path):
    store = connect(f"duckdb:///{tmp_path}/q.duckdb")
    ingest(store, FileSource(spy_csv(tmp_path, slice(0, 100)), FeedSpec("SPY")), clock=CLOCK, progress=False)
    store.execute("INSERT INTO bars SELECT * FROM bars ORDER BY ts LIMIT 2")  # what no writer of Bifrost does
    assert quality_report(store, "1d").set_index("symbol").loc["SPY", "duplicates"] == 2
