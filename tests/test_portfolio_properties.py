"""Property tests of the portfolio ledger over random transaction sequences: quantity = sum of open lots, the NAV
identity to the cent, rebuild-from-log = incremental state (at every prefix), refusals change nothing, and
portfolios are independent — on the pure `Book`, and through the store on both backends."""
from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bifrost.core import Fill, Instrument, Side
from bifrost.portfolio.ledger import Portfolio
from bifrost.portfolio.lots import Book, value
from bifrost.portfolio.money import ZERO, LedgerError, as_of_ts, money
from bifrost.portfolio.transactions import LotMethod, Transaction

INSTRUMENTS = {"AAA": Instrument("AAA"), "BBB": Instrument("BBB", tick_size=Decimal("0.05")),
               "CCC": Instrument("CCC", currency="EUR", exchange="XETR")}
T0 = datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc)
METHODS = list(LotMethod)

cents = lambda lo, hi: st.integers(lo, hi).map(lambda c: Decimal(c).scaleb(-2))
quantities = st.one_of(st.integers(1, 300).map(Decimal), st.integers(1, 300_000).map(lambda q: Decimal(q).scaleb(-3)))
prices = st.one_of(cents(1, 100_000), st.integers(1, 10_000_000).map(lambda p: Decimal(p).scaleb(-4)))


def draw_transaction(data, book: Book, i: int) -> Transaction:
    "One random transaction that fits (most of the time) what `book` holds; some are meant to be refused."
    ts, tid = T0 + timedelta(minutes=i), f"t{i}"
    held = book.positions()
    kind = data.draw(st.sampled_from(["deposit", "withdraw", "fee", "buy", "buy", "sell", "sell", "sell", "split",
                                      "dividend", "adjust", "transfer_out", "duplicate"]))
    cur = data.draw(st.sampled_from(["USD", "EUR"]))
    if kind == "deposit":
        return Transaction(tid, "deposit", ts, amount=data.draw(cents(1, 10**8)), currency=cur)
    if kind == "withdraw":
        return Transaction(tid, "withdrawal", ts, amount=data.draw(cents(1, 10**6)), currency=cur)
    if kind == "fee":
        return Transaction(tid, "fee", ts, amount=data.draw(cents(1, 10**4)), currency=cur, reason="custody")
    if kind == "adjust":
        return Transaction(tid, "adjustment", ts, amount=data.draw(cents(-10**4, 10**4).filter(bool)), currency=cur,
                           reason="broker correction")
    if kind == "duplicate" and book.txn_ids:
        return Transaction(data.draw(st.sampled_from(sorted(book.txn_ids))), "deposit", ts, amount=Decimal(1))
    sym = data.draw(st.sampled_from(sorted(INSTRUMENTS)))
    h = held.get(sym, ZERO)
    if kind == "split":
        return Transaction(tid, "split", ts, sym, quantity=data.draw(st.sampled_from(["2", "3", "1.5", "0.5", "0.25"])))
    if kind == "dividend":
        return Transaction(tid, "dividend", ts, sym, amount=data.draw(cents(1, 500)),
                           pay_ts=ts + timedelta(minutes=data.draw(st.integers(0, 30))))
    if kind == "transfer_out":
        q = abs(h) * data.draw(st.sampled_from([Decimal("0.5"), Decimal(1), Decimal(2)])) if h else Decimal(1)
        return Transaction(tid, "transfer_out", ts, sym, quantity=q)
    fee = data.draw(cents(0, 500))
    if kind == "buy" or not h:
        return Transaction(tid, "fill", ts, sym, "buy", data.draw(quantities), data.draw(prices), fee=fee)
    q = data.draw(st.one_of(st.just(abs(h)), quantities, st.just(abs(h) + 1))) if h > 0 else data.draw(quantities)
    method = data.draw(st.sampled_from([None, *METHODS]))
    lot_ids: tuple[str, ...] = ()
    if method is LotMethod.SPECIFIC or (method is None and book.lot_method is LotMethod.SPECIFIC):
        ids = [l.lot_id for l in book.open_lots(sym)]
        lot_ids = tuple(data.draw(st.permutations(ids))) if ids else ("nope",)
        method = None
    return Transaction(tid, "fill", ts, sym, "sell", q, data.draw(prices), fee=fee, lot_method=method,
                       lot_ids=lot_ids)


