"""The portfolio ledger through the store, on DuckDB and PostgreSQL: exact round trips, bad input, corporate actions
from the store, a USD portfolio with a EUR instrument, reconciliation, transfers, lot methods, and the CLI helpers."""
from __future__ import annotations

import json
from datetime import date, datetime, timezone
from decimal import Decimal, localcontext

import pandas as pd
import pytest

from bifrost.core import Fill, Side
from bifrost.portfolio.ledger import Portfolio, list_portfolios
from bifrost.portfolio.market import write_fx_rates
from bifrost.portfolio.money import LedgerError
from bifrost.portfolio.reconcile import Statement
from bifrost.portfolio.transactions import Transaction
from bifrost.store import connect

D = Decimal
# raw daily closes from the shipped sample (Lean), June 2014; SAP's are illustrative, not market data
AAPL = {"2014-06-02": 628.65, "2014-06-03": 637.54, "2014-06-04": 644.82, "2014-06-05": 647.35, "2014-06-06": 645.57,
        "2014-06-09": 93.70, "2014-06-10": 94.25, "2014-06-11": 93.86, "2014-06-12": 92.26, "2014-06-13": 91.28}
SPY = {"2014-06-06": 195.41, "2014-06-10": 195.59, "2014-06-11": 194.92, "2014-06-12": 193.54, "2014-06-13": 194.16,
       "2014-06-16": 194.29, "2014-06-17": 194.83, "2014-06-18": 196.26, "2014-06-19": 196.48, "2014-06-20": 195.94,
       "2014-06-23": 195.88}
SAP = {"2014-06-02": 55.00, "2014-06-03": 55.50, "2014-06-04": 56.10}
EURUSD = {"2014-06-02": "1.3600", "2014-06-03": "1.3620", "2014-06-04": "1.3590"}


def at(day: str, hour: int = 19) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, minute=55, tzinfo=timezone.utc)


def fill(fid: str, day: str, side: str, qty, price, sym: str = "AAPL", fee: str = "1.00") -> Fill:
    return Fill(fid, f"o-{fid}", sym, Side(side), D(qty), D(price), at(day), D(fee))


@pytest.fixture
def market(store):
    "A migrated store (both backends) with AAPL, SPY, SAP (EUR), their June 2014 closes, events and EUR/USD."
    store.upsert("instruments", pd.DataFrame({
        "symbol": ["AAPL", "SPY", "SAP"], "name": ["Apple", "SPDR S&P 500", "SAP SE"], "asset_class": "equity",
        "currency": ["USD", "USD", "EUR"], "exchange": ["XNAS", "XNYS", "XETR"], "tick_size": 0.01, "lot_size": 1,
        "sector": None}), key=["symbol"])
    store.upsert("series", pd.DataFrame({"symbol": ["AAPL", "SPY", "SAP"], "bar_size": "1d", "source": "t",
                                         "basis": "raw"}), key=["symbol", "bar_size"])
    rows = [(s, d, c) for s, closes in (("AAPL", AAPL), ("SPY", SPY), ("SAP", SAP)) for d, c in closes.items()]
    store.upsert("bars", pd.DataFrame({"symbol": [r[0] for r in rows], "bar_size": "1d",
                                       "ts": pd.to_datetime([r[1] for r in rows]).tz_localize("UTC"), "open": 1.0,
                                       "high": 1000.0, "low": 0.5, "close": [r[2] for r in rows], "volume": 1.0,
                                       "source": "t"}), key=["symbol", "bar_size", "ts"])
    store.upsert("corporate_actions", pd.DataFrame({
        "symbol": ["AAPL", "SPY"], "ex_date": [date(2014, 6, 9), date(2014, 6, 20)], "kind": ["split", "dividend"],
        "value": [7.0, 0.94], "source": "t"}), key=["symbol", "ex_date", "kind"])
    write_fx_rates(store, pd.DataFrame({"base": "EUR", "quote": "USD", "ts": pd.to_datetime(list(EURUSD)).tz_localize(
        "UTC"), "rate": list(EURUSD.values())}))
    return store


def log_rows(store, name: str) -> int:
    return int(store.scalar("SELECT count(*) FROM ledger_transactions WHERE portfolio = ?", [name]))


