"""PostgreSQL's time-valued settings: '5s', '100ms', '1min', or a number in the setting's unit.

``statement_timeout`` counts in milliseconds, ``authentication_timeout`` in seconds; a value is
parsed, checked against the setting's range and shown the way PostgreSQL does (``SHOW
statement_timeout`` answers ``5s`` for 5000, ``0`` when off), with its error messages.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

from mirror.errors import ConfigError, SidecarError

_UNITS_US = {"us": 1, "ms": 1_000, "s": 1_000_000, "min": 60_000_000, "h": 3_600_000_000,
             "d": 86_400_000_000}  # fmt: skip
_VALUE = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([a-zA-Z]*)\s*")
_HINT = 'Valid units for this parameter are "us", "ms", "s", "min", "h", and "d".'


class InvalidSetting(SidecarError):
    """A value a setting cannot take; ``hint`` says which units it takes."""

    sqlstate = "22023"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True, slots=True)
class TimeSetting:
    """A setting holding a duration: its name, base unit and range (in the base unit)."""

    name: str
    unit: str
    minimum: int
    maximum: int

    def parse(self, value: str | int) -> int:
        """The value in the base unit; SQLSTATE 22023 in PostgreSQL's words when it is not one."""
        return _parse(self, str(value))

    def show(self, value: int) -> str:
        """The value as SHOW gives it: in the largest unit that divides it, '0' for zero."""
        if value == 0:
            return "0"
        micros = value * _UNITS_US[self.unit]
        for unit in ("d", "h", "min", "s", "ms"):
            if micros % _UNITS_US[unit] == 0 and _UNITS_US[unit] >= _UNITS_US[self.unit]:
                return f"{micros // _UNITS_US[unit]}{unit}"
        return f"{value}{self.unit}"

    def normalized(self, value: str | int) -> str:
        """The value checked and shown as SHOW gives it."""
        return self.show(self.parse(value))

    def parse_setting(self, value: str | int, examples: str) -> int:
        """:meth:`parse` for a flag or a config value: a `ConfigError` whose line goes on to
        say what to give instead (``examples``: "'5s' or '100ms'")."""
        try:
            return self.parse(value)
        except InvalidSetting as exc:
            if exc.hint:
                units = exc.hint[0].lower() + exc.hint[1:].rstrip(".")
                raise ConfigError(f"{exc}; give a time such as {examples} ({units})") from None
            raise ConfigError(f"{exc}; give a time within that range") from None


STATEMENT_TIMEOUT = TimeSetting("statement_timeout", "ms", 0, 2_147_483_647)
"""Cancel a statement that runs longer than this; 0 (the default) is off."""
AUTHENTICATION_TIMEOUT = TimeSetting("authentication_timeout", "s", 1, 600)
"""Drop a connection that has not authenticated within this; PostgreSQL's range, 1 s to 10 min."""
TRAINING_TIME_LIMIT = TimeSetting("pgml.training_time_limit", "s", 0, 2_147_483_647)
"""A session's limit for its trainings (``SET pgml.training_time_limit = '10min'``): at most the
sidecar's ``training_time_limit``; 0 asks for the sidecar's."""


@functools.lru_cache(maxsize=256)
def _parse(setting: TimeSetting, text: str) -> int:
    found = _VALUE.fullmatch(text)
    unit = found.group(2) if found else ""
    if found is None or (unit and unit not in _UNITS_US):
        raise InvalidSetting(f'invalid value for parameter "{setting.name}": "{text}"', hint=_HINT)
    number = float(found.group(1)) * _UNITS_US[unit or setting.unit] / _UNITS_US[setting.unit]
    rounded = math.floor(number + 0.5) if math.isfinite(number) else number
    if number > 0 and rounded == 0:
        rounded = 1  # PostgreSQL: a nonzero value that rounds to zero is the smallest unit
    if not math.isfinite(rounded) or not setting.minimum <= rounded <= setting.maximum:
        shown = found.group(1) if not math.isfinite(rounded) else str(int(rounded))
        raise InvalidSetting(
            f'{shown} {setting.unit} is outside the valid range for parameter "{setting.name}"'
            f" ({setting.minimum} {setting.unit} .. {setting.maximum} {setting.unit})"
        )
    return int(rounded)
