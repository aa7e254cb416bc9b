"""Retraining without being asked: on a project's cron schedule, and on drift when enabled.

A retrain takes a fresh snapshot of the project's relation with the parameters of its last
model (algorithm, hyperparameters, label, split). On schedule, the usual gate decides whether
the new model is deployed. On drift, the champion (the deployed model) and the challenger are
scored on the same recent rows, the labelled rows the monitor sees change after the
challenger's snapshot (after the detection), once ``challenge_rows`` of them have come (or,
after ``challenge_seconds``, on those there are): the challenger is deployed if it scores
higher, and both scores are kept in ``pgml.challenges`` (``trainer.challenge``). A challenger
waiting to be judged is recorded in ``pgml.pending_challenges``: after a restart it goes on
waiting (its wait counted from when it was trained), and drift does not retrain its project
again meanwhile. The trainer
never runs two trainings of one project at once; a retrain that fails is logged and counted,
and the deployed model keeps serving. Schedules are evaluated with an injectable clock; runs
missed while the sidecar was down run once at start.

A retrain has the trainer's time limit. Drift asks at most once at a time per project, and a
model whose retrain on drift ran past the limit is not retrained on drift again (drift would
go on asking, and each retrain would hold a worker process for the whole limit): its project
is retrained again on drift once another model is deployed, and on schedule as before.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa

from mirror.changes import Lsn, format_lsn, parse_lsn
from mirror.errors import SidecarError
from trainer.challenge import RecentRows, compare
from trainer.drift import DriftEvent
from trainer.schedule import Scheduler
from trainer.train import Trainer, TrainResult

log = logging.getLogger("pgml_sidecar")

Clock = Callable[[], datetime]
CHALLENGE_ROWS = 200
"""Recent labelled rows champion and challenger are scored on after drift."""
CHALLENGE_SECONDS = 3600.0
"""How long a challenger waits for them before it is judged on those there are."""


@dataclass
class _Challenger:
    """A model retrained on drift, waiting for recent rows to be judged on."""

    project: str
    reason: str
    result: TrainResult
    after: Lsn
    """The challenger's snapshot position: it is scored on rows changed after it."""
    since: float