# -- the log ----------------------------------------------------------------------------------------------------
def test_log_when_amounts_are_awkward_decimals_then_every_field_round_trips_exactly(market):
    p = Portfolio.open(market, "exact", long_only=False, opened_at=at("2014-06-02", 0))
    txns = [Transaction("d1", "deposit", at("2014-06-02", 1), amount=D("123456789012345678.12"), reason="seed ✓ 'q'"),
            Transaction("f,1", "fill", at("2014-06-02", 2), "AAPL", "buy", D("1E+2"), D("628.6512345678"),
                        fee=D("0.004999")),
            Transaction("f2", "fill", at("2014-06-02", 3), "AAPL", "buy", D("0.000000001"), D("0.0001")),
            Transaction("f3", "fill", at("2014-06-02", 4), "AAPL", "sell", D("50.5"), D("630.00"),
                        lot_ids=("f2", "f,1")),
            Transaction("a1", "adjustment", at("2014-06-02", 5), amount=D("-0.01"), reason="broker rounding"),
            Transaction("v1", "dividend", at("2014-06-03", 0), "AAPL", amount=D("3.2900000001"),
                        pay_ts=at("2014-06-05", 0))]
    p.apply_many(txns)
    got = Portfolio.load(market, "exact")._log()
    fields = ("txn_id", "kind", "ts", "symbol", "side", "quantity", "price", "amount", "currency", "fee", "lot_method",
              "lot_ids", "pay_ts", "opened", "reason")
    assert [[str(getattr(t, f)) for f in fields] for t in got] == [[str(getattr(t, f)) for f in fields] for t in txns]
    assert Portfolio.load(market, "exact").book.snapshot() == p.book.snapshot()


def test_fx_rates_when_written_then_read_back_exactly(market):
    from bifrost.portfolio.market import MarketData
    from bifrost.portfolio.money import as_of_ts
    md = MarketData(market, {}, [], ["EUR"], "USD", as_of_ts("2014-06-01"), as_of_ts("2014-06-04"))
    assert [md.rates(["EUR"], as_of_ts(d))["EUR"] for d in EURUSD] == [D(r) for r in EURUSD.values()]
    assert [str(md.rates(["EUR"], as_of_ts(d))["EUR"]) for d in EURUSD] == list(EURUSD.values())


# -- bad input ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, message", [
    (lambda p: p.apply(fill("x", "2014-06-03", "buy", 1, "10", sym="TSLA")), "unknown instrument 'TSLA'"),
    (lambda p: p.apply(fill("x", "2014-06-03", "sell", 11, "637.54")), "long-only"),
    (lambda p: p.apply(Transaction("x", "fill", at("2014-06-03"), "AAPL", "buy", D(0), D(1))), "was 0"),
    (lambda p: p.apply(Transaction("x", "fill", at("2014-06-03"), "AAPL", "buy", D(-5), D(1))), "was -5"),
    (lambda p: p.apply(fill("x", "2014-06-03", "buy", 1, "637.54"), currency="EUR"), "currency mismatch"),
    (lambda p: p.apply(fill("g1", "2014-06-02", "buy", 10, "628.65")), "already applied"),
    (lambda p: p.apply(fill("x", "2014-06-01", "buy", 1, "600")), "earlier than the last"),
    (lambda p: p.withdraw("1.005", ts=at("2014-06-03")), "minor units"),
    (lambda p: p.apply(fill("x", "2014-06-03", "sell", 5, "637.54"), lot_ids=("nope",)), "not open AAPL lots"),
], ids=["unknown-instrument", "oversell-long-only", "zero-quantity", "negative-quantity", "currency-mismatch",
        "duplicate-fill", "out-of-order", "sub-cent", "unknown-lot"])
def test_apply_when_input_is_bad_then_clear_error_and_ledger_unchanged(market, bad, message):
    p = Portfolio.open(market, "strict", opened_at=at("2014-06-02", 0))
    p.deposit("10000.00", ts=at("2014-06-02", 13))
    p.apply(fill("g1", "2014-06-02", "buy", 10, "628.65"))
    before = (p.book.snapshot(), log_rows(market, "strict"), p.seq)
    with pytest.raises(LedgerError, match=message):
        bad(p)
    assert (p.book.snapshot(), log_rows(market, "strict"), p.seq) == before
    assert Portfolio.load(market, "strict").book.snapshot() == before[0]


def test_apply_when_another_process_already_recorded_the_fill_then_the_store_refuses_it(market, store_url):
    a = Portfolio.open(market, "shared", opened_at=at("2014-06-02", 0))
    a.deposit("10000.00", ts=at("2014-06-02", 13))
    b = Portfolio.load(connect(store_url), "shared")  # a second process, same portfolio
    a.apply(fill("g1", "2014-06-02", "buy", 10, "628.65"))
    before = b.book.snapshot()
    with pytest.raises(LedgerError, match="Portfolio.load it again"):
        b.apply(fill("g1", "2014-06-02", "buy", 10, "628.65"))
    assert b.book.snapshot() == before and log_rows(market, "shared") == 2


