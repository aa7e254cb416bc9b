"""Tests for retraining schedules: cron in UTC, due once per slot, missed runs, a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from mirror.errors import TrainingError
from trainer.schedule import Schedule, Scheduler


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def at(hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(2026, 11, 3, hour, minute, second, tzinfo=UTC)


def test_next_after_is_strictly_later_and_in_utc() -> None:
    quarter = Schedule("*/15 * * * *")
    assert quarter.next_after(at(10, 0)) == at(10, 15)
    assert quarter.next_after(at(10, 14, 59)) == at(10, 15)
    daily = Schedule("0 3 * * *")
    paris = timezone(timedelta(hours=1))
    assert daily.next_after(datetime(2026, 11, 3, 3, 30, tzinfo=paris)) == at(3, 0)
    assert daily.next_after(at(3, 0)).tzinfo == UTC


def test_every_fifteen_minutes_is_due_at_each_boundary_once() -> None:
    clock = FakeClock(at(10, 2))
    scheduler = Scheduler(clock)
    scheduler.set("churn", "*/15 * * * *")
    fired = []
    for _ in range(60):  # a minute at a time, 10:03 to 11:02
        clock.advance(minutes=1)
        for project in scheduler.due():
            fired.append(clock.now)
            scheduler.ran(project)
    assert fired == [at(10, 15), at(10, 30), at(10, 45), at(11, 0)]


def test_not_due_twice_for_one_slot() -> None:
    clock = FakeClock(at(10, 0))
    scheduler = Scheduler(clock)
    scheduler.set("churn", "*/15 * * * *")
    clock.now = at(10, 15, 2)
    assert scheduler.due() == ["churn"]
    scheduler.ran("churn", at(10, 15))
    assert scheduler.due() == []
    clock.now = at(10, 29, 59)
    assert scheduler.due() == []
    scheduler.ran("churn", at(10, 1))  # an older run time never moves progress back
    assert scheduler.due() == []


def test_missed_runs_during_downtime_are_due_once() -> None:
    clock = FakeClock(at(10, 0))
    scheduler = Scheduler(clock)
    scheduler.set("churn", "*/15 * * * *", last_run=at(9, 50))
    clock.advance(hours=1)  # 10:00, 10:15, 10:30 and 10:45 were missed
    assert scheduler.due() == ["churn"]
    scheduler.ran("churn")
    assert scheduler.due() == []
    clock.advance(minutes=14)
    assert scheduler.due() == []
    clock.advance(minutes=1)
    assert scheduler.due() == ["churn"]


def test_a_restarted_daemon_passes_the_last_run() -> None:
    clock = FakeClock(at(12, 0))
    scheduler = Scheduler(clock)
    scheduler.set("churn", "0 3 * * *", last_run=at(3, 0) - timedelta(days=1))
    scheduler.set("fraud", "0 3 * * *", last_run=at(3, 0, 40))
    scheduler.set("new", "0 3 * * *")  # set now, at 12:00: its first run is tomorrow at 3
    assert scheduler.due() == ["churn"]


def test_setting_the_same_expression_again_keeps_its_progress() -> None:
    clock = FakeClock(at(10, 0))
    scheduler = Scheduler(clock)
    scheduler.set("churn", "*/15 * * * *")
    clock.now = at(10, 20)
    scheduler.set("churn", "*/15  *  * * *")  # the daemon re-reading its settings
    assert scheduler.due() == ["churn"]
    scheduler.set("churn", "0 * * * *")  # a new expression counts from now
    assert scheduler.due() == []
    assert scheduler.schedules() == {"churn": "0 * * * *"}


def test_clearing_a_schedule() -> None:
    clock = FakeClock(at(10, 0))
    scheduler = Scheduler(clock)
    scheduler.set("churn", "*/15 * * * *")
    scheduler.set("fraud", "*/5 * * * *")
    scheduler.set("churn", None)
    scheduler.set("unknown", None)
    clock.advance(hours=1)
    assert scheduler.due() == ["fraud"]
    assert scheduler.schedules() == {"fraud": "*/5 * * * *"}
    scheduler.ran("churn")  # a run of an unscheduled project is no error


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("* * * *", "4 fields, not 5"),
        ("0 3 * * * 5", "6 fields, not 5"),
        ("", "0 fields, not 5"),
        ("@daily", "1 field, not 5"),
        ("61 * * * *", "out of range"),
        ("0 3 * * funday", "not acceptable"),
        ("0 0 31 2 *", "never matches a date"),
    ],
)
def test_an_invalid_expression_says_what_is_wrong(expression: str, reason: str) -> None:
    with pytest.raises(TrainingError) as caught:
        Schedule(expression)
    message = str(caught.value)
    assert reason in message
    assert repr(expression) in message and '"0 3 * * *" runs every day at 03:00 UTC' in message
    assert caught.value.sqlstate == "22023"


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Schedule("0 3 * * *").next_after(datetime(2026, 11, 3))
    with pytest.raises(ValueError, match="timezone-aware"):
        Scheduler(lambda: datetime(2026, 11, 3)).set("churn", "0 3 * * *")
    assert not Schedule("0 3 * * *").due(None, at(4, 0))
