"""Deterministic fault injection for the crash tests: ``TFADS_ONLINE_CRASH=<point>:<n>`` makes the
process ``os._exit(CRASH_EXIT_CODE)`` the n-th time it reaches ``<point>`` (no cleanup, like a kill -9)."""

from __future__ import annotations

import os
from collections import Counter

ENV = "TFADS_ONLINE_CRASH"
CRASH_EXIT_CODE = 75
POINTS = ("after_train", "before_rename", "before_pointer", "after_commit", "after_export")
_reached: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """Exit at once if ``TFADS_ONLINE_CRASH`` names this point and this is its n-th arrival."""
    if name not in POINTS:
        raise ValueError(f"crash_point: unknown point {name!r} (have {POINTS})")
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, count = spec.partition(":")
    _reached[name] += 1
    if point == name and _reached[name] == int(count or 1):
        os._exit(CRASH_EXIT_CODE)
