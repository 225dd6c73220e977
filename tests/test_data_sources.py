"""Parsing vendor tables: split-adjusted intraday files, missing columns, time zones."""
import pandas as pd
import pytest

from bifrost.data.sources import FeedSpec, parse_bars


def _table(rows):
    return pd.DataFrame(rows, columns=["datetime", "open", "high", "low", "close", "volume", "stock_splits"])


def test_split_adjusted_intraday_when_post_market_bar_precedes_split_then_unadjusted_by_exchange_date():
    # a 2:1 split effective Tuesday 2024-01-09; the Monday 19:30 EST bar is 00:30 UTC on Tuesday
    table = _table([["2024-01-08 19:30:00-05:00", 50, 50, 50, 50, 100, 0],
                    ["2024-01-09 09:30:00-05:00", 51, 51, 51, 51, 100, 2.0]])
    feed = parse_bars(table, FeedSpec("X", "1min", basis="split", session="extended"), "t", "t.csv")
    assert feed.spec.basis == "raw"
    assert feed.bars.close.tolist() == [100.0, 51.0] and feed.bars.volume.tolist() == [50.0, 100.0]
    assert list(feed.splits.index) == [pd.Timestamp("2024-01-09")]


def test_split_adjusted_table_when_it_has_no_dividend_column_then_parses():
    table = _table([["2024-01-08 00:00:00-05:00", 50, 50, 50, 50, 100, 0],
                    ["2024-01-09 00:00:00-05:00", 51, 51, 51, 51, 100, 2.0]])
    feed = parse_bars(table, FeedSpec("X", basis="split"), "t", "t.csv")
    assert feed.bars.close.tolist() == [100.0, 51.0] and feed.dividends.empty


def test_table_when_columns_missing_then_clear_error():
    with pytest.raises(Exception, match="expected columns"):
        parse_bars(pd.DataFrame({"when": [1], "price": [2]}), FeedSpec("X"), "t", "t.csv")
