"""The audit trail: a whole chain verifies, any tampering is found and located — a cut tail, an emptied table and a
rewrite with recomputed hashes too, against anchors kept outside the store — the hashed encoding is unambiguous,
and on PostgreSQL the role Bifrost connects as can only insert and read (tested against the real server)."""
from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg
import pytest

import os
import secrets
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bifrost.audit import (GENESIS, AnchorLog, AuditError, AuditTrail, audit_guard, record_hash,
                           secure_audit_log)
from bifrost.store import connect

T0 = datetime(2024, 3, 1, 14, 30, tzinfo=timezone.utc)


@pytest.fixture
def store(store_url):
    return connect(store_url)


def fill_trail(audit: AuditTrail, n: int) -> None:
    for i in range(n):
        audit.append("order.fill", f"acct{i % 3}", f"c-{i}", {"qty": Decimal(i + 1), "price": Decimal("101.25")},
                     T0 + timedelta(seconds=i))


def tamper(store, sql: str) -> None:
    "Change the table behind the trail's back (on PostgreSQL the append-only triggers must be lifted first)."
    if store.dialect == "postgresql":
        with store.transaction():
            store.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
            for stmt in sql.split("; "):
                store.execute(stmt)
            store.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
    else:
        with store.transaction():
            for stmt in sql.split("; "):
                store.execute(stmt)


def test_intact_chain_verifies_and_reads_back(store):
    audit = AuditTrail(store)
    fill_trail(audit, 20)
    report = audit.verify()
    assert report.ok and report.records == 20 and report.head_seq == 20
    assert audit.verify(expect_head=(report.head_seq, report.head_hash)).ok
    assert audit.records(account="acct1").subject.tolist() == [f"c-{i}" for i in range(1, 20, 3)]
    assert audit.records(limit=2).seq.tolist() == [19, 20]


@pytest.mark.parametrize("how", ["edit payload", "edit time", "edit kind", "delete", "swap", "rehash one"])
def test_tampering_is_found_and_located(store, how):
    audit = AuditTrail(store)
    fill_trail(audit, 10)
    sql = {
        "edit payload": "UPDATE audit_log SET payload = replace(payload, '101.25', '99.00') WHERE seq = 4",
        "edit time": "UPDATE audit_log SET ts = ts + INTERVAL '1 second' WHERE seq = 4",
        "edit kind": "UPDATE audit_log SET kind = 'order.status' WHERE seq = 4",
        "delete": "DELETE FROM audit_log WHERE seq = 4",
        # reorder: records 4 and 5 trade places (sequence numbers swapped)
        "swap": "UPDATE audit_log SET seq = -4 WHERE seq = 4; UPDATE audit_log SET seq = 4 WHERE seq = 5; "
                "UPDATE audit_log SET seq = 5 WHERE seq = -4",
        # a forger who recomputes record 4's own hash still breaks the link from record 5
        "rehash one": "UPDATE audit_log SET hash = repeat('a', 64) WHERE seq = 4",
    }[how]
    tamper(store, sql)
    report = audit.verify()
    assert not report.ok
    assert min(p.seq for p in report.problems) == 4, str(report)
    assert "BROKEN" in str(report)


def test_random_single_edits_are_always_caught(store):
    audit = AuditTrail(store, anchors=None)  # each round empties and refills the table: the chain alone is checked
    fill_trail(audit, 30)
    rng = random.Random(7)
    for _ in range(5):
        seq = rng.randint(1, 30)
        col, val = rng.choice([("account", "'x'"), ("subject", "'forged'"), ("payload", "'{}'"),
                               ("prev_hash", "repeat('0', 64)")])
        tamper(store, f"UPDATE audit_log SET {col} = {val} WHERE seq = {seq}")
        report = audit.verify()
        assert not report.ok and seq in {p.seq for p in report.problems}
        fresh = AuditTrail(store, anchors=None)  # start each round from an intact trail
        tamper(store, "DELETE FROM audit_log")
        fill_trail(fresh, 30)
        assert fresh.verify().ok


def test_truncated_tail_is_found_against_a_known_head(store):
    audit = AuditTrail(store, anchors=None)
    fill_trail(audit, 8)
    head = audit.verify()
    tamper(store, "DELETE FROM audit_log WHERE seq > 6")
    assert audit.verify().ok  # a shorter chain is still a chain ...
    report = audit.verify(expect_head=(head.head_seq, head.head_hash))
    assert not report.ok and "removed from the end" in report.problems[0].problem  # ... but not the one we had


