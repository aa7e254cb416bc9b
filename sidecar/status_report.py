"""What ``status`` makes of what it read: a verdict with its reasons, and lines for people.

The report is the JSON ``status --json`` prints: ``source`` (the masked DSN) and, when the
source does not answer, ``source_error``; ``slot`` (or ``kafka``); ``other_slots``, the
database's other logical slots (left by earlier runs, or someone else's) with the WAL each
retains; ``daemon``, its ``/healthz`` (or ``status`` ``"unreachable"`` with the ``url`` tried
and the ``error``); ``projects``, each project's last request and the model it has deployed.
:func:`judge` adds ``status``, ``problems`` and ``exit_code``.
"""

from __future__ import annotations

from typing import Any

from sidecar.metrics import REPLICATION_LAG_ALERT_SECONDS, RETAINED_WAL_ALERT_BYTES

OK, DEGRADED, DOWN = 0, 1, 2
"""Exit codes of ``status`` (3: it could not look, see ``cli_daemon.STATUS_UNKNOWN``)."""


def judge(report: dict[str, Any]) -> int:
    """Set ``status``, ``problems`` and ``exit_code`` in ``report``; return the exit code.

    Ok only when the daemon answers and is ok, the slot is active, and lag and retained WAL are
    under the alerts' thresholds, and no published table lacks a replica identity; down when no
    daemon answers; degraded otherwise. A failed training whose project still has a deployed
    model, and the database's other slots, are shown but are no problem of this sidecar's.
    """
    daemon = report.get("daemon", {})
    problems: list[str] = []
    if daemon.get("status") == "unreachable":
        problems.append(
            f"no daemon answers at {daemon.get('url')}: start pgml-sidecar run, or give the"
            " --metrics-host and --metrics-port it serves on"
        )
    elif daemon.get("status") != "ok":
        stopped = [name for name, part in daemon.get("parts", {}).items() if not part["running"]]
        problems.append("parts not running: " + (", ".join(stopped) or "?"))
    if "source_error" in report:
        problems.append("the source does not answer")
    slot = report.get("slot")
    if slot is not None and slot.get("missing"):
        problems.append(f"slot {slot['name']} does not exist")
    elif slot is not None and not slot["active"]:
        problems.append(f"slot {slot['name']} is not active")
    if slot is not None and (slot.get("retained_wal_bytes") or 0) > RETAINED_WAL_ALERT_BYTES:
        problems.append(
            f"slot {slot['name']} retains {human_bytes(slot['retained_wal_bytes'])} of WAL, over"
            f" the alert's {human_bytes(RETAINED_WAL_ALERT_BYTES)}"
        )
    if unidentified := daemon.get("tables_without_replica_identity"):
        problems.append("published without a replica identity: " + ", ".join(unidentified))
    lag = daemon.get("replication_lag_seconds")
    if isinstance(lag, int | float) and lag > REPLICATION_LAG_ALERT_SECONDS:
        problems.append(
            f"replication lag {lag:.0f} s is over the alert's {REPLICATION_LAG_ALERT_SECONDS} s"
        )
    for name, chroma in daemon.get("chroma", {}).items():
        if (chroma["drift"] and chroma["drift"]["rows"]) or chroma["count_mismatch"]:
            problems.append(f"Chroma collection {name} drifted from {chroma['table']}")
        if not chroma["connected"]:
            problems.append(f"Chroma collection {name} is out of reach: {chroma['last_error']}")
    code = DOWN if daemon.get("status") == "unreachable" else DEGRADED if problems else OK
    report["status"] = ("ok", "degraded", "down")[code]
    report["problems"] = problems
    report["exit_code"] = code
    return code


