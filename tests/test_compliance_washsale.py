"""Wash sales worked by hand: replacement bought before or after the sale, the 30-day edge, shares sold in the
same sale, partial and multiple replacements (cents add up), chained wash sales; the basis adjustment keeps
cash and NAV, lowers the replacement's unrealised P&L, is idempotent, audited, rebuilt from the log, and
refused (writing nothing) when its lot has gone — through the store on both backends."""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo
from decimal import Decimal

import pandas as pd
import pytest

from bifrost.audit import AuditTrail
from bifrost.compliance.rules import ComplianceError, exchange_day
from bifrost.compliance.washsale import apply_wash_sales, find_wash_sales, form_8949, wash_sales
from bifrost.core import Instrument
from bifrost.portfolio.ledger import Portfolio
from bifrost.portfolio.lots import Book, value
from bifrost.portfolio.transactions import Transaction
from bifrost.store import connect

D = Decimal
INSTRUMENTS = {"XYZ": Instrument("XYZ"), "ABC": Instrument("ABC")}
at = lambda day, hour=15: datetime.fromisoformat(day).replace(hour=hour, tzinfo=timezone.utc)


def fill(i, day, side, q, p, sym="XYZ"):
    return Transaction(i, "fill", at(day), sym, side, D(q), D(p))


def run(txns, method="fifo"):
    "The book of `txns` (after a deposit) and its wash sales."
    log = [Transaction("d", "deposit", at("2024-01-02", 12), amount=D(100_000))] + txns
    book = Book(INSTRUMENTS, lot_method=method)
    book.apply_many(log)
    return book, log, wash_sales(book, log)


def summary(washes):
    return [(w.sale_txn, w.lot_id, w.replacement, w.replaced, w.disallowed) for w in washes]


def test_wash_sale_when_replacement_bought_before_the_sale_then_its_basis_takes_the_loss():
    # A 100 @ 12 on 1 Mar, B 50 @ 11 on 10 Mar, sell 100 @ 10 on 20 Mar (FIFO: lot A, a 200 loss); B, bought
    # 10 days before and still held, replaces 50 of the 100 -> 100.00 disallowed; B's holding period includes A's:
    # held alongside A from 10 Mar, it is held from A's purchase on 1 Mar (not 19 days before 10 Mar, before A was)
    book, log, w = run([fill("A", "2024-03-01", "buy", 100, 12), fill("B", "2024-03-10", "buy", 50, 11),
                        fill("S", "2024-03-20", "sell", 100, 10)])
    assert summary(w) == [("S", "A", "B", 50, D("100.00"))]
    assert (w[0].loss, w[0].holding_start) == (D("-200.00"), at("2024-03-01"))


def test_wash_sale_window_when_30_days_then_in_and_31_days_then_out():
    base = [fill("A", "2024-03-01", "buy", 10, 12), fill("S", "2024-03-20", "sell", 10, 10)]
    assert summary(run(base + [fill("B", "2024-04-19", "buy", 10, 9)])[2]) == [("S", "A", "B", 10, D("20.00"))]
    assert run(base + [fill("B", "2024-04-20", "buy", 10, 9)])[2] == []
    # 30 days before the sale is in (and the sold lot is never its own replacement, nor its other shares)
    before = [fill("B", "2024-02-19", "buy", 10, 12), fill("A", "2024-03-01", "buy", 10, 12),
              fill("S", "2024-03-20", "sell", 10, 10, )]
    assert summary(run(before, method="lifo")[2]) == [("S", "A", "B", 10, D("20.00"))]
    own = [fill("A", "2024-03-01", "buy", 20, 12), fill("S", "2024-03-20", "sell", 10, 10)]
    assert run(own)[2] == []
    # a gain is never a wash sale
    assert run([fill("A", "2024-03-01", "buy", 10, 12), fill("S", "2024-03-20", "sell", 10, 13),
                fill("B", "2024-03-21", "buy", 10, 13)])[2] == []


