"""Compliance rules: pattern-day-trader scenarios worked by hand on the exchange calendar (a holiday and a half-day
in the window), effective dating, the restricted list, overlapping versions, and the rule book's round trip through
the store on both backends (append-only, audited, refusals write nothing)."""
from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timezone
from decimal import Decimal

import pandas as pd
import pytest

from bifrost.audit import AuditTrail
from bifrost.compliance.rules import (FINRA_PDT, ComplianceError, PatternDayTrader, RuleBook, RuleVersion, day_trades,
                                      load_rulebook, save_rule)
from bifrost.core import AccountState, Fill, Order, Side, SymbolError, TradingCalendar, Verdict

CAL = TradingCalendar("XNYS")
ny = lambda t: pd.Timestamp(t, tz="America/New_York").to_pydatetime()
D = Decimal


def fill(i, side, t, q=10, sym="XYZ", px="50"):
    return Fill(f"f{i}", f"o{i}", sym, side, D(q), D(px), ny(t))


def round_trip(i, day, sym="XYZ"):
    "A buy at 10:00 and a sale at 11:00 of the same day: one day trade."
    return [fill(f"{i}b", "buy", f"{day} 10:00", sym=sym), fill(f"{i}s", "sell", f"{day} 11:00", sym=sym)]


def state(as_of, fills, positions=None, cash="20000"):
    return AccountState("a", ny(as_of), D(cash), positions or {}, {"XYZ": D(50), "ABC": D(20)}, fills=tuple(fills))


PDT = RuleBook("a", [FINRA_PDT])


def test_pdt_window_when_thanksgiving_then_holiday_skipped_and_half_day_counted():
    # Thanksgiving 2014: Thu 27 Nov closed, Fri 28 Nov closes at 13:00. Five sessions ending Tue 2 Dec:
    assert PatternDayTrader().window_sessions(date(2014, 12, 2)) == [
        date(2014, 11, 25), date(2014, 11, 26), date(2014, 11, 28), date(2014, 12, 1), date(2014, 12, 2)]
    assert date(2014, 11, 28) in {d.date() for d in CAL.half_days("2014-11-01", "2014-12-31")}
    # day trades on Mon 24 Nov (out of the window), Tue 25 Nov and the half-day Fri 28 Nov (12:00, before the close)
    fills = round_trip(1, "2014-11-24") + round_trip(2, "2014-11-25") + [
        fill("3b", "buy", "2014-11-28 11:00"), fill("3s", "sell", "2014-11-28 12:30")]
    open_today = [fill("4b", "buy", "2014-12-02 10:00")]
    sell = Order("x", "XYZ", Side.SELL, D(10))
    # the order closes today's buy: day trade 3 in the window (24 Nov has dropped out) -> a warning, not a block
    c = PDT.check(sell, state("2014-12-02 10:30", fills + open_today, {"XYZ": D(10)}))[0]
    assert c.verdict is Verdict.WARN and "day trade 3 in the 5 sessions 2014-11-25..2014-12-02" in c.reason
    # one more round trip on Mon 1 Dec makes the order the fourth -> blocked under $25,000
    more = fills + round_trip(5, "2014-12-01") + open_today
    c = PDT.check(sell, state("2014-12-02 10:30", more, {"XYZ": D(10)}))[0]
    assert c.verdict is Verdict.BLOCK and "day trade 4" in c.reason and "20,500.00" in c.reason
    # with $25,000 of equity (previous close) it passes; start-of-day equity wins over current equity
    rich = state("2014-12-02 10:30", more, {"XYZ": D(10)}, cash="25000")
    assert PDT.check(sell, replace(rich, start_of_day_equity=D("30000")))[0].verdict is Verdict.PASS
    assert PDT.check(sell, replace(rich, start_of_day_equity=D("24999.99")))[0].verdict is Verdict.BLOCK
    # five *calendar* days back from Tue 2 Dec would have dropped 25-26 Nov; sessions keep them. On Wed 3 Dec
    # 25 Nov has left the window, and 4b (bought 2 Dec, held overnight) no longer pairs with a sale
    c = PDT.check(sell, state("2014-12-03 10:30", more + [fill("6b", "buy", "2014-12-03 10:00")], {"XYZ": D(20)}))[0]
    assert c.verdict is Verdict.WARN and "day trade 3" in c.reason  # 28 Nov, 1 Dec, the order