# -- corporate actions, P&L and NAV ------------------------------------------------------------------------------
def test_corporate_actions_when_held_through_split_and_dividend_then_booked_from_the_store(market):
    p = Portfolio.open(market, "events", opened_at=at("2014-06-02", 0))
    p.deposit("100000.00", ts=at("2014-06-02", 13))
    p.apply(fill("f1", "2014-06-02", "buy", 30, "628.65"))
    p.apply(fill("f2", "2014-06-10", "buy", 100, "195.59", sym="SPY"))  # books the split first
    assert p.book.positions() == {"AAPL": D(210), "SPY": D(100)}
    assert p.book.open_lots("AAPL")[0].cost_basis == D("18859.50")      # basis unchanged by the split
    assert p.positions("2014-06-23").set_index("symbol").quantity.to_dict() == {"AAPL": D(210), "SPY": D(100)}
    assert p.cash("2014-06-23").receivable.tolist() == [D(0)]
    assert p.cash("2014-06-23").cash.tolist() == [D("100000.00") - D("18859.50") - D("19559.00") - 2 + D("94.00")]
    assert p.catch_up("2014-06-23")[0].txn_id == "dividend:SPY:2014-06-20"  # now written to the log
    assert p.catch_up("2014-06-23") == []
    assert [t for t in p.transactions().txn_id if ":" in t] == ["split:AAPL:2014-06-09", "dividend:SPY:2014-06-20"]


def test_pnl_when_worked_example_then_identity_holds_to_the_cent_and_series_sum_to_it(market):
    p = Portfolio.open(market, "worked", long_only=False, opened_at=at("2014-06-02", 0))
    p.deposit("100000.00", ts=at("2014-06-02", 13))
    for f in (fill("f1", "2014-06-02", "buy", 100, "628.65"), fill("f2", "2014-06-04", "buy", 50, "644.82"),
              fill("f3", "2014-06-05", "sell", 120, "647.35"), fill("f4", "2014-06-10", "buy", 100, "195.59", "SPY"),
              fill("f5", "2014-06-10", "sell", 250, "94.25"), fill("f6", "2014-06-13", "buy", 40, "91.28")):
        p.apply(f)
    p.withdraw("1000.00", ts=at("2014-06-20", 21))
    row = p.pnl(end="2014-06-23").iloc[0]
    assert (row.realised, row.dividends, row.fees, row.withdrawals) == (D("2487.30"), D("94.00"), D("6.00"),
                                                                        D("1000.00"))
    assert row.unrealised_change == 100 * (D("195.88") - D("195.59"))
    assert row.end_nav == D("101604.30") == row.deposits - row.withdrawals + row.realised + row.unrealised_change \
        + row.dividends - row.fees
    series = p.nav_series(end="2014-06-23")
    assert len(series) == 16 and series.nav.iloc[-1] == row.end_nav
    for c in ("realised", "unrealised_change", "dividends", "fees", "deposits", "withdrawals"):
        assert series[c].sum() == row[c], c
    mid = p.pnl(start="2014-06-06", end="2014-06-13").iloc[0]
    assert mid.start_nav == p.nav("2014-06-06") and mid.end_nav == p.nav("2014-06-13")
    assert mid.realised == D("447.90") + D("118.80")
    assert p.pnl(end="2014-06-23", by="instrument").total.sum() == row.end_nav - row.deposits + row.withdrawals
    assert p.positions("2014-06-01").empty and p.nav("2014-06-01") == 0
    with localcontext() as ctx:  # a researcher's notebook that lowered the precision changes no ledger number
        ctx.prec = 4
        assert p.pnl(end="2014-06-23").equals(p.pnl(end="2014-06-23")) and p.nav("2014-06-23") == row.end_nav
        assert p.nav_series(end="2014-06-23").equals(series)


