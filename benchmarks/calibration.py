"""Calibration benchmark: every calibrator side by side on the same splits of generator data.

synthetic logs -> Beam job -> default model (DCNv2 + AdaSparse) -> `tfads calibrate` harness: Beam
posterior statistics, AdaCalib on the calib split with the base frozen, the baselines fitted on the
same rows; metrics on the test split (Field-RCE by scenario and advertiser, Field-ECE, ECE, PCOC,
LogLoss, AUC, distance to the true probabilities).

    python -m benchmarks.calibration [--impressions-per-day 100000 --days 7]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import tfads  # noqa: F401

from tfads import metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--impressions-per-day", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="bench_out/calibration")
    args = parser.parse_args(argv)

    from beam_jobs.build_examples import run as build
    from tfads.calibrate import best_baseline, calibrate_and_report
    from tfads.datagen import generate
    from tfads.experiment import load_experiment
    from tfads.train import train

    logs, data, model_dir = (os.path.join(args.out, d) for d in ("logs", "data", "model"))
    generate(logs, days=args.days, impressions_per_day=args.impressions_per_day, seed=11, progress=False)
    if build(["--logs", logs, "--out", data, "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]):
        return 2
    manifest = os.path.join(data, "manifest.json")
    config = load_experiment()
    train(
        dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=args.epochs)),
        manifest,
        model_dir,
        verbose=2,
    )
    report = calibrate_and_report(model_dir, manifest, os.path.join(args.out, "calibrated"), logs=logs)
    best = best_baseline(report.rows)
    key = "Field-RCE[scenario]"
    summary = {
        "rows": report.rows,
        "best_baseline": best,
        "adacalib_over_best_baseline_field_rce": report.rows["AdaCalib"][key] / report.rows[best][key],
        "auc_change": report.rows["AdaCalib"]["AUC"] - report.rows["uncalibrated"]["AUC"],
    }
    print(json.dumps(summary, indent=2, default=float))
    print(metrics.metrics_table(report.rows))
    print(
        f"AdaCalib / best baseline ({best}) {key}: {summary['adacalib_over_best_baseline_field_rce']:.2f} "
        f"(target <= 0.5); AUC change vs uncalibrated {summary['auc_change']:+.4f} (target >= 0)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
