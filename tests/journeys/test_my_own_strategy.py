"""Journey: "my own strategy" — written in a notebook cell, then traded without a rewrite.

A researcher's notebook (built below, cell by cell, and executed by Papermill as Jupyter would run it) defines a
daily strategy of its own, backtests it, sweeps it, registers and promotes it. Then, as a trader, through the real
`bifrost` executable only: risk limits for a paper account, three sessions traded at the strategy's own bar size by
the `trade` pipeline (Papermill, recorded), parity of each session with its backtest, the ledger against the broker,
and the cockpit served for the account. Nothing on PYTHONPATH: the class lives in the store, as registered.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import nbformat
import pytest

from journey_helpers import BIN, bifrost, env_for

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

RESEARCH = [
    ("markdown", "# My trend rule\nLong SPY while its close is above the mean of the last few closes."),
    ("code", """\
from datetime import datetime, timezone

from bifrost.core import SimulatedClock
from bifrost.store import connect
from bifrost.strategy.api import Panel, Param, Strategy
from bifrost.strategy.vector import grid, run_sweep, run_vectorized
from bifrost.strategy.versions import promote, register"""),
    ("code", """\
class AboveMean(Strategy):
    "Long while the close is above the mean of the last `window` closes; flat otherwise."
    window = Param(3, 2, 50)

    @property
    def warmup(self):
        return self.window

    def targets(self, panel):
        mean = panel.close.rolling(self.window).mean()
        return (panel.close > mean).astype(float).where(mean.notna(), 0.0) / panel.close.shape[1]"""),
    ("code", """\
store = connect()  # the store from my settings
panel = Panel.from_store(store, ["SPY"], start="2012-01-01", end="2013-10-04")
result = run_vectorized(AboveMean(window=3), panel)
result.summary()"""),
    ("code", """\
sweep = run_sweep(AboveMean, panel, grid(AboveMean, window=[2, 3, 5, 10, 20]))
best = sweep.table.sort_values("sharpe", ascending=False).head(3)
best"""),
    ("code", """\
clock = SimulatedClock(datetime(2013, 10, 4, 21, tzinfo=timezone.utc))
version = register(store, AboveMean(window=3), clock, name="my_trend", panel=panel)
promote(store, "my_trend", version, clock, "from my notebook")
store.close()
print(json.dumps({"version": version, "trades": len(result.trades), "combos": len(sweep.table)}))"""),
]
SESSIONS = ["2013-10-09", "2013-10-10", "2013-10-11"]


def research_notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src)
                for kind, src in RESEARCH]
    nb.cells.insert(1, nbformat.v4.new_code_cell("import json"))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("my_own_strategy")


@pytest.fixture(scope="module")
def registered(home):
    bifrost(home, "ingest", "sample")
    research = home / "research"
    research.mkdir()
    research_notebook(research / "my_trend.ipynb")
    run = subprocess.run([sys.executable, "-m", "papermill", "my_trend.ipynb", "my_trend.out.ipynb", "--cwd", "."],
                         cwd=research, env=env_for(home), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = nbformat.read(research / "my_trend.out.ipynb", as_version=4)
    (research / "my_trend.ipynb").unlink()  # from here on, only the store knows the class
    return json.loads(out.cells[-1].outputs[0]["text"])


def test_the_notebook_backtests_sweeps_registers_and_promotes(home, registered):
    assert registered["trades"] > 0 and registered["combos"] == 5
    listed = bifrost(home, "strategy", "list", "my_trend").stdout
    assert registered["version"] in listed and "paper" in listed


def test_three_sessions_at_its_own_bar_size_through_papermill_in_parity(home, registered):
    # an account for replaying 2013 is opened (and funded) before 2013's sessions: the ledger is written in time order
    bifrost(home, "portfolio", "open", "trend1", "--deposit", "100000", "--as-of", "2013-10-01")
    bifrost(home, "risk", "limits", "trend1", "--set", "max_daily_loss=0.05", "--set", "max_order_notional=500000",
            "--reason", "paper trial", "--effective-from", "2013-01-01")
    for i, session in enumerate(SESSIONS):
        args = ["run", "trade", "-p", "account=trend1", "-p", f"session={session}"]
        if i == 0:
            args += ["-p", "strategy=my_trend", "-p", "symbols=[SPY]"]
        bifrost(home, *args)
    for session in SESSIONS:
        assert "traded exactly as its backtest" in bifrost(home, "parity", "trend1", session).stdout
    runs = bifrost(home, "runs", "list", "--pipeline", "trade").stdout
    assert runs.count("succeeded") == 3
    assert "SPY" in bifrost(home, "fills", "--account", "trend1").stdout  # the rule went long at 2013-10-10's close, filled at the next open
    assert "SPY" in bifrost(home, "portfolio", "show", "trend1").stdout
    # the ledger agrees with the broker: no break was recorded, and the audit trail is whole
    assert "break" not in bifrost(home, "risk", "alerts", "trend1").stdout.lower()
    assert "intact" in bifrost(home, "audit", "verify").stdout


def test_the_cockpit_shows_the_account(home, registered):
    from playwright.sync_api import sync_playwright
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(BIN / "bifrost"), "dashboard", "--account", "trend1", "--port", str(port)],
                            env=env_for(home), cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/cockpit", timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the cockpit did not answer within 120 s"
                time.sleep(1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/cockpit")
            page.locator("[data-figure=nav]").wait_for(timeout=60_000)   # the account's NAV, drawn
            page.get_by_text("trend1").first.wait_for(timeout=30_000)
            page.get_by_text("SPY").first.wait_for(timeout=30_000)        # its position or fills
            browser.close()
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "Traceback" not in out, out
