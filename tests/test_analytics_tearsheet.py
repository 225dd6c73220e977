"""The tear sheet as a user sees it: rendered by headless Chromium from a file:// URL, offline, with no console
errors, every section visible and every chart drawn; a screenshot is kept for a human to look at.

Needs Debian's chromium (`apt-get install -y --no-install-recommends chromium`); skipped, saying so, without it.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bifrost.analytics.tearsheet import SECTIONS, PerformanceInput, sample_input, tear_sheet

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(),
                                    reason="Debian chromium is not installed (/usr/bin/chromium); "
                                           "apt-get install -y --no-install-recommends chromium")


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    "The sample strategy's tear sheet, and one of bad input (flat returns, a benchmark on half the dates)."
    d = tmp_path_factory.mktemp("tearsheet")
    days = pd.date_range("2024-01-02", periods=80, freq="B", tz="UTC")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        demo = sample_input()
        bad = PerformanceInput(pd.Series(0.0, days, name="flat"),
                               pd.Series(np.linspace(-0.01, 0.01, 40), days[::2]), title="Flat")
    return {"demo": tear_sheet(demo, d / "demo.html"), "bad": tear_sheet(bad, d / "bad.html")}


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (/usr/bin/chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield b
        b.close()


def open_page(browser, path: Path):
    "Open `path` offline; return the page and the console errors and page errors seen while it rendered."
    context = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.goto(path.as_uri())
    page.wait_for_function("() => window.Bokeh !== undefined && Bokeh.documents.length > 0")
    page.wait_for_timeout(500)
    return page, errors


def test_page_is_self_contained(pages):
    html = pages["demo"].read_text(encoding="utf-8")
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)\s*=", html), "the page must load nothing"
    assert "cdn.bokeh.org" not in html
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in html


@needs_chromium
def test_tear_sheet_renders_cleanly_in_chromium(browser, pages, tmp_path_factory):
    page, errors = open_page(browser, pages["demo"])
    try:
        assert errors == []
        for title in SECTIONS:
            assert page.locator("h2", has_text=re.compile(f"^{re.escape(title)}$")).is_visible(), title
        # every chart was drawn: Bokeh rendered a view, with a real size, into each of the six embedded roots
        assert page.evaluate("() => Bokeh.documents[0].roots().length") == 6
        sizes = page.evaluate("""() => [...document.querySelectorAll('[data-root-id]')].map(d => {
            const view = d.children[0]; const box = view ? view.getBoundingClientRect() : {width: 0, height: 0};
            return [!!(view && view.shadowRoot), Math.round(box.width), Math.round(box.height)]; })""")
        assert len(sizes) == 6 and all(drawn and w > 400 and h >= 200 for drawn, w, h in sizes), sizes
        shot = tmp_path_factory.mktemp("screenshots") / "tear_sheet.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 100_000
        print(f"screenshot: {shot}")
    finally:
        page.context.close()


@needs_chromium
def test_inline_display_renders_in_a_sandboxed_frame(browser, pages, tmp_path):
    "What JupyterLab shows for a `TearSheetHTML`: the page in an iframe's srcdoc, scripts allowed, nothing else."
    from bifrost.analytics.tearsheet import TearSheetHTML
    frame_html = TearSheetHTML(pages["demo"].read_text(encoding="utf-8"))._repr_html_()
    host = tmp_path / "notebook.html"
    host.write_text(f"<!DOCTYPE html><html><body><h1>a notebook</h1>{frame_html}</body></html>", encoding="latin-1")
    context = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(host.as_uri())
        frame = page.frames[1]
        frame.wait_for_function("() => window.Bokeh !== undefined && Bokeh.documents.length > 0")
        assert frame.evaluate("() => Bokeh.documents[0].roots().length") == 6
        assert "2,517 periods · 252 periods a year" in frame.inner_text("header")  # non-ASCII survives
        assert errors == []
    finally:
        context.close()


@needs_chromium
def test_bad_input_page_renders_and_explains(browser, pages):
    page, errors = open_page(browser, pages["bad"])
    try:
        assert errors == []
        body = page.inner_text("body")
        assert "Sharpe ratio: undefined — all returns are zero" in body
        assert "40 of 80 dates of the returns have no benchmark value" in body
        assert page.locator("h2", has_text="Notes").is_visible()
    finally:
        page.context.close()
