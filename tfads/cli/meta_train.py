"""``tfads meta-train``: MAML meta-initialisation over user segments, from a trained model."""

from __future__ import annotations

import argparse
import sys

from tfads.cli.arg_types import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, help="the model to start from: a `tfads train` output dir")
    parser.add_argument("--data", required=True, help="manifest.json of the Beam data job (its train split)")
    parser.add_argument("--out", required=True, help="output model dir (model/, checkpoints/, maml.json)")
    parser.add_argument("--segment-field", required=True,
                        help="the field whose values are the tasks (user segments), e.g. a city or a user-group field")
    parser.add_argument("--algorithm", choices=("fomaml", "reptile"), default="fomaml",
                        help="fomaml: the query-loss gradient at the adapted weights updates every weight (Adam at "
                        "--outer-lr); reptile: the initialisation moves --reptile-step of the way to the adapted "
                        "weights (default fomaml)")
    parser.add_argument("--meta-steps", type=positive_int, default=300, help="outer updates (default 300)")
    parser.add_argument("--tasks-per-step", type=positive_int, default=8, help="segments per outer update (default 8)")
    parser.add_argument("--support", type=positive_int, default=128,
                        help="rows per task the inner loop adapts on (default 128; match the k of `tfads adapt`)")
    parser.add_argument("--query", type=positive_int, default=256, help="rows per task of the outer loss (default 256)")
    parser.add_argument("--inner-steps", type=positive_int, default=3, help="inner SGD steps (default 3)")
    parser.add_argument("--inner-lr", type=float, default=0.05, help="inner SGD rate (default 0.05)")
    parser.add_argument("--outer-lr", type=float, default=5e-4, help="FOMAML's Adam rate (default 5e-4)")
    parser.add_argument("--reptile-step", type=float, default=0.5, help="Reptile's interpolation step (default 0.5)")
    parser.add_argument("--exclude", default="",
                        help="comma-separated segment values to leave out (the cold-start segments to adapt to later)")
    parser.add_argument("--keep-segment-ids", action="store_true",
                        help="tasks adapt from their own trained embedding rows; by default each task's segment "
                        "value is replaced by one no vocabulary holds, so tasks adapt from the out-of-vocabulary row "
                        "as a new segment will")
    parser.add_argument("--seed", type=int, default=0, help="task and row sampling seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.epilog = ("The inner loop adapts the embedding tables and the task towers only. The output is a normal "
                     "model dir: evaluate or export it, or adapt it to a segment with `tfads adapt`.")


def run(args: argparse.Namespace) -> int:
    from tfads.jobs.maml import run_meta_train
    from tfads.maml import MamlConfig

    try:
        cfg = MamlConfig(
            segment_field=args.segment_field, algorithm=args.algorithm, meta_steps=args.meta_steps,
            tasks_per_step=args.tasks_per_step, support=args.support, query=args.query, inner_steps=args.inner_steps,
            inner_lr=args.inner_lr, outer_lr=args.outer_lr, reptile_step=args.reptile_step, seed=args.seed,
            as_new_segments=not args.keep_segment_ids,
        )
        exclude = [v for v in args.exclude.split(",") if v]
        record = run_meta_train(args.model_dir, args.data, args.out, cfg, exclude=exclude,
                                progress=not args.no_progress)
    except ValueError as e:  # a bad setting, an unknown segment field, too few segments
        print(f"tfads meta-train: error: {e}", file=sys.stderr)
        return 2
    curve = record["query_loss"]
    tenth = max(1, len(curve) // 10)
    print(f"meta-trained over {record['segments']} segments of {args.segment_field}: query loss "
          f"{sum(curve[:tenth]) / tenth:.5f} -> {sum(curve[-tenth:]) / tenth:.5f}")
    print(f"model written to {args.out}")
    return 0
