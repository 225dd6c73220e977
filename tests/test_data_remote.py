"""`bifrost.data.remote` against a recorded Yahoo answer and a real local Alpaca server: no test uses the network.

Yahoo: `YahooReplay` answers yfinance's requests at the HTTP layer from `fixtures/yfinance/` (or from charts built
here from the shipped sample); offline cases use real curl_cffi sessions pointed at loopback ports that refuse or
never answer. Alpaca: `AlpacaStub` is a threaded HTTP server on 127.0.0.1 that alpaca-py talks to through
`url_override`.
"""
from __future__ import annotations

import inspect
import json
import math
import socket
import time
from contextlib import contextmanager
from datetime import datetime
from importlib.resources import files
from pathlib import Path

import pandas as pd
import pytest
import requests
import yfinance as yf
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.requests import StockBarsRequest
from alpaca.data.timeframe import TimeFrame
from curl_cffi import requests as curl_requests
from requests.adapters import BaseAdapter

from bifrost.core import AssetClass, DataError, SimulatedClock, SourceUnavailableError
from bifrost.data.remote import (
    ALPACA_KEYS,
    AlpacaSource,
    AlpacaStub,
    YahooReplay,
    YFinanceSource,
    alpaca_bars,
    start_after,
    yahoo_chart,
)
from bifrost.data.sources import Feed, FeedSpec, parse_bars, read_table

FIXTURE = Path(__file__).parent / "fixtures" / "yfinance" / "EWG_chart_1d_2022-2024.json"
SAMPLE = files("bifrost") / "sample"
COLS = ["ts", "open", "high", "low", "close", "volume"]
KEYS = {"ALPACA_API_KEY": "test-key-id", "ALPACA_SECRET_KEY": "test-secret"}  # dummies, set per test
QUICK = 5.0  # seconds within which an offline failure must be reported


@pytest.fixture(autouse=True, scope="module")
def yfinance_cache(tmp_path_factory):
    "yfinance keeps time zones and cookies on disk: in a temporary folder, not the user's cache."
    yf.set_tz_cache_location(str(tmp_path_factory.mktemp("yfinance_cache")))


@pytest.fixture
def alpaca_keys(monkeypatch):
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    return KEYS


def sample(path: str, spec: FeedSpec) -> Feed:
    "A shipped sample file read as a file source would."
    return parse_bars(read_table(SAMPLE / path), spec, "sample", Path(path).name)


def ewg_spec() -> FeedSpec:
    return FeedSpec("EWG", basis="split", asset_class=AssetClass.ETF)


def spy_feed() -> Feed:
    return sample("daily/SPY_daily_lean.parquet", FeedSpec("SPY", asset_class=AssetClass.ETF))


def free_port() -> int:
    "A loopback port nothing listens on."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def silent_port():
    "A loopback port that accepts connections and never answers."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def proxied(url: str) -> curl_requests.Session:
    "yfinance's own kind of session, sent through the proxy at `url`."
    session = curl_requests.Session(impersonate="chrome")
    session.proxies = {"https": url, "http": url}
    return session


@contextmanager
def within(seconds: float):
    began = time.monotonic()
    yield
    assert time.monotonic() - began < seconds, f"took {time.monotonic() - began:.1f}s, more than {seconds}s"


# ---------------------------------------------------------------- Yahoo Finance: recorded answers

def test_fixture_when_rebuilt_from_the_sample_then_identical():
    table = pd.read_parquet(SAMPLE / "daily/EWG_daily_yfinance_2022-2024.parquet")
    rebuilt = yahoo_chart(table, "EWG", instrument_type="ETF", exchange="PCX")
    assert json.loads(FIXTURE.read_text()) == json.loads(json.dumps(rebuilt))


def test_yfinance_fetch_when_replayed_then_bars_and_dividends_equal_the_sample():
    replay = YahooReplay({"EWG": json.loads(FIXTURE.read_text())})
    feed = YFinanceSource("EWG", asset_class=AssetClass.ETF, http=replay).fetch(ewg_spec())
    expected = sample("daily/EWG_daily_yfinance_2022-2024.parquet", ewg_spec())
    assert (feed.source, feed.vendor, feed.spec.basis) == ("yfinance", "yahoo", "raw")
    assert feed.spec.asset_class is AssetClass.ETF
    pd.testing.assert_frame_equal(feed.bars[COLS], expected.bars[COLS])
    pd.testing.assert_series_equal(feed.dividends, expected.dividends)
    assert len(feed.bars) == 662 and len(feed.dividends) == 5 and feed.splits.empty
    assert feed.bars.row_ref.iloc[0] == "yahoo:EWG:1d:max:2"


