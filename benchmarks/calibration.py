"""Calibration benchmark: every calibrator of every head fitted on half of the calib day and measured on
the other half (where calibration is defined), with the test day (which adds the day-to-day drift) beside.

synthetic logs -> Beam job -> default model (DCNv2 + AdaSparse + ESMM) -> the `tfads calibrate --holdout 0.5`
harness: Beam posterior statistics of the fit half, AdaCalib per head with the base frozen, the baselines
fitted on the same rows; metrics per head (pCTR on impressions, pCVR on clicked rows, pCTCVR = calibrated
pCTR x calibrated pCVR on impressions, as served) on the held-out half and on the test day.

Besides the label metrics, the generator's truth gives a noise-free one: ``Field-RCE[scenario] to truth``,
Field-RCE with the true probabilities in place of the labels. Reference rows (not calibrators):
- ``true probabilities``: the truth scored against the labels, the label-noise floor of the label metrics.
- ``oracle shift (fit-rows truth)``: one logit shift per scenario that matches the fit rows' true rate (perfect
  knowledge of the fit half; on the test day what is left is the drift between the days).
- pCTCVR only: ``AdaCalib (pCTCVR direct)`` and ``per-field isotonic (pCTCVR direct)``, fitted on pCTCVR itself
  (the design decision 0035 did not take).
Paired folds (``--folds R``): R random halvings of the whole calib day, both halves fitted in turn (numpy
statistics, equal to the Beam job's), AdaCalib - per-field isotonic Field-RCE per head with a t interval.

    python -m benchmarks.calibration [--impressions-per-day 125000 --days 7 --folds 2] [--reuse]

The default size keeps a calib day of two shard files, so ``--holdout 0.5`` halves it (it holds out
``ceil(0.5 x shards)``), and the run within about ten minutes on two cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import time

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

import tfads  # noqa: F401

from tfads import metrics
from benchmarks.results import add_results_argument, publish

FIELD = "scenario"
HEADS = ("ctr", "cvr", "ctcvr")
LABEL = {"ctr": "click", "cvr": "conversion", "ctcvr": "conversion"}
PCOC_TOLERANCE, TOP_VALUES = 0.05, 20


def rows_of(frame: pd.DataFrame, head: str) -> pd.DataFrame:
    """The rows a head is calibrated and measured on (pCVR: clicked rows)."""
    return frame[frame["click"] == 1] if head == "cvr" else frame


def field_rce_to_truth(q: np.ndarray, p: np.ndarray, values: np.ndarray) -> float:
    """Field-RCE with the true probabilities ``q`` in place of the labels: no label noise."""
    d = pd.DataFrame({"q": q, "p": p, "v": pd.Series(values).astype(str).to_numpy()})
    g = d.groupby("v").agg(n=("q", "size"), q=("q", "sum"), p=("p", "sum"))
    return float((g.n * (g.q - g.p).abs() / g.q).sum() / g.n.sum())


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


def reference_preds(fit: pd.DataFrame, frame: pd.DataFrame, head: str) -> dict[str, np.ndarray]:
    """The truth and the oracle per-scenario shift (fit rows' truth) on a head's rows of ``frame``."""
    fit, rows = rows_of(fit, head), rows_of(frame, head)
    shift = logit_shift_per_value(fit[head].to_numpy(), fit[f"true_{head}"].to_numpy(), fit[FIELD].to_numpy())
    return {"true probabilities": rows[f"true_{head}"].to_numpy(),
            "oracle shift (fit-rows truth)": shifted(rows[f"{head}_raw"].to_numpy(), rows[FIELD].to_numpy(), shift)}


def table_rows(frame: pd.DataFrame, head: str, preds: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Label metrics per method on a head's rows, plus Field-RCE by scenario to the truth."""
    rows = rows_of(frame, head)
    y, q = rows[LABEL[head]].to_numpy(), rows[f"true_{head}"].to_numpy()
    by_field = {f: rows[f].astype(str).to_numpy() for f in (FIELD, "advertiser_id")}
    out = {}
    for name, p in preds.items():
        row = metrics.summarize(y, p, field=by_field, true_p=q)
        row.pop("Oracle AUC"), row.pop("Oracle LogLoss")
        row[f"Field-RCE[{FIELD}] to truth"] = field_rce_to_truth(q, p, by_field[FIELD])
        out[name] = row
    return out


def labels_over_truth(frame: pd.DataFrame, head: str) -> float:
    """Positive labels / the truth's expected positives on a head's rows (conversions lost to delay and window)."""
    rows = rows_of(frame, head)
    return float(rows[LABEL[head]].sum() / rows[f"true_{head}"].sum())


def whole_calib_day(report) -> pd.DataFrame:
    """The base model's predictions (with truth) on every calib-day row: the fit rows and the held-out ones."""
    from tfads.jobs.calibrate import HOLDOUT

    held = report.evaluated[HOLDOUT]
    held = held.assign(**{h: held[f"{h}_raw"] for h in HEADS})
    columns = ["trace_id", FIELD, "click", "conversion", *HEADS, *(f"true_{h}" for h in HEADS)]
    return pd.concat([report.calib[columns], held[columns]], ignore_index=True)


def _fit_heads(fit: pd.DataFrame, heads: tuple[str, ...], epochs: int) -> dict[str, tuple]:
    """Per head: an AdaCalib layer (numpy statistics, as the Beam job computes them) and a per-field isotonic."""
    from tfads.calibration import PerFieldIsotonic, compute_calibration_stats, fit_adacalib

    fitted = {}
    for head in heads:
        rows = rows_of(fit, head)
        p, y, v = rows[head].to_numpy(), rows[LABEL[head]].to_numpy(), rows[FIELD].to_numpy()
        stats = compute_calibration_stats(p, y, {FIELD: v}, task="ctr" if head == "ctr" else "cvr")
        fitted[head] = fit_adacalib(stats, p, y, {FIELD: v}, epochs=epochs), PerFieldIsotonic().fit(p, y, v)
    return fitted


def _predict(fitted: tuple, frame: pd.DataFrame, head: str) -> tuple[np.ndarray, np.ndarray]:
    from tfads.calibration.fit import calibration_inputs

    layer, isotonic = fitted
    p, v = frame[head].to_numpy(), frame[FIELD].to_numpy()
    return layer(calibration_inputs(p, {FIELD: v})).numpy().reshape(-1), isotonic.predict(p, v)


def direct_ctcvr(fit: pd.DataFrame, frames: dict[str, pd.DataFrame], epochs: int) -> dict[str, dict[str, np.ndarray]]:
    """pCTCVR calibrated on itself (all impressions, label conversion) by AdaCalib and per-field isotonic."""
    fitted = _fit_heads(fit, ("ctcvr",), epochs)["ctcvr"]
    out = {}
    for split, frame in frames.items():
        ada, iso = _predict(fitted, frame.assign(ctcvr=frame["ctcvr_raw"]), "ctcvr")
        out[split] = {"AdaCalib (pCTCVR direct)": ada, "per-field isotonic (pCTCVR direct)": iso}
    return out


def paired_folds(day: pd.DataFrame, folds: int, epochs: int) -> dict[str, dict[str, float]]:
    """AdaCalib - per-field isotonic Field-RCE by scenario (labels and truth) per head over ``folds`` random
    halvings of the calib day, each half fitted and the other measured: mean, sd and a 95 % t interval."""
    diffs: dict[str, list[list[float]]] = {h: [] for h in HEADS}
    for rep in range(folds):
        half = np.array([hashlib.md5(f"{rep}:{t}".encode()).digest()[0] % 2 for t in day["trace_id"]])
        for side in (0, 1):
            fit, held = day[half == side], day[half != side].copy()
            fitted = _fit_heads(fit, ("ctr", "cvr"), epochs)
            for head in ("ctr", "cvr"):
                held[f"{head}_ada"], held[f"{head}_iso"] = _predict(fitted[head], held, head)
            for method in ("ada", "iso"):
                held[f"ctcvr_{method}"] = held[f"ctr_{method}"] * held[f"cvr_{method}"]
            for head in HEADS:
                rows = rows_of(held, head)
                y, q, v = rows[LABEL[head]].to_numpy(), rows[f"true_{head}"].to_numpy(), rows[FIELD].to_numpy()
                ada, iso = rows[f"{head}_ada"].to_numpy(), rows[f"{head}_iso"].to_numpy()
                diffs[head].append([metrics.field_rce(y, ada, v) - metrics.field_rce(y, iso, v),
                                    field_rce_to_truth(q, ada, v) - field_rce_to_truth(q, iso, v)])
    out = {}
    for head, values in diffs.items():
        d = np.asarray(values)
        half_width = scipy_stats.t.ppf(0.975, len(d) - 1) * d.std(axis=0, ddof=1) / np.sqrt(len(d))
        for j, kind in enumerate(("labels", "truth")):
            out[f"{head} ({kind})"] = {"mean": float(d[:, j].mean()), "sd": float(d[:, j].std(ddof=1)),
                                       "low": float(d[:, j].mean() - half_width[j]),
                                       "high": float(d[:, j].mean() + half_width[j]), "folds": len(d)}
    return out


def top_value_pcoc(frame: pd.DataFrame, preds: dict[str, np.ndarray], head: str = "ctcvr") -> pd.DataFrame:
    """Per top-20 scenario (most rows) of ``frame``: positives, PCOC of each prediction against the labels
    and ``p/q`` against the truth."""
    rows = rows_of(frame, head)
    table = pd.DataFrame({"value": rows[FIELD].astype(str).to_numpy(), "rows": 1, "positives": rows[LABEL[head]],
                          "truth": rows[f"true_{head}"].to_numpy(),
                          **{name: p for name, p in preds.items()}})
    g = table.groupby("value").sum().sort_values("rows", ascending=False).head(TOP_VALUES)
    out = g[["rows", "positives"]].copy()
    out["true probabilities PCOC"] = g["truth"] / g["positives"]
    for name in preds:
        out[f"{name} PCOC"], out[f"{name} p/q"] = g[name] / g["positives"], g[name] / g["truth"]
    return out


def pcoc_target(top: pd.DataFrame) -> dict[str, float]:
    """How many of the top values meet |PCOC - 1| <= 0.05, and the positives per value that needs at 95 % from
    Poisson label noise alone (``positives needed``)."""
    within = {c: int((np.abs(top[c] - 1) <= PCOC_TOLERANCE).sum()) for c in top.columns if c.endswith(("PCOC", "p/q"))}
    needed = (scipy_stats.norm.ppf(0.975) / PCOC_TOLERANCE) ** 2
    return {"values": len(top), **{f"within ±{PCOC_TOLERANCE}: {c}": n for c, n in within.items()},
            "positives min": int(top["positives"].min()), "positives median": float(top["positives"].median()),
            "positives max": int(top["positives"].max()),
            "positives needed": float(np.ceil(needed))}


def headline(results: dict, paired: dict) -> str:
    """Markdown: AdaCalib vs per-field isotonic Field-RCE by scenario per head and split, and the paired folds."""
    from tfads.jobs.calibrate import EVALUATIONS

    key, truth_key = f"Field-RCE[{FIELD}]", f"Field-RCE[{FIELD}] to truth"
    lines = ["| head | rows | AdaCalib | per-field isotonic | uncalibrated | AdaCalib to truth | per-field isotonic "
             "to truth | paired folds: AdaCalib - per-field isotonic (labels; truth), 95 % t interval |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for split, by_head in results.items():
        for head, rows in by_head.items():
            fold = ""
            if split != "test":
                fold = "; ".join(f"{p['mean']:+.4f} [{p['low']:+.4f}, {p['high']:+.4f}]"
                                 for p in (paired[f"{head} (labels)"], paired[f"{head} (truth)"]))
            lines.append(f"| p{head.upper()} | {EVALUATIONS[split]} | {rows['AdaCalib'][key]:.4f} | "
                         f"{rows['per-field isotonic'][key]:.4f} | {rows['uncalibrated'][key]:.4f} | "
                         f"{rows['AdaCalib'][truth_key]:.4f} | {rows['per-field isotonic'][truth_key]:.4f} | {fold} |")
    return "\n".join(lines)


def notes(summary: dict) -> list[str]:
    """The target, the label loss, the drift and the run time in words (markdown bullets)."""
    top, rates, loss = summary["ctcvr_top_scenarios"], summary["rates"], summary["labels_over_truth"]
    n, within = top["values"], {k.split(": ", 1)[1]: v for k, v in top.items() if k.startswith("within")}
    return [
        f"- pCTCVR PCOC within 1 ± {PCOC_TOLERANCE} on the top {n} scenarios of the held-out calib rows: AdaCalib "
        f"{within['AdaCalib PCOC']}/{n} against the labels, {within['AdaCalib p/q']}/{n} against the truth; the true "
        f"probabilities themselves {within['true probabilities PCOC']}/{n} against the labels. These scenarios hold "
        f"{top['positives min']}-{top['positives max']} conversions (median {top['positives median']:g}); ±5 % at 95 % "
        f"needs about {top['positives needed']:,.0f} per scenario from label noise alone.",
        f"- Conversion labels / the truth's expected conversions: held-out calib rows "
        f"{loss['calib_holdout']['ctcvr']:.3f}, test day {loss['test']['ctcvr']:.3f} (the test day is the last: its "
        "conversions are still pending at the end of the logs, see conversion_delay.md).",
        f"- Drift, calib (fit rows) -> test day: CTR {rates['calib']['ctr']:.4f} -> {rates['test']['ctr']:.4f}, CVR of "
        f"clicks {rates['calib']['cvr']:.4f} -> {rates['test']['cvr']:.4f}.",
        "- Seconds per stage: " + ", ".join(f"{k} {v:g}" for k, v in summary["seconds"].items()) + ".",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--impressions-per-day", type=int, default=125_000)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the base model")
    parser.add_argument("--folds", type=int, default=2, help="random halvings of the calib day for paired differences")
    parser.add_argument("--out", default="bench_out/calibration")
    parser.add_argument("--reuse", action="store_true", help="keep the logs, data and model of an earlier run")
    add_results_argument(parser)
    args = parser.parse_args(argv)

    from tfads.core.experiment import load_experiment
    from tfads.jobs.calibrate import EVALUATIONS, HOLDOUT, best_baseline, calibrate_and_report
    from tfads.jobs.dataset import synthetic_dataset
    from tfads.train import train

    logs, data, model_dir = (os.path.join(args.out, d) for d in ("logs", "data", "model"))
    manifest = os.path.join(data, "manifest.json")
    seconds, start = {}, time.monotonic()

    def lap(stage: str) -> None:
        nonlocal start
        seconds[stage], start = round(time.monotonic() - start, 1), time.monotonic()

    if not (args.reuse and os.path.isdir(model_dir)):
        synthetic_dataset(args.out, days=args.days, impressions_per_day=args.impressions_per_day, seed=11, workers=2)
        config = load_experiment()
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=args.epochs))
        train(config, manifest, model_dir, verbose=2)
    lap("data and base model")
    report = calibrate_and_report(model_dir, manifest, os.path.join(args.out, "calibrated"), logs=logs, holdout=0.5)
    lap("tfads calibrate --holdout 0.5")
    direct = direct_ctcvr(report.calib, report.evaluated, epochs=5)
    results: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for split, frame in report.evaluated.items():
        for head in HEADS:
            preds = {**report.preds[split][head], **reference_preds(report.calib, frame, head)}
            if head == "ctcvr":
                preds.update(direct[split])
            results.setdefault(split, {})[head] = table_rows(frame, head, preds)
    lap("pCTCVR calibrated directly (reference rows)")
    paired = paired_folds(whole_calib_day(report), args.folds, 5)
    lap(f"paired folds ({args.folds} halvings)")
    held = report.evaluated[HOLDOUT]
    top = top_value_pcoc(held, {"AdaCalib": report.preds[HOLDOUT]["ctcvr"]["AdaCalib"],
                                "per-field isotonic": report.preds[HOLDOUT]["ctcvr"]["per-field isotonic"]})
    key, truth_key = f"Field-RCE[{FIELD}]", f"Field-RCE[{FIELD}] to truth"
    summary = {
        "calib_rows": {"fit": len(report.calib), "held_out": len(held), "test": len(report.test)},
        "adacalib_over_per_field_isotonic": {
            split: {head: {k: rows["AdaCalib"][k] / rows["per-field isotonic"][k] for k in (key, truth_key)}
                    for head, rows in by_head.items()} for split, by_head in results.items()},
        "best_baseline": {split: {head: best_baseline(rows, FIELD) for head, rows in by_head.items()}
                          for split, by_head in results.items()},
        "paired_folds_adacalib_minus_per_field_isotonic": paired,
        "seconds": seconds,
        "ctcvr_top_scenarios": pcoc_target(top),
        "labels_over_truth": {split: {head: labels_over_truth(f, head) for head in HEADS}
                              for split, f in report.evaluated.items()},
        "rates": {split: {"ctr": float(f["click"].mean()), "cvr": float(f.loc[f["click"] == 1, "conversion"].mean())}
                  for split, f in {"calib": report.calib, "test": report.test}.items()},
    }
    print(json.dumps(summary, indent=2, default=float))
    sections = [headline(results, summary["paired_folds_adacalib_minus_per_field_isotonic"]), "", *notes(summary), ""]
    for split, by_head in results.items():
        for head, rows in by_head.items():
            print(f"\np{head.upper()} on the {EVALUATIONS[split]}")
            print(metrics.metrics_table(rows))
            table = metrics.metrics_table(rows, markdown=True)
            sections += [f"### p{head.upper()} on the {EVALUATIONS[split]}", "", table, ""]
    sections += [f"### pCTCVR on the top {TOP_VALUES} scenarios of the held-out calib rows", "",
                 metrics.metrics_table(top.to_dict("index"), markdown=True), ""]
    publish("calibration", {"rows": results, "top_scenarios_ctcvr": top.to_dict("index"), **summary},
            "\n".join(sections), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