def test_pnl_when_usd_portfolio_holds_a_eur_instrument_then_fx_explains_the_rest(market):
    p = Portfolio.open(market, "euro", opened_at=at("2014-06-02", 0))
    p.deposit("10000.00", "EUR", ts=at("2014-06-02", 8))
    p.deposit("50000.00", ts=at("2014-06-02", 8))
    p.apply(fill("x1", "2014-06-02", "buy", 100, "55.00", sym="SAP", fee="2.50"))
    p.apply(fill("x2", "2014-06-02", "buy", 10, "628.65"))
    pos = p.positions("2014-06-04").set_index("symbol")
    assert pos.loc["SAP", "market_value"] == D("5610.00") and pos.loc["SAP", "market_value_base"] == D("7623.99")
    assert p.nav("2014-06-04") == D("7623.99") + money_usd(D("4497.50") * D("1.3590")) + D("6448.20") \
        + D("43712.50")
    row = p.pnl(end="2014-06-04").iloc[0]
    assert row.deposits == D("63600.00")  # each deposit at its day's rate
    assert row.fx == D("-10.15") and row.fx == p.nav_series(end="2014-06-04").fx.sum()
    assert row.end_nav == row.deposits + row.unrealised_change - row.fees + row.fx
    with pytest.raises(LedgerError, match="currency mismatch"):
        p.apply(fill("x3", "2014-06-03", "buy", 1, "55.50", sym="SAP"), currency="USD")


def test_nav_when_base_is_eur_and_holdings_are_usd_then_the_eurusd_rate_is_inverted(market):
    p = Portfolio.open(market, "eur-base", base_currency="EUR", opened_at=at("2014-06-02", 0))
    p.deposit("10000.00", "USD", ts=at("2014-06-02", 8))
    p.apply(fill("u1", "2014-06-02", "buy", 10, "628.65", fee="0.00"))
    pos = p.positions("2014-06-03").iloc[0]
    assert pos.fx_rate * D("1.3620") == 1  # EUR per USD, from the stored EUR/USD
    assert pos.market_value_base == D("4680.91")  # 6,375.40 USD / 1.3620
    assert p.nav("2014-06-03") == D("4680.91") + D("2726.51")  # + 3,713.50 USD of cash / 1.3620
    series = p.nav_series(end="2014-06-03", calendar=None)
    assert series.nav.tolist() == [D("7352.94"), D("7407.42")] and series.fx.iloc[0] == 0


def money_usd(x: Decimal) -> Decimal:
    from bifrost.portfolio.money import money
    return money(x, "USD")


# -- reconciliation, transfers, lot methods ----------------------------------------------------------------------
class Broker:
    def __init__(self, positions, cash):
        self.p, self.c = positions, cash

    def positions(self):
        return self.p

    def cash(self):
        return self.c


def test_reconcile_when_broker_disagrees_after_each_trade_then_breaks_are_recorded_and_nothing_changes(market):
    broker = Broker({}, {"USD": D("10000.00")})
    p = Portfolio.open(market, "recon", opened_at=at("2014-06-02", 0), broker=broker)
    p.deposit("10000.00", ts=at("2014-06-02", 13))
    broker.p, broker.c = {"AAPL": D(10)}, {"USD": D("3712.50")}
    p.apply(fill("r1", "2014-06-02", "buy", 10, "628.65"))
    assert p.last_breaks.empty
    broker.p, broker.c = {"AAPL": D(5), "SPY": 3.0}, {"USD": 6900}  # a missed sale, a stray SPY, wrong cash
    p.apply(fill("r2", "2014-06-03", "buy", 1, "637.54"))
    breaks = p.last_breaks.set_index("item")
    assert breaks.kind.to_dict() == {"AAPL": "quantity", "SPY": "missing_in_ledger", "USD": "cash"}
    assert breaks.difference.to_dict() == {"AAPL": D(6), "SPY": D(-3), "USD": D("3073.96") - D(6900)}
    stored = market.query("SELECT item, difference FROM reconciliation_breaks WHERE txn_id = 'r2' ORDER BY item")
    assert stored.values.tolist() == [["AAPL", "6"], ["SPY", "-3.0"], ["USD", "-3826.04"]]  # as the broker said it
    assert p.book.positions() == {"AAPL": D(11)} and broker.p == {"AAPL": D(5), "SPY": 3.0}
    assert p.reconcile(Statement({"AAPL": D(11)}, {"USD": D("3073.96")})).empty


