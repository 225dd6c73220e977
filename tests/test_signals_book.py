"Order-book replay: invariants and an independent rebuild on the real ES files, random streams, fault injection."
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from bifrost.signals.book import (ES_MBO_2023_12_25, ES_MBO_2024_05_08, BookDataError, book_at, book_benchmark, load_mbo,
                                  reference_replay_mbo, replay_bybit, replay_mbo, sample_book_path)

TOP = ["ts_recv", "bid_px", "bid_sz", "bid_ct", "ask_px", "ask_sz", "ask_ct"]

def same_top(fast, ref) -> bool:
    a = fast.top.reset_index(drop=True)[TOP].fillna(-1).to_numpy(float)
    return a.shape == ref.shape and np.array_equal(a, ref[TOP].fillna(-1).to_numpy(float))

@pytest.mark.parametrize("name", [ES_MBO_2023_12_25, ES_MBO_2024_05_08])
def test_es_books_hold_invariants_and_equal_reference(name):
    ev = load_mbo(name)
    book = replay_mbo(ev)
    ref_top, ref_counts = reference_replay_mbo(name)
    assert same_top(book, ref_top)
    assert {k: book.anomalies[k] for k in ref_counts} == ref_counts
    assert book.invariants_hold
    after = book.top[book.top.index >= book.open_index].dropna(subset=["bid_px", "ask_px"])
    assert (after.bid_px < after.ask_px).all()          # checked directly, event end by event end
    assert (book.top.index.to_numpy() == np.flatnonzero(ev.flags & 128)).all()

def test_esm4_clear_snapshot_and_final_book():
    book = replay_mbo(load_mbo(ES_MBO_2024_05_08))
    assert book.anomalies["clears"] == 1
    assert book.anomalies["crossed_preopen"] + book.anomalies["crossed_after_open"] == 0
    assert (book.bids.price.iloc[0], book.bids["size"].iloc[0], book.asks.price.iloc[0], book.asks["size"].iloc[0]) == (5214.0, 28, 5214.25, 17)

def test_book_at_is_the_replay_up_to_that_time():
    ev = load_mbo(ES_MBO_2023_12_25)
    ts = int(pd.Timestamp("2023-12-25 23:30", tz="UTC").value)
    levels = book_at(ev, ts, depth=5)
    part = replay_mbo(ev, until_ts=ts)
    assert levels.bid_price.tolist() == part.bids.price.head(5).tolist()
    assert levels.ask_size.tolist() == part.asks["size"].head(5).tolist()
    assert levels.bid_price.iloc[0] < levels.ask_price.iloc[0]

def _random_stream(rng, n) -> pd.DataFrame:
    rows, live, oid, seq = [], {}, 1000, 1
    for i in range(n):
        r = rng.random()
        if r < 0.45 or not live:
            side = "B" if rng.random() < 0.5 else "A"
            tick = int(rng.integers(380, 400)) if side == "B" else int(rng.integers(400, 420))
            q = int(rng.integers(1, 20)); oid += 1; live[oid] = (side, tick, q)
            rows.append(("A", side, tick * 0.25, q, oid))
        elif r < 0.75:
            o = int(rng.choice(list(live))); side, tick, q = live[o]
            take = int(rng.integers(1, q + 1))
            rows.append(("C", side, tick * 0.25, take, o))
            live[o] = (side, tick, q - take)
            if q == take: del live[o]
        elif r < 0.9:
            o = int(rng.choice(list(live))); side, _, _ = live[o]
            tick = int(rng.integers(380, 400)) if side == "B" else int(rng.integers(400, 420))
            q = int(rng.integers(1, 20)); live[o] = (side, tick, q)
            rows.append(("M", side, tick * 0.25, q, o))
        elif r < 0.95:
            rows.append(("C", "B", 95.0, 1, 999_999 + i))     # unknown order: must be counted, never applied
        else:
            o = int(rng.choice(list(live))); side, tick, q = live[o]
            rows.append(("F", side, tick * 0.25, 1, o))       # fills do not change the book
    df = pd.DataFrame(rows, columns=["action", "side", "price", "size", "order_id"])
    df["price"] = df["price"].map(lambda p: f"{p:g}")
    df.insert(0, "ts_recv", np.arange(len(df), dtype=np.int64) * 1000)
    df.insert(1, "ts_event", df["ts_recv"])
    df["symbol"] = "X"
    df["flags"] = np.where(rng.random(len(df)) < 0.7, 128, 0); df.loc[len(df) - 1, "flags"] = 128
    df["sequence"] = np.arange(len(df)) + 1
    return df

