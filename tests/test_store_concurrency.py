"""Real processes against one store: a reader while a writer ingests, and a writer killed with SIGKILL mid-write.

Each child is a fresh `python -c` (the same interpreter as pytest), so it holds its own database connections and,
for DuckDB, its own file lock, exactly like a dashboard next to `bifrost ingest`. Latencies are measured and
printed (run with `-s` to see them) but never asserted: machines are noisy.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import BAR_KEY, make_bars, make_ingestion
from test_store import assert_same_rows, assert_same_snapshot, snapshot

from bifrost.core import StoreLockedError
from bifrost.store import DuckDBStore, connect

pytestmark = pytest.mark.slow

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent

PRELUDE = """
import json, os, sys, time, traceback
from pathlib import Path
import pandas as pd
from bifrost.store import connect
from conftest import BAR_KEY, make_bars, make_ingestion

def publish(path, obj):  # atomically: the parent never reads half a file
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)
"""

READER = PRELUDE + """
url, out, ready, stop = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
reads, error = [], None
try:
    ro = connect(url, read_only=True)
    while True:
        finished = stop.exists()  # checked before the read, so the last read sees everything the writer did
        t0, w0 = time.perf_counter(), time.time()
        row = ro.query("SELECT (SELECT count(*) FROM bars) AS bars, (SELECT count(*) FROM ingestions) AS ingestions")
        reads.append([w0, time.perf_counter() - t0, int(row.iat[0, 0]), int(row.iat[0, 1])])
        if len(reads) == 1:
            ready.touch()
        if finished:
            break
except BaseException:
    error = traceback.format_exc()
publish(out, {"reads": reads, "error": error})
sys.exit(1 if error else 0)
"""

WRITER = PRELUDE + """
url, out, n_tx, batch = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
store = connect(url)
start, tx_seconds = time.time(), []
for i in range(n_tx):
    bars = make_bars(batch, start=pd.Timestamp("2020-01-02 14:30") + pd.Timedelta(days=i), seed=i)
    t0 = time.perf_counter()
    with store.transaction():
        store.upsert("bars", bars, BAR_KEY)
        store.upsert("ingestions", make_ingestion(f"batch-{i}", batch), ["id"])
    tx_seconds.append(time.perf_counter() - t0)
publish(out, {"start": start, "end": time.time(), "tx_seconds": tx_seconds})
"""

KILLED_WRITER = PRELUDE + """
url, committed, go, inside, n_big = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])
store = connect(url)
with store.transaction():  # this one commits: it is part of the state that must survive
    store.upsert("bars", make_bars(2000, start="2020-03-02 14:30", seed=11), BAR_KEY)
    store.upsert("ingestions", make_ingestion("child-committed", 2000), ["id"])
committed.touch()
while not go.exists():  # the parent takes its snapshot of the state before the doomed transaction
    time.sleep(0.01)
with store.transaction():  # this one is killed before it commits
    # overlaps the parent's rows (update path) and adds many more (insert path)
    store.upsert("bars", make_bars(n_big, symbols=20, start="2020-01-02 14:30", seed=12).assign(source="doomed"),
                 BAR_KEY)
    store.upsert("ingestions", make_ingestion("child-doomed", n_big), ["id"])
    store.execute("DELETE FROM instruments")
    store.execute("DELETE FROM ingestions WHERE id = ?", ("parent",))
    inside.touch()
    time.sleep(600)