def test_transfer_when_lots_move_then_basis_and_open_date_travel_and_nothing_is_realised(market):
    a = Portfolio.open(market, "from", opened_at=at("2014-06-02", 0))
    b = Portfolio.open(market, "to", lot_method="lifo", opened_at=at("2014-06-02", 0))
    a.deposit("100000.00", ts=at("2014-06-02", 13))
    a.apply(fill("f1", "2014-06-02", "buy", 10, "628.65"))
    a.apply(fill("f2", "2014-06-03", "buy", 10, "637.54"))
    nav = a.nav("2014-06-04") + b.nav("2014-06-04")
    a.transfer(b, symbol="AAPL", quantity=D(15), ts=at("2014-06-04", 14))
    a.transfer(b, amount=D("500.00"), ts=at("2014-06-04", 15))
    assert [(l.quantity, l.cost_basis, l.opened) for l in b.book.open_lots()] == [
        (D(10), D("6286.50"), at("2014-06-02")), (D(5), D("3187.70"), at("2014-06-03"))]
    assert a.nav("2014-06-04") + b.nav("2014-06-04") == nav
    assert a.book.totals["USD"]["realised"] == 0 and b.book.totals["USD"]["realised"] == 0
    assert b.book.totals["USD"]["transfers"] == D("6286.50") + D("3187.70") + D("500.00")
    assert Portfolio.load(market, "to").book.snapshot() == b.book.snapshot()
    with pytest.raises(LedgerError, match="out of a position of 5"):
        a.transfer(b, symbol="AAPL", quantity=D(6), ts=at("2014-06-04", 16))


def test_lot_methods_when_overridden_per_sale_then_persisted_and_replayed_identically(market):
    p = Portfolio.open(market, "methods", lot_method="average", opened_at=at("2014-06-02", 0))
    q = Portfolio.open(market, "hifo", lot_method="hifo", opened_at=at("2014-06-02", 0))
    for x in (p, q):
        x.deposit("100000.00", ts=at("2014-06-02", 13))
        x.apply(fill("b1", "2014-06-02", "buy", 10, "628.65"))
        x.apply(fill("b2", "2014-06-04", "buy", 10, "644.82"))
        x.apply(fill("b3", "2014-06-05", "buy", 10, "647.35"))
    p.apply(fill("s1", "2014-06-06", "sell", 15, "645.57"))
    assert p.lots(closed=True).cost_basis.tolist() == [D("9604.10")]  # half the pool of 30 at 19,208.20
    q.apply(fill("s1", "2014-06-06", "sell", 5, "645.57"), lot_method="fifo")
    q.apply(fill("s2", "2014-06-06", "sell", 12, "645.57"))
    q.apply(fill("s3", "2014-06-06", "sell", 3, "645.57"), lot_ids=("b2",))
    assert q.lots(closed=True)[["lot_id", "quantity"]].values.tolist() == [["b1", 5], ["b3", 10], ["b2", 2],
                                                                            ["b2", 3]]
    for x in (p, q):
        assert Portfolio.load(market, x.name).book.snapshot() == x.book.snapshot()


# -- the CLI's helpers -------------------------------------------------------------------------------------------
def test_list_portfolios_when_several_then_one_row_each_with_counts(market, tmp_path):
    Portfolio.open(market, "b", opened_at=at("2014-06-02", 0)).deposit("1.00", ts=at("2014-06-02", 1))
    Portfolio.open(market, "a", base_currency="EUR", lot_method="lifo", opened_at=at("2014-06-02", 0))
    got = list_portfolios(market)
    assert got[["name", "base_currency", "lot_method", "transactions"]].values.tolist() == [
        ["a", "EUR", "lifo", 0], ["b", "USD", "fifo", 1]]
    with pytest.raises(LedgerError, match="exists with"):
        Portfolio.open(market, "a", opened_at=at("2014-06-02", 0))
    statement = tmp_path / "broker.json"
    statement.write_text(json.dumps({"positions": {}, "cash": {"USD": "1.00"}}))
    assert Portfolio.load(market, "b").reconcile(Statement.from_file(statement)).empty


def test_cash_when_a_holding_has_no_price_then_cash_is_still_reported(market):
    # cash needs no market prices: a holding with no bar at all (a fresh listing) must not stop the cash report
    market.upsert("instruments", pd.DataFrame({"symbol": ["NEWCO"], "name": ["New Co"], "asset_class": "equity",
                                               "currency": ["USD"], "exchange": ["XNYS"], "tick_size": 0.01,
                                               "lot_size": 1, "sector": None}), key=["symbol"])
    p = Portfolio.open(market, "unpriced", opened_at=at("2014-06-02", 0))
    p.deposit("10000.00", ts=at("2014-06-02", 13))
    p.apply(fill("n1", "2014-06-03", "buy", 10, "20.00", sym="NEWCO"))
    with pytest.raises(LedgerError, match="no price for NEWCO"):
        p.nav("2014-06-04")  # NAV does need one
    cash = p.cash("2014-06-04")
    assert cash.to_dict("records") == [{"currency": "USD", "cash": D("9799.00"), "receivable": D("0"),
                                        "fx_rate": D(1), "value_base": D("9799.00")}]
    assert isinstance(cash.cash.iat[0], Decimal)