class Retrainer:
    """Retrains projects when their schedule says so or their deployed model drifted."""

    def __init__(
        self,
        trainer: Trainer,
        *,
        clock: Clock = lambda: datetime.now(UTC),
        recent_rows: RecentRows | None = None,
        challenge_rows: int = CHALLENGE_ROWS,
        challenge_seconds: float = CHALLENGE_SECONDS,
    ) -> None:
        self.trainer = trainer
        self.clock = clock
        self.scheduler = Scheduler(clock)
        self.recent_rows = recent_rows
        """Without it (no monitor), a retrain on drift goes through the usual gate."""
        self.challenge_rows = challenge_rows
        self.challenge_seconds = challenge_seconds
        self.challengers: dict[str, _Challenger] = {}
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
        self._resumed = False

    def resume_challengers(self) -> list[str]:
        """Take back the challengers that were waiting to be judged when the sidecar stopped
        (once; :meth:`run` calls it first); return their projects."""
        if self._resumed or self.recent_rows is None:
            return []
        self._resumed = True
        registry = self.trainer.registry
        resumed = []
        for pending in registry.pending_challenges():
            project = registry.project_by_id(pending.project_id)
            model = registry.model(pending.challenger_id)
            if model is None or model.status == "failed":
                registry.drop_pending_challenge(pending.project_id)
                continue
            waited = (self.clock() - pending.trained_at).total_seconds()
            result = TrainResult(project.name, project.task, model.algorithm, False, model.id,
                                 model.snapshot_id, dict(model.metrics or {}))  # fmt: skip
            after = parse_lsn(pending.after_lsn) if pending.after_lsn else 0
            self.challengers[project.name] = _Challenger(
                project.name, pending.reason, result, after, time.monotonic() - max(waited, 0)
            )
            deployed = registry.deployed(project.id)
            with self._lock:
                self._asked[project.name] = deployed.id if deployed is not None else 0
            log.info("%s: model %d, retrained on %s, goes on waiting for recent rows to be"
                     " judged on", project.name, model.id, pending.reason)  # fmt: skip
            resumed.append(project.name)
        return resumed

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
        self.resume_challengers()
        while not stop.is_set():
            self.tick()
            self.judge()
            try:
                project, reason = self.requests.get(timeout=1.0)
            except queue.Empty:
                continue
            with self._lock:
                drifted = self._asked.get(project)
            challenging = drifted is not None and self.recent_rows is not None
            self.retrain(project, reason, challenge=challenging)
            if project not in self.challengers:
                with self._lock:
                    self._asked.pop(project, None)
            if drifted is not None and self._ran_over == project:
                with self._lock:
                    self._over_time[project] = drifted

    def judge(self, *, now: float | None = None) -> list[str]:
        """Decide the challengers whose recent rows have come (or whose wait is over):
        deploy each one that beats the deployed model on them; return their projects."""
        now = time.monotonic() if now is None else now
        decided = []
        for project, waiting in list(self.challengers.items()):
            assert self.recent_rows is not None
            rows = self.recent_rows(project, waiting.after)
            count = 0 if rows is None else rows.num_rows
            if count < self.challenge_rows and now - waiting.since < self.challenge_seconds:
                continue
            del self.challengers[project]
            found = self.trainer.registry.project(project)
            if found is not None:
                self.trainer.registry.drop_pending_challenge(found.id)
            with self._lock:
                self._asked.pop(project, None)
            decided.append(project)
            deployed = False
            try:
                if rows is not None and count:
                    deployed = self._challenge(waiting, rows)
                else:
                    log.warning("%s: no recent rows to judge model %d on; the deployed model"
                                " serves on", project, waiting.result.model_id)  # fmt: skip
            except SidecarError as exc:
                log.warning("%s: judging model %d failed; the deployed model serves on: %s",
                            project, waiting.result.model_id, exc)  # fmt: skip
            result = dataclasses.replace(waiting.result, deployed=deployed)
            self.results.append((project, waiting.reason, result))
        return decided

    def _challenge(self, waiting: _Challenger, rows: pa.Table) -> bool:
        trainer, registry = self.trainer, self.trainer.registry
        found = registry.project(waiting.project)
        if found is None:
            return False
        deployed = registry.deployed(found.id)
        champion = trainer.model(deployed.id) if deployed is not None else None
        challenger = trainer.model(waiting.result.model_id)
        challenge = compare(
            found.task, found.id, champion, [challenger], rows, reason=waiting.reason,
            after=waiting.after,
        )  # fmt: skip
        with registry.transaction():
            registry.add_challenge(challenge)
            if challenge.deployed:
                registry.add_deployment(found.id, challenge.challenger_id, "recent_score")
        if challenge.deployed:
            trainer.generation += 1
        metric = challenge.metric
        log.info(
            "%s: on %d recent rows, model %d scored %s %s against the deployed model's %s%s",
            waiting.project, challenge.num_rows, challenge.challenger_id, metric,
            challenge.challenger_metrics.get(metric), challenge.champion_metrics.get(metric),
            ": deployed" if challenge.deployed else "; the deployed model serves on",
        )  # fmt: skip
        return challenge.deployed

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

    def retrain(self, project: str, reason: str, *, challenge: bool = False) -> TrainResult | None:
        """Train ``project`` again on fresh rows with its last model's parameters.

        With ``challenge`` the new model is not deployed yet: it waits to be scored against the
        deployed one on rows that change after its snapshot (:meth:`judge`)."""
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
                y=list(snapshot.y_column_name),
                algorithm=last.algorithm,
                hyperparams=last.hyperparams,
                test_size=snapshot.test_size,
                test_sampling=snapshot.test_sampling,
                preprocess=last.preprocess,
                automatic_deploy=not challenge,
            )
        except SidecarError as exc:
            log.warning("retraining %s (%s) failed; the deployed model serves on: %s",
                        project, reason, exc)  # fmt: skip
            if exc.sqlstate == "57014":
                self._ran_over = project
            self.results.append((project, reason, None))
            return None
        if challenge:
            taken = registry.snapshot(result.snapshot_id)
            positions = taken.source_position.values() if taken is not None else []
            after = max((parse_lsn(p) for p in positions), default=0)
            waiting = _Challenger(project, reason, result, after, time.monotonic())
            self.challengers[project] = waiting
            registry.add_pending_challenge(found.id, result.model_id, reason, format_lsn(after))
            return result
        self.results.append((project, reason, result))
        return result
