"""Retraining without being asked: on a project's cron schedule, and on drift when enabled.

A retrain takes a fresh snapshot of the project's relation with the parameters of its last
model (algorithm, hyperparameters, label, split), and the usual gate decides whether the new
model is deployed. The trainer never runs two trainings of one project at once; a retrain that
fails is logged and counted, and the deployed model keeps serving. Schedules are evaluated
with an injectable clock; runs missed while the sidecar was down run once at start.

A retrain has the trainer's time limit. Drift asks at most once at a time per project, and a
model whose retrain on drift ran past the limit is not retrained on drift again (drift would
go on asking, and each retrain would hold a worker process for the whole limit): its project
is retrained again on drift once another model is deployed, and on schedule as before.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from mirror.errors import SidecarError
from trainer.drift import DriftEvent
from trainer.schedule import Scheduler
from trainer.train import Trainer, TrainResult

log = logging.getLogger("pgml_sidecar")

Clock = Callable[[], datetime]


class Retrainer:
    """Retrains projects when their schedule says so or their deployed model drifted."""

    def __init__(self, trainer: Trainer, *, clock: Clock = lambda: datetime.now(UTC)) -> None:
        self.trainer = trainer
        self.clock = clock
        self.scheduler = Scheduler(clock)
        self.requests: queue.Queue[tuple[str, str]] = queue.Queue()
        self._asked: dict[str, int] = {}
        """Projects with a retrain on drift in ``requests``, and the model that drifted."""
        self._over_time: dict[str, int] = {}
        """Project -> the model whose retrain on drift ran past its time limit."""
        self._lock = threading.Lock()
        self._settings_generation = -1
        self.results: list[tuple[str, str, TrainResult | None]] = []
        """(project, reason, result or None if it failed), for status and tests."""
        self._ran_over: str | None = None
        """The project of the last retrain if it ran past its time limit, else None."""

    def drifted(self, project: str, model_id: int, event: DriftEvent) -> None:
        """A monitor saw drift: retrain if the project asked for it (called from its thread)."""
        found = self.trainer.registry.project(project)
        if found is None:
            return
        if not self.trainer.registry.settings(found.id)["retrain_on_drift"]:
            return
        with self._lock:
            if project in self._asked or self._over_time.get(project) == model_id:
                return
            self._asked[project] = model_id
            self._over_time.pop(project, None)  # another model: drift may retrain it again
        self.requests.put((project, f"drift ({event.detector}) of model {model_id}"))

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.tick()
            try:
                project, reason = self.requests.get(timeout=1.0)
            except queue.Empty:
                continue
            with self._lock:
                drifted = self._asked.pop(project, None)
            self.retrain(project, reason)
            if drifted is not None and self._ran_over == project:
                with self._lock:
                    self._over_time[project] = drifted

    def tick(self) -> list[str]:
        """Load changed schedules, then retrain the projects whose schedule is due."""
        if self._settings_generation != self.trainer.settings_generation:
            self._load_schedules()
        due = self.scheduler.due()
        for project in due:
            self.scheduler.ran(project)
            found = self.trainer.registry.project(project)
            if found is not None:
                self.trainer.registry.update_settings(found.id, last_scheduled_run=self.clock())
            self.retrain(project, "schedule")
        return due

    def _load_schedules(self) -> None:
        self._settings_generation = self.trainer.settings_generation
        registry = self.trainer.registry
        wanted = {}
        for project in registry.projects():
            settings = registry.settings(project.id)
            if settings["schedule"]:
                wanted[project.name] = settings
        for name in list(self.scheduler.schedules()):
            if name not in wanted:
                self.scheduler.set(name, None)
        for name, settings in wanted.items():
            if self.scheduler.schedules().get(name) != settings["schedule"]:
                last = settings["last_scheduled_run"] or settings["schedule_set_at"]
                self.scheduler.set(name, settings["schedule"], last_run=last)

    def retrain(self, project: str, reason: str) -> TrainResult | None:
        """Train ``project`` again on fresh rows with its last model's parameters."""
        registry = self.trainer.registry
        found = registry.project(project)
        if found is None:
            return None
        models = registry.models(found.id)
        snapshot = registry.last_snapshot(found.id)
        if not models or snapshot is None:
            return None
        last = models[-1]
        log.info("retraining %s (%s) with %s", project, reason, last.algorithm)
        self._ran_over = None
        try:
            result = self.trainer.train(
                project,
                relation=snapshot.relation_name,
                y=snapshot.y_column_name[0] if snapshot.y_column_name else None,
                algorithm=last.algorithm,
                hyperparams=last.hyperparams,
                test_size=snapshot.test_size,
                test_sampling=snapshot.test_sampling,
                preprocess=last.preprocess,
            )
        except SidecarError as exc:
            log.warning("retraining %s (%s) failed; the deployed model serves on: %s",
                        project, reason, exc)  # fmt: skip
            if exc.sqlstate == "57014":
                self._ran_over = project
            self.results.append((project, reason, None))
            return None
        self.results.append((project, reason, result))
        return result
