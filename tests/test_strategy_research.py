"""Walk-forward and search scenarios beyond the notebook's, and a walk-forward on a real Ray cluster reached by address.

The notebook `08d_strategy.research` runs sweeps on a local Ray; the tests here need no Ray except
`test_walk_forward_on_a_ray_cluster_by_address`, which starts a Ray head on loopback in its own process group,
runs a walk-forward (random search, every window's sweep in one Tune run) from a separate driver process (a
process holds one Ray connection), compares it with the same walk-forward run locally, and kills exactly that
process group afterwards.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import sample_panel

from bifrost.strategy.api import FIELDS, Costs, Panel, Param, SmaCross, Strategy, StrategyError
from bifrost.strategy.research import (
    GridBayes,
    param_space,
    run_oos,
    sample,
    slice_panel,
    walk_forward,
    walk_forward_windows,
)
from bifrost.strategy.vector import grid, run_sweep

SPACE = {"fast": range(5, 41, 5), "slow": range(20, 161, 20)}
COSTS = Costs(per_share=0.005, minimum=1.0)


@pytest.fixture(scope="module")
def spy(tmp_path_factory) -> Panel:
    "SPY daily bars 2011–2020 from the shipped sample (only that feed is ingested: ~1 s)."
    return sample_panel(tmp_path_factory.mktemp("research"), "SPY", "2011-01-01", "2020-12-31")


class AlwaysLong(Strategy):
    "Fully invested from the first decision on: makes the out-of-sample entry rule visible."
    lookback = Param(5, 2, 50)

    @property
    def warmup(self) -> int:
        return self.lookback

    def targets(self, panel: Panel) -> pd.DataFrame:
        w = pd.DataFrame(1.0 / panel.close.shape[1], index=panel.index, columns=panel.symbols)
        w.iloc[: self.lookback - 1] = 0.0
        w.iloc[self.lookback:] = np.nan  # hold
        return w


@pytest.mark.parametrize("n_bars,train,test,anchored,gap", [
    (2517, 504, 126, False, 0), (2517, 504, 126, True, 0), (1000, 250, 63, False, 10), (1000, 250, 63, True, 21),
    (130, 100, 30, False, 0)])
def test_windows_when_cut_then_tests_are_contiguous_and_never_seen_in_training(n_bars, train, test, anchored, gap):
    wins = walk_forward_windows(n_bars, train, test, anchored, gap)
    assert wins[0].test_start == train + gap
    assert all(b.test_start == a.test_stop for a, b in itertools.pairwise(wins))
    assert all(w.test_stop - w.test_start == test for w in wins)
    assert wins[-1].test_stop <= n_bars < wins[-1].test_stop + test  # only a tail shorter than a window is left
    for w in wins:
        assert w.train_stop + gap == w.test_start
        assert w.train_start == 0 if anchored else w.train_stop - w.train_start == train


def test_windows_when_sizes_are_nonsense_then_refused():
    with pytest.raises(StrategyError, match="at least 2 bars"):
        walk_forward_windows(1000, 1, 10)
    with pytest.raises(StrategyError, match="gap must be >= 0"):
        walk_forward_windows(1000, 100, 10, gap=-1)
    with pytest.raises(StrategyError, match="hold no walk-forward window"):
        walk_forward_windows(100, 90, 20)


def test_oos_when_strategy_already_long_then_buys_at_first_test_open_with_given_cash(spy):
    start, stop, cash = 1000, 1100, 50_000.0
    eq = run_oos(AlwaysLong(lookback=20), spy, start, stop, cash)
    shares = np.floor(cash / spy.open.SPY.iloc[start])
    expected_first = cash - shares * spy.open.SPY.iloc[start] + shares * spy.close.SPY.iloc[start]
    assert eq.index[0] == spy.index[start] and len(eq) == stop - start
    assert eq.iloc[0] == pytest.approx(expected_first, rel=1e-12)
    cash_left = cash - shares * spy.open.SPY.iloc[start]
    np.testing.assert_allclose(eq.to_numpy(), cash_left + shares * spy.close.SPY.iloc[start:stop].to_numpy())


def test_oos_when_test_bars_change_then_nothing_before_them_does(spy):
    s = SmaCross(fast=10, slow=60)
    base = run_oos(s, spy, 800, 900, 100_000.0, COSTS)
    later = Panel(*(getattr(spy, f).iloc[:900].copy() for f in FIELDS), bar_size="1d")
    later.close.iloc[850:] *= 1.3
    moved = run_oos(s, later, 800, 900, 100_000.0, COSTS)
    pd.testing.assert_series_equal(base.iloc[:50], moved.iloc[:50])


@pytest.mark.parametrize("anchored,gap,search", [(False, 0, "random"), (True, 10, "grid")])
def test_walk_forward_when_future_scrambled_then_each_window_chooses_the_same(spy, anchored, gap, search):
    kw = {"train": 378, "test": 252, "space": SPACE, "search": search, "num_samples": 12, "anchored": anchored, "gap": gap,
              "costs": COSTS, "progress": False}
    wf = walk_forward(SmaCross, spy, **kw)
    rng = np.random.default_rng(3)
    for i, w in enumerate(walk_forward_windows(len(spy), 378, 252, anchored, gap)):
        factor = np.r_[np.ones(w.test_start), rng.uniform(0.7, 1.3, len(spy) - w.test_start)]
        other = walk_forward(SmaCross, Panel(*(getattr(spy, f).mul(factor, axis=0) for f in FIELDS), "1d"), **kw)
        cols = ["param_fast", "param_slow", "is_sharpe"]
        pd.testing.assert_frame_equal(other.windows[cols].iloc[: i + 1], wf.windows[cols].iloc[: i + 1])
        n = w.test_start - wf.windows.test_start.iloc[0]
        pd.testing.assert_series_equal(other.equity.iloc[:n], wf.equity.iloc[:n])


def test_walk_forward_chooses_each_windows_in_sample_best(spy):
    wf = walk_forward(SmaCross, spy, 504, 252, SPACE, metric="total_return", costs=COSTS, progress=False)
    for row in wf.windows.itertuples():
        table = run_sweep(SmaCross, slice_panel(spy, row.train_start, row.train_stop), grid(SmaCross, **SPACE),
                          costs=COSTS).table
        best = table.iloc[int(table.total_return.to_numpy().argmax())]
        assert (row.param_fast, row.param_slow, row.is_sharpe) == (best.fast, best.slow, best.sharpe)
    start = wf.windows.test_start.iloc[0]
    assert wf.equity.index.equals(spy.index[start:start + 252 * len(wf.windows)])
    assert wf.summary().windows == len(wf.windows)


def test_walk_forward_when_minimising_then_worst_in_sample_is_chosen(spy):
    best = walk_forward(SmaCross, spy, 504, 252, SPACE, costs=COSTS, progress=False)
    worst = walk_forward(SmaCross, spy, 504, 252, SPACE, mode="min", costs=COSTS, progress=False)
    assert (worst.windows.is_sharpe < best.windows.is_sharpe).all()


def test_walk_forward_when_misconfigured_then_says_what(spy):
    with pytest.raises(StrategyError, match="has no parameter"):
        walk_forward(SmaCross, spy, 504, 252, {"speed": [1]}, progress=False)
    with pytest.raises(StrategyError, match="no valid parameter combinations"):
        walk_forward(SmaCross, spy, 504, 252, {"fast": [50], "slow": [20]}, progress=False)
    with pytest.raises(StrategyError, match="hold no walk-forward window"):
        walk_forward(SmaCross, slice_panel(spy, 0, 300), 504, 252, SPACE, progress=False)


def test_sample_when_space_has_invalid_corners_then_draws_only_valid_distinct_combos():
    drawn = sample(SmaCross, {"fast": range(5, 100, 5), "slow": range(10, 110, 10)}, 30, seed=11)
    assert len(drawn) == 30 == len({(c["fast"], c["slow"]) for c in drawn})
    assert all(c["fast"] < c["slow"] for c in drawn)
    assert drawn != sample(SmaCross, {"fast": range(5, 100, 5), "slow": range(10, 110, 10)}, 30, seed=12)
    with pytest.raises(StrategyError, match="no valid parameter combination"):
        sample(SmaCross, {"fast": [90], "slow": [20]}, 5)


def test_grid_bayes_when_asked_for_everything_then_each_combo_once_then_none():
    combos = grid(SmaCross, fast=[5, 10, 15], slow=[20, 30])
    opt = GridBayes(combos, param_space(SmaCross, {"fast": [5, 10, 15], "slow": [20, 30]}), seed=0, n_initial=2)
    asked = []
    while (c := opt.suggest()) is not None:
        asked.append(c)
        opt.observe(c, float(c["fast"] - c["slow"]) if c["fast"] != 10 else float("nan"))
    assert sorted(tuple(c.values()) for c in asked) == sorted(tuple(c.values()) for c in combos)
    pending = GridBayes(combos, param_space(SmaCross, {"fast": [5, 10, 15], "slow": [20, 30]}))
    assert len([pending.suggest() for _ in range(6)]) == 6 and pending.suggest() is None  # running ones are not re-asked


def test_grid_bayes_when_minimising_then_finds_the_bottom_of_the_bowl():
    axis = list(range(25))
    combos = [{"a": a, "b": b} for a in axis for b in axis]
    opt = GridBayes(combos, {"a": axis, "b": axis}, mode="min", seed=4)
    for _ in range(40):
        c = opt.suggest()
        opt.observe(c, (c["a"] - 3) ** 2 + (c["b"] - 19) ** 2)
    assert combos[min(opt.done, key=opt.done.get)] == {"a": 3, "b": 19}
    with pytest.raises(StrategyError, match="mode must be"):
        GridBayes(combos, {"a": axis, "b": axis}, mode="best")


# --- Ray: a real cluster reached by address -------------------------------------------------------------

def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _session_processes(sid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-s", str(sid)], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if line.strip() and " Z" not in line[:16]]


def _stop(head: subprocess.Popen) -> list[str]:
    "End the head's process group: SIGTERM so raylet and GCS clean up, SIGKILL for what ignores it. What is left."
    os.killpg(head.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while _session_processes(head.pid) and time.monotonic() < deadline:
        time.sleep(0.25)
    if _session_processes(head.pid):  # `ray start --block` and the autoscaler monitor outlive SIGTERM
        os.killpg(head.pid, signal.SIGKILL)
    head.wait(30)
    deadline = time.monotonic() + 30
    while _session_processes(head.pid) and time.monotonic() < deadline:
        time.sleep(0.25)
    return _session_processes(head.pid)


DRIVER = textwrap.dedent("""
    import json, sys
    import pandas as pd, ray
    from bifrost.strategy.api import Costs, SmaCross
    from bifrost.strategy.research import connect_ray, walk_forward
    panel = pd.read_pickle(sys.argv[1])
    cpus = connect_ray()                                   # BIFROST_RAY_ADDRESS: the head the test started
    wf = walk_forward(SmaCross, panel, 504, 252, dict(fast=[5, 10, 20, 40], slow=[50, 100, 150]), search="random",
                      num_samples=6, seed=5, costs=Costs(per_share=0.005), ray=True, progress=False)
    pd.to_pickle(wf, sys.argv[2])
    print(json.dumps({"cpus": cpus, "address": ray.get_runtime_context().gcs_address}))
