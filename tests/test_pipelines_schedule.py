"""Schedules over a simulated 2024: the right runs on the right sessions — holidays skipped, half-days shifted."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from bifrost.core import SimulatedClock, TradingCalendar
from bifrost.pipelines.runs import RunLockedError
from bifrost.pipelines.schedule import (DEFAULT_SCHEDULES, ScheduleError, crontab_lines, fire_times, load_schedules,
                                        parse_schedules, run_due)

DESK = """
[[schedule]]
pipeline = "ingest"
cron = "0 6 * * *"

[[schedule]]
pipeline = "trade"
at = "open"
params = { account = "paper-1", session = "{session}" }

[[schedule]]
pipeline = "eod_report"
at = "close+30min"
params = { account = "paper-1", session = "{session}" }
"""
CAL = TradingCalendar("XNYS")


def simulate(schedules, start, end, step=timedelta(minutes=10), runner=None):
    calls = []
    def record(pipeline, params, *, store, clock, scheduled_for):
        calls.append((pipeline, params.get("session"), scheduled_for, clock.now()))
        if runner:
            runner(pipeline)
    clock, last = SimulatedClock(start), start
    while clock.now() < end:
        clock.advance(step)
        run_due(None, clock, last, schedules, CAL, runner=record)
        last = clock.now()
    return calls


@pytest.mark.parametrize("first,last", [(date(2024, 7, 1), date(2024, 7, 9)), (date(2024, 11, 25), date(2025, 1, 1))])
def test_simulated_weeks_fire_once_per_session_at_the_right_local_times(first, last):
    desk = parse_schedules(DESK)
    start = datetime.combine(first, datetime.min.time(), timezone.utc)
    calls = simulate(desk, start, datetime.combine(last, datetime.min.time(), timezone.utc), step=timedelta(hours=1))
    sessions = CAL.sessions(first, last - timedelta(days=1))
    half = {d.date() for d in CAL.half_days(first, last)}
    assert half == ({date(2024, 7, 3)} if first.month == 7 else {date(2024, 11, 29), date(2024, 12, 24)})
    for pipeline, local in (("ingest", "06:00"), ("trade", "09:30")):
        fired = [at for p, _, at, _ in calls if p == pipeline]
        assert [a.astimezone(CAL._cal.tz).date() for a in fired] == [d.date() for d in sessions]
        assert {a.astimezone(CAL._cal.tz).strftime("%H:%M") for a in fired} == {local}
    eod = {date.fromisoformat(s): at.astimezone(CAL._cal.tz).strftime("%H:%M") for p, s, at, _ in calls
           if p == "eod_report"}
    assert set(eod) == {d.date() for d in sessions}
    assert {d for d, t in eod.items() if t == "13:30"} == half
    assert {t for d, t in eod.items() if d not in half} == {"16:30"}
    for holiday in (date(2024, 7, 4), date(2024, 11, 28), date(2024, 12, 25)):
        assert holiday not in eod
    assert all(timedelta(0) <= now - at < timedelta(hours=1) for *_, at, now in calls)  # never early, never twice


def test_a_held_lock_skips_that_run_and_the_scheduler_goes_on(capsys):
    def refuse_trade(pipeline):
        if pipeline == "trade":
            raise RunLockedError("trade:paper-1 is locked by run trade-x")
    calls = simulate(parse_schedules(DESK), datetime(2024, 11, 29, 10, tzinfo=timezone.utc),
                     datetime(2024, 11, 29, 19, tzinfo=timezone.utc), runner=refuse_trade)
    assert [c[0] for c in calls] == ["ingest", "trade", "eod_report"]
    assert "trade:paper-1: not run: trade:paper-1 is locked by run trade-x" in capsys.readouterr().out


def test_schedules_file_in_home_and_defaults(bifrost_home):
    assert load_schedules() == DEFAULT_SCHEDULES
    (bifrost_home / "schedules.toml").write_text(DESK)
    assert [s.name for s in load_schedules()] == ["ingest", "trade:paper-1", "eod_report:paper-1"]
    with pytest.raises(ScheduleError, match="exactly one of cron= and at="):
        parse_schedules('[[schedule]]\npipeline = "x"\ncron = "0 6 * * *"\nat = "open"')
    with pytest.raises(ScheduleError, match="share a name"):
        parse_schedules('[[schedule]]\npipeline = "x"\nat = "open"\n[[schedule]]\npipeline = "x"\nat = "close"')
    with pytest.raises(ScheduleError, match="unknown keys"):
        parse_schedules('[[schedule]]\npipeline = "x"\nat = "open"\nwhen = 3')


def test_crontab_lines_agree_with_fire_times():
    desk = parse_schedules(DESK)
    lines = crontab_lines(desk, "2024-12-01", "2024-12-31", CAL)
    fired = set()
    for line in lines[2:]:
        minute, hour, days, month, _, *cmd = line.split()
        fired |= {(cmd[2], date(2024, int(month), int(d)), f"{int(hour):02d}:{int(minute):02d}") for d in days.split(",")}
    want = fire_times(desk, datetime(2024, 12, 1, 5, tzinfo=timezone.utc), datetime(2025, 1, 1, 5, tzinfo=timezone.utc), CAL)
    local = want.fire_at.dt.tz_convert(CAL.tz)
    assert fired == set(zip(want.pipeline, want.session, local.dt.strftime("%H:%M")))
