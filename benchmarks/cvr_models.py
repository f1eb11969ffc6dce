"""CVR models (issue 22): ESMM (today's default) vs UKD vs AutoHERI vs both on generator data, several train seeds.

One data set (``--days`` x ``--impressions-per-day``, data seed ``--data-seed``), every variant trained once per
train seed from the default experiment, all scored on the same test rows:

* ``esmm``: the default experiment (DCNv2 + AdaSparse + ESMM, one-layer towers ``[64]``);
* ``ukd``: ``tfads.jobs.ukd.run_ukd`` on the same config (teacher, then an ESMM student with pseudo labels);
* ``autoheri``: ``tfads.jobs.autoheri.run_autoheri`` with two-layer towers ``[64, 32]`` (AutoHERI needs >= 2);
* ``both``: ``run_ukd`` on the AutoHERI config with that seed's found edges fixed (``with_heri(mode="fixed")``):
  a UKD student with AutoHERI's towers, by configuration only;
* ``esmm_deep`` (not in the default list): ESMM with AutoHERI's two-layer towers and no edges, the control that
  separates AutoHERI's edges from its deeper towers.

Per variant: pCVR on clicked test rows (AUC, LogLoss, PCOC), pCVR over every test impression against the true
pCVR, pCTCVR AUC and PCOC (``benchmarks.model_quality.cvr_rows``); paired AUC differences to ESMM per train seed
and their mean over seeds, each with a paired-bootstrap 95 % interval over test rows; the share of the pCVR AUC
gap to the oracle (true pCVR) closed. Then ``tfads calibrate --holdout 0.5`` of every model: calibrated pCTCVR
PCOC overall and per top-20 scenario on the held-out calib rows (where calibration is defined) and on the test
day (which adds the day-to-day drift and the pending conversions), with the label-noise bound of
``benchmarks.calibration.pcoc_target``. Last, the calibrated models are served by the embedded server and
``tfads simulate-ab --bid-type OCPA`` replays the same test opportunities through ESMM and each variant (paired,
common random numbers): ROI per arm and the ROI lift with its bootstrap interval.

Default size 10 days x 100k impressions (700k train rows, ~2k train conversions), 3 train seeds: about an hour
on two cores (the issue's measurement used 300k a day; 100k keeps the 13 trainings per seed inside that hour).
Runs and calibrations are cached under ``--out`` by their settings, so a re-run only redoes what changed.

    python -m benchmarks.cvr_models                       # 10 days x 100k, train seeds 0 1 2
    python -m benchmarks.cvr_models --quick               # smoke: 5 days x 20k, one seed, a few minutes
    python -m benchmarks.cvr_models --variants esmm,esmm_deep,autoheri --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import shutil
import time
from typing import Any

import numpy as np
import pandas as pd

import tfads  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from benchmarks.calibration import pcoc_target, top_value_pcoc
from benchmarks.model_quality import (
    _digest,
    cached_run,
    cvr_fields,
    cvr_rows,
    kept_columns,
    paired_auc_diff,
    prepare_data,
    test_truth,
)
from benchmarks.results import add_results_argument, publish
from tfads.core.experiment import ExperimentConfig, load_experiment
from tfads.metrics import auc, bootstrap_ci, metrics_table

BASELINE = "esmm"
VARIANTS = ("esmm", "ukd", "autoheri", "both", "esmm_deep")
DEFAULT_VARIANTS = ("esmm", "ukd", "autoheri", "both")
HERI_TOWERS = [64, 32]  # AutoHERI needs at least two tower layers; the default experiment has one
CALIB_SPLITS = ("calib_holdout", "test")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--days", type=int, default=10, help="the last 3 days are valid / calib / test")
    p.add_argument("--impressions-per-day", type=int, default=100_000)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train seeds (every variant each)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--epochs", type=int, default=None, help="epochs cap (default: the experiment's)")
    p.add_argument("--bootstrap", type=int, default=200, help="paired bootstrap resamples")
    p.add_argument("--holdout", type=float, default=0.5, help="`tfads calibrate --holdout`: calib rows held out")
    p.add_argument("--opportunities", type=int, default=1000, help="A/B replay opportunities (0: no replay)")
    p.add_argument("--price", type=float, default=1.0, help="oCPA target CPA of every candidate (ROI is scale-free)")
    p.add_argument("--out", default="bench_out/cvr_models", help="data, runs and calibrations (cached)")
    p.add_argument("--quick", action="store_true", help="smoke run: 5 days x 20k, seed 0, epochs cap 2")
    add_results_argument(p)
    args = p.parse_args(argv)
    if args.quick:
        args.days, args.impressions_per_day, args.seeds = 5, 20_000, [0]
        args.epochs, args.bootstrap, args.opportunities = args.epochs or 2, 50, 300
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or BASELINE not in variants:
        p.error(f"--variants: unknown {unknown} or no {BASELINE}; choose from {list(VARIANTS)}")
    if "both" in variants and "autoheri" not in variants:
        p.error("--variants: `both` takes its edges from `autoheri`; list both")
    args.variants = [v for v in VARIANTS if v in variants]  # autoheri before both
    return args


def variant_config(base: ExperimentConfig, name: str, seed: int, epochs: int | None, edges: list | None = None):
    """The experiment variant ``name`` trains from (train seed ``seed``): the default, or AutoHERI's towers."""
    from tfads.jobs.autoheri import with_heri

    train = dataclasses.replace(base.train, seed=seed, **({"epochs": epochs} if epochs else {}))
    config = dataclasses.replace(base, train=train)
    if name in ("esmm", "ukd"):
        return config
    deep = dataclasses.replace(config, model=dataclasses.replace(config.model, tower_units=list(HERI_TOWERS)))
    if name == "esmm_deep":
        return deep
    return with_heri(deep, mode="search", edges=[]) if name == "autoheri" else with_heri(deep, mode="fixed",
                                                                                         edges=edges)


