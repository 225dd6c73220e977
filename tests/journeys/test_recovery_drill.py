"""Journey: the recovery drill — trade, back up, trade more, lose the store, restore, trade again.

Through the real `bifrost` executable on a fresh home, as an operator would rehearse a disaster: a paper account
trades Friday's session (replayed on the paper broker), the store is backed up, Monday is traded, then the store's
file is deleted. The audit trail's anchors, kept outside the store, notice the loss; `bifrost db restore` brings back
Friday's store (proven against the head recorded at backup time) and says which anchors belonged to the lost history;
Monday is traded again. Nothing is sent twice — every order has one decision and one submission, and Monday's orders
and fills are the very ones traded before the disaster — the ledger agrees with the broker (the session's own
reconciliation, no break recorded), and `bifrost audit verify` passes.
"""
from __future__ import annotations

import json

from journey_helpers import bifrost

from bifrost.store import connect

FRIDAY, MONDAY = "2013-10-04", "2013-10-07"


def _traded(home) -> dict:
    "What the store says was sent and filled, read-only."
    store = connect(f"duckdb:///{home / 'bifrost.duckdb'}", read_only=True)
    orders = store.query("SELECT client_order_id, symbol, side, quantity, status, filled_quantity, avg_fill_price, "
                         "created_at FROM orders WHERE account = 'drill1' ORDER BY created_at, client_order_id")
    fills = store.query("SELECT f.fill_id, f.client_order_id, f.side, f.quantity, f.price, f.ts FROM order_fills f "
                        "JOIN orders o USING (client_order_id) WHERE o.account = 'drill1' ORDER BY f.ts, f.fill_id")
    submitted = store.query("SELECT e.client_order_id, count(*) AS n FROM order_events e JOIN orders o USING "
                            "(client_order_id) WHERE o.account = 'drill1' AND e.event = 'submitted' GROUP BY 1")
    decided = store.query("SELECT subject, count(*) AS n FROM audit_log WHERE kind = 'order.decision' AND "
                          "account = 'drill1' GROUP BY 1")
    breaks = store.scalar("SELECT count(*) FROM reconciliation_breaks WHERE portfolio = 'drill1'")
    sessions = dict(store.rows("SELECT CAST(session AS TEXT), status FROM trading_sessions WHERE account = 'drill1'"))
    return {"orders": orders.astype(str).to_dict("records"), "fills": fills.astype(str).to_dict("records"),
            "submitted": dict(zip(submitted.client_order_id, submitted.n)), "decided": dict(zip(decided.subject, decided.n)),
            "breaks": int(breaks), "sessions": sessions}


def _summary(out: str) -> str:
    "The session's closing line: orders, fills, refusals, P&L and status."
    return next(line for line in out.splitlines() if "[replay]" in line)


def test_trade_back_up_trade_lose_the_store_restore_and_trade_again(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    bifrost(home, "ingest", "sample")
    version = bifrost(home, "strategy", "register", "mean_reversion", "--name", "drill_mr",
                      "--param", "window=20").stdout.split()[1]
    bifrost(home, "strategy", "promote", "drill_mr", version)
    bifrost(home, "risk", "limits", "drill1", "--set", "max_daily_loss=0.05", "--set", "max_order_notional=500000",
            "--reason", "recovery drill", "--effective-from", "2013-01-01")
    friday = _summary(bifrost(home, "trade", "drill1", "--session", FRIDAY, "--strategy", "drill_mr",
                              "--symbols", "SPY").stdout)
    assert friday.endswith("done") and " 0 orders" not in friday, friday

    backup_dir = tmp_path / "backups" / "friday-close"
    out = bifrost(home, "db", "backup", str(backup_dir)).stdout
    manifest = json.loads((backup_dir / "manifest.json").read_text())
    assert f"audit head {manifest['audit_seq']} " in out and manifest["tables"]["orders"] > 0

    monday = _summary(bifrost(home, "trade", "drill1", "--session", MONDAY).stdout)
    assert monday.endswith("done") and " 0 orders" not in monday, monday
    before = _traded(home)
    assert before["sessions"] == {FRIDAY: "done", MONDAY: "done"}

    (home / "bifrost.duckdb").unlink()  # the disaster
    lost = bifrost(home, "audit", "verify", ok=False)  # the anchors outside the store know what was there
    assert lost.returncode == 1 and "BROKEN" in lost.stdout + lost.stderr

    restored = bifrost(home, "db", "restore", str(backup_dir)).stdout
    assert f"ending at seq {manifest['audit_seq']} " in restored
    assert "belonged to the history lost with the store" in restored, restored
    assert _traded(home)["sessions"] == {FRIDAY: "done"}

    again = _summary(bifrost(home, "trade", "drill1", "--session", MONDAY).stdout)
    assert again == monday  # same orders, fills, refusals and P&L as before the disaster
    after = _traded(home)
    assert after["orders"] == before["orders"] and after["fills"] == before["fills"]  # nothing sent twice, nothing lost
    assert set(after["submitted"].values()) == {1} and set(after["decided"].values()) == {1}
    assert len(after["submitted"]) == len(after["orders"]) == len(after["fills"])
    assert after["breaks"] == 0 and after["sessions"] == {FRIDAY: "done", MONDAY: "done"}  # ledger == broker
    assert "intact" in bifrost(home, "audit", "verify").stdout
