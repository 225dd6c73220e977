"""Pipeline runs on both backends: the registry, lock contention between two processes, a SIGKILLed run
recovered by the next start, a failing run that leaves the store as it was, and secrets kept out of every record."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import nbformat
import pytest

from bifrost.core import LiveClock
from bifrost.pipelines.runs import (RunError, RunLockedError, SecretParameterError, list_runs, lock_holder,
                                    run_pipeline, show_run)
from bifrost.store import connect

# A pipeline that inserts a row in its own transaction, then (if told to) announces itself and sleeps inside it,
# then (if told to) fails: the shape of a real pipeline's write, crash and kill.
BODY = """
import os, time
from pathlib import Path
from bifrost.pipelines.runs import pipeline_store
db = pipeline_store(store)
with db.transaction():
    db.execute("INSERT INTO trading_controls (name, value, set_at, reason) VALUES (?, 'x', '2024-01-02', 'test')",
               [f"mark-{account}-{tag}"])
    if marker and hold:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(sleep)
    if fail:
        raise ValueError("boom: the pipeline failed half-way")
if marker and not hold:  # DuckDB: a process that holds its transaction locks out every other process
    Path(marker).write_text(str(os.getpid()))
    time.sleep(sleep)
print("done", len(os.environ.get("BIFROST_TEST_SECRET", "")))
"""


def make_pipeline(folder: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}}
    params = nbformat.v4.new_code_cell('store = "scratch"\naccount = "a"\ntag = "t"\nmarker = ""\nsleep = 0\nhold = True\nfail = False')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(BODY)]
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / "probe.ipynb")
    return folder


RUNNER = """
import sys
from bifrost.core import LiveClock
from bifrost.pipelines.runs import run_pipeline
from bifrost.store import connect
url, src, out, marker, hold = sys.argv[1:6]
run_pipeline("probe", {"account": "desk", "tag": "slow", "marker": marker, "sleep": 120, "hold": hold == "hold"}, store=connect(url),
             clock=LiveClock(), output_dir=out, source_dir=src)