def lines(report: dict[str, Any]) -> list[str]:
    """The report for people, one fact a line, the verdict last."""
    shown = [f"source:  {report['source']}"]
    if "source_error" in report:
        shown[0] += f" (does not answer: {report['source_error']})"
    daemon = report["daemon"]
    if "kafka" in report:
        kafka, live = report["kafka"], daemon.get("kafka", {})
        shown.append(
            f"kafka:   {kafka['topic_prefix']}.* on {kafka['bootstrap']}, group"
            f" {kafka['group_id']}: {live.get('lag_messages', '?')} messages behind,"
            f" {live.get('dead_letters', '?')} dead letters,"
            f" partitions {', '.join(live.get('partitions', [])) or '-'}"
        )
    shown += _slot_lines(report)
    shown.append(_daemon_line(daemon))
    if unidentified := daemon.get("tables_without_replica_identity"):
        shown.append(
            f"tables:  without replica identity: {', '.join(unidentified)}: the application's"
            " UPDATE and DELETE on them fail; add a primary key, or ALTER TABLE ... REPLICA"
            " IDENTITY FULL"
        )
    shown += [_chroma_line(n, c) for n, c in daemon.get("chroma", {}).items()]
    for project in report.get("projects", []):
        shown.append(_project_line(project))
        shown += [f"         notice: {n}" for n in (project.get("notice") or "").splitlines()]
    verdict = f"status:  {report['status']}"
    if report["problems"]:
        verdict += ": " + "; ".join(report["problems"])
    shown.append(verdict)
    return shown


def _slot_lines(report: dict[str, Any]) -> list[str]:
    shown = []
    slot = report.get("slot")
    if slot is not None and slot.get("missing"):
        shown.append(f"slot:    {slot['name']} does not exist (pgml-sidecar run makes it)")
    elif slot is not None:
        shown.append(
            f"slot:    {slot['name']} {'active' if slot['active'] else 'INACTIVE'},"
            f" lag {human_bytes(slot['lag_bytes'])},"
            f" retains {human_bytes(slot['retained_wal_bytes'])} of WAL"
        )
    for other in report.get("other_slots", []):
        line = (
            f"slot:    {other['name']} (another slot in this database)"
            f" {'active' if other['active'] else 'INACTIVE'}, retains"
            f" {human_bytes(other['retained_wal_bytes'])} of WAL"
        )
        if not other["active"]:
            line += f"; if nothing uses it: SELECT pg_drop_replication_slot('{other['name']}')"
        shown.append(line)
    return shown


def _daemon_line(daemon: dict[str, Any]) -> str:
    if daemon.get("status") == "unreachable":
        return f"daemon:  unreachable at {daemon.get('url')} ({daemon.get('error')})"
    line = f"daemon:  {daemon.get('status')}"
    if "replication_lag_seconds" in daemon:
        line += f", replication lag {daemon['replication_lag_seconds']:.1f} s"
    for name, part in daemon.get("parts", {}).items():
        if not part["running"]:
            line += f"; {name} not running (restarts: {part['restarts']}): {part['last_error']}"
        elif part.get("connected") is False:
            line += f"; {name} reconnecting to the source: {part['last_error']}"
    return line


def _chroma_line(name: str, chroma: dict[str, Any]) -> str:
    line = (
        f"chroma:  {name} = {chroma['table']} on {chroma['where']}:"
        f" {'connected' if chroma['connected'] else 'OUT OF REACH'}, applied"
        f" {chroma['applied_lsn']}, lag {chroma['lag_seconds']:.1f} s, {chroma['rows']} records"
    )
    drift = chroma.get("drift")
    if drift and drift["rows"]:
        line += (
            f"; drifted: {drift['missing']} missing, {drift['extra']} extra,"
            f" {drift['changed']} changed (pgml-sidecar chroma rebuild)"
        )
    elif chroma.get("count_mismatch"):
        line += "; drifted: its count differs from the table's (pgml-sidecar chroma rebuild)"
    if chroma.get("last_error"):
        line += f"; {chroma['last_error']}"
    return line


def _project_line(project: dict[str, Any]) -> str:
    line = f"project: {project['project']}:"
    if project.get("last_request"):
        line += f" {project['last_request']} {project['status']}"
        if project["model_id"]:
            line += f", model {project['model_id']}"
        if project["error"]:
            line += f", error: {project['error']}"
    if "deployed" not in project:  # the daemon did not answer
        return line
    deployed = project["deployed"]
    if deployed is not None:
        still = " still" if project.get("status") == "failed" else ""
        line += f"; model {deployed['model_id']} ({deployed['algorithm']}){still} deployed"
    elif project.get("status") == "failed":
        line += "; no model deployed"
    return line


def human_bytes(count: int | None) -> str:
    """``1.5 GiB``, ``312 kiB``, ``0 B``."""
    if count is None:
        return "? B"
    value, unit = float(count), "B"
    for larger in ("kiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.0f} {unit}" if unit == "B" or abs(value) >= 100 else f"{value:.1f} {unit}"
