"""Imported by the fork server first as it starts (its preload), and by nothing else: it arms
the fork server's parent-death signal (see :mod:`trainer.lifeline`)."""

from __future__ import annotations

from trainer import lifeline

lifeline.arm_forkserver()