"""


def spawn(script: str, *args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(REPO_DIR), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env, cwd=REPO_DIR,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    "Wait until `proc` creates `path`; fail with its stderr if it dies first."
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"child exited with {proc.returncode} before creating {path.name}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"child did not create {path.name} within {timeout}s")
        time.sleep(0.01)


def finish(proc: subprocess.Popen, timeout: float = 120.0) -> None:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"child did not finish within {timeout}s:\n{out}\n{err}")
    assert proc.returncode == 0, f"child exited with {proc.returncode}:\n{out}\n{err}"


def test_reader_when_writer_commits_many_batches_then_sees_only_committed_growing_counts(store, store_url,
                                                                                        tmp_path):
    n_tx, batch = 40, 2000
    reader_out, writer_out = tmp_path / "reader.json", tmp_path / "writer.json"
    ready = tmp_path / "reader.ready"
    reader = spawn(READER, store_url, reader_out, ready, writer_out)
    try:
        wait_for(ready, reader)
        writer = spawn(WRITER, store_url, writer_out, n_tx, batch)
        finish(writer)
        finish(reader)
    finally:
        for p in (reader, locals().get("writer")):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()

    result, w = json.loads(reader_out.read_text()), json.loads(writer_out.read_text())
    assert result["error"] is None, result["error"]
    reads = result["reads"]
    counts = [bars for _, _, bars, _ in reads]
    during = [r for r in reads if w["start"] <= r[0] <= w["end"]]
    latencies = [lat for _, lat, _, _ in reads]

    # only committed data: whole batches, and bars and ingestions from the same commits (one snapshot)
    assert len(reads) > 10, f"the reader only completed {len(reads)} reads"
    assert all(bars % batch == 0 for bars in counts), sorted(set(counts))
    assert all(bars == ingestions * batch for _, _, bars, ingestions in reads)
    assert counts == sorted(counts), "a reader saw the store go backwards"
    assert counts[-1] == n_tx * batch  # the last read started after the writer had finished
    assert store.scalar("SELECT count(*) FROM bars") == n_tx * batch
    assert store.scalar("SELECT count(*) FROM ingestions") == n_tx
    if store.dialect == "postgresql":  # MVCC: reads never wait for the writer
        assert len(during) > 10, f"only {len(during)} reads while the writer was writing"
    # DuckDB: a reader can only get in between two write transactions, so how many reads land inside the write
    # window depends on timing; it is reported, not asserted.

    partial = sorted({c for c in counts if 0 < c < n_tx * batch})
    worst = max(reads, key=lambda r: r[1])
    print(f"\n[{store.dialect}] reader: {len(reads)} reads, {len(during)} during the write, "
          f"{len(partial)}/{n_tx - 1} partial states seen; read latency max {worst[1] * 1e3:.1f} ms "
          f"(at writer t={worst[0] - w['start']:+.2f} s), median {statistics.median(latencies) * 1e3:.1f} ms, "
          f"p95 {statistics.quantiles(latencies, n=20)[-1] * 1e3:.1f} ms; writer: {n_tx} transactions of "
          f"{batch} bars in {w['end'] - w['start']:.2f} s, slowest {max(w['tx_seconds']) * 1e3:.1f} ms")


def test_writer_when_killed_mid_transaction_then_store_keeps_previous_state_and_stays_writable(store, store_url,
                                                                                               tmp_path):
    store.upsert("bars", make_bars(1000), BAR_KEY)
    store.upsert("instruments", pd.DataFrame({"symbol": ["S000"], "name": ["zero"], "asset_class": ["equity"],
                                              "currency": ["USD"], "exchange": ["XNYS"], "tick_size": [0.01],
                                              "lot_size": [1], "sector": [None]}), ["symbol"])
    store.upsert("ingestions", make_ingestion("parent", 1000), ["id"])

    committed, go, inside = tmp_path / "committed", tmp_path / "go", tmp_path / "inside-transaction"
    child = spawn(KILLED_WRITER, store_url, committed, go, inside, 200_000)
    try:
        wait_for(committed, child)
        before = snapshot(store)  # the parent's rows and the child's first, committed, transaction
        go.touch()
        wait_for(inside, child, timeout=120)
        # the child now holds 200k uncommitted rows; nobody else can see them
        if store.dialect == "duckdb":  # ... because nobody else can even open the file
            with pytest.raises(StoreLockedError):
                DuckDBStore(store_url, read_only=True, lock_timeout=0.2).query("SELECT count(*) FROM bars")
        else:
            assert store.scalar("SELECT count(*) FROM bars") == 3000
        os.kill(child.pid, signal.SIGKILL)
        t_kill = time.perf_counter()
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL

    after = connect(store_url)  # connect afresh, as after a crash (migrating is a no-op)
    assert_same_snapshot(snapshot(after), before)
    print(f"\n[{store.dialect}] store reopened and verified {time.perf_counter() - t_kill:.2f} s after SIGKILL")
    assert_same_rows(after.query("SELECT * FROM bars"),
                     pd.concat([make_bars(1000), make_bars(2000, start="2020-03-02 14:30", seed=11)]))
    assert before["ingestions"]["id"].tolist() == ["child-committed", "parent"]
    assert before["instruments"]["symbol"].tolist() == ["S000"]
    assert_same_snapshot(snapshot(connect(store_url, read_only=True)), before)

    # still writable, including the rows the dead transaction had touched
    fresh = make_bars(1000, seed=99).assign(source="after-crash")
    with after.transaction():
        assert after.upsert("bars", fresh, BAR_KEY) == 1000
        after.upsert("ingestions", make_ingestion("after-crash", 1000), ["id"])
    assert after.scalar("SELECT count(*) FROM bars WHERE source = 'after-crash'") == 1000
    assert after.scalar("SELECT count(*) FROM bars") == 3000
    assert after.scalar("SELECT count(*) FROM ingestions") == 3
