"""bifrost.signals.torch_model: windowed features are point in time and work without PyTorch; without PyTorch the
model names the install command; with it, training is deterministic, the registry round trip gives identical
predictions and MLSignal trades the model in the vectorised engine."""
from __future__ import annotations

import importlib
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import sample_store

from bifrost.core import BifrostError, SimulatedClock
from bifrost.signals.features import FeatureError, FeatureSet, compute_features
from bifrost.signals.ml import (
    MLSignal,
    SignalError,
    feature_set_from_spec,
    load_model,
    make_dataset,
    promote_challenger,
    purged_kfold,
    train_model,
)
from bifrost.signals.torch_model import SequenceRegressor, WindowedFeatures
from bifrost.strategy.api import Costs, Panel
from bifrost.strategy.vector import run_vectorized

FS = FeatureSet(horizons=(1, 5, 21), vol_windows=(21,), momentum=(63, 5))
WFS = WindowedFeatures(FS, window=5)
CLOCK = SimulatedClock(pd.Timestamp("2021-01-04 22:00", tz="UTC"))
SYMBOLS = ["SPY", "IWM", "BAC"]


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    "The shipped sample's daily bars of three symbols in a module-wide store."
    return sample_store(tmp_path_factory.mktemp("torch"), SYMBOLS)


@pytest.fixture(scope="module")
def panel(market):
    return Panel.from_store(market, SYMBOLS, start="2006-01-01", end="2011-12-31")


# --- without PyTorch (these run in CI) -------------------------------------------------------------------------


def test_without_torch_the_module_imports_and_the_model_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    monkeypatch.delitem(sys.modules, "bifrost.signals.torch_model")
    module = importlib.import_module("bifrost.signals.torch_model")  # importing does not import torch
    assert module.have_torch() is False
    X, y = np.zeros((8, 10)), np.zeros(8)
    with pytest.raises(module.TorchMissing) as err:
        module.SequenceRegressor(window=5).fit(X, y)
    assert isinstance(err.value, SignalError) and isinstance(err.value, BifrostError)
    assert 'pip install "bifrost[torch]"' in err.value.hint and "pip install torch==2.13.0" in err.value.hint
    assert "PyTorch" in str(err.value)


def test_windowed_features_are_lags_of_the_point_in_time_features(panel):
    X = WFS.compute(panel)
    assert list(X.columns) == WFS.features and len(X.columns) == 5 * len(FS.features)
    assert X.columns[0] == "ret_1[t-4]" and X.columns[-1] == f"stoch_{FS.stochastic}[t]"
    base = compute_features(panel, FS)
    for symbol in SYMBOLS:
        lagged, b = X.xs(symbol, level="symbol"), base.xs(symbol, level="symbol")
        for k in range(5):
            suffix = f"[t-{k}]" if k else "[t]"
            expected = b.shift(k).set_axis([f + suffix for f in FS.features], axis=1)
            pd.testing.assert_frame_equal(lagged[expected.columns], expected)
    assert WFS.lookback == FS.lookback + 4
    assert X.dropna().index.get_level_values("ts").min() == panel.index[WFS.lookback - 1]


def test_windowed_features_never_read_past_t(panel):
    full = WFS.compute(panel)
    for n in (WFS.lookback - 1, WFS.lookback, 400, 1000):
        part = WFS.compute(panel.upto(n))
        pd.testing.assert_frame_equal(part, full.loc[: panel.index[n - 1]])
    # a value changed at bar m moves no row before m
    m = 700
    close = panel.close.copy()
    close.iloc[m, 0] *= 1.5
    moved = WFS.compute(Panel(panel.open, panel.high, panel.low, close, panel.volume))
    diff = (moved.fillna(0) != full.fillna(0)).any(axis=1)
    assert diff.any() and diff[diff].index.get_level_values("ts").min() == panel.index[m]


def test_a_missing_bar_leaves_no_row_whose_window_spans_it(panel):
    close = panel.close.copy()
    close.iloc[500, 1] = np.nan  # IWM misses one bar
    X = WFS.compute(Panel(panel.open, panel.high, panel.low, close, panel.volume))
    iwm = X.xs("IWM", level="symbol")
    assert panel.index[500] not in iwm.index
    for t in panel.index[501:505]:  # windows that would span the gap are incomplete
        assert iwm.loc[t].isna().any()


def test_windowed_spec_round_trips_through_the_registry_reader():
    spec = WFS.spec
    assert spec["kind"] == "bifrost.signals.torch_model:WindowedFeatures"
    assert feature_set_from_spec(spec) == WFS
    assert feature_set_from_spec(FS.spec) == FS  # plain feature sets still read back
    assert WindowedFeatures(FS, 6).version != WFS.version != WindowedFeatures(FeatureSet(), 5).version
    with pytest.raises(SignalError, match="unknown feature set kind"):
        feature_set_from_spec({**spec, "kind": "os:system"})
    with pytest.raises(FeatureError, match="at least 1"):
        WindowedFeatures(FS, 0)


