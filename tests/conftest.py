"""Shared fixtures: every store test runs against a real DuckDB file and a real PostgreSQL server.

PostgreSQL is reached at `BIFROST_TEST_PG_URL` (default `postgresql://root@127.0.0.1:5432/test`); each test
gets its own `?schema=t_<random>` and the schema is dropped afterwards, so nothing is left behind.
"""
from __future__ import annotations

import os
import secrets

import numpy as np
import pandas as pd
import pytest

from bifrost.store import PostgresStore, connect

PG_URL = os.environ.get("BIFROST_TEST_PG_URL", "postgresql://root@127.0.0.1:5432/test")
BACKENDS = ["duckdb", "postgresql"]
BAR_KEY = ["symbol", "bar_size", "ts"]


def make_bars(n: int, start="2020-01-02 14:30", symbols: int = 4, seed: int = 0, source: str = "test") -> pd.DataFrame:
    """`n` one-minute bars split evenly over `symbols` symbols, consecutive minutes from `start` (UTC).

    Timestamps are whole seconds and prices are arbitrary float64s, so a store must hand back exactly these values.
    """
    if n % symbols:
        raise ValueError("n must be a multiple of symbols")
    per = n // symbols
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp(start, tz="UTC") + pd.to_timedelta(np.tile(np.arange(per), symbols), unit="min")
    low = rng.uniform(10, 500, n)
    return pd.DataFrame({
        "symbol": np.repeat([f"S{i:03d}" for i in range(symbols)], per),
        "bar_size": "1min",
        "ts": ts,
        "open": low + rng.random(n),
        "high": low + 1 + rng.random(n),
        "low": low,
        "close": low + rng.random(n),
        "volume": rng.integers(0, 10**9, n).astype("float64"),
        "source": source,
    })


def make_ingestion(id_: str, rows: int, started_at="2024-01-02 21:00:00+00:00") -> pd.DataFrame:
    "One `ingestions` row."
    return pd.DataFrame({"id": [id_], "source": ["test"], "symbol": [None], "bar_size": ["1min"],
                         "started_at": [pd.Timestamp(started_at)], "rows_in": [rows],
                         "rows_written": [rows], "rows_quarantined": [0]})


def drop_store(url: str) -> None:
    "Remove whatever a test created at `url` (PostgreSQL: its schema; DuckDB files live in tmp_path)."
    if url.startswith("postgresql://"):
        PostgresStore(url).drop_schema()


def pytest_configure(config):
    "Under pytest-xdist each worker gets a home of its own, so notebooks that use the settings' home never share one."
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and os.environ.get("BIFROST_HOME"):
        home = os.path.join(os.environ["BIFROST_HOME"], worker)
        os.makedirs(home, exist_ok=True)
        os.environ["BIFROST_HOME"] = home


@pytest.fixture(autouse=True)
def bifrost_home(tmp_path_factory, monkeypatch):
    "No test reads or writes ~/.bifrost, and no test picks up a store URL from the environment."
    home = tmp_path_factory.mktemp("bifrost_home")
    monkeypatch.setenv("BIFROST_HOME", str(home))
    monkeypatch.delenv("BIFROST_DB_URL", raising=False)
    return home


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def store_url(request, tmp_path):
    "The URL of a fresh, empty (unmigrated) store on each backend; cleaned up after the test."
    if request.param == "duckdb":
        yield f"duckdb:///{tmp_path}/t.duckdb"
        return
    url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}schema=t_{secrets.token_hex(8)}"
    try:
        yield url
    finally:
        drop_store(url)


@pytest.fixture
def store(store_url):
    "A migrated store at `store_url` (same parametrization: ids `duckdb` and `postgresql`)."
    s = connect(store_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(name="make_bars")
def make_bars_fixture():
    return make_bars


def sample_store(folder, symbols, bar_size: str = "1d", name: str = "sample"):
    "A throwaway DuckDB store in `folder` holding only the shipped sample's primary `bar_size` feeds of `symbols`."
    from bifrost.data.ingest import ingest
    from bifrost.data.sources import SAMPLE, SampleSource
    store = connect(f"duckdb:///{folder}/{name}.duckdb")
    feeds = tuple(f for f in SAMPLE if f.primary and f.spec.ticker in symbols and f.spec.bar_size == bar_size)
    ingest(store, SampleSource(feeds), progress=False)
    return store


_FULL_SAMPLE: list[str] = []


def sample_copy(folder, name: str = "sample"):
    """A DuckDB store in `folder` holding the whole shipped sample: a copy of one ingested once per test process
    (per pytest-xdist worker). Ingesting the sample costs seconds; copying the file, milliseconds."""
    import shutil
    import tempfile
    if not _FULL_SAMPLE:
        from bifrost.data.ingest import ingest
        from bifrost.data.sources import SampleSource
        base = os.path.join(tempfile.mkdtemp(prefix="bifrost-sample-"), "sample.duckdb")
        store = connect(f"duckdb:///{base}")
        ingest(store, SampleSource(), progress=False)
        store.close()
        _FULL_SAMPLE.append(base)
    target = os.path.join(folder, f"{name}.duckdb")
    shutil.copyfile(_FULL_SAMPLE[0], target)
    return connect(f"duckdb:///{target}")


@pytest.fixture(scope="session")
def spy_daily_file(tmp_path_factory):
    "A DuckDB file holding SPY's shipped daily bars (1998-2021), ingested once per test process; copy it, never write it."
    path = tmp_path_factory.mktemp("spy_daily") / "base.duckdb"
    sample_store(path.parent, ["SPY"], name="base").close()
    return path


def sample_panel(folder, symbol: str, start: str, end: str):
    "Daily bars of one shipped-sample symbol, through a throwaway DuckDB store in `folder` (only that feed ingested)."
    from bifrost.strategy.api import Panel
    return Panel.from_store(sample_store(folder, [symbol], name=symbol.lower()), [symbol], start=start, end=end)
