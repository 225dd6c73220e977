"""bifrost.signals.ml: purged splits never overlap, the registry round trip gives identical predictions,
promotion is recorded like a strategy version, and MLSignal runs unchanged in both engines and paper trading."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import sample_store

from bifrost.core import SimulatedClock
from bifrost.signals.features import FeatureSet
from bifrost.signals.ml import (
    MLSignal,
    SignalError,
    backtest_predictions,
    evaluate,
    forward_returns,
    load_model,
    make_dataset,
    make_model,
    model_promotions,
    overlapping_labels,
    promote_challenger,
    promoted_signal,
    purged_kfold,
    signal_metrics,
    train_model,
    walk_forward_splits,
)
from bifrost.store import connect
from bifrost.strategy.api import Costs, Panel, StrategyError
from bifrost.strategy.backtrader import parity, run_backtrader
from bifrost.strategy.paper import run_paper
from bifrost.strategy.vector import grid, run_sweep, run_vectorized
from bifrost.strategy.versions import list_versions, promoted

FS = FeatureSet(horizons=(1, 5, 21), vol_windows=(21,), momentum=(63, 5))
CLOCK = SimulatedClock(pd.Timestamp("2021-01-04 22:00", tz="UTC"))
EXACT = Costs(per_share=0.01, minimum=1.0)  # costs both the engines and the paper broker hold exactly
SYMBOLS = ["SPY", "IWM", "EEM", "BAC"]


def _rows(rng, n_bars, n_symbols):
    "Bar numbers of a panel's rows: every symbol on most bars, some missing."
    bars = np.repeat(np.arange(n_bars), n_symbols)
    return bars[rng.random(len(bars)) > 0.1]


def test_purged_folds_never_overlap_and_respect_the_embargo():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n_bars, horizon = int(rng.integers(30, 400)), int(rng.integers(0, 15))
        k, embargo = int(rng.integers(2, 8)), int(rng.integers(0, 20))
        bars = _rows(rng, n_bars, int(rng.integers(1, 5)))
        folds = purged_kfold(bars, k, horizon, embargo)
        tested = np.concatenate([te for _, te in folds])
        assert sorted(tested) == list(range(len(bars)))  # every row tested exactly once
        for train, test in folds:
            assert overlapping_labels(bars, train, test, horizon) == 0
            first, last = bars[test].min(), bars[test].max()
            after = bars[train][bars[train] > last]
            assert (after > last + horizon + embargo).all()
            # purging removed no more than it must: the nearest kept bars sit right at the boundary
            before = bars[train][bars[train] < first]
            if len(before) and (bars < first - horizon).any():
                assert before.max() == bars[bars < first - horizon].max()


def test_walk_forward_splits_train_strictly_before_test():
    rng = np.random.default_rng(1)
    for _ in range(100):
        n_bars, horizon = int(rng.integers(120, 600)), int(rng.integers(1, 10))
        bars = _rows(rng, n_bars, 3) + int(rng.integers(0, 50))
        train, test = int(rng.integers(20, 60)), int(rng.integers(5, 40))
        for tr, te in walk_forward_splits(bars, train, test, horizon, anchored=bool(rng.integers(2))):
            assert bars[tr].max() + horizon < bars[te].min()
            assert overlapping_labels(bars, tr, te, horizon) == 0


def test_overlapping_labels_counts_a_leak():
    bars = np.arange(10)
    assert overlapping_labels(bars, np.array([3]), np.array([5]), 2) == 1
    assert overlapping_labels(bars, np.array([2]), np.array([5]), 2) == 0


def test_forward_returns_and_metrics():
    idx = pd.date_range("2020-01-01", periods=5, tz="UTC", name="ts")
    close = pd.DataFrame({"A": [1.0, 2.0, 4.0, 8.0, 16.0]}, index=idx)
    p = Panel(close, close, close, close, close)
    fwd = forward_returns(p, 2).xs("A", level="symbol")
    np.testing.assert_allclose(fwd.to_numpy()[:3], np.log(4.0))
    assert fwd.iloc[3:].isna().all()
    with pytest.raises(SignalError):
        forward_returns(p, 0)
    y = pd.Series([0.1, -0.2, 0.3, -0.1], index=pd.MultiIndex.from_product([idx[:2], ["A", "B"]], names=["ts", "symbol"]))
    m = signal_metrics(y * 2, y)
    assert m["ic"] == pytest.approx(1) and m["rank_ic"] == pytest.approx(1) and m["hit_rate"] == 1.0
    assert signal_metrics(-y, y)["hit_rate"] == 0.0


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    "The shipped sample's daily bars of four symbols in a module-wide store."
    return sample_store(tmp_path_factory.mktemp("ml"), SYMBOLS)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, market):
    "An MLflow registry with one small LightGBM model trained on 2006–2013, registered as challenger."
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    ds = make_dataset(Panel.from_store(market, SYMBOLS, start="2006-01-01", end="2013-12-31"), FS, horizon=5)
    model = make_model("lightgbm", n_estimators=20)
    trained = train_model(ds, model, "m", uri=uri, clock=CLOCK)
    return uri, ds, model, trained


def test_registry_round_trip_gives_identical_predictions(registry):
    uri, ds, model, trained = registry
    assert trained.version == 1 and trained.alias == "challenger" and trained.metrics["splits"] == 5
    loaded = load_model("m", "challenger", uri=uri)
    assert loaded.features == FS and loaded.horizon == 5 and loaded.run_id == trained.run_id
    direct = model.fit(ds.X.to_numpy(), ds.y.to_numpy()).predict(ds.X.to_numpy())
    np.testing.assert_array_equal(loaded.predict(ds.X).to_numpy(), direct)
    np.testing.assert_array_equal(load_model("m", version=1, uri=uri).predict(ds.X).to_numpy(), direct)
    with pytest.raises(SignalError, match="no registered model"):
        load_model("m", "champion", uri=uri)
    with pytest.raises(SignalError, match="no registered model"):
        load_model("nope", "challenger", uri=uri)


def test_run_is_tracked(registry):
    from mlflow.tracking import MlflowClient
    uri, ds, _, trained = registry
    run = MlflowClient(uri).get_run(trained.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["bifrost.kind"] == "ml_signal"
    assert run.data.params["feature_version"] == FS.version and int(run.data.params["rows"]) == len(ds)
    assert {"ic", "rank_ic", "hit_rate"} <= set(run.data.metrics)


def test_promotion_is_recorded_like_a_strategy_version(store_url, registry, monkeypatch):
    uri, ds, _, _ = registry
    store = connect(store_url)
    assert promote_challenger(store, "m", CLOCK, reason="first", uri=uri) == 1
    assert load_model("m", "champion", uri=uri).version == 1
    second = train_model(ds, make_model("ridge"), "m", splits=purged_kfold(ds.bars, 3, 5, 5), uri=uri, clock=CLOCK)
    assert second.version > 1 and load_model("m", "champion", uri=uri).version == 1  # champion stays until promoted
    promote_challenger(store, "m", CLOCK, reason="ridge is steadier", uri=uri)
    assert load_model("m", "champion", uri=uri).version == second.version
    history = model_promotions(store, "m")
    assert history.model_version.tolist() == [1, second.version] and history.reason.tolist() == ["first", "ridge is steadier"]
    assert promoted_signal(store, "m", uri=uri, top=2).model.version == second.version
    versions = list_versions(store, "MLSignal:m")
    assert len(versions) == 2 and versions.promoted.sum() == 1
    monkeypatch.setenv("BIFROST_MLFLOW_URI", uri)
    rebuilt = promoted(store, "MLSignal:m")  # what a trading session builds from the store alone
    assert (rebuilt.model.version, rebuilt.model.run_id) == (second.version, second.run_id)
    assert rebuilt.values == {"top": 1, "threshold": 0.0, "every": 5}
    with pytest.raises(StrategyError, match="not run"):  # another registry's model under the same name and version
        MLSignal(model="m", version=second.version, uri=uri, run_id="0" * 32)
    # put the registry back as the other tests expect it
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    client.delete_registered_model_alias("m", "champion")
    client.set_registered_model_alias("m", "challenger", "1")
    client.delete_model_version("m", str(second.version))


@pytest.fixture(scope="module")
def trading(market):
    "2014–2016: after the model's training years."
    return Panel.from_store(market, SYMBOLS, start="2014-01-01", end="2016-12-31")


def test_mlsignal_same_trades_in_both_engines_and_paper(registry, trading, market):
    uri = registry[0]
    signal = MLSignal(model="m", alias="challenger", uri=uri, top=2, every=5)
    vec = run_vectorized(signal, trading, costs=EXACT)
    assert len(vec.trades) > 10
    assert len(parity(vec, run_backtrader(signal, trading, costs=EXACT))) == 0
    pap = run_paper(signal, trading, market, account="ml-paper", costs=EXACT)
    assert len(parity(vec, pap)) == 0


def test_mlsignal_targets_are_point_in_time(registry, trading):
    signal = MLSignal(model="m", alias="challenger", uri=registry[0], top=1, every=3)
    full = signal.targets(trading)
    for n in (signal.warmup, 300, 517, len(trading) - 1):
        assert signal.targets(trading.upto(n)).equals(full.iloc[:n])


def test_mlsignal_in_a_sweep_and_errors(registry, trading, monkeypatch):
    uri = registry[0]
    bound = MLSignal.bind("m", "challenger")
    monkeypatch.setenv("BIFROST_MLFLOW_URI", uri)  # what a sweep's bare constructor reads
    sweep = run_sweep(bound, trading, grid(bound, top=[1, 2], every=[5, 10]), costs=EXACT)
    assert len(sweep.table) == 4
    one = sweep.table[(sweep.table.top == 2) & (sweep.table.every == 5)].iloc[0]
    vec = run_vectorized(MLSignal(model="m", alias="challenger", uri=uri, top=2, every=5), trading, costs=EXACT)
    assert one.final_equity == pytest.approx(vec.final_equity)
    with pytest.raises(Exception, match="model name"):
        MLSignal()


def test_evaluate_and_backtest_out_of_sample(registry, market):
    _, ds, _, _ = registry
    splits = walk_forward_splits(ds.bars, 504, 252, ds.horizon)
    ev = evaluate(make_model("ridge"), ds, splits)
    assert len(ev.folds) == len(splits) and ev.summary()["rows"] == sum(len(te) for _, te in splits)
    assert ev.predictions.index.get_level_values("ts").min() > ds.X.index.get_level_values("ts")[splits[0][0]].max()
    panel = Panel.from_store(market, SYMBOLS, start="2006-01-01", end="2013-12-31")
    bt = backtest_predictions(panel, ev.predictions, top=2, costs=EXACT)
    assert bt.equity.index[0] == ev.predictions.index.get_level_values("ts").min()
    assert len(bt.trades) > 0
