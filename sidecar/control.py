"""Requests from the source: ``pgml.train()`` and ``pgml.writeback()`` rows, carried out here.

The source's control table ``pgml.training_requests`` is replicated like any other table. When
a commit touches it, the pending rows the mirror now holds are claimed in the source
(``status = 'running'``, only if still pending, so a request runs once), carried out, and
finished with ``done`` and the model id, or ``failed`` and the error. The sidecar's own updates
come back through the stream as rows that are no longer pending, and are ignored.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import duckdb
import psycopg

from mirror.change_log import Touched
from mirror.changes import Lsn
from mirror.errors import SidecarError
from trainer.train import Trainer

log = logging.getLogger("pgml_sidecar")

TABLE = ("pgml", "training_requests")


class ControlRequests:
    """Carries out the source's pending training and write-back requests, one at a time."""

    def __init__(
        self,
        source_dsn: str,
        con: duckdb.DuckDBPyConnection,
        trainer: Trainer,
        *,
        writeback: Callable[[str, bool], None],
        on_finished: Callable[[str, str, dict[str, float]], None] | None = None,
    ) -> None:
        self.source_dsn = source_dsn
        self.con = con
        self.trainer = trainer
        self.writeback = writeback
        self.on_finished = on_finished
        """Called with (project, status, metrics) after each training request."""
        self.wake = threading.Event()
        self._claimed: set[int] = set()
        self.finished = threading.Condition()
        self.handled = 0

    def on_commit(self, lsn: Lsn, touched: dict[tuple[str, str], Touched]) -> None:
        if TABLE in touched:
            self.wake.set()

    def run(self, stop: threading.Event) -> None:
        """Carry out requests until ``stop`` is set."""
        self._fail_interrupted()
        self.wake.set()  # requests that arrived while the sidecar was down
        while not stop.is_set():
            if not self.wake.wait(timeout=1.0):
                continue
            self.wake.clear()
            for request in self._pending():
                if stop.is_set():
                    return
                self._carry_out(request)

    def _pending(self) -> list[dict[str, Any]]:
        cursor = self.con.cursor()
        try:
            rows = cursor.execute(
                "select * from pgml.training_requests where status = 'pending' order by id"
            )
            names = [d[0] for d in rows.description or ()]
            found = [dict(zip(names, r, strict=True)) for r in rows.fetchall()]
        except duckdb.CatalogException:
            return []  # the control table is not mirrored (yet)
        finally:
            cursor.close()
        return [r for r in found if r["id"] not in self._claimed]

    def _fail_interrupted(self) -> None:
        """Requests left running by a previous run that stopped: failed, to be asked again."""
        try:
            with psycopg.connect(self.source_dsn, autocommit=True) as conn:
                conn.execute(
                    "update pgml.training_requests set status = 'failed', finished_at = now(),"
                    " error = 'interrupted: the sidecar stopped while carrying it out; request"
                    " it again' where status = 'running'"
                )
        except psycopg.Error as exc:
            log.warning("cannot check the source's control table: %s", exc)

    def _claim(self, conn: psycopg.Connection, request_id: int) -> bool:
        row = conn.execute(
            "update pgml.training_requests set status = 'running'"
            " where id = %s and status = 'pending' returning id",
            (request_id,),
        ).fetchone()
        return row is not None

    def _carry_out(self, request: dict[str, Any]) -> None:
        request_id = int(request["id"])
        self._claimed.add(request_id)
        try:
            with psycopg.connect(self.source_dsn, autocommit=True) as conn:
                if not self._claim(conn, request_id):
                    return
                status, error, model_id, metrics = self._run(request)
                conn.execute(
                    "update pgml.training_requests set status = %s, error = %s, model_id = %s,"
                    " finished_at = now() where id = %s",
                    (status, error, model_id, request_id),
                )
        except psycopg.Error as exc:
            log.warning("request %d: the source refused its status update: %s", request_id, exc)
            self._claimed.discard(request_id)  # try again at the next wake-up
            return
        if request.get("kind", "train") == "train" and self.on_finished is not None:
            self.on_finished(str(request["project_name"]), status, metrics)
        with self.finished:
            self.handled += 1
            self.finished.notify_all()

    def _run(self, request: dict[str, Any]) -> tuple[str, str | None, int | None, dict]:
        project = str(request["project_name"])
        try:
            kind = request.get("kind", "train")
            enabled = request.get("enabled")
            if kind == "writeback":
                self.writeback(project, True if enabled is None else bool(enabled))
                log.info("write-back of %s %s", project, "on" if enabled is not False else "off")
                return "done", None, None, {}
            if kind == "schedule":
                cron = request.get("cron")
                self.trainer.set_schedule(project, cron)
                log.info("schedule of %s: %s", project, cron or "none")
                return "done", None, None, {}
            if kind == "retrain_on_drift":
                self.trainer.set_retrain_on_drift(project, enabled is not False)
                return "done", None, None, {}
            hyperparams = request.get("hyperparams") or {}
            if isinstance(hyperparams, str):
                hyperparams = json.loads(hyperparams)
            result = self.trainer.train(
                project,
                task=request.get("task"),
                relation=request.get("relation_name"),
                y=request.get("y_column_name"),
                algorithm=request.get("algorithm"),
                hyperparams=hyperparams,
            )
        except SidecarError as exc:
            log.warning("request %s for %s failed: %s", request["id"], project, exc)
            return "failed", str(exc), None, {}
        except Exception as exc:  # a bug must not stop the other projects
            log.exception("request %s for %s failed", request["id"], project)
            return "failed", f"internal error: {type(exc).__name__}: {exc}", None, {}
        log.info(
            "trained %s: model %d (%s)%s", project, result.model_id, result.algorithm,
            ", deployed" if result.deployed else "",
        )  # fmt: skip
        return "done", None, result.model_id, result.metrics
