"""Calibration benchmark: every calibrator side by side on the same splits of generator data.

synthetic logs -> Beam job -> default model (DCNv2 + AdaSparse) -> `tfads calibrate` harness: Beam
posterior statistics, AdaCalib on the calib split with the base frozen, the baselines fitted on the
same rows; metrics on the test split (Field-RCE by scenario and advertiser, Field-ECE, ECE, PCOC,
LogLoss, AUC, distance to the true probabilities).

Reference rows (not calibrators, they see what a calibrator cannot) bound what is reachable:
- ``true probabilities``: the generator's truth; its Field-RCE is the label-noise floor of the test day.
- ``oracle shift (test labels)``: one logit shift per scenario fitted on the test day's own labels
  (zero Field-RCE by construction: what overfitting the metric looks like).
- ``oracle shift (test truth)``: the shift per scenario that matches the test day's true rate.
- ``oracle shift (calib truth)``: the shift matching the calib day's true rate, applied to the test
  day: perfect knowledge of the calib day, so what is left is the drift between the two days.

    python -m benchmarks.calibration [--impressions-per-day 300000 --days 7] [--reuse]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import numpy as np
import pandas as pd

import tfads  # noqa: F401

from tfads import metrics
from benchmarks.results import add_results_argument, publish

FIELD = "scenario"


def logit_shift_per_value(p: np.ndarray, target: np.ndarray, values: np.ndarray, iters: int = 50) -> pd.Series:
    """Per value: the logit shift ``b`` with ``sum sigmoid(logit(p) + b) = sum target`` over its rows."""
    z = np.log(np.clip(p, 1e-6, 1 - 1e-6)) - np.log1p(-np.clip(p, 1e-6, 1 - 1e-6))
    codes, uniques = pd.factorize(pd.Series(values).astype(str))
    goal = np.clip(np.bincount(codes, weights=target), 1e-3, None)
    lo, hi = np.full(uniques.size, -15.0), np.full(uniques.size, 15.0)
    for _ in range(iters):  # bisection: the sum is increasing in b
        mid = (lo + hi) / 2
        total = np.bincount(codes, weights=1 / (1 + np.exp(-(z + mid[codes]))), minlength=uniques.size)
        lo, hi = np.where(total < goal, mid, lo), np.where(total < goal, hi, mid)
    return pd.Series((lo + hi) / 2, index=uniques)


def shifted(p: np.ndarray, values: np.ndarray, shift: pd.Series) -> np.ndarray:
    """``sigmoid(logit(p) + shift[value])`` (0 for values without a shift)."""
    z = np.log(np.clip(p, 1e-6, 1 - 1e-6)) - np.log1p(-np.clip(p, 1e-6, 1 - 1e-6))
    b = pd.Series(values).astype(str).map(shift).fillna(0.0).to_numpy()
    return 1 / (1 + np.exp(-(z + b)))


def reference_preds(calib: pd.DataFrame, test: pd.DataFrame) -> dict[str, np.ndarray]:
    """pCTR of the true probabilities and of the three oracle per-scenario shifts on the test split."""
    y, raw, v = test["click"].to_numpy(), test["ctr_raw"].to_numpy(), test[FIELD].to_numpy()
    return {
        "true probabilities": test["true_ctr"].to_numpy(),
        "oracle shift (test labels)": shifted(raw, v, logit_shift_per_value(raw, y, v)),
        "oracle shift (test truth)": shifted(raw, v, logit_shift_per_value(raw, test["true_ctr"].to_numpy(), v)),
        "oracle shift (calib truth)": shifted(
            raw, v, logit_shift_per_value(calib["ctr"].to_numpy(), calib["true_ctr"].to_numpy(), calib[FIELD])
        ),
    }


def table_rows(test: pd.DataFrame, preds: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Metrics per method on the test split, plus ``Field-RCE[scenario]@test level``: the Field-RCE after
    one global logit shift that moves the method's mean to the test day's click rate. That shift uses the
    test labels (diagnostic only): it removes the day-to-day level drift no calibrator fitted on the calib
    day can know, and leaves how well the method gets the scenarios relative to each other."""
    y = test["click"].to_numpy()
    by_field = {f: test[f].astype(str).to_numpy() for f in (FIELD, "advertiser_id")}
    rows = {}
    for name, p in preds.items():
        row = metrics.summarize(y, p, field=by_field, true_p=test["true_ctr"].to_numpy())
        row.pop("Oracle AUC"), row.pop("Oracle LogLoss")
        level = shifted(p, np.zeros(len(p)), logit_shift_per_value(p, y, np.zeros(len(p))))
        row[f"Field-RCE[{FIELD}]@test level"] = metrics.field_rce(y, level, by_field[FIELD])
        rows[name] = row
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--impressions-per-day", type=int, default=300_000)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the base model")
    parser.add_argument("--out", default="bench_out/calibration")
    parser.add_argument("--reuse", action="store_true", help="keep the logs, data and model of an earlier run")
    add_results_argument(parser)
    args = parser.parse_args(argv)

    from tfads.core.experiment import load_experiment
    from tfads.jobs.calibrate import best_baseline, calibrate_and_report
    from tfads.jobs.dataset import synthetic_dataset
    from tfads.train import train

    logs, data, model_dir = (os.path.join(args.out, d) for d in ("logs", "data", "model"))
    manifest = os.path.join(data, "manifest.json")
    if not (args.reuse and os.path.isdir(model_dir)):
        synthetic_dataset(args.out, days=args.days, impressions_per_day=args.impressions_per_day, seed=11, workers=2)
        config = load_experiment()
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=args.epochs))
        train(config, manifest, model_dir, verbose=2)
    report = calibrate_and_report(model_dir, manifest, os.path.join(args.out, "calibrated"), logs=logs)
    rows = table_rows(report.test, {**report.preds, **reference_preds(report.calib, report.test)})
    best = best_baseline(rows, FIELD)
    key = f"Field-RCE[{FIELD}]"
    summary = {
        "test_rows": len(report.test),
        "best_baseline": best,
        "adacalib_over_best_baseline_field_rce": rows["AdaCalib"][key] / rows[best][key],
        "target_field_rce": rows[best][key] / 2,
        "true_probability_floor": rows["true probabilities"][key],
        "auc_change": rows["AdaCalib"]["AUC"] - rows["uncalibrated"]["AUC"],
    }
    print(json.dumps({"rows": rows, **summary}, indent=2, default=float))
    print(metrics.metrics_table(rows))
    print(
        f"AdaCalib / best baseline ({best}) {key}: {summary['adacalib_over_best_baseline_field_rce']:.2f} "
        f"(target <= 0.5, i.e. {summary['target_field_rce']:.3f}; true probabilities score "
        f"{summary['true_probability_floor']:.3f}); AUC change vs uncalibrated {summary['auc_change']:+.4f} "
        "(target >= 0)"
    )
    publish("calibration", {"rows": rows, **summary}, metrics.metrics_table(rows, markdown=True), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
