"""``tfads tune``: a keras-tuner sweep over a YAML search space, local or distributed (chief/workers)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from tfads.core.configtools import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="tune YAML: base experiment, objective, oracle, budget, space")
    parser.add_argument("--data", required=True, help="manifest.json written by the Beam job (`tfads build`)")
    parser.add_argument("--dir", required=True, help="sweep directory (shared by chief and workers); reruns resume")
    parser.add_argument("--max-trials", type=int, default=None, help="override oracle.max_trials")
    parser.add_argument(
        "--oracle", choices=["random", "bayesian", "hyperband"], default=None, help="override oracle.type"
    )
    parser.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming --dir")
    parser.add_argument("--verbose", type=int, default=0, help="keras-tuner progress output (0 or 1)")
    parser.epilog = (
        "Distributed: start the chief with KERASTUNER_TUNER_ID=chief and each worker with its own "
        "KERASTUNER_TUNER_ID; all share KERASTUNER_ORACLE_IP/KERASTUNER_ORACLE_PORT and --dir (see docs/deploy.md)."
    )


def run(args: argparse.Namespace) -> int:
    from tfads.jobs.tune.config import load_tune_config

    tune = load_tune_config(args.config)  # before TensorFlow loads: a bad space fails fast
    overrides = {"max_trials": args.max_trials, "type": args.oracle}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    tune = dataclasses.replace(tune, oracle=dataclasses.replace(tune.oracle, **overrides))

    from keras_tuner import errors

    from tfads.core.manifest import load_manifest
    from tfads.jobs.tune.results import write_report
    from tfads.jobs.tune.tuner import SweepTuner

    manifest = load_manifest(args.data)
    tuner = SweepTuner(tune, manifest, args.dir, overwrite=args.overwrite)
    stopped = None
    try:
        tuner.search(verbose=args.verbose)
    except errors.FatalError as e:
        raise ConfigError(f"{args.config}: objective.name: {e}") from e
    except RuntimeError as e:  # too many consecutive failed trials
        stopped = str(e).splitlines()[0]
    if tuner.is_worker:
        print(f"worker {tuner.tuner_id}: no trials left")
        return 0
    report = write_report(args.dir, tune)
    print(f"{report.completed} trial(s) completed, {report.failed} failed: {report.table_md}")
    if stopped:
        print(f"tfads tune: sweep stopped early: {stopped}", file=sys.stderr)
    if report.best_yaml is None:
        print("tfads tune: no trial completed, so no best config", file=sys.stderr)
        return 1
    print(f"best config: {report.best_yaml}  (tfads train --config {report.best_yaml} --data {args.data})")
    return 1 if stopped else 0