def test_append_joins_the_callers_transaction(store):
    audit = AuditTrail(store)
    fill_trail(audit, 2)
    with pytest.raises(RuntimeError):
        with store.transaction():
            audit.append("order.status", "a", "c-9", {"to": "filled"}, T0)
            raise RuntimeError("the effect failed")
    assert audit.verify().records == 2  # the record went with it
    with pytest.raises(AuditError):
        audit.append("order.status", "a", "c-9", {"px": float("inf")}, T0)
    with pytest.raises(AuditError):
        audit.append("order.status", "a", "c-9", {}, datetime(2024, 1, 1))
    assert audit.verify().ok and audit.verify().records == 2


def test_postgresql_refuses_update_delete_truncate(store_url):
    if not store_url.startswith("postgresql"):
        pytest.skip("triggers are PostgreSQL's; DuckDB relies on the chain")
    store = connect(store_url)
    audit = AuditTrail(store)
    fill_trail(audit, 3)
    for sql in ("UPDATE audit_log SET subject = 'x' WHERE seq = 2", "DELETE FROM audit_log WHERE seq = 3",
                "TRUNCATE audit_log"):
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            store.execute(sql)
    assert audit.verify().ok and audit.verify().records == 3


def test_concurrent_appenders_keep_one_chain(store_url):
    if not store_url.startswith("postgresql"):
        pytest.skip("DuckDB has one writing process; concurrency is PostgreSQL's")
    errors = []

    def writer(k):
        try:
            audit = AuditTrail(connect(store_url))
            for i in range(15):
                audit.append("order.status", f"w{k}", f"c-{k}-{i}", {"i": i}, T0)
        except Exception as err:  # noqa: BLE001 - surfaced below
            errors.append(err)

    connect(store_url)  # migrate once before the race
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    audit = AuditTrail(connect(store_url))
    report = audit.verify()
    assert report.ok and report.records == 60 and report.anchored == 60  # every append anchored, none torn
    assert sorted(a.seq for a in audit.anchors.read()[0]) == list(range(1, 61))


# -- anchors: a cut tail, an emptied table, a rewritten chain --------------------------------------------------

@pytest.fixture
def duck(tmp_path):
    "A DuckDB store: the anchors and the encoding behave the same on both backends, so one is enough."
    return connect(f"duckdb:///{tmp_path}/audit.duckdb")


def rewrite(store, audit: AuditTrail, seq: int, payload: str) -> None:
    "Forge record `seq`'s payload and recompute every hash from there on, so the chain itself is whole again."
    rows = audit.records()
    prev = GENESIS if seq == 1 else rows.hash.iat[seq - 2]
    stmts = []
    for r in rows[rows.seq >= seq].itertuples():
        body = payload if r.seq == seq else r.payload
        h = record_hash(r.seq, r.ts, r.kind, r.account, r.subject, body, prev)
        stmts.append(f"UPDATE audit_log SET payload = '{body}', prev_hash = '{prev}', hash = '{h}' WHERE seq = {r.seq}")
        prev = h
    tamper(store, "; ".join(stmts))


def test_anchors_are_published_outside_the_store_one_line_per_append(duck, bifrost_home):
    audit = AuditTrail(duck)
    fill_trail(audit, 3)
    assert audit.anchors.path.is_relative_to(bifrost_home)
    anchors, bad = audit.anchors.read()
    rows = audit.records()
    assert [(a.seq, a.hash) for a in anchors] == list(zip(rows.seq, rows.hash)) and not bad
    lines = [l for l in audit.anchors.path.read_text().splitlines() if not l.startswith("#")]
    assert lines[0].split("\t") == ["1", rows.hash.iat[0], "2024-03-01T14:30:00.000000Z"]
    report = audit.verify()
    assert report.ok and report.anchored == 3 and "holds its anchors through seq 3" in str(report)


def test_cut_tail_is_found_against_the_anchors(store):
    audit = AuditTrail(store)
    fill_trail(audit, 8)
    tamper(store, "DELETE FROM audit_log WHERE seq > 6")
    report = audit.verify()
    assert not report.ok and "records 7..8 were removed from the end" in str(report), str(report)


def test_emptied_table_is_an_error_not_an_intact_trail(store):
    audit = AuditTrail(store)
    fill_trail(audit, 4)
    tamper(store, "DELETE FROM audit_log")
    report = audit.verify()
    assert not report.ok and report.records == 0
    assert "intact" not in str(report) and "the table was emptied" in str(report)


