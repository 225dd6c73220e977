"""A strategy written in a notebook cell goes to production without a rewrite: registered from the notebook
(executed by Papermill, as a scheduler would), it is rebuilt and backtested by a new process that has only the
store — no PYTHONPATH, another folder, the notebook gone."""
import json
import os
import subprocess
import sys

import nbformat
import papermill as pm

from conftest import sample_store

RESEARCH = '''
from datetime import datetime, timezone
from bifrost.core import SimulatedClock
from bifrost.store import connect
from bifrost.strategy.api import Panel, Param, Strategy
from bifrost.strategy.vector import run_vectorized
from bifrost.strategy.versions import register

STEP = 0.5

def zscore(close, n):
    return (close - close.rolling(n).mean()) / close.rolling(n).std()

class Reverting(Strategy):
    "Long what fell more than `entry` deviations below its mean, flat otherwise."
    window = Param(20, 5, 200)
    entry = Param(1.0, 0.1, 5.0)

    @property
    def warmup(self):
        return self.window + 1

    def targets(self, panel):
        z = zscore(panel.close, self.window)
        return (z < -self.entry * STEP * 2).astype(float).where(z.notna(), 0.0) / len(panel.symbols)
'''
REGISTER = '''
store = connect(store_url)
panel = Panel.from_store(store, ["SPY", "QQQ"], start="2015-01-01", end="2016-12-31")
strategy = Reverting(window=15, entry=1.5)
result = run_vectorized(strategy, panel)
version = register(store, strategy, SimulatedClock(datetime(2024, 1, 2, 21, tzinfo=timezone.utc)), panel=panel)
store.close()
print(json.dumps({"version": version, "final_equity": result.final_equity, "trades": len(result.trades)}))
'''

STOPPED = '''
class StoppedReverting(Reverting):  # attributes only: no method says where it was written
    stop_loss = 0.05
'''
REGISTER_STOPPED = '''
store = connect(store_url)
print(json.dumps({"stopped": register(store, StoppedReverting(window=15, entry=1.5), SimulatedClock(datetime(2024, 1, 2, 21, tzinfo=timezone.utc)))}))
store.close()
'''

REBUILD = '''
import json, sys
from bifrost.store import connect
from bifrost.strategy.api import Panel
from bifrost.strategy.vector import run_vectorized
from bifrost.strategy.versions import build_version
store = connect(sys.argv[1], read_only=True)
strategy = build_version(store, sys.argv[2])
result = run_vectorized(strategy, Panel.from_store(store, ["SPY", "QQQ"], start="2015-01-01", end="2016-12-31"))
print(json.dumps({"name": type(strategy).__name__, "final_equity": result.final_equity, "trades": len(result.trades)}))
'''


def test_notebook_strategy_registered_by_papermill_is_rebuilt_and_backtested_by_a_fresh_process(tmp_path):
    sample_store(tmp_path, ["SPY", "QQQ"]).close()
    url = f"duckdb:///{tmp_path}/sample.duckdb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('store_url = ""', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import json"), nbformat.v4.new_code_cell(RESEARCH),
                nbformat.v4.new_code_cell(REGISTER), nbformat.v4.new_code_cell(STOPPED),
                nbformat.v4.new_code_cell(REGISTER_STOPPED)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    research = tmp_path / "research" / "my_strategy.ipynb"
    research.parent.mkdir()
    nbformat.write(nb, research)
    out = pm.execute_notebook(str(research), str(tmp_path / "run.ipynb"), parameters={"store_url": url},
                              kernel_name="python3", progress_bar=False, cwd=str(research.parent))
    registered = json.loads(out.cells[-3].outputs[0]["text"])
    stopped = json.loads(out.cells[-1].outputs[0]["text"])["stopped"]
    assert registered["trades"] > 0
    research.unlink()  # the notebook is gone: only the store remains

    fresh = tmp_path / "elsewhere"
    fresh.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-I", "-c", REBUILD, url, registered["version"]], capture_output=True,
                         text=True, cwd=fresh, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    rebuilt = json.loads(run.stdout)
    assert rebuilt == {"name": "Reverting", "final_equity": registered["final_equity"], "trades": registered["trades"]}
    # a subclass of attributes only, written in a cell, is found in that cell and rebuilt with its parent
    run = subprocess.run([sys.executable, "-I", "-c", REBUILD, url, stopped], capture_output=True, text=True,
                         cwd=fresh, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["name"] == "StoppedReverting"