def test_day_trades_when_counted_by_hand_then_runs_of_closes_count_once():
    t = lambda hm: f"2014-06-05 {hm}"
    assert len(day_trades([fill(1, "buy", t("10:00")), fill(2, "buy", t("10:10")), fill(3, "sell", t("10:20"), 20)],
                          {}, CAL)) == 1
    assert len(day_trades([fill(1, "buy", t("10:00")), fill(2, "sell", t("10:10"), 5), fill(3, "sell", t("10:20"), 5)],
                          {}, CAL)) == 1  # one closing run in two fills
    assert len(day_trades(round_trip(1, "2014-06-05") + round_trip(2, "2014-06-05"), {}, CAL)) == 2
    # shares held overnight sold, then bought back: not a day trade (the rule's exception) ...
    overnight = [fill(1, "sell", t("10:00")), fill(2, "buy", t("11:00"))]
    assert len(day_trades(overnight, {"XYZ": D(10)}, CAL)) == 0
    # ... but a short sale covered the same day is one
    short = [fill(1, "sell", t("10:00")), fill(2, "buy", t("11:00"))]
    assert len(day_trades(short, {}, CAL)) == 1
    # a buy today, then a sale of more than it (overnight shares too) is one day trade
    assert len(day_trades([fill(1, "buy", t("10:00")), fill(2, "sell", t("11:00"), 30)], {"XYZ": D(20)}, CAL)) == 1
    # different symbols and different days do not pair up
    assert len(day_trades([fill(1, "buy", t("10:00")), fill(2, "sell", t("11:00"), sym="ABC"),
                           fill(3, "sell", "2014-06-06 10:00")], {"ABC": D(0)}, CAL)) == 0


def test_pdt_when_order_opens_or_rule_has_ended_then_passes():
    fills = round_trip(1, "2014-11-24") + round_trip(2, "2014-11-25") + round_trip(3, "2014-11-26")
    buy = Order("x", "XYZ", Side.BUY, D(10))
    assert PDT.check(buy, state("2014-11-26 15:00", fills))[0].verdict is Verdict.PASS  # an opening order
    later = [replace(f, ts=f.ts.replace(year=2026)) for f in round_trip(1, "2026-06-08") * 1]
    assert PDT.check(Order("x", "XYZ", Side.SELL, D(10)), state("2026-06-08 12:00", later[:1], {"XYZ": D(10)})) == ()


def test_effective_dating_when_2015_order_then_2015_version_applies():
    book = RuleBook("a", [RuleVersion("restricted_list", 1, "2010-01-01", "2015-01-01", {"symbols": ["XYZ"]}),
                          RuleVersion("restricted_list", 2, "2015-01-01", None, {"symbols": ["ABC"]})])
    xyz, abc = Order("1", "XYZ", Side.BUY, D(1)), Order("2", "ABC", Side.BUY, D(1))
    for as_of, blocked in [("2014-12-31 15:59", "XYZ"), ("2015-01-02 10:00", "ABC"), ("2031-01-02 10:00", "ABC")]:
        checks = {o.symbol: book.check(o, state(as_of, []))[0] for o in (xyz, abc)}
        assert {s for s, c in checks.items() if c.verdict is Verdict.BLOCK} == {blocked}, as_of
    # the exchange's date decides: 2014-12-31 23:30 New York is already 2015 in UTC, but 2014's rules apply
    late = AccountState("a", datetime(2015, 1, 1, 4, 30, tzinfo=timezone.utc), D(1), {}, {})
    assert book.check(xyz, late)[0].name == "restricted_list v1"


