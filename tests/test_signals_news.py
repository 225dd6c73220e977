"""News ingestion on both stores: time travel, the point-in-time property, de-duplication, the dropped-row record,
all-or-nothing writes, the RSS and Alpaca readers (recorded feed and loopback server), signals and alerts."""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd
import pytest

from bifrost.core import AccountState, SimulatedClock, SourceUnavailableError, TradingCalendar
from bifrost.risk.limits import open_alerts, raise_alerts
from bifrost.signals.news import (AlpacaNewsStub, NewsError, ingest_news, news_asof,
                                  news_dropped, normalise_text, read_alpaca_news, read_news_file, read_rss, sample_news)
from bifrost.signals.news_signals import daily_sentiment, decision_times, sentiment_alerts
from bifrost.signals.text import SAMPLE_NEWS

DEV = Path(os.environ.get("BIFROST_NEWS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "news"))
needs_dev = pytest.mark.skipif(not (DEV / "bbc_business_rss_headlines_2022-2024.csv").exists(),
                               reason=f"developer news set not at {DEV} (not shipped: see bifrost/sample/news/README.md)")
UTC = timezone.utc


@pytest.fixture(scope="module")
def raw():
    return sample_news()


def at(s: str) -> datetime:
    return pd.Timestamp(s, tz="UTC").to_pydatetime()


def view_ids(store, t) -> list[str]:
    return list(news_asof(store, t).item_id)


def test_time_travel(store, raw):
    "A view at t holds exactly the items ingested by t, whatever was published when."
    oct_, nov = raw[raw.published_at < "2015-11-01"], raw[raw.published_at >= "2015-11-01"]
    a = ingest_news(store, oct_, SimulatedClock(at("2015-11-01")))
    b = ingest_news(store, nov, SimulatedClock(at("2016-01-01")))
    assert a.accounted and b.accounted and a.stored > 0 and b.stored > 0
    assert len(view_ids(store, at("2015-10-31 23:59"))) == 0  # ingested at 2015-11-01: not seen before
    assert len(view_ids(store, at("2015-11-01"))) == a.stored
    assert len(view_ids(store, at("2016-01-01"))) == a.stored + b.stored
    items = news_asof(store, at("2016-01-01"))
    assert (items.published_at <= items.ingested_at).all()


def test_point_in_time_property(store, raw):
    "Ingesting more items later never changes a view (or the daily signal) at an earlier time: seeded random batches."
    rng = np.random.default_rng(7)
    rows = raw.iloc[rng.permutation(len(raw))[:1200]]
    cuts = np.sort(rng.choice(np.arange(1, len(rows)), 5, replace=False))
    clock = SimulatedClock(at("2015-10-05"))
    seen, idx = [], TradingCalendar("XNYS").sessions("2015-10-01", "2015-12-31").tz_localize("UTC")
    for lo, hi in zip([0, *cuts], [*cuts, len(rows)]):
        batch = rows.iloc[lo:hi]
        clock.advance(timedelta(hours=float(rng.uniform(1, 400))))
        ingest_news(store, batch, clock)
        t = clock.now()
        seen.append((t, view_ids(store, t), daily_sentiment(store, idx, ["AAPL", "BAC", "FB", "GOOG"])
                     .loc[lambda d: decision_times(d.index) <= t]))
        for q in rng.uniform(0, (t - at("2015-10-05")).total_seconds(), 3):  # random earlier times too
            tq = at("2015-10-05") + timedelta(seconds=float(q))
            seen.append((tq, view_ids(store, tq), None))
    for t, ids, signal in seen:
        assert view_ids(store, t) == ids
        if signal is not None:
            now = daily_sentiment(store, idx, ["AAPL", "BAC", "FB", "GOOG"]).loc[signal.index]
            pd.testing.assert_frame_equal(now, signal)


def test_backfill_adds_to_the_past_only_what_it_claims(store, raw):
    "An archive load with assume_latency adds to a past view exactly the items it says were ingested by then."
    first, archive = raw.iloc[:500], raw.iloc[500:1500]
    ingest_news(store, first, SimulatedClock(at("2016-01-04")), assume_latency=timedelta(minutes=5))
    times = [at(t) for t in ("2015-10-15", "2015-11-10 14:00", "2015-12-20")]
    before = {t: set(view_ids(store, t)) for t in times}
    ingest_news(store, archive, SimulatedClock(at("2016-01-05")), assume_latency=timedelta(minutes=30))
    items = news_asof(store, at("2016-01-05"))
    for t in times:
        added = set(items.item_id[(items.ingested_at <= t) & ~items.item_id.isin(before[t])])
        assert set(view_ids(store, t)) == before[t] | added
        claimed = items[items.item_id.isin(added)]
        assert ((claimed.ingested_at - claimed.published_at) == pd.Timedelta(minutes=30)).all()


def test_dedup_within_and_across_batches(store, raw):
    clock = SimulatedClock(at("2016-01-04"))
    r = ingest_news(store, raw, clock)
    assert r.accounted and r.dropped == {"duplicate": len(raw) - r.stored}
    items = news_asof(store, clock.now())
    assert items.dedup_key.is_unique and items.item_id.is_unique
    # a tweet filed under several tickers (one row per folder) is one item carrying all of them
    tweet = raw[raw.headline.duplicated(keep=False)].groupby("headline").tickers.agg(
        lambda ts: set(" ".join(ts).split())).loc[lambda t: t.map(len) > 1].iloc[:1]
    stored = items[items.headline == tweet.index[0].strip()]
    assert len(stored) == 1 and set(stored.tickers.iloc[0].split()) >= tweet.iloc[0]
    # a retweet of a stored text is a duplicate of it
    assert not items.headline.str.match(r"^RT @\w+: ").all()
    # a second batch: nothing new, every row recorded as a duplicate of a stored item, stored rows untouched
    before = news_asof(store, clock.now())
    clock.advance(timedelta(days=1))
    r2 = ingest_news(store, raw.iloc[:300], clock)
    assert r2.stored == 0 and r2.dropped == {"duplicate": 300}
    pd.testing.assert_frame_equal(news_asof(store, clock.now()), before)


def test_dropped_rows_recorded_with_reason(store, raw, tmp_path):
    path = tmp_path / "wire.csv"
    pd.DataFrame({"when": ["2024-03-01T09:30:00-05:00", "yesterday-ish", "2024-03-01", "2031-01-01T00:00:00Z", "2024-03-01T10:00:00"],
                  "title": ["Acme beats estimates", "Acme sued", "", "Acme from the future", "Acme beats estimates"],
                  "syms": ["ACME", "ACME", "ACME", "ACME", "ACME,XYZ"]}).to_csv(path, index=False)
    raw_file = read_news_file(path, "wire", published="when", headline="title", tickers="syms")
    assert raw_file.published_at[2] == pd.Timestamp("2024-03-01 23:59:59", tz="America/New_York")  # date only: end of day
    assert raw_file.published_at[4] == pd.Timestamp("2024-03-01 10:00", tz="America/New_York")     # naive: in tz
    clock = SimulatedClock(at("2024-03-02"))
    r = ingest_news(store, raw_file, clock)
    assert r.stored == 1 and r.accounted
    assert r.dropped == {"bad_published": 1, "no_headline": 1, "published_after_ingest": 1, "duplicate": 1}
    d = news_dropped(store, "wire").set_index("row_ref")
    assert d.loc["wire.csv:3", "reason"] == "bad_published" and "yesterday-ish" in d.loc["wire.csv:3", "detail"]
    assert "wire.csv:2" in d.loc["wire.csv:6", "detail"]  # the duplicate names the row kept
    item = news_asof(store, clock.now()).iloc[0]
    assert item.tickers == "ACME XYZ" and item.events == "earnings" and item.sentiment > 0


def test_failed_ingest_writes_nothing(store, raw, monkeypatch):
    "A failure while recording dropped rows leaves neither items nor drops behind."
    real = type(store).upsert
    def failing(self, table, frame, key, update=True):
        if table == "news_dropped":
            raise RuntimeError("disk full")
        return real(self, table, frame, key, update)
    monkeypatch.setattr(type(store), "upsert", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        ingest_news(store, raw.iloc[:200], SimulatedClock(at("2016-01-04")))
    monkeypatch.undo()
    assert store.scalar("SELECT count(*) FROM news_items") == 0
    assert store.scalar("SELECT count(*) FROM news_dropped") == 0


def test_jsonl_reader(tmp_path):
    path = tmp_path / "n.jsonl"
    pd.DataFrame({"t": ["2015-10-01T10:00:00Z"], "h": ["Apple $AAPL up"], "id": [17]}).to_json(path, orient="records", lines=True)
    r = read_news_file(path, "j", published="t", headline="h", native_id="id")
    assert list(r.row_ref) == ["n.jsonl:1"] and r.native_id[0] == "17"
    with pytest.raises(NewsError, match="no column"):
        read_news_file(path, "j", published="when", headline="h")


# --- RSS: recorded feeds served from a loopback server ------------------------------------------------------------

@contextmanager
def served(folder: Path):
    "A loopback HTTP server of the files in `folder`; yields its base URL."
    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(folder), **k)
        def log_message(self, *a):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown(); server.server_close()


def test_rss_two_recorded_pulls_of_the_fed_feed_overlap_and_dedup_by_guid(store):
    "The Fed's monetary-policy feed as pulled in July 2015 and January 2016 (shipped: US government work)."
    with served(Path(str(SAMPLE_NEWS))) as url:
        first, second = (read_rss(f"{url}/fed_press_monetary_{day}.xml", "fed") for day in ("2015-07-09", "2016-01-07"))
    assert (len(first), len(second)) == (8, 10) and first.published_at.notna().all()
    assert first.published_at.max() == pd.Timestamp("2015-07-08 18:00", tz="UTC")  # 2 pm New York, summer time
    r1 = ingest_news(store, first, SimulatedClock(at("2015-07-09 12:00")))
    r2 = ingest_news(store, second, SimulatedClock(at("2016-01-07 12:00")))
    assert (r1.stored, r2.stored, dict(r2.dropped)) == (8, 8, {"duplicate": 2})  # June's two items came again
    items = news_asof(store, at("2016-01-07 12:00"))
    assert len(items) == 16 and (items.headline == "Federal Reserve issues FOMC statement").sum() == 8  # same title, 8 stories
    assert len(news_asof(store, at("2015-12-16 21:00"))) == 8  # the December hike was not ingested until January


# --- RSS: a recorded feed built from real BBC RSS items ----------------------------------------------------------

def bbc_feed(rows: pd.DataFrame) -> str:
    items = "".join(f"<item><title>{escape(r.title)}</title><link>{escape(r.link)}</link>"
                    f"<guid isPermaLink=\"true\">{escape(r.guid)}</guid><pubDate>{r.pubDate}</pubDate>"
                    f"<description>{escape(r.description)}</description></item>" for r in rows.itertuples())
    return ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><rss version=\"2.0\"><channel><title>BBC News - Business"
            f"</title><link>https://www.bbc.co.uk/news/business</link><description>x</description>{items}</channel></rss>")


@needs_dev
def test_rss_recorded_feed_dedups_by_guid(store, tmp_path):
    bbc = pd.read_csv(DEV / "bbc_business_rss_headlines_2022-2024.csv", dtype=str, keep_default_na=False)
    repeated = bbc[bbc.guid.duplicated(keep=False)]
    edited = repeated.groupby("guid").title.nunique().loc[lambda n: n > 1].index[:5]
    sample = pd.concat([bbc.iloc[:40], repeated[repeated.guid.isin(edited)]]).drop_duplicates()
    (tmp_path / "feed.xml").write_text(bbc_feed(sample), encoding="utf-8")
    with served(tmp_path) as url:
        raw = read_rss(f"{url}/feed.xml", "bbc")
    assert len(raw) == len(sample) and raw.published_at.notna().all()
    r = ingest_news(store, raw, SimulatedClock(at("2025-01-01")))
    assert r.accounted and r.stored == sample.guid.nunique()
    assert news_asof(store, at("2025-01-01")).dedup_key.str.startswith("id:bbc:").all()
    with pytest.raises(NewsError, match="not an RSS"):
        (tmp_path / "x.xml").write_text("<html><body>no</body>", encoding="utf-8")
        read_rss(tmp_path / "x.xml", "bbc")


def test_rss_offline_is_a_clear_error():
    with pytest.raises(SourceUnavailableError, match="could not be read"):
        read_rss("http://127.0.0.1:9/feed.xml", "x", timeout=2)


@needs_dev
def test_seeking_alpha_duplicates_and_multi_ticker(store):
    raw = read_news_file(DEV / "seeking_alpha_ticker_summaries_2023.csv", "seekingalpha", published="date",
                         headline="summary", tickers="ticker")
    r = ingest_news(store, raw, SimulatedClock(at("2023-05-01")))
    items = news_asof(store, at("2023-05-01"))
    assert r.accounted and len(items) == raw.headline.map(normalise_text).nunique()
    assert r.dropped == {"duplicate": len(raw) - len(items)} and len(raw) - len(items) >= 3  # ≥ the 3 exact repeats
    assert (items.tickers.str.split().str.len() > 1).sum() > 0  # a summary filed under several tickers: one item


# --- Alpaca through alpaca-py against a loopback server ---------------------------------------------------------

def alpaca_items(n=130):
    t0 = pd.Timestamp("2021-12-31 11:00", tz="UTC")
    return [{"id": 24843171 + i, "headline": f"Story {i} about Apple", "author": "Benzinga Newsdesk",
             "created_at": f"{t0 + pd.Timedelta(minutes=i):%Y-%m-%dT%H:%M:%SZ}",
             "updated_at": f"{t0 + pd.Timedelta(minutes=i):%Y-%m-%dT%H:%M:%SZ}", "summary": "", "content": "",
             "url": f"https://www.benzinga.com/news/{i}", "images": [], "symbols": ["AAPL"] if i % 2 else ["AAPL", "MSFT"],
             "source": "benzinga"} for i in range(n)]


def test_alpaca_news_paged_from_loopback(store, monkeypatch):
    monkeypatch.setenv("ALPACA_API_KEY", "k"); monkeypatch.setenv("ALPACA_SECRET_KEY", "s")
    with AlpacaNewsStub(alpaca_items(), page_size=50) as stub:
        raw = read_alpaca_news(["AAPL"], at("2021-12-01"), at("2022-01-31"), url_override=stub.url)
    assert len(raw) == 130 and len(stub.requests) == 3 and all(r["path"] == "/v1beta1/news" for r in stub.requests)
    assert raw.row_ref.is_unique and raw.native_id[0] == "24843171"
    r = ingest_news(store, raw, SimulatedClock(at("2022-02-01")))
    assert r.stored == 130
    assert set(news_asof(store, at("2022-02-01"), ["MSFT"]).tickers) == {"AAPL MSFT"}


def test_alpaca_news_without_keys_or_network(monkeypatch):
    monkeypatch.delenv("ALPACA_API_KEY", raising=False)
    with pytest.raises(SourceUnavailableError, match="needs an API key"):
        read_alpaca_news(["AAPL"], at("2022-01-01"), at("2022-01-02"))
    monkeypatch.setenv("ALPACA_API_KEY", "k"); monkeypatch.setenv("ALPACA_SECRET_KEY", "s")
    with pytest.raises(SourceUnavailableError, match="could not be reached"):
        read_alpaca_news(["AAPL"], at("2022-01-01"), at("2022-01-02"), url_override="http://127.0.0.1:9")


# --- signals and alerts ----------------------------------------------------------------------------------------

def test_daily_sentiment_uses_the_session_close(store):
    "An item ingested after the close counts for the next bar, not this one."
    idx = pd.DatetimeIndex(["2024-03-01", "2024-03-04"], tz="UTC")  # Fri, Mon
    test_times = decision_times(idx)
    assert list(test_times) == [pd.Timestamp("2024-03-01 21:00", tz="UTC"), pd.Timestamp("2024-03-04 21:00", tz="UTC")]
    rows = read_news_file.__globals__["_raw"]("w", ["a", "b"], ["2024-03-01T15:00:00Z", "2024-03-01T20:00:00Z"],
                                               ["Acme profit rose strongly", "Acme sued over fraud"], tickers=["ACME", "ACME"])
    ingest_news(store, rows.iloc[:1], SimulatedClock(at("2024-03-01 20:59")))
    ingest_news(store, rows.iloc[1:], SimulatedClock(at("2024-03-01 21:01")))
    s = daily_sentiment(store, idx, ["ACME", "NONE"])
    assert s.ACME.iloc[0] > 0 and s.ACME.iloc[1] < 0 and s.NONE.isna().all()


def test_views_and_alerts_on_an_empty_store(store):
    assert news_asof(store, at("2024-01-01"), ["AAPL"]).empty
    assert daily_sentiment(store, pd.DatetimeIndex(["2024-03-01"], tz="UTC"), ["AAPL"]).AAPL.isna().all()
    assert sentiment_alerts(store, ["AAPL"], at("2024-03-01"), "acct") == []
    with pytest.raises(NewsError, match="needs an account"):
        sentiment_alerts(store, ["AAPL"], at("2024-03-01"))


def test_sentiment_alert_on_held_position(store):
    rows = read_news_file.__globals__["_raw"](
        "w", [f"r{i}" for i in range(8)], [f"2024-03-0{d}T15:00:00Z" for d in (1, 2, 3, 4, 5, 6, 6, 6)],
        ["Acme profit rose", "Acme sales grew", "Acme upgraded to buy", "Acme margins improved", "Acme record quarter",
         "Acme sued for fraud", "Acme plunged after profit warning", "Acme downgraded to sell"],
        tickers=["ACME"] * 8)
    ingest_news(store, rows, SimulatedClock(at("2024-03-07")), assume_latency=timedelta(minutes=1))
    state = AccountState("acct", at("2024-03-06 20:00"), Decimal(1000), {"ACME": Decimal(10), "FLAT": Decimal(0)},
                         {"ACME": Decimal(5), "FLAT": Decimal(1)})
    alerts = sentiment_alerts(store, state, at("2024-03-06 20:00"), threshold=0.4)  # move ≈ -0.91
    assert [(a.kind, a.severity) for a in alerts] == [("news_sentiment:ACME", "critical")]
    assert Decimal("-1") < alerts[0].value < Decimal("-0.8") and alerts[0].account == "acct"
    assert sentiment_alerts(store, state, at("2024-03-05 20:00"), threshold=0.4) == []  # fewer than 3 recent items
    assert raise_alerts(store, alerts) == 1 and raise_alerts(store, alerts) == 0
    assert list(open_alerts(store, "acct").kind) == ["news_sentiment:ACME"]