def test_rewrite_with_recomputed_hashes_no_longer_matches_the_anchors(duck):
    audit = AuditTrail(duck)
    fill_trail(audit, 6)
    rewrite(duck, audit, 3, '{"price":"99.00","qty":"3"}')
    assert AuditTrail(duck, anchors=None).verify().ok  # the chain alone cannot tell
    report = audit.verify()
    assert not report.ok and min(p.seq for p in report.problems) == 3, str(report)
    assert "rewritten" in str(report)
    # a trail rebuilt from scratch with as many records (one of them different) does not match either
    tamper(duck, "DELETE FROM audit_log")
    forger = AuditTrail(duck, anchors=None)
    for i in range(6):
        forger.append("order.fill", f"acct{i % 3}", f"c-{i}", {"qty": Decimal(i + 1 if i != 4 else 50),
                                                               "price": Decimal("101.25")}, T0 + timedelta(seconds=i))
    report = audit.verify()
    assert not report.ok and [p.seq for p in report.problems] == [5], str(report)


def test_expected_head_holds_on_a_growing_trail(duck):
    audit = AuditTrail(duck, anchors=None)
    fill_trail(audit, 5)
    first = audit.verify()
    head = (first.head_seq, first.head_hash)
    audit.append("order.status", "a", "c-9", {"to": "filled"}, T0)  # a legitimate append
    grown = audit.verify(expect_head=head)
    assert grown.ok and grown.head_seq == 6
    assert not audit.verify(expect_head=(5, "f" * 64)).ok  # a different trail
    rewrite(duck, audit, 2, '{"price":"1","qty":"2"}')
    report = audit.verify(expect_head=head)
    assert not report.ok and "expected head" in str(report)
    tamper(duck, "DELETE FROM audit_log WHERE seq > 3")
    assert "removed from the end" in str(audit.verify(expect_head=head))


def test_rolled_back_append_publishes_no_anchor_and_a_joined_one_is_anchored_once_committed(duck):
    audit = AuditTrail(duck)
    fill_trail(audit, 1)
    with pytest.raises(RuntimeError):
        with duck.transaction():
            audit.append("order.status", "a", "c-1", {"to": "x"}, T0)
            raise RuntimeError("the effect failed")
    assert [a.seq for a in audit.anchors.read()[0]] == [1]
    with duck.transaction():
        audit.append("order.status", "a", "c-2", {"to": "filled"}, T0)
        assert [a.seq for a in audit.anchors.read()[0]] == [1]  # not yet committed
    assert audit.verify().ok and [a.seq for a in audit.anchors.read()[0]] == [1, 2]
    with duck.transaction():
        audit.append("order.status", "a", "c-3", {"to": "filled"}, T0)
    assert audit.anchor().seq == 3 and audit.verify().anchored == 3


def test_anchor_file_lines_that_are_not_anchors_are_reported(duck):
    audit = AuditTrail(duck)
    fill_trail(audit, 2)
    with open(audit.anchors.path, "a") as f:
        f.write("2\tnot-a-hash\t2024-01-01\n")
    report = audit.verify()
    assert not report.ok and "is not an anchor" in str(report)


def test_audit_verify_command_finds_a_cut_tail(duck, bifrost_home):
    fill_trail(AuditTrail(duck), 5)
    tamper(duck, "DELETE FROM audit_log WHERE seq > 2")
    env = {**os.environ, "BIFROST_HOME": str(bifrost_home), "BIFROST_DB_URL": duck.url}
    bifrost = str(Path(sys.executable).with_name("bifrost"))
    out = subprocess.run([bifrost, "audit", "verify"], env=env, capture_output=True, text=True, timeout=120)
    assert "BROKEN" in out.stdout and "records 3..5 were removed from the end" in out.stdout, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


# -- the hashed encoding ---------------------------------------------------------------------------------------

def test_text_moved_between_fields_changes_the_hash(duck):
    audit = AuditTrail(duck)
    audit.append("order.fill", "acct\x1fc-1", "x", {"qty": 1}, T0)
    audit.append("order.fill", "acct", "c-2", {"qty": 2}, T0)
    # the unit separator moves from the account into the subject: same bytes under encoding 1
    tamper(duck, "UPDATE audit_log SET account = 'acct', subject = 'c-1' || chr(31) || 'x' WHERE seq = 1")
    report = audit.verify()
    assert not report.ok and [p.seq for p in report.problems] == [1], str(report)