def test_the_model_refuses_rows_that_are_not_its_window():
    with pytest.raises(SignalError, match="not 4 bars"):
        SequenceRegressor(window=4).fit(np.zeros((10, 10)), np.zeros(10))


# --- with PyTorch ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, panel):
    "A small GRU trained on 2006–2011 and registered as `gru@challenger` in a module-wide registry."
    pytest.importorskip("torch")
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    ds = make_dataset(panel, WFS, horizon=5)
    model = SequenceRegressor(window=WFS.window, hidden=8, epochs=2)
    registered = train_model(ds, model, "gru", splits=purged_kfold(ds.bars, 3, 5, 5), uri=uri, clock=CLOCK)
    return uri, ds, model, registered


def test_registry_round_trip_gives_identical_predictions(trained, panel):
    from mlflow.tracking import MlflowClient
    uri, ds, _, registered = trained
    assert registered.version == 1 and registered.metrics["splits"] == 3 and registered.metrics["rows"] == len(ds)
    loaded = load_model("gru", "challenger", uri=uri)
    assert loaded.features == WFS and loaded.horizon == 5 and isinstance(loaded.model, SequenceRegressor)
    direct = SequenceRegressor(window=WFS.window, hidden=8, epochs=2).fit(ds.X, ds.y).predict(ds.X)
    # through MLSignal's path: features of the whole panel (unlabelled rows too), rows with every feature
    via_alias = loaded.predict(WFS.compute(panel)).loc[ds.X.index].to_numpy()
    np.testing.assert_array_equal(via_alias, direct)
    np.testing.assert_array_equal(load_model("gru", version=1, uri=uri).predict(ds.X).to_numpy(), direct)
    requirements = MlflowClient(uri).download_artifacts(registered.run_id, "model/requirements.txt")
    with open(requirements) as f:
        assert "torch==" in f.read()


def test_training_is_deterministic_and_leaves_torch_as_it_was(panel):
    torch = pytest.importorskip("torch")
    ds = make_dataset(panel, WFS, horizon=5)
    threads, strict, rng = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.get_rng_state()
    one = SequenceRegressor(window=5, hidden=8, epochs=2).fit(ds.X, ds.y)
    two = SequenceRegressor(window=5, hidden=8, epochs=2).fit(ds.X, ds.y)
    for k in one.weights_:
        np.testing.assert_array_equal(one.weights_[k], two.weights_[k])
    np.testing.assert_array_equal(one.predict(ds.X), two.predict(ds.X))
    other = SequenceRegressor(window=5, hidden=8, epochs=2, seed=1).fit(ds.X, ds.y).predict(ds.X)
    assert not np.array_equal(other, one.predict(ds.X))  # the seed is what fixes it
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, strict)
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_rows_prediction_does_not_depend_on_the_rows_beside_it(trained):
    uri, ds, _, _ = trained
    model = load_model("gru", "challenger", uri=uri).model
    X = ds.X.to_numpy()
    full = model.predict(X)
    for lo, hi in ((0, 1), (3, 700), (1000, 1513), (len(X) - 5, len(X))):
        np.testing.assert_array_equal(model.predict(X[lo:hi]), full[lo:hi])
    with pytest.raises(SignalError, match="trained on"):
        model.predict(X[:, :-1])


def test_mlsignal_trades_the_gru_in_the_vectorised_engine(trained, market):
    uri = trained[0]
    assert promote_challenger(market, "gru", CLOCK, reason="test", uri=uri) == 1
    signal = MLSignal(model="gru", uri=uri, top=2)
    assert signal.model.alias == "champion" and signal.warmup == WFS.lookback
    later = Panel.from_store(market, SYMBOLS, start="2012-01-01", end="2014-12-31")
    result = run_vectorized(signal, later, costs=Costs(per_share=0.005, minimum=1.0))
    assert len(result.trades) > 0 and np.isfinite(result.equity).all()
    # scores are the model's predictions on the windowed features, and decisions are point in time
    X = WFS.compute(later).dropna()
    scores = signal.scores(later).stack().rename_axis(["ts", "symbol"]).loc[X.index]
    np.testing.assert_array_equal(scores.to_numpy(), signal.model.model.predict(X.to_numpy()))
    n = 300
    pd.testing.assert_frame_equal(signal.targets(later.upto(n)), signal.targets(later).iloc[:n])
