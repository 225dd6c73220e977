"""Point-in-time property tests of bifrost.signals.features, and its store cache on both backends."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bifrost.core import SimulatedClock
from bifrost.signals.features import (
    FeatureSet,
    bootstrap_panel,
    cached_features,
    compute_features,
    load_features,
    reference_features,
    store_features,
)
from bifrost.store import connect
from bifrost.strategy.api import FIELDS, Panel

FS = FeatureSet(horizons=(1, 5, 21), vol_windows=(10, 21), momentum=(63, 5))
CLOCK = SimulatedClock(pd.Timestamp("2024-01-02 22:00", tz="UTC"))


@pytest.fixture(scope="module")
def panel() -> Panel:
    "Bars resampled (seeded) from the shipped sample's real daily bars, with a hole in one symbol."
    p = bootstrap_panel(4, 400, seed=3)
    close = p.close.copy()
    close.iloc[150:160, 2] = np.nan  # a symbol missing ten bars
    return Panel(p.open, p.high, p.low, close, p.volume)


def _same(a: pd.DataFrame, b: pd.DataFrame, eps: float = 1e-9):
    assert a.index.equals(b.index)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=eps, atol=eps)


def test_shifting_future_data_never_changes_a_feature(panel):
    full = compute_features(panel, FS)
    rng = np.random.default_rng(0)
    for _ in range(20):
        t = int(rng.integers(FS.lookback, len(panel) - 1))
        factor = rng.uniform(0.3, 3.0, (len(panel) - t, len(panel.symbols)))
        changed = Panel(*(pd.concat([getattr(panel, f).iloc[:t], getattr(panel, f).iloc[t:] * factor]) for f in FIELDS))
        got = compute_features(changed, FS)
        before = full.index.get_level_values("ts") < panel.index[t]
        _same(got[before], full[before])
        _same(compute_features(panel.upto(t), FS), full[before])
        # ...and the bar that changed does change something (the test can fail)
        assert not np.allclose(got[~before].ret_1.fillna(0), full[~before].ret_1.fillna(0))


def test_history_start_does_not_matter_once_the_lookback_is_covered(panel):
    full = compute_features(panel, FS)
    for start in (1, 37, 120):
        late = compute_features(Panel(*(getattr(panel, f).iloc[start:] for f in FIELDS)), FS)
        ok = late.index.get_level_values("ts") >= panel.index[start + FS.lookback - 1]
        _same(late[ok], full.loc[late[ok].index], eps=1e-8)


def test_split_scaling_changes_no_feature(panel):
    s = 4.0
    scaled = Panel(panel.open / s, panel.high / s, panel.low / s, panel.close / s, panel.volume * s)
    _same(compute_features(scaled, FS), compute_features(panel, FS), eps=1e-8)


def test_matches_the_groupby_reference(panel):
    ours = compute_features(panel, FS)
    _same(reference_features(panel, FS).loc[ours.index], ours, eps=1e-9)


def test_hole_in_the_data_gives_missing_features_until_the_window_refills(panel):
    x = compute_features(panel, FS).xs(panel.symbols[2], level="symbol")
    vol = x.vol_21  # its window of daily returns [t-20, t] holds a missing return until bar 181
    assert vol.loc[panel.index[160]:panel.index[180]].isna().all() and vol.loc[panel.index[181]:].notna().all()
    ret = x.ret_21  # a point difference: missing only where t-21 falls in the hole
    assert ret.loc[panel.index[171]:panel.index[180]].isna().all() and ret.loc[panel.index[160]:panel.index[170]].notna().all()
    assert panel.index[155] not in x.index  # no row where there is no bar


def test_version_changes_with_the_spec():
    assert FeatureSet().version == FeatureSet().version
    assert FeatureSet(rsi=10).version != FeatureSet().version
    assert FeatureSet.from_spec(FeatureSet(momentum=(63, 5)).spec) == FeatureSet(momentum=(63, 5))


def test_store_round_trip_and_cache(store_url, panel):
    store = connect(store_url)
    short = Panel(*(getattr(panel, f).iloc[:200] for f in FIELDS))
    first = cached_features(store, short, FS, CLOCK)
    n1 = store.scalar("SELECT count(*) FROM feature_values")
    assert n1 == first.notna().sum().sum()
    _same(load_features(store, FS), first.dropna(how="all"))
    # a longer history writes only the new bars' rows; the stored ones are what the longer history computes
    longer = cached_features(store, panel, FS, CLOCK)
    n2 = store.scalar("SELECT count(*) FROM feature_values")
    assert n2 == longer.notna().sum().sum() > n1
    again = cached_features(store, panel, FS, CLOCK)
    assert store.scalar("SELECT count(*) FROM feature_values") == n2
    _same(again, longer, eps=1e-12)
    assert store.query("SELECT name, version FROM feature_sets").values.tolist() == [[FS.name, FS.version]]
    got = load_features(store, FS, [panel.symbols[0]], start=panel.index[100], end=panel.index[120])
    assert set(got.index.get_level_values("symbol")) == {panel.symbols[0]} and len(got) == 21


def test_bad_frame_writes_nothing(store_url, panel):
    store = connect(store_url)
    frame = compute_features(panel, FS)
    with pytest.raises(Exception, match="features"):
        store_features(store, FeatureSet(name="other", rsi=9), frame, CLOCK)
    assert store.scalar("SELECT count(*) FROM feature_values") == 0
    assert store.scalar("SELECT count(*) FROM feature_sets") == 0