def test_restricted_list_when_symbol_case_or_spaces_or_own_dates_then_normalised():
    rule = RuleBook("a", [RuleVersion("restricted_list", 1, "2014-01-01", None, {
        "symbols": [" xyz ", {"symbol": "abc", "from": "2014-06-02", "until": "2014-06-09", "reason": "deal team"}]})])
    order = lambda s: Order("1", s, Side.SELL, D(1))
    c = rule.check(order("XYZ"), state("2014-06-03 10:00", []))[0]
    assert (c.verdict, c.reason) == (Verdict.BLOCK, "XYZ is on the restricted list")
    with pytest.raises(SymbolError, match="is not a valid symbol"):  # an order names its symbol exactly (issue 16)
        order(" Xyz")
    c = rule.check(order("ABC"), state("2014-06-06 10:00", []))[0]
    assert c.verdict is Verdict.BLOCK and "ABC" in c.reason and "deal team" in c.reason
    assert rule.check(order("ABC"), state("2014-06-09 10:00", []))[0].verdict is Verdict.PASS   # until is exclusive
    assert rule.check(order("ABC"), state("2014-05-30 10:00", []))[0].verdict is Verdict.PASS
    with pytest.raises(ComplianceError, match="unknown key"):
        RuleBook("a", [RuleVersion("restricted_list", 1, "2014-01-01", None, {"symbols": [{"symbol": "A", "to": "x"}]})])


def test_rule_book_when_versions_overlap_then_clear_error():
    v1 = RuleVersion("restricted_list", 1, "2014-01-01", "2015-01-01", {"symbols": []})
    with pytest.raises(ComplianceError, match="v1 and v2 are both in force on 2014-07-01"):
        RuleBook("a", [v1, RuleVersion("restricted_list", 2, "2014-07-01", None, {"symbols": []})])
    with pytest.raises(ComplianceError, match="given twice"):
        RuleBook("a", [v1, v1])
    # touching is not overlapping (effective_to is exclusive); other rules never collide
    RuleBook("a", [v1, RuleVersion("restricted_list", 2, "2015-01-01"), replace(FINRA_PDT)])


def test_rules_when_saved_and_loaded_then_round_trip_append_only_and_audited(store):
    t = lambda d: datetime.fromisoformat(d).replace(tzinfo=timezone.utc)
    v1 = RuleVersion("restricted_list", 1, "2014-01-01", "2015-01-01", {"symbols": ["XYZ", {"symbol": "ABC",
                     "from": "2014-03-01"}]}, note="initial")
    save_rule(store, "acct", v1, t("2013-12-20T12:00:00"))
    save_rule(store, "acct", FINRA_PDT, t("2013-12-20T12:00:01"))
    book = save_rule(store, "acct", RuleVersion("restricted_list", 2, "2015-01-01", None, {"symbols": []},
                                                enabled=False, note="lifted"), t("2014-12-15T09:00:00"))
    loaded = load_rulebook(store, "acct")
    assert loaded.versions == book.versions
    assert [v.effective_to for v in loaded.versions] == [date(2026, 6, 4), date(2015, 1, 1), None]
    assert loaded.versions[2].enabled is False and loaded.versions[1].config["symbols"][1] == {"symbol": "ABC",
                                                                                             "from": "2014-03-01"}
    assert [v.version for v in load_rulebook(store, "acct", recorded_by=t("2014-01-01T00:00:00")).versions] == [1, 1]
    assert load_rulebook(store, "other").versions == ()
    audit = AuditTrail(store).records(kind="compliance.rule")
    assert list(audit.subject) == ["restricted_list v1", "pattern_day_trader v1", "restricted_list v2"]
    assert AuditTrail(store).verify().ok
    rows = lambda: int(store.scalar("SELECT count(*) FROM compliance_rules"))
    n_audit = lambda: len(AuditTrail(store).records())
    before = (rows(), n_audit())
    with pytest.raises(ComplianceError, match="record v3"):  # a gap, or an edit of v2, is refused
        save_rule(store, "acct", RuleVersion("restricted_list", 2, "2016-01-01"), t("2015-01-01T00:00:00"))
    with pytest.raises(ComplianceError, match="both in force"):
        save_rule(store, "acct", RuleVersion("restricted_list", 3, "2014-06-01", None, {"symbols": []}),
                  t("2015-01-01T00:00:00"))
    with pytest.raises(ComplianceError, match="unknown rule"):
        save_rule(store, "acct", RuleVersion("nope", 1, "2014-06-01"), t("2015-01-01T00:00:00"))
    assert (rows(), n_audit()) == before  # refusals write nothing