def _fit(name: str, config: ExperimentConfig, manifest_path: str, run_dir: str) -> tuple[str, dict[str, Any]]:
    """Train variant ``name`` under ``run_dir``: (its model dir, facts for the record)."""
    from tfads.jobs.autoheri import run_autoheri
    from tfads.jobs.ukd import run_ukd
    from tfads.train import train

    model_dir = os.path.join(run_dir, "model")
    if name in ("ukd", "both"):
        result = run_ukd(config, manifest_path, run_dir, verbose=2)
        facts = {"epochs_run": result.student.epochs_run, "reference_uncertainty": result.reference_uncertainty}
        return result.student_dir, facts
    if name == "autoheri":
        record = run_autoheri(config, manifest_path, model_dir, verbose=2)
        return model_dir, {"edges": record["edges"], "gates": record["gates"],
                           "epochs_run": record["retrain"]["epochs_run"]}
    result = train(config, manifest_path, model_dir, verbose=2)
    return model_dir, {"epochs_run": result.epochs_run}


def run_variant(name: str, config: ExperimentConfig, manifest_path: str, out: str, seed: int) -> dict[str, Any]:
    """Train (or load from the cache) one variant for one seed; its record with the scored test rows."""
    run_dir = os.path.join(out, "runs", f"{name}-s{seed}")
    return cached_run(out, run_dir, {"variant": name, "config": config.to_dict()}, f"{name} seed {seed}",
                      lambda: _fit_variant(name, config, manifest_path, run_dir, seed))


def _fit_variant(name: str, config: ExperimentConfig, manifest_path: str, run_dir: str,
                 seed: int) -> tuple[dict[str, Any], pd.DataFrame]:
    from tfads.core.manifest import load_manifest
    from tfads.model_io import load_trained_model
    from tfads.predict import predict_split

    print(f"\n=== {name} seed {seed}: training ===", flush=True)
    start = time.monotonic()
    model_dir, facts = _fit(name, config, manifest_path, run_dir)
    seconds = time.monotonic() - start
    manifest = load_manifest(manifest_path)
    scored = kept_columns(predict_split(load_trained_model(model_dir), manifest, "test"), manifest)
    for sub in ("model/backup", "model/search/backup", "teacher/backup", "student/backup"):
        shutil.rmtree(os.path.join(run_dir, sub), ignore_errors=True)
    for path in glob.glob(os.path.join(run_dir, "**", "checkpoints", "ckpt-*"), recursive=True):
        os.remove(path)  # the per-validation checkpoints; a model dir loads from checkpoints/final
    print(f"{name} seed {seed}: trained in {seconds:.0f} s", flush=True)
    return {"variant": name, "seed": seed, "model_dir": model_dir, "train_seconds": seconds, **facts}, scored


