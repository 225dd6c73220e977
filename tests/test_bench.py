"""`bifrost bench`'s API: the shape of a benchmark result, never a time (see nbs/12_bench.ipynb)."""
from __future__ import annotations

import json

import pytest
from conftest import PG_URL

from bifrost.bench import BENCHES, BenchResult, UnknownBenchError, load_benches, run_bench
from bifrost.core import BifrostError
from bifrost.store import PostgresStore

SIDES = ("read_csv", "duckdb", "postgresql")
WORKLOADS = ("daily", "intraday")


def bench_schemas() -> set[str]:
    return set(PostgresStore(PG_URL).query(
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE ?", ("bench_%",)).schema_name)


@pytest.fixture(scope="module")
def quick_ingest():
    "One quick run shared by the tests below, with the bench schemas that existed before it."
    before = bench_schemas()
    return run_bench("ingest", quick=True, repeat=1, pg_url=PG_URL), before


def test_ingest_when_quick_then_json_is_one_object_with_four_keys(quick_ingest):
    result, _ = quick_ingest
    d = json.loads(result.to_json())
    assert list(d) == ["bench", "figures", "ratios", "env"]
    assert d["bench"] == "ingest"
    assert all(isinstance(v, float) for v in [*d["figures"].values(), *d["ratios"].values()])
    assert all(isinstance(v, str) for v in d["env"].values())
    assert BenchResult.from_json(result.to_json()) == result


def test_ingest_when_quick_then_every_side_and_workload_has_positive_figures(quick_ingest):
    result, _ = quick_ingest
    for name in WORKLOADS:
        assert result.figures[f"{name}_rows"] > 0
        for side in SIDES:
            assert result.figures[f"{side}_{name}_s"] > 0
            assert result.figures[f"{side}_{name}_rows_per_s"] > 0
    assert all(v > 0 for v in result.figures.values())


def test_ingest_when_quick_then_ratios_are_present_and_positive(quick_ingest):
    result, _ = quick_ingest
    assert set(result.ratios) == {f"{r}_{n}" for r in ("duckdb_vs_read_csv", "postgresql_vs_duckdb")
                                  for n in WORKLOADS}
    assert all(v > 0 for v in result.ratios.values())


def test_ingest_when_quick_then_env_names_machine_and_versions(quick_ingest):
    result, _ = quick_ingest
    assert {"python", "platform", "cpu_count", "duckdb", "psycopg", "pandas", "postgresql"} <= result.env.keys()
    assert result.env["postgresql"] not in ("unavailable", "skipped")
    assert "note" not in result.env


def test_ingest_when_done_then_leaves_no_bench_schema_behind(quick_ingest):
    _, before = quick_ingest
    assert bench_schemas() <= before


def test_ingest_table_explains_each_ratio(quick_ingest):
    result, _ = quick_ingest
    text = result.table()
    for line in (ln for ln in text.splitlines() if ln.strip().startswith(tuple(result.ratios))):
        assert " / " in line


def test_ingest_when_postgresql_unreachable_then_runs_duckdb_and_says_so():
    result = run_bench("ingest", quick=True, repeat=1, pg_url="postgresql://root@127.0.0.1:1/test")
    assert result.env["postgresql"] == "unavailable"
    assert "could not be reached" in result.env["note"]
    assert not any(k.startswith("postgresql") for k in [*result.figures, *result.ratios])
    assert result.figures["duckdb_daily_rows_per_s"] > 0
    assert result.ratios["duckdb_vs_read_csv_intraday"] > 0


def test_run_bench_when_name_unknown_then_error_lists_known_names():
    with pytest.raises(UnknownBenchError, match="no benchmark named 'nope'") as err:
        run_bench("nope")
    assert isinstance(err.value, BifrostError)
    for name in load_benches():
        assert name in str(err.value)
    assert "ingest" in str(err.value)


def test_signals_when_quick_then_every_side_agrees_and_ratios_are_explained():
    result = run_bench("signals", quick=True, repeat=1)
    assert set(result.ratios) == {"features_vs_aim", "features_speedup_vs_pandas", "book_msgs_vs_aim",
                                  "book_speedup_vs_python"}
    assert all(v > 0 for v in result.ratios.values()) and result.figures["book_messages"] == 68_792
    assert all(name in result.table() for name in result.ratios)
