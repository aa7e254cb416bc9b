"""The replication connection's pure parts: durations the server shows, status updates."""

from __future__ import annotations

import struct

import pytest

from replicator.stream import parse_duration, standby_status


@pytest.mark.parametrize(
    ("shown", "seconds"),
    [("60s", 60.0), ("1min", 60.0), ("500ms", 0.5), ("0", 0.0), ("2h", 7200.0), ("1d", 86400.0)],
)
def test_durations_parse_as_show_prints_them(shown: str, seconds: float):
    assert parse_duration(shown) == seconds


def test_an_unknown_duration_is_none():
    assert parse_duration("soon") is None


def test_a_status_update_reports_one_position_as_written_and_flushed():
    frame = standby_status(0x1_0000_0010, 0x1_0000_0010)
    assert frame[:1] == b"r"
    written, flushed, applied, _now, reply = struct.unpack(">QQQqB", frame[1:])
    assert written == flushed == applied == 0x1_0000_0010
    assert reply == 0