def test_wash_sale_when_every_share_sold_together_then_none_replaces_another():
    assert run([fill("A", "2024-03-01", "buy", 100, 12), fill("B", "2024-03-05", "buy", 100, 12),
                fill("S", "2024-03-20", "sell", 200, 10)])[2] == []
    # and a share sold before the loss sale replaces nothing
    assert run([fill("B", "2024-03-01", "buy", 10, 9), fill("G", "2024-03-02", "sell", 10, 10, ),
                fill("A", "2024-03-05", "buy", 10, 12), fill("S", "2024-03-20", "sell", 10, 10)])[2] == []


def test_wash_sale_when_three_small_replacements_then_the_cents_add_up_to_the_loss():
    # 3 bought for 10.00 (3.3333 each), sold for 3.00: a 7.00 loss; bought back one at a time -> 2.33 + 2.34 + 2.33
    book, log, w = run([fill("A", "2024-03-01", "buy", 3, "3.3333"), fill("S", "2024-03-04", "sell", 3, 1),
                        fill("R1", "2024-03-05", "buy", 1, 1), fill("R2", "2024-03-06", "buy", 1, 1),
                        fill("R3", "2024-03-07", "buy", 2, 1), fill("X", "2024-03-08", "buy", 5, 1, sym="ABC")])
    assert summary(w) == [("S", "A", "R1", 1, D("2.33")), ("S", "A", "R2", 1, D("2.34")), ("S", "A", "R3", 1, D("2.33"))]
    assert sum(x.disallowed for x in w) == -w[0].loss


def test_wash_sale_when_booked_then_cash_and_nav_hold_unrealised_falls_and_replacement_chains():
    txns = [fill("A", "2024-03-01", "buy", 100, 12), fill("S", "2024-03-20", "sell", 100, 10),
            fill("B", "2024-03-25", "buy", 40, "10.50")]
    book, log, w = run(txns)
    marks = {"XYZ": D("10.75")}
    v0 = value(book, at("2024-03-25", 20), marks)
    adj = [x.adjustment(at("2024-03-25", 16)) for x in w]
    book.apply_many(adj)
    v1 = value(book, at("2024-03-25", 20), marks)
    assert (v1.nav, v1.cash) == (v0.nav, v0.cash)
    assert v1.positions[0].unrealised == v0.positions[0].unrealised - D("80.00")  # 40% of 200
    assert book.totals["USD"]["realised"] == D("-120.00")
    # B is sold at a loss (its adjusted basis 420 + 80 = 500 against 400) and replaced in full by C, bought more
    # than 30 days after S (else C would first replace the rest of S: earlier loss sales match first)
    log = log + adj + [fill("S2", "2024-04-22", "sell", 40, 10), fill("C", "2024-04-23", "buy", 40, 10)]
    book.apply_many(log[len(log) - 2:])
    w2 = wash_sales(book, log)
    assert summary(w2) == [("S", "A", "B", 40, D("80.00")), ("S2", "B", "C", 40, D("100.00"))]
    # the holding period is carried twice: B's started 6 Mar (A's 19 days before B), C's 47 days (B's) before 23 Apr
    assert (exchange_day(w2[1].acquired), exchange_day(w2[1].holding_start)) == (date(2024, 3, 6), date(2024, 3, 7))


def test_wash_sale_when_average_cost_then_refused():
    book, log, w = run([fill("A", "2024-03-01", "buy", 10, 12), fill("S", "2024-03-20", "sell", 10, 10),
                        fill("B", "2024-03-25", "buy", 10, 9)], method="average")
    with pytest.raises(Exception, match="average-cost"):
        book.apply(w[0].adjustment(at("2024-03-25", 16)))


@pytest.fixture
def ledger(store):
    store.upsert("instruments", pd.DataFrame({"symbol": ["XYZ"], "name": ["X"], "asset_class": "equity",
                                              "currency": "USD", "exchange": "XNYS", "tick_size": 0.01, "lot_size": 1,
                                              "sector": None}), key=["symbol"])
    store.upsert("series", pd.DataFrame({"symbol": ["XYZ"], "bar_size": "1d", "source": "t", "basis": "raw"}),
                 key=["symbol", "bar_size"])
    days = pd.bdate_range("2024-03-01", "2024-05-31")
    store.upsert("bars", pd.DataFrame({"symbol": "XYZ", "bar_size": "1d", "ts": days.tz_localize("UTC"), "open": 10.0,
                                       "high": 11.0, "low": 9.0, "close": 10.75, "volume": 1.0, "source": "t"}),
                 key=["symbol", "bar_size", "ts"])
    p = Portfolio.open(store, "tax", opened_at=at("2024-03-01", 0))
    p.deposit("10000.00", ts=at("2024-03-01", 1))
    p.apply_many([fill("A", "2024-03-01", "buy", 100, 12), fill("S", "2024-03-20", "sell", 100, 10),
                  fill("B", "2024-03-25", "buy", 40, "10.50"), fill("C", "2024-03-26", "buy", 100, "10.40")])
    return p


