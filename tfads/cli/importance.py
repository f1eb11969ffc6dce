"""``tfads importance``: per-feature importance of a trained model, a ranked table, a bar chart and a suggested
real-time feature set."""

from __future__ import annotations

import argparse

from tfads.cli.arg_types import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, help="a `tfads train` (or `tfads calibrate`) output dir")
    parser.add_argument("--data", required=True, help="manifest.json of the Beam job the model was trained on")
    parser.add_argument("--out", default=None, help="report dir (default: <model-dir>/importance_<split>)")
    parser.add_argument("--split", default="valid", choices=["train", "valid", "calib", "test"],
                        help="the split the importance is measured on (default: valid)")
    parser.add_argument("--methods", default="permutation,embedding,tree",
                        help="comma list of: permutation (pCTR AUC drop when one input is shuffled across rows), "
                        "embedding (mean L2 norm of a feature's embedding rows), tree (permutation importance of "
                        "a HistGradientBoosting classifier fitted on the train split's raw features); default: all")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="shuffles per feature for the permutation methods; mean and std reported (default: 3)")
    parser.add_argument("--max-rows", type=positive_int, default=200_000,
                        help="at most this many rows of the split are scored, and of the train split fit the tree "
                        "(default: 200000)")
    parser.add_argument("--share", type=float, default=0.9,
                        help="the suggested real-time set is the fewest top features covering this share of the "
                        "total positive importance, in (0, 1] (default: 0.9)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffles, the train sample and the tree")


def run(args: argparse.Namespace) -> int:
    import os

    from tfads.core.manifest import load_manifest
    from tfads.importance import check_share, feature_importance, parse_methods, write_report
    from tfads.train import load_trained_model

    methods = parse_methods(args.methods)
    check_share(args.share)
    manifest = load_manifest(args.data)
    model = load_trained_model(args.model_dir)
    result = feature_importance(model, manifest, split=args.split, methods=methods, repeats=args.repeats,
                                max_rows=args.max_rows, share=args.share, seed=args.seed, progress=True)
    files = write_report(result, args.out or os.path.join(args.model_dir, f"importance_{args.split}"))
    print(result.markdown())
    print(f"suggested real-time features ({result.ranked_by}, {args.share:g} of the total): "
          f"{', '.join(result.suggested) or 'none'}")
    print("\n".join(f"wrote {path}" for path in files.values()))
    return 0
