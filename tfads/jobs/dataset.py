"""Logs -> Beam job -> manifest in one call: the shared set-up of the demo, the tests and the benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

from beam_jobs.build_examples import build
from beam_jobs.options import direct_options, find_inputs
from tfads.core.schema import DEFAULT_SCHEMA
from tfads.datagen import generate
from tfads.datagen.launches import NO_LAUNCHES, LaunchPlan


def build_dataset(
    logs: str, out: str, *, workers: int = 1, schema: str | Path = DEFAULT_SCHEMA, cold_start: bool | None = None,
    graph: str = "auto", key_buckets: int | None = None,
) -> str:
    """Run the Beam job on ``logs`` with the DirectRunner (``workers`` processes); return ``<out>/manifest.json``.

    ``graph``/``key_buckets``: as ``tfads build --graph/--key-buckets``."""
    job = find_inputs(logs, out, schema_path=schema, cold_start=cold_start, graph=graph, key_buckets=key_buckets)
    build(job, direct_options(workers))
    return os.path.join(out, "manifest.json")


def synthetic_dataset(
    work_dir: str, *, days: int, impressions_per_day: int, seed: int = 0, corrupt_rate: float = 0.0,
    with_feed: bool = False, workers: int = 1, progress: bool = False, launch_plan: LaunchPlan = NO_LAUNCHES,
) -> tuple[str, str]:
    """Generator logs under ``<work_dir>/logs`` built into ``<work_dir>/data``; returns (logs dir, manifest path)."""
    logs, data = os.path.join(work_dir, "logs"), os.path.join(work_dir, "data")
    generate(logs, days=days, impressions_per_day=impressions_per_day, seed=seed, corrupt_rate=corrupt_rate,
             with_feed=with_feed, progress=progress, launch_plan=launch_plan)
    return logs, build_dataset(logs, data, workers=workers, cold_start=with_feed or None)
