"""Errors a user sees: one line that says what went wrong and what to change.

::

    SidecarError                 base; ``str(e)`` is the message, ``e.sqlstate`` its code
    ├── ConfigError              bad flags or config values (exit code 2)
    ├── SourceError              the source database refuses or lacks something
    │   ├── SourceSetupError     wal_level, privileges, unknown table: needs a change on the source
    │   └── SlotBusyError        another process holds the replication slot
    ├── SourceConnectionLost     the connection dropped; the replicator reconnects and resumes
    ├── MirrorError              the DuckDB mirror cannot be opened or does not match
    │   └── MirrorOutOfMemory    DuckDB ran out of memory applying or committing a batch
    └── TrainingError            a training or deployment request cannot be carried out

Code above raises these with a message a user understands; the CLI prints ``error: <message>``
and exits non-zero, never a traceback.
"""

from __future__ import annotations


class SidecarError(Exception):
    """An error with a message for the user and a SQLSTATE for the wire."""

    sqlstate = "XX000"
    exit_code = 1

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        if sqlstate is not None:
            self.sqlstate = sqlstate


class ConfigError(SidecarError):
    """A flag or config value is missing or invalid."""

    sqlstate = "22023"
    exit_code = 2


class SourceError(SidecarError):
    """The source database refused an operation."""

    sqlstate = "58000"


class SourceSetupError(SourceError):
    """The source needs a change (setting, privilege, table) before the sidecar can work."""

    sqlstate = "55000"


class SlotBusyError(SourceError):
    """Another process is streaming from the replication slot."""

    sqlstate = "55006"


class SourceConnectionLost(SourceError):
    """The connection to the source dropped; the caller may reconnect and resume."""

    sqlstate = "08006"


class MirrorError(SidecarError):
    """The DuckDB mirror cannot be opened, or holds something the sidecar did not write."""

    sqlstate = "58030"


class MirrorOutOfMemory(MirrorError):
    """DuckDB ran out of memory applying or committing changes; none of them was committed.

    ``invalidated``: it happened in a commit, after which DuckDB refuses every statement until
    the database is opened again."""

    sqlstate = "53200"

    def __init__(self, message: str, *, invalidated: bool = False) -> None:
        super().__init__(message)
        self.invalidated = invalidated


class TrainingError(SidecarError):
    """A training, deployment or prediction request is invalid or cannot be carried out.

    The SQLSTATE says which: 42704 unknown project or model, 42P01 unknown relation, 42703
    unknown column, 22023 an invalid argument (algorithm, task, hyperparameter, JSON), 22000
    data that cannot be trained on (empty, one class only, fewer rows than folds).
    """

    sqlstate = "22023"
