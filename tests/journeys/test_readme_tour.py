"""The README's tour, read from README.md itself and run line by line as a user would, in order, with the real
`bifrost` executable on a fresh BIFROST_HOME: every line exits 0 and no output contains a traceback.

Placeholders are filled from the line before them (`VERSION` from `bifrost strategy register`, `RUN_ID` from
`bifrost backtest --track`). Servers that run until interrupted (`bifrost metrics`, `bifrost dashboard`) are started,
checked to answer on their port, and stopped. The `bifrost bench …` lines are left out, named below: each runs for
minutes against peer libraries, and `tests/test_bench.py` runs them quick.

The tour's first line, `bifrost demo`, is the demo's test too: its output is checked step by step, and once the tour is
done the demo runs again on the same home, where it must add only what a second run adds (the demo runs twice in the
whole suite, both times here)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bifrost.demo import DEMO_STEPS

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SKIPPED = {"bifrost bench": "benchmarks run for minutes against peer libraries; tests/test_bench.py runs them quick"}
SERVERS = {"bifrost metrics": "http://127.0.0.1:9464/metrics", "bifrost dashboard": "http://127.0.0.1:5006/cockpit"}


def tour_lines() -> list[str]:
    "The commands of the ```bash block under '## A tour' in README.md, comment lines dropped."
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## A tour.*?```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def fill(command: str, previous: str) -> str:
    "Replace VERSION / RUN_ID with what the previous command printed."
    if "VERSION" in command:
        version = re.search(r"^\S+ ([0-9a-f]{8,}) ", previous, re.M).group(1)
        command = command.replace("VERSION", version)
    if "RUN_ID" in command:
        command = command.replace("RUN_ID", re.search(r"run ([0-9a-f]{16,})", previous).group(1))
    return command


def run_line(line: str, env: dict, cwd: Path) -> str:
    "Run one tour line; its `&&` parts one by one so a placeholder can take the output of the part before."
    out = ""
    for part in (p.strip() for p in line.split(" && ")):
        part = fill(part.split("  #")[0].strip(), out)
        p = subprocess.run(["bash", "-c", part], env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
        out = p.stdout + p.stderr
        assert "Traceback" not in out, f"{part}\n{out}"
        assert p.returncode == 0, f"{part} exited {p.returncode}:\n{out[-3000:]}"
    return out


def serve(line: str, url: str, env: dict, cwd: Path) -> None:
    "Start a server line, wait for it to answer at `url`, stop it."
    proc = subprocess.Popen(["bash", "-c", f"exec {line.split('  #')[0].strip()}"], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"{line} exited {proc.returncode}: {proc.stdout.read()}"
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    assert r.status == 200
                    return
            except OSError:
                time.sleep(1)
        pytest.fail(f"{line}: nothing answered at {url} within 120 s")
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
        assert "Traceback" not in out, out


def check_demo(out: str) -> None:
    "`bifrost demo` on a fresh home: every step ran and said what it found."
    assert all(f"== {i}/{len(DEMO_STEPS)}" in out for i in range(1, len(DEMO_STEPS) + 1)), out
    assert re.search(r"parity: \d+ trades, 0 differences", out)
    assert "historical" in out and "covid crash 2020" in out
    assert "buy 300 QQQ: APPROVED" in out and "block: compliance/restricted_list v1: BAC" in out
    assert "audit trail intact: 6 records" in out  # limits, two rules, three decisions
    assert "ledger holds 10000 SPY, the broker 10000; child orders {'filled': 26}, open 0, unknown 0" in out
    assert re.search(r"walk-forward: \d+ windows, in-sample Sharpe", out)
    assert out.count("— done") == 3 and "parity: traded exactly as its backtest" in out
    assert "end-of-day report (succeeded)" in out and re.search(r"tear sheet: .*eod_demo-paper_2013-10-08\.html", out)


def check_demo_again(first: str, again: str) -> None:
    "`bifrost demo` a second time: limits and rules are not recorded again, and only untraded sessions are traded."
    records = lambda text: int(re.search(r"audit trail intact: (\d+) records", text).group(1))
    assert records(again) > records(first) + 3  # the tour's records and the second run's three decisions
    assert "ledger holds 10000 SPY, the broker 10000" in again
    assert again.count("— done") == 2, again  # the two demo sessions not traded yet, and only those


def test_the_readme_tour_runs_as_written(tmp_path):
    lines = tour_lines()
    assert lines[0] == "source .venv/bin/activate" and lines[1].startswith("bifrost demo")
    env = {**os.environ, "BIFROST_HOME": str(tmp_path / "home"), "BIFROST_DB_URL": "",
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    work = tmp_path / "work"  # where report.html lands; the sample path in the tour is relative to the clone
    work.mkdir()
    ran, previous = [], ""
    for line in lines[1:]:  # the venv is on PATH already
        if any(line.startswith(k) for k in SKIPPED):
            continue
        server = next((url for k, url in SERVERS.items() if line.startswith(k)), None)
        if server:
            serve(line, server, env, ROOT)
        else:
            previous = run_line(line, env, ROOT if "bifrost/sample/" in line else work)
            if line.startswith("bifrost demo"):
                demo = previous
                check_demo(demo)
        ran.append(line)
    assert len(ran) >= 35
    check_demo_again(demo, run_line("bifrost demo", env, work))
