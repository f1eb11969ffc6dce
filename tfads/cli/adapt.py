"""``tfads adapt``: k-shot adaptation of a model to one new segment's first rows (MAML's inner loop)."""

from __future__ import annotations

import argparse
import sys

from tfads.cli.arg_types import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True,
                        help="the model to adapt: a `tfads meta-train` output (its inner-loop settings are reused) "
                        "or any `tfads train` output (plain fine-tuning with the inner loop's defaults)")
    parser.add_argument("--data", required=True, help="manifest.json of the Beam data job")
    parser.add_argument("--out", required=True, help="output model dir")
    parser.add_argument("--segment", required=True, help="the segment value to adapt to, e.g. a new city")
    parser.add_argument("--segment-field", default=None,
                        help="the segment field (default: the meta-training's; required for other models)")
    parser.add_argument("--shots", type=positive_int, required=True,
                        help="adapt on this segment's first SHOTS rows of --split, in time order")
    parser.add_argument("--split", default="train", help="the split to take the rows from (default train)")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from tfads.jobs.maml import read_maml_config, run_adapt
    from tfads.maml import MamlConfig

    cfg = read_maml_config(args.model_dir)
    if cfg is None and args.segment_field is None:
        print(f"tfads adapt: error: {args.model_dir} is not a `tfads meta-train` output: give --segment-field",
              file=sys.stderr)
        return 2
    if args.segment_field:
        cfg = dataclasses.replace(cfg, segment_field=args.segment_field) if cfg else MamlConfig(args.segment_field)
    try:
        done = run_adapt(args.model_dir, args.data, args.out, segment=args.segment, shots=args.shots,
                         split=args.split, cfg=cfg)
    except ValueError as e:  # a segment or field the data does not have
        print(f"tfads adapt: error: {e}", file=sys.stderr)
        return 2
    print(f"adapted to {args.segment!r} on {done.rows} rows (times {done.first_time}..{done.last_time}), "
          f"{cfg.inner_steps} SGD steps at {cfg.inner_lr}")
    print(f"model written to {done.model_path}")
    return 0
