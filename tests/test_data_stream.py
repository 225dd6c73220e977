"""Ingestion streams: a file is read, validated and written in chunks inside the feed's one transaction; the
verdicts do not depend on where the chunks are cut; a failure mid-file leaves the store as it was; progress
is counted in rows."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bifrost.core import SimulatedClock
from bifrost.data.ingest import ingest
from bifrost.data.sources import FeedSpec, FileSource, SampleSource, read_table
from bifrost.store import Store, connect

CLOCK = SimulatedClock(pd.Timestamp("2026-06-30 21:00", tz="UTC").to_pydatetime())
SPY_HOUR = SampleSource().root / "intraday/SPY_1hour_lean.parquet"
SPEC = FeedSpec("SPY", "1h")
TABLES = ("bars", "quarantine", "series", "instruments", "ingestions", "corporate_actions")


def nasty_csv(path, rows: int = 60) -> None:
    "Real SPY hour bars spoiled at many places: duplicates, a conflict, a row out of order, a spike, a ragged line."
    t = read_table(SPY_HOUR).iloc[:rows].reset_index(drop=True)
    t.loc[7, ["open", "high", "low", "close"]] = t.loc[7, ["open", "high", "low", "close"]] * 10  # an isolated spike
    t.loc[12, "high"] = np.nan
    t = pd.concat([t.iloc[:20], t.iloc[[19]], t.iloc[20:30], t.iloc[[29]].assign(close=1.0), t.iloc[30:], t.iloc[[3]]],
                  ignore_index=True)  # 19 twice, 29 twice and different, row 3 again at the end
    lines = t.to_csv(index=False).splitlines()
    lines.insert(40, "1998-01-09 10:00:00,1,2")  # a ragged line
    path.write_text("\n".join(lines) + "\n")


def snapshot(store: Store) -> dict[str, pd.DataFrame]:
    return {t: store.query(f"SELECT * FROM {t} ORDER BY ALL" if store.dialect == "duckdb"
                           else f"SELECT * FROM {t} ORDER BY 1, 2, 3") for t in TABLES}


def test_chunks_when_cut_anywhere_then_the_store_holds_what_one_piece_gives(tmp_path):
    path = tmp_path / "spy.csv"
    nasty_csv(path)
    stores = {}
    for rows in (1, 2, 3, 7, 1_000_000):
        store = stores[rows] = connect(f"duckdb:///{tmp_path}/c{rows}.duckdb")
        report = ingest(store, FileSource(path, SPEC, chunk_rows=rows), clock=CLOCK, progress=False)
        assert report.written + report.quarantined == report.feeds[0].rows_in == 64
    whole = stores[1_000_000]
    q = whole.query("SELECT reason, count(*) AS n FROM quarantine GROUP BY reason")
    assert dict(zip(q.reason, q.n)) == {"implausible_jump": 1, "nan_price": 1, "duplicate_timestamp": 1,
                                        "conflicting_duplicate": 2, "out_of_order": 1, "malformed_line": 1,
                                        "low_above_open_close": 1}  # the conflicting copy closes at 1.0
    for rows, store in stores.items():
        for t in ("bars", "quarantine"):
            pd.testing.assert_frame_equal(store.query(f"SELECT * FROM {t} ORDER BY ALL"),
                                          whole.query(f"SELECT * FROM {t} ORDER BY ALL"), obj=f"{t}, chunks of {rows}")


class BrokenMidFile(FileSource):
    "A file whose reading fails after `good` chunks, as a disk or a network share can (a real OSError)."
    def __init__(self, *a, good: int, **kw):
        super().__init__(*a, **kw)
        self.good = good

    def stream(self, spec, since=None):
        for i, chunk in enumerate(super().stream(spec, since)):
            if i == self.good:
                raise OSError(5, "Input/output error", str(self.path))
            yield chunk


def test_failure_when_mid_file_then_the_store_is_as_it_was(store_url, tmp_path, monkeypatch):
    store = connect(store_url)
    path = tmp_path / "spy.csv"
    read_table(SPY_HOUR).iloc[:2000].to_csv(path, index=False)
    ingest(store, FileSource(path, SPEC, chunk_rows=300), clock=CLOCK, progress=False)  # a first good run
    grown = tmp_path / "spy_grown.csv"
    read_table(SPY_HOUR).iloc[:5000].to_csv(grown, index=False)
    before = snapshot(store)
    written = []  # bars that reached the store (streamed, appended or upserted) before the failure
    append, upsert, stream = Store.append, Store.upsert, Store.append_stream
    monkeypatch.setattr(Store, "append", lambda self, t, f: written.append(len(f)) or append(self, t, f))
    monkeypatch.setattr(Store, "upsert", lambda self, t, f, *a, **k: (t == "bars" and written.append(len(f)))
                        or upsert(self, t, f, *a, **k))
    monkeypatch.setattr(Store, "append_stream", lambda self, t, schema, batches: stream(
        self, t, schema, (written.append(b.num_rows) or b for b in batches)))
    with pytest.raises(OSError, match="Input/output error"):
        ingest(store, BrokenMidFile(grown, SPEC, chunk_rows=500, good=6), clock=CLOCK, progress=False, full=True)
    # the fifth chunk's new bars were streamed in before the failure (the sixth was read ahead; the first four lie
    # within the stored history, held until the insert ends): then undone
    assert sum(written) >= 400
    after = snapshot(store)
    for t in TABLES:
        pd.testing.assert_frame_equal(before[t], after[t], obj=t)


def test_progress_when_ingesting_a_file_then_counted_in_rows(tmp_path, capsys):
    path = tmp_path / "spy.csv"
    read_table(SPY_HOUR).iloc[:1000].to_csv(path, index=False)
    ingest(connect(f"duckdb:///{tmp_path}/p.duckdb"), FileSource(path, SPEC, chunk_rows=100), clock=CLOCK)
    err = capsys.readouterr().err
    assert "/1.00k" in err and "row/s" in err, err[-500:]  # counted in rows, out of the rows the file holds
