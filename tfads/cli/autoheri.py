"""``tfads autoheri``: search AutoHERI's CTR -> CVR edges, prune them and retrain with the edges fixed."""

from __future__ import annotations

import argparse
import dataclasses
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="experiment YAML (default: configs/default.yaml); its "
                        "model.heri settings (entropy_weight, arch_learning_rate, threshold) drive the search")
    parser.add_argument("--data", required=True, help="manifest.json of the Beam data job, with a conversion label")
    parser.add_argument("--out", required=True, help="output model dir: the retrained model, search/ (the search "
                        "run) and autoheri.json (the gates and the edges kept)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="override model.heri.threshold: keep the edges whose searched gate is above it (0.5)")
    parser.epilog = ("The search trains every CTR-layer -> CVR-layer edge behind a sigmoid gate, the gates stepped on "
                     "the valid split between weight steps; the retrained model is a normal model dir (evaluate, "
                     "calibrate or export it). Use model.tower_units with at least 2 layers.")


def run(args: argparse.Namespace) -> int:
    from tfads.core.experiment import DEFAULT_EXPERIMENT, load_experiment
    from tfads.jobs.autoheri import run_autoheri

    config = load_experiment(args.config or DEFAULT_EXPERIMENT)
    try:
        if args.threshold is not None:
            heri = dataclasses.replace(config.model.heri, threshold=args.threshold)
            config = dataclasses.replace(config, model=dataclasses.replace(config.model, heri=heri))
        record = run_autoheri(config, args.data, args.out)
    except ValueError as e:  # a bad threshold, click-only data
        print(f"tfads autoheri: error: {e}", file=sys.stderr)
        return 2
    print(f"kept {len(record['edges'])} of {len(record['tower_units']) ** 2} edges (CTR layer, CVR layer): "
          f"{record['edges']}")
    print(f"model written to {args.out}")
    return 0
