"""One writer per series: two `bifrost ingest file` processes feeding one symbol from two vendors at the same
time never mix their bars; the second is refused with a clear error, on both stores."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bifrost.data.sources import SampleSource, read_table
from bifrost.store import connect

BIFROST = str(Path(sys.executable).parent / "bifrost")


def test_two_vendors_when_ingesting_one_symbol_at_once_then_one_wins_and_the_other_is_refused(store_url, tmp_path):
    table = read_table(SampleSource().root / "intraday/SPY_1hour_lean.parquet").iloc[:20_000]
    connect(store_url)  # migrated before the race, so both processes start on the same footing
    procs = []
    for vendor in ("alpha", "beta"):
        path = tmp_path / f"{vendor}.csv"
        table.to_csv(path, index=False)
        env = {**os.environ, "BIFROST_HOME": str(tmp_path), "BIFROST_DB_URL": store_url}
        procs.append(subprocess.Popen([BIFROST, "ingest", "file", str(path), "--symbol", "RACE", "--basis", "raw",
                                       "--bar-size", "1h", "--vendor", vendor], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes)[0] == 0 and sorted(codes)[1] != 0, outs
    loser = outs[codes.index(max(codes))]
    assert "refusing to mix" in loser and "Traceback" not in loser
    store = connect(store_url)
    sources = store.query("SELECT DISTINCT source FROM bars WHERE symbol = 'RACE'").source.tolist()
    winner = ["alpha", "beta"][codes.index(0)]
    assert sources == [f"file:{winner}.csv"]
    assert store.scalar("SELECT source FROM series WHERE symbol = 'RACE'") == winner