def test_yfinance_fetch_when_full_then_asks_for_all_history_unadjusted_with_events():
    replay = YahooReplay({"EWG": json.loads(FIXTURE.read_text())})
    YFinanceSource("EWG", http=replay).fetch(ewg_spec())
    query = replay.chart_queries("EWG")[-1]
    assert int(query["period1"]) < int(pd.Timestamp("1930-01-01", tz="UTC").timestamp())  # "max": 99 years
    assert (query["interval"], query["includePrePost"]) == ("1d", "False")
    assert {"div", "splits"} <= set(query["events"].split(","))


@pytest.mark.parametrize("last", [0, 100, 657, 660])
def test_yfinance_fetch_when_since_then_asks_from_the_next_day_and_gets_only_newer_bars(last):
    replay = YahooReplay({"EWG": json.loads(FIXTURE.read_text())})
    source = YFinanceSource("EWG", http=replay)
    everything = source.fetch(ewg_spec())
    since = everything.bars.ts.iloc[last]
    newer = source.fetch(ewg_spec(), since)
    assert list(newer.bars.ts) == list(everything.bars.ts.iloc[last + 1:])
    assert newer.spec.basis == "raw"
    assert int(replay.chart_queries("EWG")[-1]["period1"]) == int(start_after(ewg_spec(), since).timestamp())
    assert (newer.bars.ts > since).all()


def test_yfinance_fetch_when_nothing_newer_then_an_empty_raw_feed():
    replay = YahooReplay({"EWG": json.loads(FIXTURE.read_text())})
    feed = YFinanceSource("EWG", http=replay).fetch(ewg_spec(), pd.Timestamp("2024-08-21", tz="UTC"))
    assert len(feed.bars) == 0 and list(feed.bars.columns) == COLS + ["row_ref", "ts_note"]
    assert feed.spec.basis == "raw"


def test_yfinance_fetch_when_next_bar_cannot_exist_yet_then_no_request():
    replay = YahooReplay({"EWG": json.loads(FIXTURE.read_text())})
    clock = SimulatedClock(datetime.fromisoformat("2024-08-21T22:00:00+00:00"))
    feed = YFinanceSource("EWG", http=replay, clock=clock).fetch(ewg_spec(), pd.Timestamp("2024-08-21", tz="UTC"))
    assert len(feed.bars) == 0 and feed.spec.basis == "raw" and replay.log == []


def test_yfinance_fetch_when_yahoo_lists_a_split_then_prices_come_out_raw():
    # zipline's csvdir AAPL: real prices already divided by 7 before 2014-06-09, with the split listed - the
    # shape of Yahoo's answer. Through yfinance they must come out as Quandl's raw prices.
    table = pd.read_parquet(SAMPLE / "daily/AAPL_daily_zipline_csvdir_2012-2014.parquet")
    replay = YahooReplay({"AAPL": yahoo_chart(table, "AAPL", exchange="NMS")})
    feed = YFinanceSource("AAPL", http=replay).fetch(FeedSpec("AAPL", basis="split"))
    raw = sample("daily/AAPL_daily_quandl_wiki_2014.parquet", FeedSpec("AAPL"))
    both = feed.bars.merge(raw.bars, on="ts", suffixes=("", "_raw"))
    assert feed.spec.basis == "raw" and dict(feed.splits) == {pd.Timestamp("2014-06-09"): 7.0}
    assert len(both) > 200
    assert ((both.close - both.close_raw).abs() < 0.02).all()
    assert feed.bars.close[feed.bars.ts == pd.Timestamp("2014-06-06", tz="UTC")].item() == pytest.approx(645.57, abs=0.02)
    assert feed.dividends[pd.Timestamp("2014-05-08")] == pytest.approx(3.29, abs=0.001)