def calibrate_variant(run: dict[str, Any], manifest_path: str, truth_logs: str, holdout: float) -> dict[str, Any]:
    """``tfads calibrate --holdout`` of one trained model (cached): calibrated pCTCVR and pCVR per split, and the
    top-20 scenarios' pCTCVR PCOC (``benchmarks.calibration.top_value_pcoc``)."""
    from tfads.jobs.calibrate import calibrate_and_report

    cal_dir = os.path.join(os.path.dirname(run["model_dir"]), "calibrated")  # beside model/ or student/
    stamp = os.path.join(cal_dir, "summary.json")
    key = _digest({"run": run["key"], "holdout": holdout})
    if os.path.exists(stamp):
        with open(stamp) as f:
            cached = json.load(f)
        if cached["key"] == key:
            return cached
    report = calibrate_and_report(run["model_dir"], manifest_path, cal_dir, logs=truth_logs, holdout=holdout)
    summary: dict[str, Any] = {"key": key, "model_path": report.model_path, "splits": {}}
    for split in CALIB_SPLITS:
        frame, preds = report.evaluated[split], report.preds[split]["ctcvr"]
        rows = report.results[split]
        top = top_value_pcoc(frame, {m: preds[m] for m in ("uncalibrated", "AdaCalib")})
        summary["splits"][split] = {
            "pCTCVR PCOC": rows["ctcvr"]["AdaCalib"]["PCOC"],
            "pCTCVR PCOC uncalibrated": rows["ctcvr"]["uncalibrated"]["PCOC"],
            "pCTCVR Field-RCE[scenario]": rows["ctcvr"]["AdaCalib"]["Field-RCE[scenario]"],
            "pCVR PCOC (clicks)": rows["cvr"]["AdaCalib"]["PCOC"],
            "pCTCVR p/q": float(preds["AdaCalib"].sum() / frame["true_ctcvr"].sum()),
            "conversions": int(frame["conversion"].sum()),
            "top20": pcoc_target(top),
            "top20_table": top.to_dict("index"),
        }
    shutil.rmtree(os.path.join(cal_dir, "work"), ignore_errors=True)
    with open(stamp, "w") as f:
        json.dump(summary, f, indent=2, default=float)
    return summary


def truth_logs_of(logs: str, manifest_path: str, out: str) -> str:
    """A logs dir holding only the calib and test days' truth (links): what calibration and the replay read."""
    from tfads.core.manifest import load_manifest

    splits = load_manifest(manifest_path).data["splits"]
    slim = os.path.join(out, "truth_logs")
    for day in [*splits["calib"]["days"], *splits["test"]["days"]]:
        link = os.path.join(slim, "truth", day)
        if not os.path.exists(link):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(os.path.abspath(os.path.join(logs, "truth", day)), link)
    return slim


def ab_replay(calibrated: dict[str, list[dict]], treatment: str, manifest_path: str, truth_logs: str, out: str,
              args: argparse.Namespace) -> dict[str, Any]:
    """Serve every calibrated model (one version each) and replay the test opportunities, per seed, through every
    variant's arm as oCPA bids (``serving.simulate_ab``, paired: the same opportunities, competitors and draws for
    every arm and seed); the lift is ``treatment`` over ESMM. Cached by the models and the settings."""
    import yaml

    from serving.client_setup import open_client
    from serving.experiment import load_experiment_file
    from serving.export import export_model
    from serving.local_server import embedded_server, model_config_text
    from serving.simulate_ab import ReplaySettings, simulate_ab
    from tfads.core.manifest import load_manifest
    from tfads.model_io import load_trained_model
    from tfads.truth import read_truth

    stamp = os.path.join(out, "ab", "ab.json")
    key = _digest({"models": {n: [c["key"] for c in cs] for n, cs in calibrated.items()}, "n": args.opportunities,
                   "price": args.price, "treatment": treatment})
    if os.path.exists(stamp):
        with open(stamp) as f:
            cached = json.load(f)
        if cached["key"] == key:
            return cached
    base = os.path.join(out, "ab", "cvr")
    shutil.rmtree(base, ignore_errors=True)
    manifest = load_manifest(manifest_path)
    version = {}
    for name, cs in calibrated.items():
        for k, c in enumerate(cs):
            version[name, k] = len(version) + 1
            export_model(load_trained_model(c["model_path"], float32_matmuls=True), manifest, base,
                         version=version[name, k], model_name="cvr")
    config_file = os.path.join(out, "ab", "models.config")
    with open(config_file, "w") as f:
        f.write(model_config_text("cvr", base, {f"v{v}": v for v in version.values()}))
    truth = read_truth(truth_logs)
    settings = ReplaySettings(opportunities=args.opportunities, bid_type="OCPA", price=args.price,
                              control=BASELINE, treatment=treatment, uplift_metric="roi", bootstrap=args.bootstrap)
    result: dict[str, Any] = {"key": key, "treatment": treatment, "seeds": {}}
    with embedded_server([f"--model_config_file={config_file}"], ["cvr"],
                         log_path=os.path.join(out, "ab", "server.log")) as target:
        for k in range(len(calibrated[BASELINE])):
            arms = [{"name": name, "share": 1 / len(calibrated), "model_name": "cvr", "version": version[name, k],
                     "bidding": {"outputs": "calibrated"}} for name in calibrated]
            path = os.path.join(out, "ab", f"seed{k}.yaml")
            with open(path, "w") as f:
                yaml.safe_dump({"name": f"cvr_models_seed{k}", "salt": "cvr-models", "arms": arms,
                                "fallback_fields": ["campaign_id", "advertiser_id", "scenario"]}, f)
            start = time.monotonic()
            summary, reported = simulate_ab(manifest_path, truth, load_experiment_file(path), settings,
                                            lambda path=path: open_client(target, manifest_path, path,
                                                                          deadline_ms=1000))
            result["seeds"][str(k)] = {key: summary[key] for key in ("arms", "totals", "uplift", "versions")}
            result["settings"] = reported
            print(f"A/B seed {k} ({time.monotonic() - start:.0f} s): ROI " + ", ".join(
                f"{n} {summary['arms'][n]['roi']['estimate']:.3f}" for n in calibrated), flush=True)
    shutil.rmtree(base, ignore_errors=True)
    with open(stamp, "w") as f:
        json.dump(result, f, indent=2, default=float)
    return result


