"""``tfads build``: the Beam job, logs -> TFRecords, vocabularies, posterior statistics and manifest.json.

Takes the job's flags and Beam's pipeline flags (``--runner``, ``--direct_num_workers``, Dataflow's
``--project`` ...), exactly as ``python -m beam_jobs.build_examples``.
"""

from __future__ import annotations

import argparse

from beam_jobs import build_examples
from beam_jobs.options import add_arguments as add_job_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return build_examples.run(args)
