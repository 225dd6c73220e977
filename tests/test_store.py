"""The store's contract, run unchanged against a DuckDB file and a PostgreSQL server (see conftest.py)."""
from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import psycopg
import pytest
from conftest import BAR_KEY, PG_URL
from conftest import make_ingestion as ingestion

from bifrost.core import MigrationError, StoreError
from bifrost.store import LATEST_VERSION, MIGRATIONS, DuckDBStore, PostgresStore, connect
from datetime import UTC, datetime

T_SET = datetime(2024, 1, 2, 15, tzinfo=UTC)

TABLES = {  # every table of the schema, with its key
    "instruments": ["symbol"],
    "ticker_history": ["ticker", "valid_from"],
    "series": ["symbol", "bar_size"],
    "bars": BAR_KEY,
    "corporate_actions": ["symbol", "ex_date", "kind"],
    "quarantine": ["source", "row_ref", "reason"],
    "ingestions": ["id"],
}
COUNT_BARS = "SELECT count(*) FROM bars"
DB_ERRORS = (StoreError, duckdb.Error, psycopg.Error)  # a constraint violation: the driver's error, or ours


# -- helpers -----------------------------------------------------------------------------------------------
def normalized(df: pd.DataFrame, key) -> pd.DataFrame:
    "Rows in key order, datetimes at one resolution, strings as objects: comparable across backends."
    out = df.sort_values(list(key)).reset_index(drop=True)
    for c in out.columns:
        if isinstance(out[c].dtype, pd.DatetimeTZDtype):
            out[c] = out[c].astype("datetime64[ns, UTC]")
        elif pd.api.types.is_string_dtype(out[c].dtype):
            out[c] = out[c].astype(object)
    return out