"""


def start_slow_run(url: str, src: Path, tmp: Path, hold: bool) -> tuple[subprocess.Popen, Path]:
    marker = tmp / "marker"
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, url, str(src), str(tmp / "slow"), str(marker),
                             "hold" if hold else "free"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(1200):  # the kernel writes the marker once it is inside its transaction
        if marker.exists() and marker.read_text():
            return proc, marker
        if proc.poll() is not None:
            raise AssertionError(f"the slow run exited early ({proc.returncode})")
        time.sleep(0.1)
    raise AssertionError("the slow run never started")


def controls(store) -> set[str]:
    return set(store.query("SELECT name FROM trading_controls").name)


def test_run_is_recorded(store_url, tmp_path):
    store, src = connect(store_url), make_pipeline(tmp_path / "src")
    run = run_pipeline("probe", {"account": "desk", "tag": "ok"}, store=store, clock=LiveClock(),
                       output_dir=tmp_path / "out", source_dir=src)
    assert (run.status, run.error, run.account) == ("succeeded", None, "desk")
    assert run.params == {"account": "desk", "tag": "ok", "store": "settings"}
    assert run.duration is not None and run.duration >= 0
    assert Path(run.output_path) == tmp_path / "out" / "probe.ipynb" and Path(run.output_path).exists()
    assert controls(store) == {"mark-desk-ok"}  # the kernel wrote to the runner's store, not a scratch one
    assert show_run(store, run.run_id[:-2]) == run
    assert list(list_runs(store).run_id) == [run.run_id]
    assert lock_holder(store, "probe:desk") is None


def test_failed_run_leaves_store_as_it_was(store_url, tmp_path):
    store, src = connect(store_url), make_pipeline(tmp_path / "src")
    run = run_pipeline("probe", {"account": "desk", "tag": "bad", "fail": True}, store=store, clock=LiveClock(),
                       output_dir=tmp_path / "out", source_dir=src)
    assert run.status == "failed"
    assert "ValueError: boom" in run.error
    assert controls(store) == set()
    assert lock_holder(store, "probe:desk") is None
    assert "boom" in Path(run.output_path).read_text()  # Papermill keeps the failed notebook as the record


def test_second_start_is_refused_naming_the_holder(store_url, tmp_path):
    store, src = connect(store_url), make_pipeline(tmp_path / "src")
    proc, marker = start_slow_run(store_url, src, tmp_path, hold=False)
    try:
        holder = lock_holder(store, "probe:desk")
        assert holder["pid"] == proc.pid
        with pytest.raises(RunLockedError, match=f"locked by run {holder['run_id']} \\(pid {proc.pid}"):
            run_pipeline("probe", {"account": "desk", "tag": "second"}, store=store, clock=LiveClock(),
                         output_dir=tmp_path / "second", source_dir=src)
        # another account is another lock
        other = run_pipeline("probe", {"account": "other", "tag": "x"}, store=store, clock=LiveClock(),
                             output_dir=tmp_path / "other", source_dir=src)
        assert other.status == "succeeded"
        runs = list_runs(store, pipeline="probe")
        assert (runs.status == "running").sum() == 1 and not runs.params.str.contains('"tag": "second"', regex=False).any()
    finally:
        kernel = int(marker.read_text())
        os.killpg(proc.pid, signal.SIGKILL)
        os.kill(kernel, signal.SIGKILL)
        proc.wait()


def test_killed_run_is_marked_failed_and_its_lock_recovered(store_url, tmp_path, capsys):
    store, src = connect(store_url), make_pipeline(tmp_path / "src")
    proc, marker = start_slow_run(store_url, src, tmp_path, hold=True)
    kernel = int(marker.read_text())
    killed = lock_holder(store, "probe:desk")["run_id"] if store.dialect == "postgresql" else None
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and papermill, mid-way through the pipeline's transaction
    os.kill(kernel, signal.SIGKILL)
    proc.wait()
    killed = killed or lock_holder(store, "probe:desk")["run_id"]
    assert show_run(store, killed).status == "running"  # nobody could record the end

    run = run_pipeline("probe", {"account": "desk", "tag": "next"}, store=store, clock=LiveClock(),
                       output_dir=tmp_path / "next", source_dir=src)
    assert run.status == "succeeded"
    assert f"stale lock probe:desk from run {killed}" in capsys.readouterr().out
    dead = show_run(store, killed)
    assert dead.status == "failed" and dead.ended_at is not None
    assert f"process {proc.pid}" in dead.error and "died" in dead.error and run.run_id in dead.error
    assert controls(store) == {"mark-desk-next"}  # the killed run's uncommitted insert is gone
    assert lock_holder(store, "probe:desk") is None



@pytest.mark.parametrize("store_url", ["duckdb"], indirect=True)  # process liveness, not SQL: one backend
def test_a_run_whose_runner_alone_was_killed_keeps_its_lock_while_papermill_works(store_url, tmp_path):
    store, src = connect(store_url), make_pipeline(tmp_path / "src")
    proc, marker = start_slow_run(store_url, src, tmp_path, hold=False)
    kernel = int(marker.read_text())
    held = lock_holder(store, "probe:desk")
    try:
        os.kill(proc.pid, signal.SIGKILL)  # the runner only: Papermill and the kernel go on writing
        proc.wait()
        with pytest.raises(RunLockedError, match=f"locked by run {held['run_id']}.*runner died but process"):
            run_pipeline("probe", {"account": "desk", "tag": "second"}, store=store, clock=LiveClock(),
                         output_dir=tmp_path / "second", source_dir=src)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        os.kill(kernel, signal.SIGKILL)
    deadline = time.monotonic() + 60  # until every process of the run has gone
    while time.monotonic() < deadline:
        try:
            run = run_pipeline("probe", {"account": "desk", "tag": "next"}, store=store, clock=LiveClock(),
                               output_dir=tmp_path / "next", source_dir=src)
            break
        except RunLockedError:
            time.sleep(0.5)
    assert run.status == "succeeded" and show_run(store, held["run_id"]).status == "failed"

def test_secret_parameters_are_refused_before_a_run_exists(store_url, tmp_path):
    store, src = connect(store_url), make_pipeline(tmp_path / "src")
    for params in ({"alpaca_secret_key": "x"}, {"api_token": "x"}, {"db": "postgresql://u:pw@h/d"}):
        with pytest.raises(SecretParameterError, match="environment"):
            run_pipeline("probe", params, store=store, clock=LiveClock(), output_dir=tmp_path / "o", source_dir=src)
    assert list_runs(store).empty


def test_environment_secret_never_lands_in_a_record(tmp_path, monkeypatch):
    secret = "sekrit-7f3a9c-DO-NOT-LEAK"
    monkeypatch.setenv("BIFROST_TEST_SECRET", secret)
    monkeypatch.setenv("ALPACA_SECRET_KEY", secret)
    store, src = connect(f"duckdb:///{tmp_path}/s.duckdb"), make_pipeline(tmp_path / "src")
    probe = run_pipeline("probe", {"account": "desk"}, store=store, clock=LiveClock(),
                         output_dir=tmp_path / "probe", source_dir=src)
    # the kernel had the secret (it printed its length), yet no file of the run holds it
    assert f"done {len(secret)}" in Path(probe.output_path).read_text()
    ingest = run_pipeline("ingest", {"source": "sample"}, store=store, clock=LiveClock(), output_dir=tmp_path / "ing")
    assert ingest.status == "succeeded", ingest.error
    for run in (probe, ingest):
        files = list(Path(run.output_path).parent.iterdir())
        assert {f.name for f in files} >= {"run.log", "params.yaml", Path(run.output_path).name}
        for f in files:
            assert secret not in f.read_text(errors="replace"), f
    rows = store.query("SELECT * FROM pipeline_runs").astype(str)
    assert not rows.apply(lambda col: col.str.contains(secret)).any().any()


def test_a_path_is_not_a_pipeline_name_and_nothing_is_created(tmp_path, bifrost_home):
    src = make_pipeline(tmp_path / "home" / "pipelines")
    evil = tmp_path / "evil.ipynb"
    make_pipeline(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "probe.ipynb").rename(evil)
    store = connect(f"duckdb:///{tmp_path}/runs.duckdb")
    for name in ("../evil", "../../evil", str(tmp_path / "evil"), "probe/../../evil", "pro be", ""):
        with pytest.raises(RunError, match="not a pipeline name") as err:
            run_pipeline(name, {"account": "desk"}, store=store, clock=LiveClock(), source_dir=src)
        assert "pipelines: probe" in err.value.hint
    assert list_runs(store).empty and not (bifrost_home / "runs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "evil.ipynb", "home", "runs.duckdb"]


def test_bifrost_run_refuses_a_path_listing_the_pipelines(tmp_path, bifrost_home):
    env = {**os.environ, "BIFROST_HOME": str(bifrost_home), "BIFROST_DB_URL": f"duckdb:///{tmp_path}/s.duckdb"}
    bifrost = str(Path(sys.executable).with_name("bifrost"))
    out = subprocess.run([bifrost, "run", "../../somewhere/evil"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "pipelines: eod_report, ingest, trade" in text and "Traceback" not in text, text
    assert not list(tmp_path.parent.glob("somewhere")) and not (bifrost_home / "runs").exists()


def test_a_run_names_the_html_reports_it_wrote(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}}
    params = nbformat.v4.new_code_cell('store = "scratch"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "import os\nfrom pathlib import Path\n"
        "Path(os.environ['BIFROST_RUN_DIR'], 'eod_desk.html').write_text('<html>tear sheet</html>')")]
    (tmp_path / "src").mkdir()
    nbformat.write(nb, tmp_path / "src" / "report.ipynb")
    store = connect(f"duckdb:///{tmp_path}/runs.duckdb")
    run = run_pipeline("report", {}, store=store, clock=LiveClock(), output_dir=tmp_path / "out",
                       source_dir=tmp_path / "src")
    assert run.status == "succeeded" and run.reports == (tmp_path / "out" / "eod_desk.html",)
    assert show_run(store, run.run_id).reports == run.reports


def test_a_run_anchors_the_audit_trail_it_leaves(tmp_path):
    from bifrost.audit import AuditTrail
    store, src = connect(f"duckdb:///{tmp_path}/runs.duckdb"), make_pipeline(tmp_path / "src")
    quiet = AuditTrail(store, anchors=None)  # records written without publishing anchors (as inside an OMS's transaction)
    quiet.append("order.status", "desk", "c-1", {"to": "new"}, datetime(2024, 1, 2, tzinfo=timezone.utc))
    run_pipeline("probe", {"account": "desk"}, store=store, clock=LiveClock(), output_dir=tmp_path / "out",
                 source_dir=src)
    assert AuditTrail(store).verify().anchored == 1
