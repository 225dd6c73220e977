"""Backup and restore (`bifrost.backup`) on both stores: a round trip that gives back every row, a copy taken while
another process writes that is consistent with its manifest, and every refusal leaving the store as it was."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pandas as pd
import psycopg
import pytest

from bifrost.audit import AnchorLog, AuditTrail
from bifrost.backup import (MANIFEST, BackupError, Manifest, StoreNotEmptyError, _digests, audit_head, backup,
                            rename_schema, restore, table_counts)
from bifrost.core import SimulatedClock
from bifrost.data.ingest import ingest
from bifrost.data.sources import SAMPLE, SampleSource
from bifrost.portfolio.ledger import Portfolio
from bifrost.store import PostgresStore, connect
from conftest import PG_URL

CLOCK = SimulatedClock(datetime(2013, 10, 4, 21, tzinfo=timezone.utc))
SPY_DAILY = tuple(f for f in SAMPLE if f.primary and f.spec.ticker == "SPY" and f.spec.bar_size == "1d")


def _schemas(prefix: str) -> list[str]:
    with psycopg.connect(PG_URL, autocommit=True) as con:
        return [r[0] for r in con.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", [prefix + "%"])]


@pytest.fixture
def target(store_url, tmp_path):
    """A second, fresh store URL of the same kind as `store_url`; on PostgreSQL every schema a restore left (beside
    either store) is dropped afterwards."""
    if store_url.startswith("duckdb"):
        yield f"duckdb:///{tmp_path}/restored/t.duckdb"
        return
    name = f"t_{secrets.token_hex(8)}"
    try:
        yield f"{PG_URL}?schema={name}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as con:
            for s in _schemas(name) + _schemas(store_url.split("schema=")[1]):
                con.execute(f'DROP SCHEMA IF EXISTS "{s}" CASCADE')


@pytest.fixture
def traded(store_url, bifrost_home):
    "A store holding SPY's daily bars from the shipped sample, a portfolio with cash, and an anchored audit trail."
    store = connect(store_url)
    ingest(store, SampleSource(SPY_DAILY), progress=False)
    p = Portfolio.open(store, "bk_main", clock=CLOCK)
    p.deposit("100000", reason="opening deposit")
    trail = AuditTrail(store, anchors=AnchorLog.for_store(store, bifrost_home))
    for i in range(5):
        trail.append("test.backup", "bk_main", f"r{i}", {"i": i, "note": "café ' \" \\ tab\there"}, CLOCK.now())
    trail.anchor()
    return store


def _table(store, t: str) -> pd.DataFrame:
    df = store.query(f'SELECT * FROM "{t}"').astype(str)
    return df.sort_values(list(df.columns)).reset_index(drop=True)


def _edit_backup(folder: Path, sql: str) -> None:
    "Change the backup's audit table as someone might, and make the manifest's counts and checksums match it."
    log = folder / "data" / "audit_log.parquet"
    duckdb.sql(f"COPY ({sql.format(log=log)}) TO '{log}.new' (FORMAT parquet)")
    os.replace(f"{log}.new", log)
    m = json.loads((folder / MANIFEST).read_text())
    m["tables"]["audit_log"] = duckdb.sql(f"SELECT count(*) FROM '{log}'").fetchall()[0][0]
    m["files"] = _digests(folder)
    (folder / MANIFEST).write_text(json.dumps(m))


def test_a_round_trip_gives_back_every_row_and_a_trail_that_verifies(traded, store_url, target, tmp_path, bifrost_home):
    m = backup(store_url, tmp_path / "b", CLOCK)
    assert m.dialect == store_url.split(":")[0] and m.schema_version == traded.version()
    assert m.tables["bars"] == 5849 and m.tables["audit_log"] == 5 and m.audit_seq == 5
    assert (m.audit_seq, m.audit_hash) == audit_head(traded) and m.created_at == "2013-10-04T21:00:00+00:00"
    assert Manifest.read(tmp_path / "b") == m and m.files and not list(tmp_path.glob(".b.partial-*"))

    r = restore(target, tmp_path / "b", CLOCK, home=bifrost_home)
    assert r.aside is None and "ending at seq 5" in r.audit
    got = connect(target)
    assert table_counts(got) == {**m.tables, "audit_log": 6}
    for t in m.tables:
        if t not in ("audit_log", "schema_migrations"):
            pd.testing.assert_frame_equal(_table(got, t), _table(traded, t), obj=t)
    pd.testing.assert_frame_equal(got.query("SELECT * FROM audit_log WHERE seq <= 5 ORDER BY seq"),
                                  traded.query("SELECT * FROM audit_log ORDER BY seq"))
    last = got.query("SELECT * FROM audit_log WHERE seq = 6")
    assert last.kind.iat[0] == "store.restore" and json.loads(last.payload.iat[0])["head_hash"] == m.audit_hash
    assert AuditTrail(got, anchors=AnchorLog.for_store(got, bifrost_home)).verify().ok
    assert Portfolio.load(got, "bk_main").nav() == Portfolio.load(traded, "bk_main").nav()
    if got.dialect == "postgresql":  # the append-only triggers came back with the table
        with pytest.raises(psycopg.Error, match="append-only"):
            got.execute("UPDATE audit_log SET kind = 'x' WHERE seq = 1")
        assert _schemas(target.split("schema=")[1]) == [target.split("schema=")[1]]  # no temporary schema left


def test_a_backup_taken_while_another_process_writes_is_consistent(store_url, target, tmp_path, bifrost_home):
    "Each write commits a control row and its audit record together: any copy holds as many of one as of the other."
    connect(store_url)
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, store_url, str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"  # its first row and record are committed
        taken = []
        for i in range(3):
            taken.append(backup(store_url, tmp_path / f"b{i}", CLOCK))
            time.sleep(0.3)
        stop.touch()
        total = int(writer.stdout.readline())
    finally:
        stop.touch()
        writer.wait(timeout=120)
    assert writer.returncode == 0
    for m in taken:
        assert m.tables["trading_controls"] == m.tables["audit_log"] == m.audit_seq
    seqs = [m.audit_seq for m in taken]
    assert 0 < seqs[0] and seqs == sorted(seqs) and total > seqs[-1], (seqs, total)  # each copy taken mid-write
    mid = next(m for m in taken if 0 < m.audit_seq < total)
    r = restore(target, tmp_path / f"b{taken.index(mid)}", CLOCK, home=bifrost_home)
    assert f"ending at seq {mid.audit_seq} " in r.audit
    assert table_counts(connect(target))["trading_controls"] == mid.audit_seq


WRITER = """
import os, sys, time
from datetime import datetime, timezone
from bifrost.audit import AuditTrail
from bifrost.store import connect
store, stop = connect(sys.argv[1]), sys.argv[2]
trail, n, deadline = AuditTrail(store, anchors=None), 0, time.monotonic() + 120
while n == 0 or not os.path.exists(stop) and time.monotonic() < deadline:
    now = datetime.now(timezone.utc)
    with store.transaction():
        store.execute("INSERT INTO trading_controls (name, value, set_at, reason) VALUES (?, 'x', ?, 'bk')", [f"bk{n}", now])
        trail.append("test.write", "bk", f"bk{n}", {"n": n}, now)
    n += 1
    if n == 1:
        print("ready", flush=True)
