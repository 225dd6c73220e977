"""The end-of-day report's tear sheet, as the scheduler runs it (Papermill, scratch demo: an account three sessions
old): no annualised figure for a history of days — the page says why — and the account's trades and fills are on it."""
import os
from pathlib import Path

import papermill as pm

PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "eod_report.ipynb"


def test_eod_tear_sheet_of_a_young_account_withholds_annualised_figures_and_shows_its_trades(tmp_path, monkeypatch):
    monkeypatch.setenv("BIFROST_RUN_DIR", str(tmp_path))
    pm.execute_notebook(str(PIPELINE), str(tmp_path / "out.ipynb"), parameters={"store": "scratch"},
                        kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    pages = list(tmp_path.glob("eod_*.html"))
    assert len(pages) == 1, os.listdir(tmp_path)
    page = pages[0].read_text(encoding="utf-8")
    assert "Annualised figures (CAGR, Sharpe" in page and "under a year (252)" in page
    assert 'CAGR</div><div class="v">—' in page.split('<div class="cards">')[1]  # the headline card too
    assert "No trades were given" not in page and "No fills were given" not in page
