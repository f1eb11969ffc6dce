"""``tfads calibrate``: AdaCalib on the calib split with the base model frozen -> one combined model."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, help="the base model: a `tfads train` output dir")
    parser.add_argument("--data", required=True, help="manifest.json of the Beam data job")
    parser.add_argument("--out", required=True, help="output dir: model/ (raw + calibrated outputs) and report/")
    parser.add_argument("--fields", nargs="+", default=None,
                        help="fields AdaCalib calibrates per value (default: the first field marked "
                        "`calibration: true` in the schema, a domain-aware one first)")
    parser.add_argument("--logs", default=None, help="datagen logs dir: adds the distance to the true probabilities")
    parser.add_argument("--epochs", type=int, default=5, help="AdaCalib training epochs")
    parser.epilog = (
        "The posterior statistics are computed by the Beam job beam_jobs.calibration_stats (DirectRunner here); "
        "the report compares AdaCalib with Platt, temperature, histogram binning, isotonic, per-field isotonic "
        "and NeuCalib on the test split."
    )


def run(args: argparse.Namespace) -> int:
    from tfads.jobs.calibrate import calibrate_and_report

    report = calibrate_and_report(
        args.model_dir, args.data, args.out, fields=args.fields, logs=args.logs, epochs=args.epochs
    )
    print(report.table)
    print(f"combined model: {report.model_path}")
    print("\n".join(f"wrote {p}" for p in report.files))
    return 0
