"""Schedules: when a project retrains, as a cron expression in UTC, and which projects are due.

A project is due when one of its run times has passed since it last ran (or since its schedule
was set). However many run times passed while the sidecar was down, it is due once: a run
records the moment, and the next run time counts from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from croniter import CroniterBadDateError, CroniterError, croniter

from mirror.errors import TrainingError

EXAMPLE = '"0 3 * * *" runs every day at 03:00 UTC'
_FIELDS = "minute hour day-of-month month day-of-week"
_PROBE = datetime(2000, 1, 1, tzinfo=UTC)


class Schedule:
    """A cron expression (5 fields, UTC): when a project retrains."""

    __slots__ = ("expression",)

    def __init__(self, expression: str) -> None:
        text = " ".join(str(expression).split())
        fields = len(text.split())
        if fields != 5:
            raise _invalid(expression, f"it has {fields} field{'s' * (fields != 1)}, not 5")
        try:
            croniter(text, _PROBE).get_next(datetime)
        except CroniterBadDateError:
            raise _invalid(expression, "it never matches a date") from None
        except CroniterError as exc:
            raise _invalid(expression, str(exc)) from None
        self.expression = text

    def __repr__(self) -> str:
        return f"Schedule({self.expression!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and other.expression == self.expression

    def __hash__(self) -> int:
        return hash(self.expression)

    def next_after(self, moment: datetime) -> datetime:
        """The first run time strictly after ``moment``, in UTC."""
        result: datetime = croniter(self.expression, _utc(moment)).get_next(datetime)
        return result.astimezone(UTC)

    def due(self, last_run: datetime | None, now: datetime) -> bool:
        """True if a run time has passed since ``last_run``, up to and including ``now``.

        Pass the moment the schedule was set when the project has not run since; without any
        moment (None) nothing is due.
        """
        if last_run is None:
            return False
        return self.next_after(last_run) <= _utc(now)


def _invalid(expression: str, reason: str) -> TrainingError:
    return TrainingError(
        f"schedule {expression!r} is not a valid cron expression: {reason}; give five fields"
        f" ({_FIELDS}, in UTC), for example {EXAMPLE}",
        sqlstate="22023",
    )


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"schedule times must be timezone-aware, not {moment!r}")
    return moment.astimezone(UTC)


@dataclass(slots=True)
class _Entry:
    schedule: Schedule
    since: datetime  # the last run, or when the schedule was set if it has not run since


class Scheduler:
    """Which projects are due, with an injectable clock."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    def now(self) -> datetime:
        return _utc(self._clock())

    def set(
        self, project: str, expression: str | None, *, last_run: datetime | None = None
    ) -> None:
        """Schedule ``project`` (None clears its schedule).

        Runs count from ``last_run`` when given; else from now for a new or changed
        expression, while setting the same expression again changes nothing.
        """
        if expression is None:
            self._entries.pop(project, None)
            return
        schedule = Schedule(expression)
        entry = self._entries.get(project)
        if last_run is not None:
            self._entries[project] = _Entry(schedule, _utc(last_run))
        elif entry is None or entry.schedule != schedule:
            self._entries[project] = _Entry(schedule, self.now())

    def due(self) -> list[str]:
        """The projects due now, sorted."""
        now = self.now()
        return sorted(p for p, e in self._entries.items() if e.schedule.due(e.since, now))

    def ran(self, project: str, at: datetime | None = None) -> None:
        """Record a run of ``project`` (at the clock's time unless ``at``); never moves back."""
        entry = self._entries.get(project)
        if entry is not None:
            entry.since = max(entry.since, self.now() if at is None else _utc(at))

    def schedules(self) -> dict[str, str]:
        """Each scheduled project's cron expression."""
        return {p: e.schedule.expression for p, e in sorted(self._entries.items())}
