"""``tfads calibrate``: AdaCalib on the calib split with the base model frozen -> one combined model."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, help="the base model: a `tfads train` output dir")
    parser.add_argument("--data", required=True, help="manifest.json of the Beam data job")
    parser.add_argument("--out", required=True,
                        help="output dir: the combined model (raw + calibrated outputs; a model dir that `tfads "
                        "export` takes) and report/")
    parser.add_argument("--fields", nargs="+", default=None,
                        help="fields AdaCalib calibrates per value (default: the first field marked "
                        "`calibration: true` in the schema, a domain-aware one first)")
    parser.add_argument("--logs", default=None, help="datagen logs dir: adds the distance to the true probabilities")
    parser.add_argument("--epochs", type=int, default=5, help="AdaCalib training epochs")
    parser.add_argument(
        "--calib-from-valid", type=float, default=None, metavar="FRACTION",
        help="fit on a held-out slice of the valid split instead of the calib split: the last FRACTION of each "
        "valid day's shard files (a random slice of its rows, as shards are hashes of the key); for data built "
        "without a calib split (splits.calib_days: 0). Early stopping has seen these rows, so a calib split is "
        "better when the data allows",
    )
    parser.add_argument(
        "--holdout", type=float, default=None, metavar="FRACTION",
        help="hold the last ceil(FRACTION x shard files) of each calib day out of fitting (a random slice of its "
        "rows) and report calibration on them beside the test day: the calib day is where calibration is defined, the "
        "test day adds the day-to-day drift. The calibrated model is then fitted on the rest only",
    )
    parser.epilog = (
        "The posterior statistics are computed by the Beam job beam_jobs.calibration_stats (DirectRunner here); "
        "the report compares AdaCalib with Platt, temperature, histogram binning, isotonic, per-field isotonic "
        "and NeuCalib for each head (pCTR on impressions, pCVR on clicked rows, pCTCVR = calibrated pCTR x "
        "calibrated pCVR on impressions) on the test split and, with --holdout, on held-out calib rows."
    )


def run(args: argparse.Namespace) -> int:
    from tfads.jobs.calibrate import calibrate_and_report

    report = calibrate_and_report(
        args.model_dir, args.data, args.out, fields=args.fields, logs=args.logs, epochs=args.epochs,
        calib_from_valid=args.calib_from_valid, holdout=args.holdout,
    )
    print(report.table)
    print(f"combined model: {report.model_path}")
    print("\n".join(f"wrote {p}" for p in report.files))
    return 0