def test_trail_written_in_encoding_1_still_verifies_and_grows_in_encoding_2(duck):
    prev = GENESIS
    for seq in (1, 2, 3):  # a trail written by an earlier Bifrost
        ts = T0 + timedelta(seconds=seq)
        h = record_hash(seq, ts, "order.fill", "a", f"c-{seq}", "{}", prev, encoding=1)
        duck.execute("INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (seq, ts, "order.fill", "a", f"c-{seq}", "{}", prev, h))
        prev = h
    audit = AuditTrail(duck)
    audit.append("order.fill", "a", "c-4", {}, T0)
    report = audit.verify()
    assert report.ok and (report.records, report.legacy) == (4, 3), str(report)
    assert audit.records().hash.iat[3] == record_hash(4, T0, "order.fill", "a", "c-4", "{}", prev, encoding=2)
    tamper(duck, "UPDATE audit_log SET subject = 'c-9' WHERE seq = 2")
    assert [p.seq for p in audit.verify().problems] == [2]


def test_records_limit_must_be_positive(duck):
    for bad in (-1, 0, 2.5):
        with pytest.raises(AuditError, match="limit"):
            AuditTrail(duck).records(limit=bad)


# -- PostgreSQL: the app role can only insert and read -----------------------------------------------------------

PG_URL = os.environ.get("BIFROST_TEST_PG_URL", "postgresql://root@127.0.0.1:5432/test")


def as_role(url: str, role: str) -> str:
    p = urlsplit(url)
    return urlunsplit(p._replace(netloc=f"{role}@{p.hostname}:{p.port or 5432}"))


@pytest.fixture
def pg_app():
    "A fresh schema and a fresh login role (no superuser) that may create schemas, as Bifrost's own role would."
    tag = secrets.token_hex(4)
    schema, app, owner = f"t_{tag}", f"bifrost_app_{tag}", f"audit_owner_{tag}"
    db = urlsplit(PG_URL).path.lstrip("/")
    root = psycopg.connect(PG_URL, autocommit=True)
    root.execute(f"CREATE ROLE {app} LOGIN")
    root.execute(f'GRANT CREATE ON DATABASE "{db}" TO {app}')
    url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}schema={schema}"
    try:
        yield url, as_role(url, app), app, owner
    finally:
        root.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        root.execute(f'REVOKE CREATE ON DATABASE "{db}" FROM {app}')
        for role in (app, owner):
            root.execute(f"DROP OWNED BY {role}" if root.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone() else "SELECT 1")
            root.execute(f"DROP ROLE IF EXISTS {role}")
        root.close()


def test_postgresql_app_role_can_only_insert_and_read_the_trail(pg_app):
    url, app_url, app, owner = pg_app
    schema = urlsplit(url).query.split("schema=")[1]
    audit = AuditTrail(connect(app_url))  # Bifrost's role makes and migrates its schema: it owns every table
    fill_trail(audit, 3)
    raw = psycopg.connect(as_role(PG_URL, app), autocommit=True)
    raw.execute(f'SET search_path TO "{schema}"')
    raw.execute("BEGIN")  # today's hole, shown and undone: the owner lifts the triggers
    raw.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
    raw.execute("ROLLBACK")

    admin = connect(url)
    assert not audit_guard(admin).guarded and "superuser" in str(audit_guard(admin))
    assert not audit_guard(audit.store).guarded and "owns audit_log" in audit_guard(audit.store).reason
    with pytest.raises(AuditError, match="superuser"):
        secure_audit_log(admin, "root", owner)
    done = secure_audit_log(admin, app, owner)
    assert any("audit_log and its trigger function now owned by" in d for d in done), done
    assert any(f"schema {schema} now owned by {owner}" in d for d in done), done
    assert secure_audit_log(admin, app, owner) == []  # idempotent

    refused = ["UPDATE audit_log SET subject = 'x' WHERE seq = 2", "DELETE FROM audit_log WHERE seq = 3",
               "TRUNCATE audit_log", "ALTER TABLE audit_log DISABLE TRIGGER USER", "DROP TABLE audit_log",
               f"ALTER TABLE audit_log OWNER TO {app}", f"SET ROLE {owner}", f'DROP SCHEMA "{schema}" CASCADE',
               "CREATE OR REPLACE FUNCTION bifrost_audit_append_only() RETURNS trigger LANGUAGE plpgsql "
               "AS $$ BEGIN RETURN NULL; END $$"]
    for sql in refused:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            raw.execute(sql)
    raw.close()
    # and Bifrost still works as that role: appends (advisory lock, no table lock), reads, its other tables
    app_store = connect(app_url)
    fill_trail(AuditTrail(app_store), 2)
    app_store.execute("INSERT INTO trading_controls (name, value, set_at, reason) VALUES ('x', 'on', ?, 'test')", [T0])
    report = AuditTrail(app_store).verify()
    assert report.ok and report.records == 5 and report.anchored == 5, str(report)
    assert audit_guard(app_store).guarded, str(audit_guard(app_store))