def test_yfinance_fetch_when_intraday_extended_then_bars_equal_the_sample_and_prepost_asked():
    spec = FeedSpec("EA", "15min", basis="split", session="extended")
    table = pd.read_parquet(SAMPLE / "intraday/EA_15min_yfinance.parquet")
    replay = YahooReplay({"EA": yahoo_chart(table, "EA", "15min", exchange="NMS")})
    expected = sample("intraday/EA_15min_yfinance.parquet", spec)
    since = expected.bars.ts.iloc[0] - pd.Timedelta("15min")
    feed = YFinanceSource("EA", "15min", session="extended", http=replay).fetch(spec, since)
    pd.testing.assert_frame_equal(feed.bars[COLS], expected.bars[COLS])
    pd.testing.assert_series_equal(feed.dividends, expected.dividends)
    query = replay.chart_queries("EA")[-1]
    assert (query["interval"], query["includePrePost"]) == ("15m", "True")
    assert int(query["period1"]) == int(expected.bars.ts.iloc[0].timestamp())


def test_yfinance_fetch_when_intraday_regular_then_only_regular_hours():
    table = pd.read_parquet(SAMPLE / "intraday/EA_15min_yfinance.parquet")
    replay = YahooReplay({"EA": yahoo_chart(table, "EA", "15min", exchange="NMS")})
    spec = FeedSpec("EA", "15min", basis="split")
    feed = YFinanceSource("EA", "15min", http=replay).fetch(spec, pd.Timestamp("2026-05-26", tz="UTC"))
    everything = sample("intraday/EA_15min_yfinance.parquet", spec)
    clock_time = everything.bars.ts.dt.tz_convert("America/New_York").dt.strftime("%H:%M")
    regular = everything.bars[(clock_time >= "09:30") & (clock_time < "16:00")].reset_index(drop=True)
    assert len(regular) < len(everything.bars)
    pd.testing.assert_frame_equal(feed.bars[COLS], regular[COLS])
    assert replay.chart_queries("EA")[-1]["includePrePost"] == "False"


@pytest.mark.parametrize("bar_size, interval", [("1min", "1m"), ("5min", "5m"), ("30min", "30m"), ("1h", "1h")])
def test_yfinance_fetch_when_bar_size_then_yahoo_interval(bar_size, interval):
    replay = YahooReplay({"EWG": json.loads(FIXTURE.read_text())})  # daily only: any other interval is refused
    with pytest.raises(DataError, match="only 1d bars were recorded"):
        YFinanceSource("EWG", bar_size, http=replay).fetch(FeedSpec("EWG", bar_size, basis="split"),
                                                           pd.Timestamp("2024-08-01", tz="UTC"))
    asked = replay.chart_queries("EWG")[-1]["interval"]
    assert asked == ("15m" if interval == "30m" else interval)  # yfinance fetches 30m as 15m and resamples


def test_yfinance_fetch_when_spec_is_declared_raw_then_refused():
    with pytest.raises(ValueError, match="basis='split'"):
        YFinanceSource("EWG", http=YahooReplay({})).fetch(FeedSpec("EWG"))


def test_yfinance_fetch_when_ticker_unknown_then_data_error_not_unavailable():
    source = YFinanceSource("NOPE", http=YahooReplay({}))
    for _ in range(3):  # yfinance looks the ticker up differently the first two times in a process
        with pytest.raises(DataError, match="does not know the ticker NOPE") as err:
            source.fetch(FeedSpec("NOPE", basis="split"))
        assert not isinstance(err.value, SourceUnavailableError)


def test_yfinance_fetch_when_yahoo_says_it_is_down_then_unavailable():
    replay = YahooReplay({"EWG": b"<html><body>Will be right back...</body></html>"})
    with pytest.raises(SourceUnavailableError, match="Yahoo Finance is down|could not be reached"):
        YFinanceSource("EWG", http=replay).fetch(ewg_spec())


# ---------------------------------------------------------------- Yahoo Finance: offline

def assert_offline(err: pytest.ExceptionInfo, detail: str) -> None:
    message = str(err.value)
    assert "Yahoo Finance could not be reached for EWG 1d bars" in message and detail in message
    assert "bifrost ingest sample" in err.value.hint and "FileSource" in err.value.hint


def test_yfinance_fetch_when_port_refuses_then_unavailable_quickly():
    source = YFinanceSource("EWG", http=proxied(f"http://127.0.0.1:{free_port()}"))
    with within(QUICK), pytest.raises(SourceUnavailableError) as err:
        source.fetch(ewg_spec())
    assert_offline(err, "ConnectionError")