def test_apply_wash_sales_when_run_twice_then_once_booked_audited_and_rebuilt(ledger):
    p, store = ledger, ledger.store
    before = p.valuation(at("2024-03-27"))
    booked = apply_wash_sales(p)
    # 100 sold at a 200 loss: B replaces 40 (80.00), C the other 60 (120.00) of its 100, split off as a lot
    assert [(t.lot_ids, t.quantity, t.amount) for t in booked] == [(("B",), 40, D("80.00")), (("C",), 60, D("120.00"))]
    assert apply_wash_sales(p) == []
    after = p.valuation(at("2024-03-27"))
    assert (after.nav, after.cash) == (before.nav, before.cash)
    assert after.positions[0].unrealised == before.positions[0].unrealised - D("200.00")
    lots = p.lots("XYZ", as_of=at("2024-03-27"))
    assert list(zip(lots.lot_id, lots.quantity, lots.cost_basis)) == [
        ("B", 40, D("500.00")), (booked[1].txn_id, 60, D("744.00")), ("C", 40, D("416.00"))]
    assert list(lots.opened.dt.date) == [date(2024, 3, 6), date(2024, 3, 7), date(2024, 3, 26)]
    reloaded = Portfolio.load(store, "tax")
    assert reloaded.book.snapshot() == p.book.snapshot()
    assert apply_wash_sales(reloaded) == []
    assert list(AuditTrail(store).records(kind="compliance.wash_sale").subject) == [t.txn_id for t in booked]
    f = form_8949(reloaded)
    assert (list(f.code), list(f.adjustment), list(f.gain_or_loss)) == (["W"], [D("200.00")], [D("0.00")])
    pnl = reloaded.pnl(end=at("2024-03-27"))
    assert pnl.end_nav.iat[0] == pnl.deposits.iat[0] + pnl.realised.iat[0] + pnl.unrealised_change.iat[0]


def test_apply_wash_sales_when_replacement_sold_first_then_refused_and_nothing_written(ledger):
    p, store = ledger, ledger.store
    p.apply(fill("G", "2024-03-28", "sell", 40, 11))  # FIFO: all of B, before its adjustment is booked
    rows = int(store.scalar("SELECT count(*) FROM ledger_transactions"))
    with pytest.raises(ComplianceError, match="replacement lot is open"):
        apply_wash_sales(p)
    assert int(store.scalar("SELECT count(*) FROM ledger_transactions")) == rows
    assert len(AuditTrail(store).records(kind="compliance.wash_sale")) == 0
    assert len(find_wash_sales(p)) == 2


def test_wash_sale_rule_when_in_a_rule_book_then_buy_after_loss_sale_warns():
    from bifrost.compliance.rules import RuleBook, RuleVersion
    from bifrost.core import AccountState, Fill, Order, Verdict
    fills = (Fill("b", "o1", "XYZ", "buy", D(10), D(12), at("2024-03-01")),
             Fill("s", "o2", "XYZ", "sell", D(10), D(10), at("2024-03-20")),
             Fill("b2", "o3", "ABC", "buy", D(10), D(5), at("2024-03-21")))
    book = RuleBook("a", [RuleVersion("wash_sale", 1, "2000-01-01", None, {"days": 30})])
    state = lambda day: AccountState("a", at(day), D(1000), {"ABC": D(10)}, {"XYZ": D(10), "ABC": D(5)}, fills=fills)
    buy = lambda s: Order("x", s, "buy", D(1))
    c = book.check(buy("XYZ"), state("2024-04-19"))[0]
    assert (c.verdict, c.name) == (Verdict.WARN, "wash_sale v1") and "loss of 20.00 on 2024-03-20" in c.reason
    assert book.check(buy("XYZ"), state("2024-04-20"))[0].verdict is Verdict.PASS   # 31 days on
    assert book.check(buy("ABC"), state("2024-04-19"))[0].verdict is Verdict.PASS   # another symbol


