"""Shared set-up for the OMS tests: a store with SPY, a $100,000 portfolio, a simple gate, an OMS."""
from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from bifrost.audit import AuditTrail
from bifrost.core import AccountState, Check, Decision, Verdict
from bifrost.execution.oms import OMS
from bifrost.portfolio.ledger import Portfolio

T0 = datetime(2021, 3, 1, 15, tzinfo=UTC)   # a Monday, 10:00 in New York
PX = Decimal("385.59")


def seed(store, name="acct", clock=None):
    "SPY as an instrument and a funded portfolio."
    store.execute("INSERT INTO instruments (symbol, name, asset_class, currency, exchange, tick_size, lot_size) "
                  "VALUES ('SPY', 'SPDR S&P 500', 'etf', 'USD', 'XNYS', 0.01, 1) ON CONFLICT DO NOTHING")
    p = Portfolio.open(store, name, long_only=False, opened_at=T0)
    p.deposit(Decimal(100_000), ts=T0)
    return p


def gate(order, state):
    "Blocks orders above $50,000 at the last price."
    px = order.limit_price or state.prices.get(order.symbol, PX)
    big = order.quantity * px > 50_000
    return Decision(order, (Check("risk", "max_order_notional", Verdict.BLOCK if big else Verdict.PASS,
                                  "too big" if big else ""),))


def make_oms(store, broker, portfolio, clock, **kw):
    def state():
        b = portfolio.book
        return AccountState(portfolio.name, clock.now(), b.cash().get("USD", Decimal(0)), b.positions(), {"SPY": PX})
    return OMS(store, broker, kw.pop("gate", gate), state, portfolio, clock, AuditTrail(store),
               sleep=lambda s: None, **kw)


def ledger_fill_ids(portfolio) -> set[str]:
    return {t for t in portfolio.book.txn_ids if t.startswith(("fake-F", "paper"))}