def test_yfinance_fetch_when_server_never_answers_then_unavailable_after_the_timeout():
    source = YFinanceSource("EWG", timeout=0.5)  # its own session: every wait capped at 0.5 s
    with silent_port() as port:
        source.http.proxies = {"https": f"http://127.0.0.1:{port}"}
        with within(QUICK), pytest.raises(SourceUnavailableError) as err:
            source.fetch(ewg_spec())
    assert_offline(err, "Timeout")


def test_yfinance_fetch_when_dns_fails_then_unavailable():
    source = YFinanceSource("EWG", http=proxied("http://proxy.bifrost.invalid:3128"), timeout=2)
    with within(10), pytest.raises(SourceUnavailableError) as err:
        source.fetch(ewg_spec())
    assert_offline(err, "resolve")


class _Unplugged(BaseAdapter):
    def send(self, request, **kwargs):
        raise requests.ConnectionError(f"[Errno 101] Network is unreachable: {request.url}")

    def close(self):
        pass


def test_yfinance_fetch_when_requests_session_has_no_network_then_unavailable():
    session = requests.Session()
    session.mount("https://", _Unplugged())
    with within(QUICK), pytest.raises(SourceUnavailableError) as err:
        YFinanceSource("EWG", http=session).fetch(ewg_spec())
    assert_offline(err, "Network is unreachable")


def test_yfinance_fetch_when_answer_is_empty_then_unavailable():
    with pytest.raises(SourceUnavailableError) as err:
        YFinanceSource("EWG", http=YahooReplay({"EWG": b""})).fetch(ewg_spec())
    assert_offline(err, "an empty answer")


def test_yfinance_fetch_when_failed_then_yfinance_settings_are_left_as_they_were():
    before = yf.config.debug.hide_exceptions
    with pytest.raises(SourceUnavailableError):
        YFinanceSource("EWG", http=YahooReplay({"EWG": b""})).fetch(ewg_spec())
    assert yf.config.debug.hide_exceptions == before


def test_yfinance_fetch_when_an_earlier_session_failed_then_a_new_session_is_not_served_its_cached_answer():
    # yfinance caches answers by URL alone; the time-zone probe of a broken session must not poison the next one
    with pytest.raises(SourceUnavailableError):
        YFinanceSource("EWG", http=YahooReplay({"EWG": b""})).fetch(ewg_spec())
    feed = YFinanceSource("EWG", http=YahooReplay({"EWG": json.loads(FIXTURE.read_text())})).fetch(ewg_spec())
    assert len(feed.bars) == 662


# ---------------------------------------------------------------- Alpaca: a local server

def test_alpaca_fetch_when_served_in_pages_then_bars_equal_the_sample(alpaca_keys):
    spy = spy_feed()
    with AlpacaStub({"SPY": alpaca_bars(spy)}, page_size=1000) as stub:
        source = AlpacaSource("SPY", asset_class=AssetClass.ETF, first="1998-01-01", url_override=stub.url)
        feed = source.fetch(source.specs()[0])
    assert (feed.source, feed.vendor, feed.spec.basis, feed.spec.session) == ("alpaca:iex", "alpaca:iex", "raw",
                                                                              "regular")
    pd.testing.assert_frame_equal(feed.bars[COLS], spy.bars[COLS])
    assert feed.splits.empty and feed.dividends.empty
    pages = stub.requests
    assert len(pages) == math.ceil(len(spy.bars) / 1000) == 6
    assert all(p["path"] == "/v2/stocks/bars" for p in pages)
    assert "page_token" not in pages[0]["query"] and all("page_token" in p["query"] for p in pages[1:])
    first = pages[0]["query"]
    assert {k: first[k] for k in ("symbols", "timeframe", "adjustment", "feed")} == {
        "symbols": "SPY", "timeframe": "1Day", "adjustment": "raw", "feed": "iex"}
    assert pd.Timestamp(first["start"]) == pd.Timestamp("1998-01-01", tz="UTC")
    for p in pages:
        assert (p["headers"]["APCA-API-KEY-ID"], p["headers"]["APCA-API-SECRET-KEY"]) == (
            alpaca_keys["ALPACA_API_KEY"], alpaca_keys["ALPACA_SECRET_KEY"])


