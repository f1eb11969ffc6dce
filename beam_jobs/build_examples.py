"""Beam job: raw ad logs -> TFRecord examples, vocabularies, posterior statistics and manifest.json.

    python -m beam_jobs.build_examples --logs LOGS --out OUT [--cold-start] \
        [--runner DirectRunner --direct_num_workers 2 --direct_running_mode multi_processing]

Also ``tfads build`` (same flags). See docs/architecture.md "The data path".
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_jobs.files import read_bytes
from beam_jobs.manifest import summary_text
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs.options import Job, JobError, add_arguments, pipeline_options, resolve_job
from beam_jobs.pipeline import BuildExamples
from beam_jobs.steps import ERROR_PATH
from tfads.core.configtools import ConfigError

__all__ = ["add_arguments", "build", "main", "run"]


def run(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Run the job from parsed ``args`` (``tfads build``) or an argv list; print the summary; 0 on success.

    User mistakes (bad flag, missing input, bad schema) print one ``error:`` line and return 2.
    """
    extra: list[str] = []
    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(prog="python -m beam_jobs.build_examples", description=__doc__.splitlines()[0])
        add_arguments(parser)
        args, extra = parser.parse_known_args(args)
    try:
        options = pipeline_options(args, extra)
        job = resolve_job(args, options)
    except ConfigError as e:
        print(f"build_examples: error: {e}", file=sys.stderr)
        return 2
    try:
        manifest, elapsed = build(job, options)
    except JobError as e:
        print(f"build_examples: error: {e}", file=sys.stderr)
        return 2
    print(summary_text(manifest))
    print(f"wrote {job.out}/manifest.json in {elapsed:.1f} s")
    return 0


def build(job: Job, options: PipelineOptions) -> tuple[dict, float]:
    """Run the job; return its manifest (as written to ``<out>/manifest.json``) and the wall time in seconds.
    JobError for a mistake only the data shows (a table's days too few for the split)."""
    start = time.perf_counter()
    if FileSystems.exists(f"{job.out}/{ERROR_PATH}"):  # from an earlier run into the same directory
        FileSystems.delete([f"{job.out}/{ERROR_PATH}"])
    with beam.Pipeline(options=options) as pipeline:
        _ = pipeline | "BuildExamples" >> BuildExamples(job)
    elapsed = time.perf_counter() - start
    if FileSystems.exists(f"{job.out}/{ERROR_PATH}"):
        raise JobError(read_bytes(f"{job.out}/{ERROR_PATH}").decode())
    return json.loads(read_bytes(f"{job.out}/manifest.json")), elapsed


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m beam_jobs.build_examples`` entry point."""
    logging.basicConfig(level=logging.WARNING)
    # DirectRunner relays every worker's start-up warnings (unparsed runner-only flags); keep errors only.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    return run(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
