"""`bifrost db backup PATH` and `bifrost db restore PATH [--force]` through the real executable: usage errors are one
paragraph with a hint and exit 2, failures exit 1, never a traceback; on DuckDB and on the PostgreSQL server, and with
PostgreSQL's client programs missing."""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).parent / "journeys"))
from journey_helpers import BIN, bifrost, env_for  # noqa: E402

from conftest import PG_URL  # noqa: E402


def _one_paragraph(r, code: int, *words: str) -> str:
    text = r.stderr
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert text.startswith("error: ") and "hint: " in text and text.count("\n") <= 2, text
    for w in words:
        assert w in text, (w, text)
    return text


def _limits(home: Path, account: str) -> None:
    "Something in the store and on the audit record: an account's risk limits."
    bifrost(home, "risk", "limits", account, "--set", "max_daily_loss=0.05", "--reason", "drill",
            "--effective-from", "2013-01-01")


def test_duckdb_backup_and_restore_through_the_executable(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    _one_paragraph(bifrost(home, "db", "backup", str(tmp_path / "b"), ok=False), 1, "no store at", "bifrost db status")
    _limits(home, "bk1")
    out = bifrost(home, "db", "backup", str(tmp_path / "b")).stdout
    assert "audit head 1 " in out and "bifrost db restore" in out
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["tables"]["risk_limits"] == 1

    _one_paragraph(bifrost(home, "db", "backup", str(tmp_path / "b"), ok=False), 2, "not an empty folder")
    _one_paragraph(bifrost(home, "db", "backup", ok=False), 2, "Missing argument 'path'")
    _one_paragraph(bifrost(home, "db", "restore", str(tmp_path / "nowhere"), ok=False), 2, "does not exist")
    _one_paragraph(bifrost(home, "db", "restore", str(home), ok=False), 2, "manifest.json", "bifrost db backup PATH")

    _limits(home, "bk2")  # after the backup
    text = _one_paragraph(bifrost(home, "db", "restore", str(tmp_path / "b"), ok=False), 2, "--force", "rows")
    assert "kept aside" in text
    out = bifrost(home, "db", "restore", str(tmp_path / "b"), "--force").stdout
    assert "chain whole, ending at seq 1 " in out and "kept at" in out
    assert "belonged to the history lost with the store" in out  # bk2's record was anchored after the backup
    assert "intact" in bifrost(home, "audit", "verify").stdout
    assert "bk2" not in bifrost(home, "audit", "show").stdout

    parquet = next((tmp_path / "b" / "data").glob("risk_limits.parquet"))
    parquet.write_bytes(parquet.read_bytes() + b"\0")
    _one_paragraph(bifrost(home, "db", "restore", str(tmp_path / "b"), "--force", ok=False), 1, "damaged",
                   "risk_limits.parquet (changed)")


@pytest.fixture
def pg_home(tmp_path):
    "A home whose settings name a fresh PostgreSQL schema; every schema made from its name is dropped afterwards."
    name = f"t_{secrets.token_hex(8)}"
    home = tmp_path / "home"
    home.mkdir()
    try:
        yield home, name
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as con:
            for (s,) in con.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", [name + "%"]).fetchall():
                con.execute(f'DROP SCHEMA "{s}" CASCADE')


def _use(home: Path, schema: str) -> None:
    (home / "settings.ini").write_text(f"[bifrost]\ndb_url = {PG_URL}?schema={schema}\n")


def test_postgresql_backup_and_restore_through_the_executable(pg_home, tmp_path):
    home, name = pg_home
    _use(home, name)
    _limits(home, "bk1")
    no_client = subprocess.run([str(BIN / "bifrost"), "db", "backup", str(tmp_path / "b")], cwd=home, text=True,
                               capture_output=True, env={**env_for(home), "PATH": str(BIN)}, timeout=600)
    _one_paragraph(no_client, 1, "pg_dump is not installed", "apt-get install postgresql-client")
    assert not (tmp_path / "b").exists()

    out = bifrost(home, "db", "backup", str(tmp_path / "b")).stdout
    assert "(postgresql, schema" in out and "audit head 1 " in out
    _use(home, f"{name}_copy")
    out = bifrost(home, "db", "restore", str(tmp_path / "b")).stdout
    assert "chain whole, ending at seq 1 " in out and "--audit-app-role" in out
    assert "intact" in bifrost(home, "audit", "verify").stdout
    assert "max_daily_loss" in bifrost(home, "risk", "limits", "bk1").stdout  # the restored schema is the store now
