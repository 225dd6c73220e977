"""kill -9 at the worst moments: after the order is persisted but before it is sent, and after the broker has
it but before its answer is persisted. A new process recovers from the same store and the same (file-backed)
broker: the broker ends up with exactly one order, the ledger with exactly one fill."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from execution_helpers import PX, T0, make_oms, seed

from bifrost.audit import AuditTrail
from bifrost.core import OrderStatus as S
from bifrost.core import SimulatedClock
from bifrost.execution.resilience import FaultyBroker
from bifrost.portfolio.ledger import Portfolio
from bifrost.store import connect

HERE = Path(__file__).parent

CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from decimal import Decimal
    from bifrost.core import Order, SimulatedClock
    from bifrost.execution.resilience import FaultyBroker
    from bifrost.portfolio.ledger import Portfolio
    from bifrost.store import connect
    from execution_helpers import PX, T0, make_oms
    store = connect({url!r})
    clock = SimulatedClock(T0)
    broker = FaultyBroker("fake", prices={{"SPY": PX}}, clock=clock, path={path!r}, unique_ids=False)
    oms = make_oms(store, broker, Portfolio.load(store, "acct", clock=clock), clock)
    def crash(point, rec):
        if point == {point!r}:
            os.kill(os.getpid(), signal.SIGKILL)
    oms.hook = crash
    oms.submit(Order("o-1", "SPY", "buy", Decimal(10)))
    print("not killed")
""")


@pytest.mark.parametrize("point,at_broker", [("persisted", 0), ("sent", 1)])
def test_kill_9_then_recover(store_url, tmp_path, point, at_broker):
    store = connect(store_url)
    seed(store)
    path = str(tmp_path / "broker.json")
    FaultyBroker("fake", path=path)   # the broker's (empty) book on disk
    script = CHILD.format(tests=str(HERE), url=store_url, path=path, point=point)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr

    clock = SimulatedClock(T0)
    broker = FaultyBroker("fake", prices={"SPY": PX}, clock=clock, path=path, unique_ids=False)
    assert broker.received("o-1") == at_broker
    journal_status = store.scalar("SELECT status FROM orders WHERE client_order_id = 'o-1'")
    assert journal_status == "pending_submit"                        # persisted before it was sent
    assert AuditTrail(store).records(kind="order.decision").subject.tolist() == ["o-1"]

    for _ in range(2):                                               # recovering twice changes nothing more
        portfolio = Portfolio.load(store, "acct", clock=clock)
        oms = make_oms(store, broker, portfolio, clock)
        oms.recover()
        assert oms.order("o-1").status is S.FILLED
        assert broker.received("o-1") == 1
        assert portfolio.book.positions() == {"SPY": Decimal(10)}
        assert len(oms.journal.fills("o-1")) == 1
    assert AuditTrail(store).verify().ok


def test_restart_with_the_broker_down_leaves_it_unknown(store_url, tmp_path):
    "A persisted-but-maybe-sent order found at restart while the broker is unreachable is unknown, not resent."
    store = connect(store_url)
    seed(store)
    path = str(tmp_path / "broker.json")
    FaultyBroker("fake", path=path)
    script = CHILD.format(tests=str(HERE), url=store_url, path=path, point="persisted")
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300, check=False).returncode == -9
    clock = SimulatedClock(T0)
    broker = FaultyBroker("fake", prices={"SPY": PX}, clock=clock, path=path, unique_ids=False)
    broker.down()
    oms = make_oms(store, broker, Portfolio.load(store, "acct", clock=clock), clock)
    oms.recover()
    assert oms.order("o-1").status is S.UNKNOWN and broker.received() == 0
    broker.down(False)
    clock.advance(timedelta(seconds=31))
    oms.sync()
    assert oms.order("o-1").status is S.FILLED and broker.received("o-1") == 1