@pytest.mark.parametrize("seed", range(5))
def test_random_streams_agree_with_reference(tmp_path, seed):
    df = _random_stream(np.random.default_rng(seed), 3000)
    path = tmp_path / "stream.csv"
    df.to_csv(path, index=False)
    book = replay_mbo(load_mbo(path))
    ref_top, ref_counts = reference_replay_mbo(path)
    assert same_top(book, ref_top)
    assert {k: book.anomalies[k] for k in ref_counts} == ref_counts
    assert book.anomalies["cancel_unknown"] == (df.order_id >= 999_999).sum() > 0
    assert book.anomalies["crossed_after_open"] == 0

def _inject(ev, **cols):
    "Append one record (with F_LAST) to the events."
    extra = {f: np.array([cols.get(f, getattr(ev, f)[-1])], dtype=getattr(ev, f).dtype)
             for f in ("ts_recv", "ts_event", "action", "side", "tick", "size", "order_id", "flags", "sequence")}
    extra["flags"][:] = cols.get("flags", 128)
    return replace(ev, **{f: np.concatenate([getattr(ev, f), extra[f]]) for f in extra})

def test_fault_injection_is_counted_never_absorbed():
    ev = load_mbo(ES_MBO_2024_05_08)
    base = replay_mbo(ev)
    bad = replay_mbo(_inject(ev, action=np.uint8(1), order_id=1, size=1))                      # cancel of an unknown order
    assert bad.anomalies["cancel_unknown"] == 1 and not bad.invariants_hold
    assert bad.top.iloc[-1][["bid_px", "ask_px"]].tolist() == base.top.iloc[-1][["bid_px", "ask_px"]].tolist()
    best_ask_tick = int(round(base.asks.price.iloc[0] / 0.25))
    crossed = replay_mbo(_inject(ev, action=np.uint8(0), side=np.int8(1), tick=best_ask_tick + 2, size=5, order_id=42))
    assert crossed.anomalies["crossed_after_open"] == 1 and not crossed.invariants_hold
    locked = replay_mbo(_inject(ev, action=np.uint8(0), side=np.int8(1), tick=best_ask_tick, size=5, order_id=42))
    assert locked.anomalies["locked_after_open"] == 1
    regress = replay_mbo(_inject(ev, action=np.uint8(3), side=np.int8(0), sequence=1, order_id=0))
    assert regress.anomalies["sequence_regressions"] == base.anomalies["sequence_regressions"] + 1
    fill = replay_mbo(_inject(ev, action=np.uint8(4), order_id=7, size=1))
    assert fill.anomalies["fill_unknown"] == base.anomalies["fill_unknown"] + 1
    assert fill.top.iloc[-1].tolist()[2:] == base.top.iloc[-1].tolist()[2:]               # a fill leaves the book alone

def test_bad_input_raises_clear_errors(tmp_path):
    df = pd.read_parquet(sample_book_path(ES_MBO_2024_05_08)).head(50)
    df.loc[5, "price"] = "5214.1"
    df.to_csv(tmp_path / "offtick.csv", index=False)
    with pytest.raises(BookDataError, match="not a multiple of the tick"):
        load_mbo(tmp_path / "offtick.csv")
    df = pd.read_parquet(sample_book_path(ES_MBO_2024_05_08)).head(50)
    df.loc[5, "action"] = "X"
    df.to_csv(tmp_path / "action.csv", index=False)
    with pytest.raises(BookDataError, match="unknown actions"):
        load_mbo(tmp_path / "action.csv")
    with pytest.raises(BookDataError, match="no shipped"):
        load_mbo("nope.parquet")

def test_bybit_gap_is_counted(tmp_path):
    lines = sample_book_path("bybit_linear_XRPUSDT_ob500_2024-12-01.jsonl").read_text().splitlines()
    (tmp_path / "gap.jsonl").write_text("\n".join(lines[:10] + lines[11:]))
    clean, gap = replay_bybit(), replay_bybit(tmp_path / "gap.jsonl")
    assert clean.anomalies["update_gaps"] == 0 and gap.anomalies["update_gaps"] == 1
    (tmp_path / "nosnap.jsonl").write_text("\n".join(lines[1:]))
    assert replay_bybit(tmp_path / "nosnap.jsonl").anomalies["delta_before_snapshot"] == len(lines) - 1
    assert json.loads(lines[0])["type"] == "snapshot"

def test_benchmark_reports_agreement():
    r = book_benchmark(quick=True)
    assert r["agree"] and r["messages"] == 68_792
    assert r["replay_msgs_per_s"] > 0 and r["reference_msgs_per_s"] > 0