def test_alpaca_stub_when_tokens_followed_then_pages_do_not_overlap(alpaca_keys):
    spy = spy_feed()
    with AlpacaStub({"SPY": alpaca_bars(spy)}, page_size=1000) as stub:
        source = AlpacaSource("SPY", first="1998-01-01", url_override=stub.url)
        source.fetch(FeedSpec("SPY"))
        answers = [stub.answer(p["path"], p["query"], p["headers"])[1] for p in stub.requests]
    stamps = [b["t"] for a in answers for b in a["bars"]["SPY"]]
    assert len(stamps) == len(set(stamps)) == len(spy.bars)
    assert answers[-1]["next_page_token"] is None and all(a["next_page_token"] for a in answers[:-1])


@pytest.mark.parametrize("last", [0, 3000, 5846, 5848])
def test_alpaca_fetch_when_since_then_server_asked_from_the_next_day(alpaca_keys, last):
    spy = spy_feed()
    since = spy.bars.ts.iloc[last]
    with AlpacaStub({"SPY": alpaca_bars(spy)}) as stub:
        source = AlpacaSource("SPY", url_override=stub.url)
        newer = source.fetch(FeedSpec("SPY"), since)
    asked = pd.Timestamp(stub.requests[-1]["query"]["start"])
    assert asked == start_after(FeedSpec("SPY"), since) and asked > since
    assert asked.tz_convert("America/New_York").strftime("%H:%M") == "00:00"
    assert list(newer.bars.ts) == list(spy.bars.ts.iloc[last + 1:])


def test_alpaca_fetch_when_next_bar_cannot_exist_yet_then_alpaca_is_not_asked(alpaca_keys):
    clock = SimulatedClock(datetime.fromisoformat("2021-03-31T22:00:00+00:00"))
    with AlpacaStub({"SPY": alpaca_bars(spy_feed())}) as stub:
        feed = AlpacaSource("SPY", url_override=stub.url, clock=clock).fetch(
            FeedSpec("SPY"), pd.Timestamp("2021-03-31", tz="UTC"))
    assert len(feed.bars) == 0 and stub.requests == []


def test_alpaca_fetch_when_several_symbols_served_then_only_the_one_asked_for(alpaca_keys):
    spy = spy_feed()
    qqq = sample("daily/QQQ_daily_lean.parquet", FeedSpec("QQQ", asset_class=AssetClass.ETF))
    with AlpacaStub({"SPY": alpaca_bars(spy), "QQQ": alpaca_bars(qqq)}, page_size=2500) as stub:
        feed = AlpacaSource("QQQ", first="1998-01-01", url_override=stub.url).fetch(FeedSpec("QQQ"))
    pd.testing.assert_frame_equal(feed.bars[COLS], qqq.bars[COLS])
    assert {p["query"]["symbols"] for p in stub.requests} == {"QQQ"}


def test_alpaca_stub_when_alpaca_py_asks_for_several_symbols_then_pages_run_across_them():
    spy = spy_feed()
    qqq = sample("daily/QQQ_daily_lean.parquet", FeedSpec("QQQ", asset_class=AssetClass.ETF))
    with AlpacaStub({"SPY": alpaca_bars(spy), "QQQ": alpaca_bars(qqq)}, page_size=2500) as stub:
        client = StockHistoricalDataClient("id", "secret", raw_data=True, url_override=stub.url)
        bars = client.get_stock_bars(StockBarsRequest(symbol_or_symbols=["SPY", "QQQ"], timeframe=TimeFrame.Day,
                                                      start=datetime(1998, 1, 1)))
    assert {s: len(b) for s, b in bars.items()} == {"SPY": len(spy.bars), "QQQ": len(qqq.bars)}
    assert len(stub.requests) == math.ceil((len(spy.bars) + len(qqq.bars)) / 2500)
    assert stub.requests[0]["query"]["symbols"] == "SPY,QQQ"


@pytest.mark.parametrize("bar_size, timeframe", [("1min", "1Min"), ("5min", "5Min"), ("15min", "15Min"),
                                                 ("30min", "30Min"), ("1h", "1Hour"), ("1d", "1Day")])