def roi_rows(ab: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per variant: ROI, conversions and spend per seed [95 % CI], pooled over seeds (sum of value / sum of
    spend), and for the treatment the paired ROI lift over ESMM per seed [95 % CI]."""
    rows: dict[str, dict[str, Any]] = {}
    for k, seed in ab["seeds"].items():
        for name, arm in seed["arms"].items():
            row = rows.setdefault(name, {"value": 0.0, "spend": 0.0})
            row["value"] += seed["totals"][name]["value"]
            row["spend"] += seed["totals"][name]["spend"]
            row[f"ROI seed {k} [95% CI]"] = [arm["roi"][c] for c in ("estimate", "low", "high")]
            row[f"conversions seed {k}"] = arm["conversions"]["estimate"]
            if name == ab["treatment"]:
                row[f"ROI lift vs {BASELINE} seed {k} [95% CI]"] = [seed["uplift"]["roi"][c]
                                                                     for c in ("estimate", "low", "high")]
    for row in rows.values():
        row["ROI pooled over seeds"] = row.pop("value") / row.pop("spend")
    return rows


def gap_closed(y: np.ndarray, q: np.ndarray, ps: list[np.ndarray], bs: list[np.ndarray], reps: int) -> list[float]:
    """Share of the AUC gap oracle ``q`` - baseline closed by ``ps`` (means over seeds k of ``ps[k]``,
    ``bs[k]``) on the same rows, with a paired percentile-bootstrap 95 % interval."""
    def share(idx: np.ndarray) -> list[float]:
        out = []
        for i in idx:
            gain = np.mean([auc(y[i], p[i]) - auc(y[i], b[i]) for p, b in zip(ps, bs, strict=True)])
            gap = np.mean([auc(y[i], q[i]) - auc(y[i], b[i]) for b in bs])
            out.append(gain / gap)
        return out

    ci = bootstrap_ci(share, len(y), np.random.default_rng(1), reps=reps)
    return [ci.estimate, ci.low, ci.high]


def paired_rows(runs: dict[str, list[dict]], truth: pd.DataFrame, reps: int) -> dict[str, dict[str, Any]]:
    """Per variant: paired AUC differences to ESMM (pCVR on clicked rows, pCTCVR on every row), mean over seeds
    and per seed, each [estimate, low, high]; the share of the pCVR gap to the oracle closed."""
    frames = {n: [r["scored"] for r in rs] for n, rs in runs.items()}
    first = frames[BASELINE][0].merge(truth, on="trace_id", how="left")
    for name, fs in frames.items():
        if not all((f["trace_id"].to_numpy() == first["trace_id"].to_numpy()).all() for f in fs):
            raise RuntimeError(f"{name}: test rows differ from {BASELINE}'s")
    clicked = first["click"].to_numpy() == 1
    y_cvr, q_cvr = first["conversion"].to_numpy()[clicked], first["true_cvr"].to_numpy()[clicked]
    y_all = first["conversion"].to_numpy()
    base_cvr = [f["cvr"].to_numpy()[clicked] for f in frames[BASELINE]]
    base_ctcvr = [f["ctcvr"].to_numpy() for f in frames[BASELINE]]
    rows: dict[str, dict[str, Any]] = {}
    for name, fs in frames.items():
        if name == BASELINE:
            continue
        cvr, ctcvr = [f["cvr"].to_numpy()[clicked] for f in fs], [f["ctcvr"].to_numpy() for f in fs]
        rows[name] = {
            "dAUC pCVR (clicks)": paired_auc_diff(y_cvr, cvr, base_cvr, reps),
            "dAUC pCTCVR": paired_auc_diff(y_all, ctcvr, base_ctcvr, reps),
            "pCVR gap closed": gap_closed(y_cvr, q_cvr, cvr, base_cvr, reps),
            "per seed dAUC pCVR (clicks)": [paired_auc_diff(y_cvr, [p], [b], reps) for p, b in zip(cvr, base_cvr,
                                                                                                   strict=True)],
            "per seed dAUC pCTCVR": [paired_auc_diff(y_all, [p], [b], reps) for p, b in zip(ctcvr, base_ctcvr,
                                                                                          strict=True)],
        }
    return rows


def calibration_rows(calibrated: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """Per variant and split: calibrated pCTCVR / pCVR PCOC, Field-RCE and top-20 counts, means over seeds."""
    rows = {}
    for name, cs in calibrated.items():
        for split in CALIB_SPLITS:
            per = [c["splits"][split] for c in cs]
            row = {k: float(np.mean([s[k] for s in per])) for k in per[0] if k not in ("top20", "top20_table")}
            for k in ("within ±0.05: AdaCalib PCOC", "within ±0.05: AdaCalib p/q",
                      "within ±0.05: true probabilities PCOC", "positives median"):
                row[f"top-20 {k}"] = float(np.mean([s["top20"][k] for s in per]))
            rows[f"{name} ({split})"] = row
    return rows


def targets(paired: dict[str, dict], calib: dict[str, dict]) -> dict[str, Any]:
    """The issue's targets read from the rows: the best variant (highest mean pCVR dAUC) beats ESMM on pCVR AUC
    (clicked rows) and pCTCVR AUC with intervals above zero and closes >= 25 % of the pCVR gap; calibrated pCTCVR
    PCOC within 1 ± 0.05 on all top-20 scenarios of the held-out calib rows."""
    if not paired:
        return {}
    best = max(paired, key=lambda n: paired[n]["dAUC pCVR (clicks)"][0])
    row = paired[best]
    pcoc = ", ".join(f"{name} {calib[f'{name} (calib_holdout)']['top-20 within ±0.05: AdaCalib PCOC']:.1f}/20"
                     for name in dict.fromkeys(n.split(" (")[0] for n in calib))
    return {
        "best variant": best,
        "pCVR AUC beats ESMM (interval above 0)": row["dAUC pCVR (clicks)"][1] > 0,
        "pCTCVR AUC beats ESMM (interval above 0)": row["dAUC pCTCVR"][1] > 0,
        "pCVR gap closed >= 25 %": row["pCVR gap closed"][0] >= 0.25,
        "top-20 pCTCVR PCOC within 1 ± 0.05 (held-out calib), scenarios of 20 (mean over seeds)": pcoc,
    }


def headroom(manifest: Any, truth: pd.DataFrame, runs: dict[str, list[dict]]) -> dict[str, float]:
    """What the data allows: conversions to learn from and to measure on, the oracle's pCVR AUC, the seed spread."""
    first = runs[BASELINE][0]["scored"].merge(truth, on="trace_id", how="left")
    mask = first["click"].to_numpy() == 1
    clicked = first[mask]
    esmm = [auc(clicked["conversion"].to_numpy(), r["scored"]["cvr"].to_numpy()[mask]) for r in runs[BASELINE]]
    return {
        "train rows": manifest.split_count("train"),
        "train clicks": int(manifest.data["splits"]["train"]["clicks"]),
        "train conversions": int(manifest.data["splits"]["train"]["conversions"]),
        "test clicks": int(clicked.shape[0]), "test conversions (clicked rows)": int(clicked["conversion"].sum()),
        "oracle pCVR AUC (clicks)": auc(clicked["conversion"].to_numpy(), clicked["true_cvr"].to_numpy()),
        "ESMM pCVR AUC (clicks) min": float(np.min(esmm)), "ESMM pCVR AUC (clicks) max": float(np.max(esmm)),
    }


def _cell(v: Any) -> Any:
    if isinstance(v, list) and v and isinstance(v[0], list):
        return "; ".join(f"{x[0]:+.4f} [{x[1]:+.4f}, {x[2]:+.4f}]" for x in v)
    return f"{v[0]:+.4f} [{v[1]:+.4f}, {v[2]:+.4f}]" if isinstance(v, list) else v


def _table(rows: dict[str, dict[str, Any]], markdown: bool) -> str:
    return metrics_table({n: {k: _cell(v) for k, v in r.items()} for n, r in rows.items()}, markdown=markdown)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    base = load_experiment()
    logs, manifest_path = prepare_data(out, args.days, args.impressions_per_day, args.data_seed)
    from tfads.core.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    runs: dict[str, list[dict[str, Any]]] = {}
    failed: dict[str, str] = {}
    for seed in args.seeds:
        edges = None
        for name in args.variants:
            config = variant_config(base, name, seed, args.epochs, edges)
            try:
                run = run_variant(name, config, manifest_path, out, seed)
            except ValueError as e:  # one broken variant must not cost the others' results
                failed[f"{name} seed {seed}"] = f"{type(e).__name__}: {e}"
                print(f"{name} seed {seed}: FAILED: {failed[f'{name} seed {seed}']}", flush=True)
                continue
            runs.setdefault(name, []).append(run)
            edges = run["edges"] if name == "autoheri" else edges
    runs = {n: rs for n, rs in runs.items() if len(rs) == len(args.seeds)}
    truth = test_truth(logs, manifest_path)
    cvr = cvr_rows(runs, truth, cvr_fields(manifest))
    paired = paired_rows(runs, truth, args.bootstrap)
    truth_logs = truth_logs_of(logs, manifest_path, out)
    calibrated = {n: [calibrate_variant(r, manifest_path, truth_logs, args.holdout) for r in rs]
                  for n, rs in runs.items()}
    calib = calibration_rows(calibrated)
    goals = targets(paired, calib)
    ab = (ab_replay(calibrated, goals.get("best variant", BASELINE), manifest_path, truth_logs, out, args)
          if args.opportunities and len(calibrated) > 1 else {"seeds": {}})
    roi = roi_rows(ab)
    room = headroom(manifest, truth, runs)
    report = {
        "data": {"days": args.days, "impressions_per_day": args.impressions_per_day, "data_seed": args.data_seed,
                 "train_seeds": args.seeds},
        "cvr": cvr, "paired_vs_esmm": paired, "calibration": calib, "roi": roi, "targets": goals,
        "headroom": room, "failed": failed,
        "autoheri_edges": {n: [r.get("edges") for r in rs] for n, rs in runs.items() if n == "autoheri"},
        "train_seconds": {n: [r["train_seconds"] for r in rs] for n, rs in runs.items()},
        "top20_tables": {n: [c["splits"] for c in cs] for n, cs in calibrated.items()},
        "ab": ab,
    }
    sections = [
        ("pCVR on clicked test rows, pCVR against the true pCVR over every test impression, pCTCVR (means over "
         "seeds)", cvr),
        (f"Paired differences to {BASELINE} on the same test rows (mean over seeds, then per seed; paired "
         "bootstrap 95 % intervals); pCVR gap closed = dAUC / (oracle - ESMM AUC)", paired),
        ("After `tfads calibrate --holdout 0.5` (AdaCalib): pCTCVR served as calibrated pCTR x pCVR; held-out calib "
         "rows and the test day; top-20 = scenarios with the most rows, counts within 1 ± 0.05 (means over seeds)",
         calib),
        ("oCPA A/B replay of the test day (calibrated outputs; every arm sees the same opportunities, competitor "
         "bids and draws): ROI = advertiser value / spend", roi),
        ("Targets", {k: {"value": v} for k, v in goals.items()}),
        ("What the data allows", {k: {"value": v} for k, v in room.items()}),
    ]
    text, markdown = [], []
    for title, rows in sections:
        if rows:
            text += [title, _table(rows, False), ""]
            markdown += [f"### {title}", "", _table(rows, True), ""]
    for name, message in failed.items():
        text.append(f"{name}: not measured: {message}")
        markdown.append(f"- {name}: not measured: {message}")
    with open(os.path.join(out, "cvr_models.json"), "w") as f:
        json.dump(report, f, indent=2, default=float)
    print("\n".join(text))
    publish("cvr_models", report, "\n".join(markdown), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
