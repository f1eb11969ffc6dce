"""Model quality on synthetic 300-scenario data: DNN, DCNv2, STAR and DCNv2 + AdaSparse (3 forms).

Generates logs (``tfads.datagen``), runs the Beam job, trains every model with the same embeddings,
deep units, epochs and seed (``configs/default.yaml`` unless overridden), scores the test split and
prints AUC, LogLoss, GAUC, the gap to the oracle AUC (true probabilities), a paired-bootstrap 95 %
interval of the AUC difference to DCNv2 (over test rows only: retraining the same model moves its AUC
by up to about 0.003, see BUILD.md), and for the AdaSparse models the UPR: the share of
scenarios whose test AUC beats DCNv2's (all scenarios with both labels, and those with >= 100
clicks). Writes ``model_quality.json`` and ``per_scenario_auc.png`` under ``--out``.

    python -m benchmarks.model_quality                       # 10 days x 300k: 2.1M train rows
    python -m benchmarks.model_quality --days 8 --impressions-per-day 100000 --models dnn,dcnv2
    python -m benchmarks.model_quality --models dcnv2,dcnv2_binarization --repeats 3   # with training noise

With ``--repeats N`` every model is trained N times (train seeds seed, seed + 1, ...); the table then
shows means over the trainings, the AUC range, and dAUC as the mean of the N paired differences (repeat
k of a model against repeat k of DCNv2) with a bootstrap interval of that mean.

Data and per-model results are cached under ``--out`` (keyed by their settings), so a re-run only
trains the models whose configuration changed.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import time
from typing import Any

import numpy as np
import pandas as pd

import tfads  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from tfads.experiment import DEFAULT_EXPERIMENT, ExperimentConfig, ModelConfig, load_experiment
from tfads.metrics import auc, bootstrap_ci, gauc, logloss, metrics_table, per_field_auc

BASELINE = "dcnv2"
MIN_CLICKS = 100  # scenarios with at least this many test clicks for the "UPR (>=100 clicks)" column
VARIANTS: dict[str, dict[str, Any]] = {
    "dnn": {"backbone": "dnn", "adasparse": None},
    "dcnv2": {"backbone": "dcnv2", "adasparse": None},
    "star": {"backbone": "star", "adasparse": None},
    "dcnv2_fusion": {"backbone": "dcnv2", "adasparse": "fusion"},
    "dcnv2_binarization": {"backbone": "dcnv2", "adasparse": "binarization"},
    "dcnv2_scaling": {"backbone": "dcnv2", "adasparse": "scaling"},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--impressions-per-day", type=int, default=300_000)
    p.add_argument("--days", type=int, default=10, help="the last 3 days are valid / calib / test")
    p.add_argument("--epochs", type=int, default=None, help="default: the experiment's train.epochs")
    p.add_argument("--models", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--out", default="bench_out/model_quality")
    p.add_argument("--config", default=str(DEFAULT_EXPERIMENT), help="experiment YAML the variants start from")
    p.add_argument("--learning-rate", type=float, default=None, help="override train.learning_rate")
    p.add_argument("--embedding-dim", type=int, default=None, help="override model.embedding_dim")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--bootstrap", type=int, default=200, help="paired bootstrap resamples (0 = off)")
    p.add_argument("--repeats", type=int, default=1, help="trainings per model (train seeds seed, seed + 1, ...)")
    args = p.parse_args(argv)
    unknown = [m for m in args.models.split(",") if m not in VARIANTS]
    if unknown:
        p.error(f"--models: unknown {unknown}; choose from {list(VARIANTS)}")
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.days < 4:
        p.error("--days must be >= 4 (valid, calib and test take one day each)")
    return args


def variant_config(base: ExperimentConfig, name: str, args: argparse.Namespace, repeat: int = 0) -> ExperimentConfig:
    """``base`` with the backbone / AdaSparse form of variant ``name``, the command-line overrides and the
    train seed of training ``repeat``."""
    v = VARIANTS[name]
    m: ModelConfig = base.model
    form = v["adasparse"]
    ada = dataclasses.replace(m.adasparse, enabled=form is not None, form=form or m.adasparse.form)
    model = dataclasses.replace(m, backbone=v["backbone"], adasparse=ada)
    if args.embedding_dim:
        model = dataclasses.replace(model, embedding_dim=args.embedding_dim)
    train = dataclasses.replace(base.train, seed=base.train.seed + repeat)
    if args.epochs:
        train = dataclasses.replace(train, epochs=args.epochs)
    if args.learning_rate:
        train = dataclasses.replace(train, learning_rate=args.learning_rate)
    return dataclasses.replace(base, model=model, train=train)


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def generator_digest() -> str:
    """Digest of the generator's source (``tfads/datagen/*.py``): a changed generator means new data."""
    import tfads.datagen

    h = hashlib.sha1()
    for path in sorted(glob.glob(os.path.join(os.path.dirname(tfads.datagen.__file__), "*.py"))):
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def prepare_data(out: str, days: int, impressions_per_day: int, seed: int) -> tuple[str, str]:
    """Synthetic logs + Beam job under ``out`` (reused when the settings and generator match); (logs dir, manifest)."""
    logs, data = os.path.join(out, "logs"), os.path.join(out, "data")
    stamp = os.path.join(out, "data.json")
    settings = {"days": days, "impressions_per_day": impressions_per_day, "seed": seed, "generator": generator_digest()}
    manifest = os.path.join(data, "manifest.json")
    if os.path.exists(stamp) and os.path.exists(manifest):
        with open(stamp) as f:
            if json.load(f) == settings:
                return logs, manifest
    from beam_jobs import build_examples
    from tfads.datagen import generate

    t = time.monotonic()
    shutil.rmtree(data, ignore_errors=True)
    generate(logs, days=days, impressions_per_day=impressions_per_day, seed=seed, progress=False)
    print(f"datagen: {days} days x {impressions_per_day} in {time.monotonic() - t:.0f} s", flush=True)
    t = time.monotonic()
    build_examples.run(
        ["--logs", logs, "--out", data, "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
    )
    print(f"Beam job in {time.monotonic() - t:.0f} s", flush=True)
    with open(stamp, "w") as f:
        json.dump(settings, f)
    return logs, manifest


def run_model(name: str, config: ExperimentConfig, manifest_path: str, out: str, repeat: int = 0) -> dict[str, Any]:
    """Train, score the test split and return metrics plus the scored frame's key columns (cached)."""
    run_dir = os.path.join(out, "runs", name if repeat == 0 else f"{name}-r{repeat}")
    key = _digest({"config": config.to_dict(), "data": open(os.path.join(out, "data.json")).read()})
    result_path, scored_path = os.path.join(run_dir, "result.json"), os.path.join(run_dir, "scored.parquet")
    if os.path.exists(result_path) and os.path.exists(scored_path):
        with open(result_path) as f:
            cached = json.load(f)
        if cached["key"] == key:
            print(f"{name}: cached ({run_dir})", flush=True)
            return {**cached, "scored": pd.read_parquet(scored_path)}
    from tfads.manifest import load_manifest
    from tfads.predict import predict_split
    from tfads.sparsity import scenario_sparsity
    from tfads.train import summary_line, train

    shutil.rmtree(run_dir, ignore_errors=True)  # never resume a stale BackupAndRestore state
    t = time.monotonic()
    print(f"\n=== {name}: training ===", flush=True)
    result = train(config, manifest_path, os.path.join(run_dir, "model"), verbose=2)
    train_s = time.monotonic() - t
    print(f"{name}: {summary_line(result.history)} ({train_s:.0f} s)", flush=True)
    manifest = load_manifest(manifest_path)
    scored = predict_split(result.model, manifest, "test")[["trace_id", "scenario", "user_id", "click", "ctr"]]
    sparsity = scenario_sparsity(result.model, manifest)
    pruned = None
    if sparsity is not None:
        matrix, layers, _ = sparsity
        pruned = {layer: float(share) for layer, share in zip(layers, matrix.mean(axis=1), strict=True)}
    record = {
        "key": key,
        "config": config.to_dict(),
        "epochs_run": result.epochs_run,
        "train_seconds": train_s,
        "best_val_ctr_auc": max(result.history.get("val_ctr_auc", [float("nan")])),
        "pruned_share_per_layer": pruned,
    }
    scored.to_parquet(scored_path)
    with open(result_path, "w") as f:
        json.dump(record, f, indent=2)
    shutil.rmtree(os.path.join(run_dir, "model", "backup"), ignore_errors=True)
    return {**record, "scored": scored}


def test_truth(logs: str, manifest_path: str) -> pd.DataFrame:
    """(trace_id, true_ctr) of the test days only (reading every day's truth is slow at this size)."""
    from tfads.manifest import load_manifest

    days = load_manifest(manifest_path).data["splits"]["test"]["days"]
    files = sorted(f for d in days for f in glob.glob(os.path.join(logs, "truth", d, "*.jsonl.gz")))
    if not files:
        raise FileNotFoundError(f"{logs}: no truth files for the test days {days}")
    truth = pd.concat([pd.read_json(f, lines=True, dtype={"trace_id": str}) for f in files], ignore_index=True)
    return truth.rename(columns={"p_ctr": "true_ctr"})[["trace_id", "true_ctr"]]


def _paired_auc_diff(y: np.ndarray, ps: list[np.ndarray], qs: list[np.ndarray], reps: int) -> list[float]:
    """Mean over repeats k of AUC(ps[k]) - AUC(qs[k]) on the same rows, with a paired percentile-bootstrap
    95 % interval."""
    ci = bootstrap_ci(
        lambda idx: [np.mean([auc(y[i], p[i]) - auc(y[i], q[i]) for p, q in zip(ps, qs, strict=True)]) for i in idx],
        len(y),
        np.random.default_rng(0),
        reps=reps,
    )
    return [ci.estimate, ci.low, ci.high]


def upr(mine: pd.DataFrame, base: pd.DataFrame, min_clicks: int = 0) -> tuple[float, int]:
    """Share of scenarios (both AUCs defined, >= ``min_clicks`` positives) where ``mine`` beats ``base``."""
    both = mine.merge(base, on="value", suffixes=("", "_base")).dropna(subset=["auc", "auc_base"])
    both = both[both["positives"] >= min_clicks]
    return (float((both["auc"] > both["auc_base"]).mean()) if len(both) else float("nan")), len(both)


def _mean_per_field(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Per-scenario AUC frames of several trainings -> one frame with the mean AUC per scenario."""
    if len(frames) == 1:
        return frames[0]
    both = pd.concat(frames)
    mean = both.groupby("value", sort=False).agg(impressions=("impressions", "first"), positives=("positives", "first"))
    return mean.assign(auc=both.groupby("value", sort=False)["auc"].mean()).reset_index()


def evaluate(
    runs: dict[str, list[dict[str, Any]]], truth: pd.DataFrame, reps: int
) -> tuple[dict[str, dict[str, Any]], dict[str, pd.DataFrame]]:
    """Metric rows per model (means over its trainings, plus the oracle) and per-scenario AUC frames."""
    first = next(iter(runs.values()))[0]["scored"].merge(truth, on="trace_id", how="left")
    if first["true_ctr"].isna().any():
        raise RuntimeError("test rows without truth: are the logs and the Beam output from the same run?")
    y, truth, scenario = first["click"].to_numpy(), first["true_ctr"].to_numpy(), first["scenario"]
    for name, trainings in runs.items():
        if not all((run["scored"]["trace_id"].to_numpy() == first["trace_id"].to_numpy()).all() for run in trainings):
            raise RuntimeError(f"{name}: test rows differ from the other models'")
    preds = {name: [run["scored"]["ctr"].to_numpy() for run in trainings] for name, trainings in runs.items()}
    preds["oracle"] = [truth]
    per_scenario = {name: _mean_per_field([per_field_auc(y, p, scenario) for p in ps]) for name, ps in preds.items()}
    oracle_auc = auc(y, truth)
    base = preds.get(BASELINE)
    rows: dict[str, dict[str, Any]] = {}
    for name, ps in preds.items():
        aucs = [auc(y, p) for p in ps]
        row: dict[str, Any] = {
            "AUC": float(np.mean(aucs)),
            "LogLoss": float(np.mean([logloss(y, p) for p in ps])),
            "GAUC": float(np.mean([gauc(y, p, first["user_id"]) for p in ps])),
            "Oracle gap": oracle_auc - float(np.mean(aucs)),
        }
        if len(ps) > 1:
            row["AUC range"] = max(aucs) - min(aucs)
        if base is not None and name != BASELINE:
            if reps:
                paired = ps * len(base) if len(ps) == 1 else ps  # the oracle is one "training"
                row["dAUC vs DCNv2 [95% CI]"] = _paired_auc_diff(y, paired, base, reps)
            row["UPR"], row["scenarios"] = upr(per_scenario[name], per_scenario[BASELINE])
            row[f"UPR>={MIN_CLICKS}clk"], row[f"scen>={MIN_CLICKS}clk"] = upr(
                per_scenario[name], per_scenario[BASELINE], MIN_CLICKS
            )
        if name in runs:
            row.update(
                {
                    "epochs": runs[name][0]["epochs_run"],
                    "train s": round(float(np.mean([r["train_seconds"] for r in runs[name]]))),
                }
            )
        rows[name] = row
    return rows, per_scenario


def _display(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    def cell(v: Any) -> Any:
        return f"{v[0]:+.4f} [{v[1]:+.4f}, {v[2]:+.4f}]" if isinstance(v, list) else v

    return {name: {k: cell(v) for k, v in row.items()} for name, row in rows.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    base = load_experiment(args.config)
    logs, manifest_path = prepare_data(out, args.days, args.impressions_per_day, args.seed)
    names = args.models.split(",")
    runs: dict[str, list[dict[str, Any]]] = {}
    failed: dict[str, str] = {}
    for n in names:
        try:
            runs[n] = [
                run_model(n, variant_config(base, n, args, k), manifest_path, out, k) for k in range(args.repeats)
            ]
        except ValueError as e:  # one broken variant must not cost the others' results
            failed[n] = f"{type(e).__name__}: {e}"
            print(f"{n}: FAILED: {failed[n]}", flush=True)
    if not runs:
        raise SystemExit(f"every model failed: {failed}")
    rows, per_scenario = evaluate(runs, test_truth(logs, manifest_path), args.bootstrap)

    from tfads.manifest import load_manifest
    from tfads.plots import per_field_auc_vs_traffic

    manifest = load_manifest(manifest_path)
    png = per_field_auc_vs_traffic(
        per_scenario, os.path.join(out, "per_scenario_auc.png"), title="Test AUC per scenario vs traffic"
    )
    report = {
        "data": {
            "days": args.days,
            "impressions_per_day": args.impressions_per_day,
            "train_rows": manifest.split_count("train"),
            "test_rows": manifest.split_count("test"),
            "repeats": args.repeats,
        },
        "models": rows,
        "pruned_share_per_layer": {
            n: [r["pruned_share_per_layer"] for r in rs] for n, rs in runs.items() if rs[0]["pruned_share_per_layer"]
        },
        "configs": {n: rs[0]["config"] for n, rs in runs.items()},
        "failed": failed,
        "plot": str(png),
    }
    with open(os.path.join(out, "model_quality.json"), "w") as f:
        json.dump(report, f, indent=2, default=float)
    print(
        json.dumps(
            {k: report[k] for k in ("data", "models", "pruned_share_per_layer", "failed", "plot")},
            indent=2,
            default=float,
        )
    )
    print()
    print(metrics_table(_display(rows)))
    for n, message in failed.items():
        print(f"{n}: not measured: {message}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
