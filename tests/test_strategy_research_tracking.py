"""MLflow tracking against real stores: the default sqlite file in BIFROST_HOME, another store named by
BIFROST_MLFLOW_URI, and (slow) a real `mlflow server` reached over HTTP with proxied artifacts.

Every test gets its own BIFROST_HOME (the autouse `bifrost_home` fixture in conftest.py).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import sample_panel
from mlflow.tracking import MlflowClient

from bifrost.core import SimulatedClock
from bifrost.strategy.api import Costs, Panel, SmaCross
from bifrost.strategy.research import walk_forward
from bifrost.strategy.tracking import track, tracked_run, tracking_uri
from bifrost.strategy.vector import run_vectorized

START = datetime(2024, 3, 1, 21, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def spy(tmp_path_factory) -> Panel:
    return sample_panel(tmp_path_factory.mktemp("tracking"), "SPY", "2014-01-01", "2020-12-31")


@pytest.fixture(scope="module")
def backtest(spy):
    return run_vectorized(SmaCross(fast=15, slow=80), spy, costs=Costs(per_share=0.005, minimum=1.0))


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for a in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def test_track_when_nothing_configured_then_sqlite_and_artifacts_live_in_bifrost_home(backtest, bifrost_home,
                                                                                    tmp_path, monkeypatch):
    monkeypatch.delenv("BIFROST_MLFLOW_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    run_id = track(backtest, clock=SimulatedClock(START))
    client = MlflowClient(f"sqlite:///{bifrost_home / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert (run.data.params["fast"], run.data.params["slow"], run.data.params["strategy"]) == ("15", "80", "SmaCross")
    assert run.data.metrics["final_equity"] == backtest.final_equity
    assert run.data.metrics["trades"] == len(backtest.trades)
    assert run.info.start_time == int(START.timestamp() * 1000) and run.info.status == "FINISHED"
    files = _artifacts(client, run_id)
    assert {"equity.csv", "equity.png", "trades.csv"} <= files
    assert run.info.artifact_uri.startswith((bifrost_home / "mlartifacts").as_uri())
    assert list(tmp_path.iterdir()) == []
    equity = pd.read_csv(client.download_artifacts(run_id, "equity.csv", str(bifrost_home)), index_col=0).equity
    np.testing.assert_array_equal(equity.to_numpy(), backtest.equity.to_numpy())


def test_track_when_tear_sheet_module_present_then_logged(backtest, bifrost_home):
    pytest.importorskip("bifrost.analytics.tearsheet")
    run_id = track(backtest)
    client = MlflowClient(tracking_uri())
    assert "tear_sheet.html" in _artifacts(client, run_id)
    page = Path(client.download_artifacts(run_id, "tear_sheet.html", str(bifrost_home))).read_text()
    assert page.startswith("<!DOCTYPE html>")


def test_track_when_BIFROST_MLFLOW_URI_set_then_runs_go_there_not_home(backtest, bifrost_home, tmp_path, monkeypatch):
    other = f"sqlite:///{tmp_path / 'team.db'}"
    monkeypatch.setenv("BIFROST_MLFLOW_URI", other)
    run_id = track(backtest, experiment="team")
    assert MlflowClient(other).get_run(run_id).data.params["slow"] == "80"
    assert not (bifrost_home / "mlflow.db").exists()


def test_walk_forward_run_when_read_back_then_windows_and_stitched_equity_are_the_result(spy, bifrost_home):
    wf = walk_forward(SmaCross, spy, 378, 189, {"fast": [5, 10, 20], "slow": [40, 80, 160]}, progress=False)
    run_id = track(wf, clock=SimulatedClock(START))
    client = MlflowClient(tracking_uri())
    run = client.get_run(run_id)
    assert run.data.tags["bifrost.kind"] == "walk_forward"
    assert run.data.metrics["is_sharpe"] == wf.is_sharpe and run.data.metrics["degradation"] == wf.degradation
    assert [m.value for m in client.get_metric_history(run_id, "window_is_sharpe")] == wf.windows.is_sharpe.tolist()
    windows = pd.read_csv(client.download_artifacts(run_id, "windows.csv", str(bifrost_home)))
    assert windows.param_fast.tolist() == wf.windows.param_fast.tolist()
    equity = pd.read_csv(client.download_artifacts(run_id, "equity.csv", str(bifrost_home)), index_col=0).equity
    np.testing.assert_array_equal(equity.to_numpy(), wf.equity.to_numpy())


def test_tracked_run_when_block_raises_then_failed_and_error_passes_through():
    with pytest.raises(ZeroDivisionError), tracked_run("scratch", clock=SimulatedClock(START)) as run:
        run.log_metrics({"ratio": 1 / 0})
    assert run.client.get_run(run.run_id).info.status == "FAILED"


@pytest.mark.slow
def test_track_to_a_tracking_server_by_uri(backtest, tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    served = tmp_path / "served"
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(served)],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no background job runners to start
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                assert server.poll() is None, "mlflow server exited"
                assert time.monotonic() < deadline, "mlflow server did not come up"
                time.sleep(0.5)
        uri = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("BIFROST_MLFLOW_URI", uri)
        run_id = track(backtest, clock=SimulatedClock(START))
        client = MlflowClient(uri)
        run = client.get_run(run_id)
        assert run.data.metrics["final_equity"] == backtest.final_equity
        assert {"equity.csv", "equity.png", "trades.csv"} <= _artifacts(client, run_id)
        assert any(p.name == "equity.csv" for p in served.rglob("*"))  # uploaded through the server
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(20)
        deadline = time.monotonic() + 20
        while _session_alive(server.pid) and time.monotonic() < deadline:
            time.sleep(0.25)
        if _session_alive(server.pid):
            os.killpg(server.pid, signal.SIGKILL)
    assert not _session_alive(server.pid)


def _session_alive(sid: int) -> bool:
    "Whether any process (zombies aside) of the server's session still runs."
    out = subprocess.run(["ps", "-o", "stat=", "-s", str(sid)], capture_output=True, text=True, check=False).stdout.split()
    return any(not s.startswith("Z") for s in out)