def ny(text: str) -> datetime:
    return pd.Timestamp(text, tz="America/New_York").to_pydatetime()


def nyfill(i, when, side, q, p):
    return Transaction(i, "fill", ny(when), "XYZ", side, D(q), D(p))


@pytest.mark.parametrize("sold_on, term", [("2024-12-28", "short"), ("2025-01-03", "long")])
def test_form_8949_when_replacement_bought_before_the_loss_sale_then_held_from_the_sold_shares_purchase(
        tmp_path, sold_on, term):
    # Worked by hand (Pub. 550: the replacement's holding period includes the sold shares'):
    # A: 100 @ 50 on 2 Jan 2024; B: 100 @ 45 on 20 Feb (10 days before the sale); A sold @ 40 on 1 Mar: a 1,000 loss,
    # disallowed and added to B's basis (4,500 + 1,000 = 5,500). B is held from 2 Jan: its own days from 20 Feb and
    # A's from 2 Jan, the common 20 Feb..1 Mar counted once. Sold @ 60 (6,000) on 28 Dec 2024: short-term (not more
    # than a year after 2 Jan 2024), a 500 gain; on 3 Jan 2025: long-term. (Starting B 59 days -- A's holding period
    # -- before 20 Feb would put it on 22 Dec 2023, before A was bought, and make the 28 Dec sale long-term.)
    store = connect(f"duckdb:///{tmp_path}/tax.duckdb")  # the rule is the store's either way: one backend
    store.upsert("instruments", pd.DataFrame({"symbol": ["XYZ"], "name": ["X"], "asset_class": "equity",
                                              "currency": "USD", "exchange": "XNYS", "tick_size": 0.01, "lot_size": 1,
                                              "sector": None}), key=["symbol"])
    p = Portfolio.open(store, "tax", opened_at=ny("2024-01-02 08:00"))
    p.deposit("20000.00", ts=ny("2024-01-02 08:30"))
    p.apply_many([nyfill("A", "2024-01-02 10:00", "buy", 100, 50), nyfill("B", "2024-02-20 10:00", "buy", 100, 45),
                  nyfill("S", "2024-03-01 10:00", "sell", 100, 40)])
    (w,) = find_wash_sales(p)
    assert (w.lot_id, w.replacement, w.disallowed) == ("A", "B", D("1000.00"))
    assert w.holding_start == ny("2024-01-02 10:00")
    apply_wash_sales(p)
    p.apply(nyfill("X", f"{sold_on} 11:00", "sell", 100, 60))
    f = form_8949(p, all_sales=True).set_index("lot_id")
    row = f.loc["B"]
    assert (row.date_acquired, row.date_sold, row.cost_basis, row.proceeds, row.gain_or_loss, row.term) == (
        date(2024, 1, 2), date.fromisoformat(sold_on), D("5500.00"), D("6000.00"), D("500.00"), term)
    assert (f.loc["A"].code, f.loc["A"].adjustment) == ("W", D("1000.00"))


def test_wash_sale_when_replacement_bought_pre_market_then_held_from_the_exchange_date():
    # A bought 1 Mar 09:31 New York, sold at a loss 20 Mar 15:59 (held 19 calendar days); B bought pre-market
    # 25 Mar 04:30: held from 6 Mar (25 - 19). Stepping back A's 19 days 6 h 28 min from 04:30 lands on 5 Mar.
    log = [Transaction("d", "deposit", ny("2024-03-01 08:00"), amount=D(100_000)),
           nyfill("A", "2024-03-01 09:31", "buy", 10, 12), nyfill("S", "2024-03-20 15:59", "sell", 10, 10),
           nyfill("B", "2024-03-25 04:30", "buy", 10, 9)]
    book = Book(INSTRUMENTS)
    book.apply_many(log)
    (w,) = wash_sales(book, log)
    assert exchange_day(w.holding_start) == date(2024, 3, 6)
    assert w.holding_start.astimezone(ZoneInfo("America/New_York")).time() == time(4, 30)