def assert_same_rows(got: pd.DataFrame, expected: pd.DataFrame, key=BAR_KEY) -> None:
    "Equal values, exactly (no float tolerance), whatever order the rows came back in."
    assert list(got.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(normalized(got, key), normalized(expected, key), check_exact=True,
                                  check_dtype=False)


def snapshot(store) -> dict[str, pd.DataFrame]:
    "Every table's rows, in key order."
    return {t: normalized(store.query(f"SELECT * FROM {t}"), key) for t, key in TABLES.items()}


def assert_same_snapshot(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    assert a.keys() == b.keys()
    for t, frame in a.items():
        pd.testing.assert_frame_equal(frame, b[t], check_exact=True, obj=t)


def instrument(symbol: str, name: str | None = None, sector: str | None = None) -> pd.DataFrame:
    return pd.DataFrame({"symbol": [symbol], "name": [name], "asset_class": ["equity"], "currency": ["USD"],
                         "exchange": ["XNYS"], "tick_size": [0.01], "lot_size": [1], "sector": [sector]})


def schema_exists(url: str) -> bool:
    schema = PostgresStore(url).schema
    return bool(PostgresStore(PG_URL).scalar(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = ?", (schema,)))


def nothing_created_at(url: str) -> bool:
    if url.startswith("duckdb://"):
        return not Path(DuckDBStore(url, read_only=True).path).exists()
    return not schema_exists(url)


# -- migrations and status -----------------------------------------------------------------------------------
def test_migrate_when_store_is_fresh_then_applies_every_migration(store_url):
    s = connect(store_url, migrate=False)
    assert s.version() == 0
    assert s.migrate() == [v for v, _, _ in MIGRATIONS]
    assert s.version() == LATEST_VERSION


def test_status_when_store_never_migrated_then_reports_version_zero_and_everything_pending(store_url):
    st = connect(store_url, migrate=False).status()
    assert (st.version, st.latest, st.pending, st.tables) == (0, LATEST_VERSION, [v for v, _, _ in MIGRATIONS], {})
    assert st.timescale is False


def test_migrate_when_run_again_then_is_a_noop_and_status_reports_current(store, store_url):
    assert store.migrate() == []
    assert connect(store_url).migrate() == []  # connecting again migrates again: still nothing to do
    st = store.status()
    assert (st.dialect, st.version, st.latest, st.pending) == (store.dialect, LATEST_VERSION, LATEST_VERSION, [])
    assert set(TABLES) <= set(st.tables) and not any(st.tables.values())  # every table there, all empty
    applied = store.query("SELECT version FROM schema_migrations ORDER BY version")["version"].tolist()
    assert applied == [v for v, _, _ in MIGRATIONS]  # each migration recorded exactly once



def test_migrate_9_when_a_store_has_live_promotions_then_their_stage_moves_out_of_the_reason(store_url, monkeypatch):
    import bifrost.store as st
    monkeypatch.setattr(st, "MIGRATIONS", MIGRATIONS[:8])
    monkeypatch.setattr(st, "LATEST_VERSION", 8)
    s = connect(store_url)  # a store as Bifrost left it before promotions had a stage
    s.execute("INSERT INTO strategy_promotions VALUES ('spy', 1, 'v1', '2024-01-02 21:00:00+00', 'first'), "
              "('spy', 2, 'v2', '2024-01-03 21:00:00+00', '[live] risk signed off')")
    monkeypatch.undo()
    assert s.migrate() == [v for v, _, _ in MIGRATIONS if v > 8]
    got = s.query("SELECT seq, stage, reason FROM strategy_promotions ORDER BY seq")
    assert got.values.tolist() == [[1, "paper", "first"], [2, "live", "risk signed off"]]

def test_status_when_rows_written_then_counts_them(store, make_bars):
    store.upsert("bars", make_bars(12), BAR_KEY)
    store.upsert("ingestions", ingestion("run-1", 12), ["id"])
    tables = store.status().tables
    assert (tables["bars"], tables["ingestions"], tables["instruments"]) == (12, 1, 0)


def test_status_when_timescaledb_not_installed_then_reports_false_and_bars_still_work(store, make_bars):
    assert store.status().timescale is False
    if store.dialect == "postgresql":  # the migration fell back to a plain table indexed by its primary key
        assert store.scalar("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'") == 0
        assert store.scalar("SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() "
                            "AND tablename = 'bars'") >= 1
    bars = make_bars(40)
    store.upsert("bars", bars, BAR_KEY)
    assert_same_rows(store.query("SELECT * FROM bars"), bars)
    got = store.query("SELECT close FROM bars WHERE symbol = ? AND ts = ?", ("S001", bars.ts.iloc[12]))
    assert got["close"].tolist() == [bars.close.iloc[12]]


def test_migrate_when_store_is_newer_than_bifrost_then_refuses(store, store_url):
    store.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", (LATEST_VERSION + 1, "future"))
    with pytest.raises(MigrationError, match="newer than this Bifrost"):
        store.migrate()
    with pytest.raises(MigrationError, match="bifrost db migrate"):
        connect(store_url, read_only=True)


# -- unmigrated stores ---------------------------------------------------------------------------------------
def test_connect_read_only_when_store_never_migrated_then_raises_and_creates_nothing(store_url):
    with pytest.raises(MigrationError, match="bifrost db migrate"):
        connect(store_url, read_only=True)
    assert nothing_created_at(store_url)  # read-only never creates or migrates anything


def test_query_when_store_never_migrated_then_raises_store_error_mentioning_migrate(store_url):
    s = connect(store_url, migrate=False)
    with pytest.raises(StoreError, match="bifrost db migrate"):
        s.query(COUNT_BARS)
    assert s.version() == 0


def test_query_when_store_exists_but_has_no_tables_then_raises_store_error_mentioning_migrate(store_url):
    s = connect(store_url, migrate=False)
    s.execute("CREATE TABLE unrelated (x INTEGER)")  # the file / schema now exists, Bifrost's tables do not
    with pytest.raises(StoreError, match="bifrost db migrate"):
        s.query(COUNT_BARS)
    with pytest.raises(MigrationError, match="bifrost db migrate"):
        s.require_current()
    with pytest.raises(MigrationError, match="bifrost db migrate"):
        connect(store_url, read_only=True)


# -- upsert --------------------------------------------------------------------------------------------------
def test_upsert_when_key_exists_then_replaces_row_and_keeps_others(store, make_bars):
    bars = make_bars(20)
    assert store.upsert("bars", bars, BAR_KEY) == 20
    changed = bars.iloc[[3, 7]].assign(close=[1.25, 2.5], volume=[7.0, 8.0], source="fix")
    assert store.upsert("bars", changed, BAR_KEY) == 2
    expected = bars.copy()
    expected.loc[[3, 7], ["close", "volume", "source"]] = [[1.25, 7.0, "fix"], [2.5, 8.0, "fix"]]
    assert_same_rows(store.query("SELECT * FROM bars"), expected)


def test_upsert_when_key_is_new_then_adds_rows_next_to_existing(store, make_bars):
    first, second = make_bars(8), make_bars(8, start="2020-01-03 14:30", seed=1)
    store.upsert("bars", first, BAR_KEY)
    store.upsert("bars", second, BAR_KEY)
    assert_same_rows(store.query("SELECT * FROM bars"), pd.concat([first, second]))


def test_upsert_when_frame_is_empty_then_writes_nothing(store, make_bars):
    assert store.upsert("bars", make_bars(4).iloc[:0], BAR_KEY) == 0
    assert store.scalar(COUNT_BARS) == 0


def test_upsert_when_frame_has_a_subset_of_columns_then_other_columns_keep_their_values(store):
    store.upsert("instruments", instrument("AAA", name="Triple A", sector="tech"), ["symbol"])
    store.upsert("instruments", pd.DataFrame({"symbol": ["AAA"], "sector": ["energy"], "asset_class": ["equity"],
                                              "currency": ["USD"], "exchange": ["XNYS"], "tick_size": [0.01],
                                              "lot_size": [1]}), ["symbol"])
    got = store.query("SELECT name, sector FROM instruments")
    assert got.values.tolist() == [["Triple A", "energy"]]


def test_upsert_when_optional_values_missing_then_nulls_round_trip(store):
    store.upsert("instruments", pd.concat([instrument("AAA"), instrument("BBB", name="Bee", sector="tech")]),
                 ["symbol"])
    got = store.query("SELECT symbol, name, sector, tick_size FROM instruments ORDER BY symbol")
    assert got["name"].isna().tolist() == [True, False]
    assert got["sector"].isna().tolist() == [True, False]
    assert got["tick_size"].tolist() == [0.01, 0.01]  # NUMERIC comes back as float on both backends
    assert store.scalar("SELECT count(*) FROM instruments WHERE sector IS NULL") == 1


def test_upsert_when_frame_repeats_a_key_then_raises_before_writing(store, make_bars):
    existing = make_bars(8)
    store.upsert("bars", existing, BAR_KEY)
    fresh = make_bars(8, start="2020-01-03 14:30", seed=1)
    with pytest.raises(StoreError, match="repeat a key"):
        store.upsert("bars", pd.concat([fresh, fresh.iloc[[2]].assign(close=0.5)]), BAR_KEY)
    assert_same_rows(store.query("SELECT * FROM bars"), existing)  # not even the unique rows were written


def test_upsert_when_a_row_violates_a_constraint_then_nothing_is_written(store, make_bars):
    existing = make_bars(8)
    store.upsert("bars", existing, BAR_KEY)
    bad = make_bars(400, start="2020-01-03 14:30", seed=1).astype({"source": object})
    bad.loc[399, "source"] = None  # NOT NULL
    with pytest.raises(DB_ERRORS):
        store.upsert("bars", bad, BAR_KEY)
    assert_same_rows(store.query("SELECT * FROM bars"), existing)
    assert store.upsert("bars", bad.iloc[:399], BAR_KEY) == 399  # and the store is still writable


def test_upsert_when_50k_rows_then_round_trip_exactly(store, make_bars):
    bars = make_bars(50_000, symbols=10, seed=7)
    assert store.upsert("bars", bars, BAR_KEY) == 50_000
    assert_same_rows(store.query("SELECT * FROM bars"), bars)
    # a second bulk upsert over the same keys takes the update path for every row
    revised = bars.assign(close=bars.close * 1.5, volume=bars.volume + 1, source="revised")
    assert store.upsert("bars", revised, BAR_KEY) == 50_000
    assert_same_rows(store.query("SELECT * FROM bars"), revised)


# -- timestamps ----------------------------------------------------------------------------------------------
def test_query_when_timestamps_written_in_another_zone_then_come_back_tz_aware_utc(store, make_bars):
    bars = make_bars(8)
    store.upsert("bars", bars.assign(ts=bars.ts.dt.tz_convert("America/New_York")), BAR_KEY)
    got = store.query("SELECT * FROM bars ORDER BY symbol, ts")
    assert isinstance(got["ts"].dtype, pd.DatetimeTZDtype) and str(got["ts"].dt.tz) == "UTC"
    assert got["ts"].tolist() == bars.sort_values(["symbol", "ts"])["ts"].tolist()  # same instants
    latest = store.scalar("SELECT max(ts) FROM bars")
    assert latest == bars.ts.max() and str(latest.tz) == "UTC"


def test_query_when_table_is_empty_then_timestamp_columns_are_still_utc(store):
    got = store.query("SELECT ts FROM bars")
    assert got.empty and list(got.columns) == ["ts"]
    assert isinstance(got["ts"].dtype, pd.DatetimeTZDtype) and str(got["ts"].dt.tz) == "UTC"


def test_upsert_when_timestamps_have_microseconds_then_round_trip_exactly(store, make_bars):
    bars = make_bars(8)
    bars["ts"] = bars.ts + pd.to_timedelta([0, 1, 250_000, 999_999, 5, 6, 7, 8], unit="us")
    store.upsert("bars", bars, BAR_KEY)
    started = pd.Timestamp("2024-05-06 07:08:09.123456", tz="UTC")  # e.g. datetime.now() for an ingestion
    store.upsert("ingestions", ingestion("run-1", 8, started_at=started), ["id"])
    assert_same_rows(store.query("SELECT * FROM bars"), bars)
    assert store.scalar("SELECT started_at FROM ingestions") == started


# -- transactions --------------------------------------------------------------------------------------------
def seed(store, make_bars) -> pd.DataFrame:
    bars = make_bars(100)
    with store.transaction():
        store.upsert("bars", bars, BAR_KEY)
        store.upsert("instruments", instrument("S000", name="first"), ["symbol"])
        store.upsert("ingestions", ingestion("run-0", 100), ["id"])
    return bars


def test_transaction_when_body_raises_then_rolls_back_every_write_in_every_table(store, make_bars):
    bars = seed(store, make_bars)
    before = snapshot(store)
    with pytest.raises(RuntimeError, match="killed mid-write"), store.transaction():
        store.upsert("bars", bars.assign(close=-1.0, source="replaced"), BAR_KEY)  # replaces every row
        store.upsert("bars", make_bars(1000, start="2021-01-04 14:30", seed=3), BAR_KEY)  # adds rows
        store.upsert("instruments", pd.concat([instrument("S000", name="renamed"), instrument("S001")]),
                     ["symbol"])
        store.upsert("ingestions", ingestion("run-1", 1000), ["id"])
        store.execute("DELETE FROM ingestions WHERE id = ?", ("run-0",))
        # inside the transaction its own writes are visible
        assert store.scalar(COUNT_BARS) == 1100
        assert store.scalar("SELECT min(close) FROM bars") == -1.0
        raise RuntimeError("killed mid-write")
    assert_same_snapshot(snapshot(store), before)
    assert store.upsert("bars", make_bars(4, start="2022-01-03 14:30"), BAR_KEY) == 4  # still writable


def test_transaction_when_a_statement_fails_then_earlier_writes_roll_back(store, make_bars):
    seed(store, make_bars)
    before = snapshot(store)
    with pytest.raises(DB_ERRORS), store.transaction():
        store.upsert("ingestions", ingestion("run-1", 1000), ["id"])
        store.upsert("bars", make_bars(1000, start="2021-01-04 14:30", seed=3), BAR_KEY)
        store.execute("INSERT INTO instruments (symbol) VALUES (?)", ("NOPE",))  # NOT NULL columns missing
    assert_same_snapshot(snapshot(store), before)


def test_transaction_when_body_completes_then_commits_writes_to_every_table(store, make_bars, store_url):
    bars = seed(store, make_bars)
    more = make_bars(40, start="2021-01-04 14:30", seed=3)
    with store.transaction():
        store.upsert("bars", more, BAR_KEY)
        store.upsert("ingestions", ingestion("run-1", 40), ["id"])
        store.execute("DELETE FROM instruments WHERE symbol = ?", ("S000",))
    other = connect(store_url, read_only=True)  # a separate connection sees all of it
    assert_same_rows(other.query("SELECT * FROM bars"), pd.concat([bars, more]))
    assert other.query("SELECT id FROM ingestions ORDER BY id")["id"].tolist() == ["run-0", "run-1"]
    assert other.scalar("SELECT count(*) FROM instruments") == 0


def test_transaction_when_nested_then_inner_joins_outer_and_rolls_back_with_it(store, make_bars):
    with pytest.raises(RuntimeError), store.transaction():
        store.upsert("bars", make_bars(4), BAR_KEY)
        with store.transaction():
            store.upsert("ingestions", ingestion("run-1", 4), ["id"])
        raise RuntimeError("outer fails after inner finished")
    assert store.scalar(COUNT_BARS) == 0
    assert store.scalar("SELECT count(*) FROM ingestions") == 0


def test_transaction_when_upsert_repeats_a_key_then_whole_transaction_rolls_back(store, make_bars):
    fresh = make_bars(8)
    with pytest.raises(StoreError, match="repeat a key"), store.transaction():
        store.upsert("ingestions", ingestion("run-1", 8), ["id"])
        store.upsert("bars", pd.concat([fresh, fresh.iloc[:1]]), BAR_KEY)
    assert store.scalar("SELECT count(*) FROM ingestions") == 0
    assert store.scalar(COUNT_BARS) == 0


# -- read-only -----------------------------------------------------------------------------------------------
def test_read_only_store_when_asked_to_write_then_refuses_with_clear_error(store, store_url, make_bars):
    bars = make_bars(8)
    store.upsert("bars", bars, BAR_KEY)
    ro = connect(store_url, read_only=True)
    assert ro.scalar(COUNT_BARS) == 8  # reading is fine
    attempts = {
        "execute": lambda: ro.execute("DELETE FROM bars"),
        "upsert": lambda: ro.upsert("bars", make_bars(8, start="2021-01-04 14:30"), BAR_KEY),
        "migrate": lambda: ro.migrate(),
        "transaction": lambda: ro.transaction().__enter__(),
    }
    for what, attempt in attempts.items():
        with pytest.raises(StoreError, match="read-only") as err:
            attempt()
        assert "read-only" in str(err.value), what
    # even SQL that writes, smuggled through query(), is refused by the database itself
    with pytest.raises(Exception, match="read-only"):
        ro.query("DELETE FROM bars")
    assert_same_rows(store.query("SELECT * FROM bars"), bars)


def test_connect_when_url_is_unsupported_then_raises_store_error():
    with pytest.raises(StoreError, match="unsupported store URL"):
        connect("mysql://x/y")


def test_connect_when_postgres_schema_is_not_an_identifier_then_refuses():
    with pytest.raises(StoreError, match="identifier"):
        connect(f"{PG_URL}?schema=x;drop", migrate=False)


def test_point_reads_return_tuples_and_a_literal_question_mark_or_percent_is_not_a_placeholder(store):
    store.executemany("INSERT INTO trading_controls (name, value, set_at, reason) VALUES (?, ?, ?, ?)",
                      [["q1", "is it?", T_SET, "100% sure"], ["q2", "no", T_SET, "?"]])
    rows = store.rows("SELECT name, value, reason, 'why?' AS w FROM trading_controls "
                      "WHERE name LIKE 'q%' AND value <> ? ORDER BY name", ["x"])
    assert rows == [("q1", "is it?", "100% sure", "why?"), ("q2", "no", "?", "why?")]
    assert store.row("SELECT value FROM trading_controls WHERE name = ?", ["q2"]) == ("no",)
    assert store.row("SELECT value FROM trading_controls WHERE name = ?", ["none"]) is None


def test_after_runs_on_commit_or_on_rollback_of_the_open_transaction(store):
    seen = []
    with store.transaction():
        store.after(lambda: seen.append("committed"), lambda: seen.append("rolled back"))
        assert seen == []
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.after(lambda: seen.append("committed"), lambda: seen.append("rolled back"))
            raise RuntimeError
    store.after(lambda: seen.append("now"))  # outside a transaction: at once
    assert seen == ["committed", "rolled back", "now"]


@pytest.mark.parametrize("n", [3, 40])  # a few rows bind as parameters; many go as one Arrow table on DuckDB
def test_insert_rows_and_update_rows_write_every_row_once(store, n):
    cols = ["symbol", "name", "asset_class", "currency", "exchange", "tick_size", "lot_size", "sector"]
    rows = [[f"R{n}X{i}", f"why {i}?", "equity", "USD", "XNYS", 0.01, 1, None if i % 3 else "tech"] for i in range(n)]
    assert store.insert_rows("instruments", cols, rows) == n
    store.update_rows("instruments", "symbol", ["name", "sector"], [["100% renamed", "energy", f"R{n}X{i}"]
                                                                     for i in range(0, n, 2)])
    got = store.rows("SELECT symbol, name, sector FROM instruments WHERE symbol LIKE ? ORDER BY symbol", [f"R{n}X%"])
    want = sorted((f"R{n}X{i}", "100% renamed" if i % 2 == 0 else f"why {i}?",
                   "energy" if i % 2 == 0 else None if i % 3 else "tech") for i in range(n))
    assert got == want
