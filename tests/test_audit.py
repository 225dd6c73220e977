"""The audit trail: a whole chain verifies, any tampering is found and located, PostgreSQL refuses edits."""
from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg
import pytest

from bifrost.audit import AuditError, AuditTrail
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
    audit = AuditTrail(store)
    fill_trail(audit, 30)
    rng = random.Random(7)
    for _ in range(5):
        seq = rng.randint(1, 30)
        col, val = rng.choice([("account", "'x'"), ("subject", "'forged'"), ("payload", "'{}'"),
                               ("prev_hash", "repeat('0', 64)")])
        tamper(store, f"UPDATE audit_log SET {col} = {val} WHERE seq = {seq}")
        report = audit.verify()
        assert not report.ok and seq in {p.seq for p in report.problems}
        fresh = AuditTrail(store)  # start each round from an intact trail
        tamper(store, "DELETE FROM audit_log")
        fill_trail(fresh, 30)
        assert fresh.verify().ok


def test_truncated_tail_is_found_only_against_a_known_head(store):
    audit = AuditTrail(store)
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
    report = AuditTrail(connect(store_url)).verify()
    assert report.ok and report.records == 60
