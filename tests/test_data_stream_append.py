"""The streamed append under an ingestion: `Store.append_stream` on both stores (all rows, or none when the stream
fails; DuckDB's memory limit put back either way), and a feed whose verdicts are held while the insert pulls its
chunks leaves the same store as one read in a single piece."""
from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from bifrost.core import SimulatedClock
from bifrost.data.ingest import ingest
from bifrost.data.sources import FeedSpec, FileSource, SampleSource, read_table

CLOCK = SimulatedClock(pd.Timestamp("2026-06-30 21:00", tz="UTC").to_pydatetime())
SPY = read_table(SampleSource().root / "daily/SPY_daily_lean.parquet")


def spy_table() -> pa.Table:
    return pa.Table.from_pandas(pd.DataFrame({
        "symbol": "SPY", "bar_size": "1d", "ts": pd.to_datetime(SPY.date, utc=True), "open": SPY.open,
        "high": SPY.high, "low": SPY.low, "close": SPY.close, "volume": SPY.volume, "source": "test"}),
        preserve_index=False)


def memory_limit(store):
    return store.scalar("SELECT current_setting('memory_limit')") if store.dialect == "duckdb" else None


def test_append_stream_when_pulled_batch_by_batch_then_every_row_once(store):
    table, pulled = spy_table(), []
    def batches():
        for b in table.to_batches(max_chunksize=500):
            pulled.append(b.num_rows)
            yield b
    with store.session():
        before = memory_limit(store)
        assert store.append_stream("bars", table.schema, batches()) == len(SPY)
        assert memory_limit(store) == before
    assert len(pulled) == -(-len(SPY) // 500)
    got = store.query("SELECT ts, close FROM bars ORDER BY ts")
    assert len(got) == len(SPY) and (got.close.to_numpy() == SPY.close.to_numpy()).all()


def test_append_stream_when_the_stream_fails_then_nothing_stored(store):
    table = spy_table()
    def batches():
        yield from table.to_batches(max_chunksize=1000)[:3]
        raise OSError("the disk went away after 3,000 rows")
    with store.session():
        before = memory_limit(store)
        with pytest.raises(Exception, match="disk went away"):
            with store.transaction():
                store.append_stream("bars", table.schema, batches())
        assert memory_limit(store) == before  # put back once the failed transaction rolled back
    assert store.scalar("SELECT count(*) FROM bars") == 0


def test_ingest_when_bad_rows_fall_in_many_chunks_then_same_store_as_one_piece(store, tmp_path):
    "Quarantined rows are held while the insert pulls the chunks; they land as they do read in one piece."
    rows = SPY.iloc[:3000].copy()
    rows.loc[rows.index[[10, 700, 1500, 2999]], "low"] = rows.high.iloc[[10, 700, 1500, 2999]].to_numpy() + 5  # low > high
    rows.loc[rows.index[[40, 2200]], "volume"] = -1.0
    path = tmp_path / "spy.csv"
    rows.to_csv(path, index=False)
    tables = ("bars", "quarantine", "series", "instruments")
    def snapshot():
        return {t: store.query(f"SELECT * FROM {t} ORDER BY ALL" if store.dialect == "duckdb" else f"SELECT * FROM {t}")
                for t in tables}
    one = ingest(store, FileSource(path, FeedSpec("SPY"), chunk_rows=10_000), clock=CLOCK, progress=False)
    whole = snapshot()
    for t in ("bars", "quarantine", "series", "instruments", "ingestions"):
        store.execute(f"DELETE FROM {t}")
    chunked = ingest(store, FileSource(path, FeedSpec("SPY"), chunk_rows=97), clock=CLOCK, progress=False)
    assert (one.written, one.quarantined) == (chunked.written, chunked.quarantined) == (2994, 6)
    for t, frame in snapshot().items():
        key = list(frame.columns)
        pd.testing.assert_frame_equal(frame.sort_values(key).reset_index(drop=True),
                                      whole[t].sort_values(key).reset_index(drop=True))