print(n, flush=True)
"""


@pytest.mark.parametrize("edit, why", [
    ("SELECT * REPLACE (CASE WHEN seq = 3 THEN replace(payload, '\"i\":2', '\"i\":7') ELSE payload END AS payload) "
     "FROM '{log}'", "edited"),
    ("SELECT * FROM '{log}' WHERE seq < 5", "end"),
])
def test_a_duckdb_backup_changed_after_it_was_taken_is_refused_and_the_store_stays(edit, why, tmp_path, bifrost_home):
    url, other = f"duckdb:///{tmp_path}/a.duckdb", f"duckdb:///{tmp_path}/b.duckdb"
    store = connect(url)
    trail = AuditTrail(store, anchors=None)
    for i in range(5):
        trail.append("test.backup", "bk", f"r{i}", {"i": i}, CLOCK.now())
    backup(url, tmp_path / "b", CLOCK)
    _edit_backup(tmp_path / "b", edit)
    connect(other).execute("INSERT INTO trading_controls VALUES ('keep', 'me', ?, 'x')", [CLOCK.now()])
    before = (tmp_path / "b.duckdb").read_bytes()
    with pytest.raises(BackupError, match="does not end at the head recorded") as err:
        restore(other, tmp_path / "b", CLOCK, force=True, home=bifrost_home)
    assert why in str(err.value)
    assert (tmp_path / "b.duckdb").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.duckdb", "b", "b.duckdb"]  # nothing left beside it


def test_a_damaged_file_or_a_foreign_backup_is_refused(traded, store_url, tmp_path, bifrost_home):
    m = backup(store_url, tmp_path / "b", CLOCK)
    victim = tmp_path / "b" / sorted(m.files)[0]
    data = victim.read_bytes()
    victim.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(BackupError, match="damaged.*changed"):
        restore(store_url, tmp_path / "b", CLOCK, force=True, home=bifrost_home)
    victim.write_bytes(data)
    other = f"duckdb:///{tmp_path}/x.duckdb" if m.dialect == "postgresql" else f"{PG_URL}?schema=t_never_made"
    with pytest.raises(BackupError, match=f"backup of a {m.dialect} store"):
        restore(other, tmp_path / "b", CLOCK, home=bifrost_home)
    with pytest.raises(BackupError, match="no manifest.json"):
        restore(store_url, tmp_path, CLOCK, home=bifrost_home)
    with pytest.raises(BackupError, match="not an empty folder"):
        backup(store_url, tmp_path / "b", CLOCK)
    assert not _schemas("t_never_made")


def test_a_store_that_holds_rows_is_replaced_only_with_force_and_kept_aside(traded, store_url, target, tmp_path,
                                                                          bifrost_home):
    m = backup(store_url, tmp_path / "b", CLOCK)
    traded.execute("INSERT INTO trading_controls VALUES ('later', 'x', ?, 'after the backup')", [CLOCK.now()])
    with pytest.raises(StoreNotEmptyError, match="--force"):
        restore(store_url, tmp_path / "b", CLOCK, home=bifrost_home)
    assert table_counts(traded)["trading_controls"] == 1
    r = restore(store_url, tmp_path / "b", CLOCK, force=True, home=bifrost_home)
    assert table_counts(connect(store_url))["trading_controls"] == 0 == m.tables["trading_controls"]
    if traded.dialect == "duckdb":
        kept = connect(f"duckdb:///{r.aside}", read_only=True)
    else:
        kept = PostgresStore(f"{PG_URL}?schema={r.aside.removeprefix('schema ')}", read_only=True)
    assert kept.scalar("SELECT reason FROM trading_controls") == "after the backup"


def test_restoring_an_older_backup_supersedes_the_anchors_of_the_lost_history(traded, store_url, target, tmp_path,
                                                                             bifrost_home):
    m = backup(store_url, tmp_path / "monday", CLOCK)
    anchors = AnchorLog.for_store(traded, bifrost_home)
    trail = AuditTrail(traded, anchors=anchors)
    for i in range(3):
        trail.append("test.backup", "bk_main", f"later{i}", {"i": i}, CLOCK.now())
    old = anchors.path.read_text()
    r = restore(store_url, tmp_path / "monday", CLOCK, force=True, home=bifrost_home)
    assert (r.anchors.lost, r.anchors.lost_from, r.anchors.lost_to) == (3, m.audit_seq + 1, m.audit_seq + 3)
    assert "belonged to the history lost with the store" in str(r.anchors)
    assert Path(r.anchors.superseded).read_text() == old  # the evidence kept as it was
    got = connect(store_url)
    report = AuditTrail(got, anchors=anchors).verify()
    assert report.ok and report.anchored == m.audit_seq + 1, report  # the restore's own record, anchored
    payload = json.loads(got.scalar("SELECT payload FROM audit_log WHERE kind = 'store.restore'"))
    assert payload["anchors_superseded_seq"] == [m.audit_seq + 1, m.audit_seq + 3]


def test_the_schema_is_renamed_in_statements_never_in_copied_rows():
    script = ['CREATE SCHEMA t_a;\n', 'CREATE TABLE t_a.orders (x text);\n',
              'COPY t_a.orders (x) FROM stdin;\n', 't_a.orders is data\n', '\\.\n',
              'CREATE TRIGGER g BEFORE UPDATE ON t_a.audit_log FOR EACH ROW EXECUTE FUNCTION t_a.f();\n',
              "COMMENT ON SCHEMA t_a IS 'x';\n", 'SELECT "t_a".x, t_ab.y, xt_a.z;\n']
    assert list(rename_schema(script, "t_a", "t_b")) == [
        'CREATE TABLE "t_b".orders (x text);\n', 'COPY "t_b".orders (x) FROM stdin;\n', 't_a.orders is data\n',
        '\\.\n', 'CREATE TRIGGER g BEFORE UPDATE ON "t_b".audit_log FOR EACH ROW EXECUTE FUNCTION "t_b".f();\n',
        'SELECT "t_b".x, t_ab.y, xt_a.z;\n']


def test_a_head_that_differs_from_the_manifest_is_refused_and_nothing_is_left_behind(traded, store_url, target,
                                                                                     tmp_path, bifrost_home):
    backup(store_url, tmp_path / "b", CLOCK)
    m = json.loads((tmp_path / "b" / MANIFEST).read_text())
    m["audit_hash"] = "f" * 64  # the data says one history, the manifest another
    (tmp_path / "b" / MANIFEST).write_text(json.dumps(m))
    before = {t: _table(traded, t) for t in ("audit_log", "trading_controls")}
    for url in (target, store_url):  # into a new store, and over the one it came from
        with pytest.raises(BackupError, match="does not end at the head recorded"):
            restore(url, tmp_path / "b", CLOCK, force=True, home=bifrost_home)
    for t, df in before.items():
        pd.testing.assert_frame_equal(_table(connect(store_url), t), df)
    if traded.dialect == "postgresql":
        assert not _schemas(target.split("schema=")[1]) and _schemas(store_url.split("schema=")[1]) == [traded.schema]
    else:
        assert not list(tmp_path.rglob("*restoring*")) and not list(tmp_path.rglob("*before-restore*"))
