"""The Prometheus collector on both backends: figures read from the store at scrape time, scraped over HTTP."""
from __future__ import annotations

import socket
import urllib.request
from datetime import datetime, timedelta, timezone

import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from bifrost.pipelines.metrics import serve_metrics
from bifrost.store import connect

T0 = datetime(2024, 11, 29, 14, 30, tzinfo=timezone.utc)


def scrape(url: str) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server, _ = serve_metrics(port, url, addr="127.0.0.1")
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    finally:
        server.shutdown()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def order(cid: str, account: str, status: str) -> dict:
    return {"client_order_id": cid, "account": account, "broker": "paper", "symbol": "SPY", "side": "buy",
            "quantity": "10", "order_type": "market", "time_in_force": "day", "limit_price": None,
            "stop_price": None, "status": status, "broker_order_id": None, "filled_quantity": "0",
            "avg_fill_price": None, "created_at": T0, "updated_at": T0, "parent_id": None, "strategy": None,
            "reason": ""}


def test_scrape_reads_the_store_each_time(store_url):
    store = connect(store_url)
    for i, (status, secs) in enumerate([("succeeded", 10.0), ("succeeded", 20.0), ("failed", 1.5)]):
        store.execute("INSERT INTO pipeline_runs (run_id, pipeline, params, status, started_at, ended_at, host, pid) "
                      "VALUES (?, 'eod_report', '{}', ?, ?, ?, 'h', 1)", [f"r{i}", status, T0, T0 + timedelta(seconds=secs)])
    store.execute("INSERT INTO pipeline_runs (run_id, pipeline, params, status, started_at, host, pid) "
                  "VALUES ('r9', 'trade', '{}', 'running', ?, 'h', 1)", [T0])
    store.upsert("orders", pd.DataFrame([order("o1", "a", "filled"), order("o2", "a", "rejected"),
                                         order("o3", "b", "rejected")]), ["client_order_id"])
    store.upsert("order_fills", pd.DataFrame([{"broker": "paper", "fill_id": f"f{i}", "client_order_id": "o1",
                                               "symbol": "SPY", "side": "buy", "quantity": "5", "price": "100",
                                               "commission": "0", "ts": T0} for i in range(2)]),
                 ["broker", "fill_id"])
    store.upsert("risk_alerts", pd.DataFrame([
        {"alert_id": "x1", "account": "a", "ts": T0, "kind": "gross_exposure", "severity": "breach", "message": "m",
         "value": "1", "threshold": "0.5", "acknowledged_at": None},
        {"alert_id": "x2", "account": "a", "ts": T0, "kind": "gross_exposure", "severity": "breach", "message": "m",
         "value": "1", "threshold": "0.5", "acknowledged_at": T0}]), ["alert_id"])
    store.close()
    m = scrape(store_url)
    assert m[("bifrost_pipeline_runs_total", (("pipeline", "eod_report"), ("status", "succeeded")))] == 2
    assert m[("bifrost_pipeline_runs_total", (("pipeline", "eod_report"), ("status", "failed")))] == 1
    assert m[("bifrost_pipeline_runs_total", (("pipeline", "trade"), ("status", "running")))] == 1
    assert m[("bifrost_pipeline_run_duration_seconds_count", (("pipeline", "eod_report"),))] == 3
    assert m[("bifrost_pipeline_run_duration_seconds_sum", (("pipeline", "eod_report"),))] == 31.5
    assert m[("bifrost_pipeline_last_success_timestamp_seconds", (("pipeline", "eod_report"),))] == \
        (T0 + timedelta(seconds=20)).timestamp()
    assert m[("bifrost_orders_total", (("account", "a"), ("status", "rejected")))] == 1
    assert m[("bifrost_order_rejections_total", (("account", "b"),))] == 1
    assert m[("bifrost_fills_total", (("account", "a"),))] == 2
    assert m[("bifrost_limit_breaches_total", (("account", "a"), ("kind", "gross_exposure")))] == 2
    assert m[("bifrost_open_alerts", (("account", "a"),))] == 1
    # values come from the store at scrape time: a new run shows on the next scrape
    store = connect(store_url)
    store.execute("INSERT INTO pipeline_runs (run_id, pipeline, params, status, started_at, ended_at, host, pid) "
                  "VALUES ('r10', 'eod_report', '{}', 'failed', ?, ?, 'h', 1)", [T0, T0])
    store.close()
    assert scrape(store_url)[("bifrost_pipeline_runs_total", (("pipeline", "eod_report"), ("status", "failed")))] == 2


def test_empty_store_scrapes_cleanly(store_url):
    connect(store_url).close()
    m = scrape(store_url)
    assert not any(k[0].startswith("bifrost_") and v for k, v in m.items())