def check_invariants(book: Book, marks: dict[str, Decimal]) -> None:
    for sym, p in book._pos.items():
        assert p.qty == sum((l.qty for l in p.lots), ZERO), sym          # quantity = sum of open lots
        assert p.basis == sum((l.basis for l in p.lots), ZERO), sym      # basis = sum of lot bases
        assert all((l.qty > 0) == (p.qty > 0) for l in p.lots), sym      # lots all on one side
        if book.long_only:
            assert p.qty >= 0
    realised = sum((c.realised for c in book.closed_lots()), ZERO)       # realised = sum over closed lots
    assert realised == sum((t["realised"] for t in book.totals.values()), ZERO)
    v = value(book, book.last_ts or T0, marks, {"EUR": Decimal("1.0871")})
    unrealised = v.local("unrealised")
    for cur, nav in v.local_nav().items():                               # the NAV identity, per currency, exact
        t = book.totals.get(cur, dict.fromkeys(("deposits", "withdrawals", "transfers", "adjustments", "realised",
                                                "dividends", "fees"), ZERO))
        explained = (t["deposits"] - t["withdrawals"] + t["transfers"] + t["adjustments"] + t["realised"]
                     + unrealised.get(cur, ZERO) + t["dividends"] - t["fees"])
        assert nav == explained, (cur, nav, explained)
        assert nav == money(nav, cur)                                    # whole cents, always


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_book_when_random_transactions_then_identity_lots_and_rebuild_hold(data):
    method, long_only = data.draw(st.sampled_from(METHODS)), data.draw(st.booleans())
    book = Book(INSTRUMENTS, "USD", method, long_only)
    accepted, snapshots = [], []
    for i in range(data.draw(st.integers(1, 40))):
        t = draw_transaction(data, book, i)
        before = book.snapshot()
        try:
            book.apply(t)
        except LedgerError:
            assert book.snapshot() == before                              # a refusal changes nothing
            event(f"refused {t.kind.value}")
            continue
        event(f"applied {t.kind.value}{' ' + t.side.value if t.side else ''}")
        accepted.append(t)
        snapshots.append(book.snapshot())
    marks = {s: data.draw(prices) for s in INSTRUMENTS}
    check_invariants(book, marks)
    rebuilt = Book(INSTRUMENTS, "USD", method, long_only)
    rebuilt.apply_many(accepted)
    assert rebuilt.snapshot() == book.snapshot()                          # rebuild from the log = incremental
    if accepted:
        k = data.draw(st.integers(1, len(accepted)))
        prefix = Book(INSTRUMENTS, "USD", method, long_only)
        prefix.apply_many(accepted[:k])
        assert prefix.snapshot() == snapshots[k - 1]                      # ... at any as-of point


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_books_when_interleaved_then_each_is_as_if_alone(data):
    books = [Book(INSTRUMENTS, "USD", m, False) for m in data.draw(st.lists(st.sampled_from(METHODS), min_size=2,
                                                                               max_size=3))]
    logs: list[list[Transaction]] = [[] for _ in books]
    for i in range(data.draw(st.integers(1, 30))):
        j = data.draw(st.integers(0, len(books) - 1))
        t = draw_transaction(data, books[j], i)
        try:
            books[j].apply(t)
        except LedgerError:
            continue
        logs[j].append(t)
    for b, log in zip(books, logs):
        alone = Book(INSTRUMENTS, "USD", b.lot_method, False)
        alone.apply_many(log)
        assert alone.snapshot() == b.snapshot()


# -- through the store, on both backends --------------------------------------------------------------------
def seed(store) -> None:
    "Two USD instruments with daily closes on 2024-01-02..05, in a store (SAP-like EUR one is not needed here)."
    syms = ["AAA", "BBB"]
    store.upsert("instruments", pd.DataFrame({"symbol": syms, "name": "", "asset_class": "equity", "currency": "USD",
                                              "exchange": "XNYS", "tick_size": [0.01, 0.05], "lot_size": 1,
                                              "sector": None}), key=["symbol"])
    store.upsert("series", pd.DataFrame({"symbol": syms, "bar_size": "1d", "source": "t", "basis": "raw"}),
                 key=["symbol", "bar_size"])
    days = pd.date_range("2024-01-02", "2024-01-05", tz="UTC")
    store.upsert("bars", pd.DataFrame({"symbol": [s for s in syms for _ in days], "bar_size": "1d",
                                       "ts": list(days) * 2, "open": 1.0, "high": 1.0, "low": 1.0,
                                       "close": [101.23, 99.87, 102.5, 103.01, 12.35, 12.4, 12.15, 12.95],
                                       "volume": 1.0, "source": "t"}), key=["symbol", "bar_size", "ts"])


@pytest.fixture
def seeded(store):
    seed(store)
    return store


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_portfolio_when_random_fills_then_log_rebuilds_it_and_portfolios_stay_independent(seeded, data):
    with seeded.session():  # one connection for the whole example (a DuckDB file opens in ~20 ms)
        check_store_example(seeded, data)


def check_store_example(store, data):
    tag = secrets.token_hex(3)
    ports = [Portfolio.open(store, f"p{tag}-{k}", lot_method=data.draw(st.sampled_from(METHODS)), long_only=False,
                            opened_at=T0) for k in range(2)]
    for p in ports:
        p.deposit("1000000.00", ts=T0)
    for i in range(1, data.draw(st.integers(2, 10))):
        p = ports[data.draw(st.integers(0, 1))]
        sym, held = data.draw(st.sampled_from(["AAA", "BBB"])), p.book.positions()
        side = data.draw(st.sampled_from([Side.BUY, Side.SELL]))
        q = data.draw(st.one_of(quantities, st.just(abs(held.get(sym, Decimal(1))))))
        lot_ids = ()
        if p.lot_method is LotMethod.SPECIFIC and ((side is Side.SELL) == (held.get(sym, ZERO) > 0)):
            lot_ids = tuple(l.lot_id for l in p.book.open_lots(sym))
        f = Fill(f"f{i}", f"o{i}", sym, side, q, data.draw(prices), T0 + timedelta(hours=i * 7), data.draw(cents(0, 300)))
        before = p.book.snapshot()
        try:
            p.apply(f, lot_ids=lot_ids)
        except LedgerError:
            assert p.book.snapshot() == before
    end = as_of_ts("2024-01-05")
    for p in ports:
        again = Portfolio.load(store, p.name)
        assert again.book.snapshot() == p.book.snapshot()                 # the store's log rebuilds the state
        row = p.pnl(end=end).iloc[0]                                      # the identity, checked inside too
        assert row.end_nav == (row.start_nav + row.deposits - row.withdrawals + row.realised + row.unrealised_change
                               + row.dividends - row.fees)
        series = p.nav_series(end=end, calendar=None)
        assert series.nav.iloc[-1] == row.end_nav and series.pnl.sum() == row.end_nav - row.deposits
        alone = Book(p.instruments, "USD", p.lot_method, False)          # independent of the other portfolio
        alone.apply_many(p._log())
        assert alone.snapshot() == p.book.snapshot()
