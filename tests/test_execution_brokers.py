"""The broker registry: `paper`, `alpaca` and `ib` by name, what each declares it can do, keys from the environment,
and `bifrost trade --broker` through the real executable: an unknown broker, one missing its keys or its endpoint is
a usage error (one paragraph with a hint, exit 2, no traceback) before anything is opened."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from ib_insync import IB

from bifrost.core import (Broker, BrokerCapabilities, ConfigError, Order, OrderType, SimulatedClock, TimeInForce)
from bifrost.execution.alpaca import AlpacaBroker
from bifrost.testing.alpaca_fake import AlpacaFake
from bifrost.execution.brokers import broker_capabilities, broker_entry, broker_names, make_broker
from bifrost.execution.ib import IBBroker
from bifrost.testing.ib_fake import TWSFake
from bifrost.execution.paper import PaperBroker

EXE = Path(sys.executable).with_name("bifrost")
KEYS = ("registry-key", "registry-secret")
T0 = datetime(2024, 3, 4, 15, 0, tzinfo=timezone.utc)
ALPACA_VARS = ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "APCA_API_KEY_ID", "APCA_API_SECRET_KEY")


@pytest.fixture
def keys(monkeypatch):
    for name in ALPACA_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALPACA_API_KEY", KEYS[0])
    monkeypatch.setenv("ALPACA_SECRET_KEY", KEYS[1])
    return monkeypatch


def test_registry_names_the_three_brokers_and_what_each_does():
    assert broker_names() == ("paper", "alpaca", "ib")
    alpaca, ib = broker_capabilities("alpaca"), broker_capabilities("ib")
    assert isinstance(alpaca, BrokerCapabilities) and isinstance(ib, BrokerCapabilities)
    assert (alpaca.bracket, alpaca.oco, alpaca.oto, alpaca.trailing_stop, alpaca.fractional) == (True,) * 5
    assert alpaca.market_on_open and alpaca.market_on_close and ib.market_on_open and ib.market_on_close
    assert (ib.bracket, ib.oco, ib.trailing_stop, ib.fractional) == (True, True, True, False)
    assert set(alpaca.order_types) == set(OrderType) == set(ib.order_types)
    half = Order("f", "SPY", "buy", Decimal("0.5"))
    assert alpaca.cannot(half) == [] and ib.cannot(half) == ["no fractional quantities (0.5)"]
    with pytest.raises(ConfigError, match="no broker 'schwab'; Bifrost trades through paper, alpaca, ib"):
        broker_entry("schwab")


def test_paper_from_the_registry_is_the_simulator():
    paper = make_broker("paper", clock=SimulatedClock(T0), cash=10_000)
    assert isinstance(paper, PaperBroker) and paper.cash() == 10_000
    with pytest.raises(ConfigError, match="a clock"):
        make_broker("paper")


def test_alpaca_from_the_registry_keys_from_the_environment_paper_or_live(keys):
    with AlpacaFake(cash=5_000, keys=KEYS, clock=SimulatedClock(T0)) as fake:
        broker = make_broker("alpaca", endpoint=fake.url, stream_url=fake.stream_url, timeout=1.0)
        assert isinstance(broker, AlpacaBroker) and isinstance(broker, Broker)
        assert broker.cash() == 5_000 and broker.capabilities.paper and broker.stream_url == fake.stream_url
    live = make_broker("alpaca", endpoint="live")
    assert not live.capabilities.paper and not live.paper and "api.alpaca.markets" == live.where
    assert AlpacaBroker.capabilities.paper  # the class's default stays the paper account
    keys.delenv("ALPACA_API_KEY")
    with pytest.raises(ConfigError, match="ALPACA_API_KEY") as err:
        make_broker("alpaca")
    assert "in the shell that starts Bifrost" in err.value.hint


def test_ib_from_the_registry_connects_and_declares_paper_by_port(monkeypatch):
    ib = IB()
    tws = TWSFake(ib, SimulatedClock(T0), cash=20_000)
    monkeypatch.setenv("IB_CLIENT_ID", "7")
    broker = make_broker("ib", endpoint="127.0.0.1:4002", ib=ib, ack_timeout=0.2)
    try:
        assert isinstance(broker, IBBroker) and isinstance(broker, Broker) and ib.isConnected()
        assert (broker.client_id, tws.clientId, broker.capabilities.paper) == (7, 7, True)  # IB Gateway's paper port
        assert broker.cash() == 20_000
        broker.submit(Order("moc", "SPY", "sell", Decimal(3), time_in_force=TimeInForce.CLS))
        got = {o.orderRef: (o.orderType, o.tif) for _, o, _ in tws.orders.values()}
        assert got == {"moc": ("MOC", "DAY")}  # market-on-close is an order type at IB
    finally:
        ib.disconnect()
    assert not IBBroker(IB(), port=4001).capabilities.paper  # IB Gateway's live port: real money
    monkeypatch.setenv("IB_CLIENT_ID", "seven")
    with pytest.raises(ConfigError, match="IB_CLIENT_ID must be a whole number"):
        make_broker("ib", ib=IB())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def _bifrost(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BIFROST_") and k not in ALPACA_VARS}
    return subprocess.run([str(EXE), *args], env={**clean, "BIFROST_HOME": str(home), **env}, cwd=home,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("flags, env, flag, says", [
    (["--broker", "schwab"], {}, "--broker", "'schwab' is not one of 'paper', 'alpaca', 'ib'"),
    (["--broker", "alpaca", "--mode", "live"], {}, "--broker",
     "Alpaca needs an API key: ALPACA_API_KEY and ALPACA_SECRET_KEY not set; export ALPACA_API_KEY"),
    (["--broker", "alpaca", "--mode", "live", "--endpoint", "ftp://x"], {"ALPACA_API_KEY": "k", "ALPACA_SECRET_KEY": "s"},
     "--endpoint", "Alpaca's endpoint is paper, live or a base URL"),
    (["--broker", "ib"], {}, "--broker", "ib trades live only; add --mode live"),
    (["--broker", "ib", "--mode", "live", "--endpoint", "nowhere"], {}, "--endpoint", "paper, live or HOST:PORT"),
    (["--broker", "ib", "--mode", "live", "--endpoint", f"127.0.0.1:{_closed_port()}"], {}, "--endpoint",
     "no TWS or IB Gateway answers at 127.0.0.1:"),
], ids=["unknown", "alpaca-no-keys", "alpaca-bad-endpoint", "ib-replay", "ib-bad-endpoint", "ib-no-tws"])
def test_bifrost_trade_broker_mistakes_are_usage_errors_before_anything_opens(tmp_path, flags, env, flag, says):
    r = _bifrost(tmp_path, "trade", "acct", "--session", "2013-10-07", *flags, **env)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stdout + r.stderr and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"error: bifrost trade: Invalid value for '{flag}': ")
    assert says in lines[0] and lines[1] == "  hint: try bifrost trade --help"
    assert list(tmp_path.iterdir()) == []  # no store was created or opened


def test_bifrost_trade_help_lists_the_registry():
    r = subprocess.run([str(EXE), "trade", "--help"], capture_output=True, text=True, timeout=60)
    text = " ".join(r.stdout.split())
    assert r.returncode == 0 and "--broker <paper|alpaca|ib>" in text
    assert "reads ALPACA_API_KEY, ALPACA_SECRET_KEY" in text and "HOST:PORT" in text