def test_secure_audit_log_is_postgresql_only(duck):
    with pytest.raises(AuditError, match="only PostgreSQL"):
        secure_audit_log(duck, "bifrost")
    assert not audit_guard(duck).guarded and "DuckDB" in str(audit_guard(duck))


def test_an_append_inside_a_callers_transaction_is_anchored_when_it_commits_not_by_the_collector(tmp_path, bifrost_home):
    url = f"duckdb:///{tmp_path}/x.duckdb"
    script = ("import sys; from datetime import datetime, timezone; from bifrost.audit import AuditTrail; "
              "from bifrost.store import connect; s = connect(sys.argv[1]); a = AuditTrail(s)\n"
              "with s.transaction():\n"
              "    a.append('control.kill_switch', '*', 'kill_switch', {'on': True}, datetime(2024, 1, 2, tzinfo=timezone.utc))\n"
              "    inside = len(a.anchors.read()[0])\n"
              "print(inside, len(a.anchors.read()[0]))")
    env = {**os.environ, "BIFROST_HOME": str(bifrost_home)}
    out = subprocess.run([sys.executable, "-c", script, url], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["0", "1"], out.stdout + out.stderr  # none before the commit
    report = AuditTrail(connect(url)).verify()
    assert report.ok and (report.records, report.anchored) == (1, 1), str(report)


def test_bifrost_kill_on_leaves_its_record_anchored(tmp_path, bifrost_home):
    url = f"duckdb:///{tmp_path}/k.duckdb"
    env = {**os.environ, "BIFROST_HOME": str(bifrost_home), "BIFROST_DB_URL": url}
    bifrost = str(Path(sys.executable).with_name("bifrost"))
    out = subprocess.run([bifrost, "kill", "on", "--reason", "runaway strategy"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    report = AuditTrail(connect(url)).verify()
    assert report.ok and (report.records, report.anchored) == (1, 1), str(report)


def test_bifrost_db_migrate_guards_the_trail_for_the_role_bifrost_connects_as(pg_app, bifrost_home):
    url, app_url, app, _ = pg_app
    bifrost = str(Path(sys.executable).with_name("bifrost"))
    def run(store_url, *args):
        env = {**os.environ, "BIFROST_HOME": str(bifrost_home), "BIFROST_DB_URL": store_url}
        return subprocess.run([bifrost, *args], env=env, capture_output=True, text=True, timeout=120)
    assert run(app_url, "db", "migrate").returncode == 0  # Bifrost's role makes its schema: it owns every table
    assert "NOT guarded" in run(app_url, "audit", "verify").stdout
    out = run(url, "db", "migrate", "--audit-app-role", app)  # an administrator hands the trail over
    assert out.returncode == 0 and f"{app} may only SELECT and INSERT" in out.stdout, out.stdout + out.stderr
    verify = run(app_url, "audit", "verify")
    assert verify.returncode == 0 and "NOT guarded" not in verify.stdout, verify.stdout + verify.stderr
    duck = run(f"duckdb:///{bifrost_home}/d.duckdb", "db", "migrate", "--audit-app-role", app)
    assert duck.returncode == 2 and "only PostgreSQL" in duck.stderr + duck.stdout


def test_append_many_is_one_chain_and_the_head_held_in_memory_survives_a_rollback(store):
    audit = AuditTrail(store)
    with store.session():
        fill_trail(audit, 2)
        recs = audit.append_many([("order.decision", "a", "c-1", {"approved": True}, T0),
                                  ("order.status", "a", "c-1", {"to": "pending_submit"}, T0)])
        assert [r.seq for r in recs] == [3, 4] and recs[1].prev_hash == recs[0].hash
        with pytest.raises(RuntimeError):
            with store.transaction():
                audit.append("order.status", "a", "c-1", {"to": "filled"}, T0)
                raise RuntimeError("rolled back")
        other = AuditTrail(store)  # a second trail object in this process continues the same chain
        assert other.append("order.status", "a", "c-1", {"to": "accepted"}, T0).seq == 5
        assert audit.append("order.status", "a", "c-1", {"to": "filled"}, T0).seq == 6
    report = audit.verify()
    assert report.ok and report.records == 6 and report.anchored == 6, str(report)