def test_alpaca_fetch_when_bar_size_then_alpaca_timeframe(alpaca_keys, bar_size, timeframe):
    with AlpacaStub({}) as stub:
        source = AlpacaSource("SPY", bar_size, url_override=stub.url)
        feed = source.fetch(source.specs()[0], pd.Timestamp("2024-01-02 15:00", tz="UTC"))
    assert stub.requests[0]["query"]["timeframe"] == timeframe
    assert len(feed.bars) == 0 and feed.spec.session == ("regular" if bar_size == "1d" else "extended")


def test_alpaca_fetch_when_server_fails_then_unavailable_at_once_without_retry(alpaca_keys):
    with AlpacaStub({}, status=500) as stub, within(QUICK), \
            pytest.raises(SourceUnavailableError, match=r"failed on SPY 1d bars \(HTTP 500\)") as err:
        AlpacaSource("SPY", url_override=stub.url).fetch(FeedSpec("SPY"))
    assert len(stub.requests) == 1 and "bifrost ingest sample" in err.value.hint


def test_alpaca_fetch_when_rate_limited_then_retries_as_configured_then_unavailable(alpaca_keys):
    with AlpacaStub({}, status=429) as stub, within(QUICK), pytest.raises(SourceUnavailableError, match=r"HTTP 429"):
        AlpacaSource("SPY", url_override=stub.url, retries=2, retry_wait=0.05).fetch(FeedSpec("SPY"))
    assert len(stub.requests) == 3


def test_alpaca_fetch_when_port_closed_then_unavailable_quickly(alpaca_keys):
    source = AlpacaSource("SPY", url_override=f"http://127.0.0.1:{free_port()}")
    with within(QUICK), pytest.raises(SourceUnavailableError, match="could not be reached for SPY 1d bars") as err:
        source.fetch(FeedSpec("SPY"))
    assert "ConnectionError" in str(err.value) and "bifrost ingest sample" in err.value.hint


def test_alpaca_fetch_when_server_never_answers_then_unavailable_after_the_timeout(alpaca_keys):
    with silent_port() as port, within(QUICK):
        source = AlpacaSource("SPY", url_override=f"http://127.0.0.1:{port}", timeout=0.5)
        with pytest.raises(SourceUnavailableError, match="ReadTimeout"):
            source.fetch(FeedSpec("SPY"))


@pytest.mark.parametrize("missing", [ALPACA_KEYS, ALPACA_KEYS[:1], ALPACA_KEYS[1:]])
def test_alpaca_fetch_when_keys_missing_then_unavailable_naming_them_and_nothing_sent(alpaca_keys, monkeypatch, missing):
    for name in missing:
        monkeypatch.delenv(name)
    with AlpacaStub({}) as stub, pytest.raises(SourceUnavailableError, match=" and ".join(missing) + " not set") as err:
        AlpacaSource("SPY", url_override=stub.url).fetch(FeedSpec("SPY"))
    assert stub.requests == []
    assert "ALPACA_API_KEY" in err.value.hint and "ALPACA_SECRET_KEY" in err.value.hint
    assert KEYS["ALPACA_SECRET_KEY"] not in str(err.value)


def test_alpaca_specs_when_keys_missing_then_listed_all_the_same(monkeypatch):
    for name in ALPACA_KEYS:
        monkeypatch.delenv(name, raising=False)
    assert AlpacaSource(["SPY", "QQQ"]).specs() == [FeedSpec("SPY"), FeedSpec("QQQ")]


def test_alpaca_fetch_when_keys_rejected_then_unavailable(alpaca_keys):
    with AlpacaStub({}, keys=("other-id", "other-secret")) as stub, \
            pytest.raises(SourceUnavailableError, match=r"refused the API key \(HTTP 401\)"):
        AlpacaSource("SPY", url_override=stub.url).fetch(FeedSpec("SPY"))


def test_alpaca_source_when_made_then_takes_no_keys():
    params = inspect.signature(AlpacaSource).parameters
    assert not [p for p in params if "key" in p.lower() or "secret" in p.lower()]


def test_alpaca_source_when_feed_unknown_or_basis_split_then_refused(alpaca_keys):
    with pytest.raises(ValueError, match="feed must be one of"):
        AlpacaSource("SPY", feed="nasdaq")
    with pytest.raises(ValueError, match="basis='raw'"):
        AlpacaSource("SPY").fetch(FeedSpec("SPY", basis="split"))