""")


@pytest.mark.slow
def test_walk_forward_on_a_ray_cluster_by_address(spy, tmp_path, bifrost_home):
    port, agent, agent_grpc, metrics, node, objects, runtime_env, dashboard = _free_ports(8)
    temp = tempfile.mkdtemp(prefix="bfr")  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    ray_cli = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
         "--include-dashboard=false", f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
         f"--node-manager-port={node}", f"--object-manager-port={objects}", f"--runtime-env-agent-port={runtime_env}",
         f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None, "ray start --head exited"
                assert time.monotonic() < deadline, "the Ray head did not come up"
                time.sleep(0.5)
        panel_file, result_file = tmp_path / "panel.pkl", tmp_path / "walk_forward.pkl"
        pd.to_pickle(spy, panel_file)
        driver = subprocess.run([sys.executable, "-c", DRIVER, str(panel_file), str(result_file)],
                                env={**env, "BIFROST_RAY_ADDRESS": f"127.0.0.1:{port}"},
                                capture_output=True, text=True, timeout=300, check=False)
        assert driver.returncode == 0, driver.stderr[-3000:]
        info = json.loads(driver.stdout.strip().splitlines()[-1])
    finally:
        left = _stop(head)
        shutil.rmtree(temp, ignore_errors=True)
    assert not left, left                                       # nothing of that cluster is left running
    assert info["cpus"] == 1 and info["address"].endswith(f":{port}")  # the cluster we started, not a new one
    assert [p.name.split("-")[:2] for p in (bifrost_home / "ray_results").iterdir()] == [["SmaCross", "walkforward"]]
    got = pd.read_pickle(result_file)
    local = walk_forward(SmaCross, spy, 504, 252, {"fast": [5, 10, 20, 40], "slow": [50, 100, 150]}, search="random",
                         num_samples=6, seed=5, costs=Costs(per_share=0.005), progress=False)
    pd.testing.assert_frame_equal(got.windows, local.windows)
    pd.testing.assert_series_equal(got.equity, local.equity)
