"""Knowledge transfer on the generator data: the seed article's V0-V3 study on cold-start scenes, and MAML vs
plain fine-tuning vs no adaptation on late user segments (issue 16).

Generates logs with a launch plan (``tfads.datagen.launches``): ``--scenes`` scenes launch on
``--scene-launch-day`` (so the training days hold a few days of them) and ``--segments`` cities' users appear
only on the test day (unseen by every model). One Beam build; every model trains ``--seeds`` times.

**Scenes** (rows of the launched scenes in the test split; each scene and all pooled):

- ``V0``: the default experiment trained on the target scenes alone (``train.scenarios``);
- ``V1``: a global multi-scene model without scene-specific structure (DCNv2, AdaSparse off) on all scenes;
- ``V2``: the global model with the scene as a domain feature (the default: DCNv2 + AdaSparse), and
  ``--v2-backbones`` more (e.g. ``star``);
- ``V3``: V2 fine-tuned on the target scenes (all weights, ``--finetune-lr``, its own early stopping on the
  scenes' validation rows);
- ``V1+ft`` (ablation): V1 fine-tuned the same way, which separates fine-tuning from the scene structure.

Segment results are cached in ``<out>/segments.json`` (by their settings and the V2 runs).

**Segments** (the late cities' test-day rows in time order: the first k are the adaptation rows, every row
after the largest k is evaluated, so all k and methods score the same rows): ``none`` (V2 as is),
``finetune`` (V2 + the inner loop on the k rows: SGD on the embeddings and towers), ``fomaml`` / ``reptile``
(V2 meta-trained over the established cities, ``tfads meta-train``, + the same inner loop). Pooled AUC and
LogLoss over all segments per k; paired differences against ``finetune`` per seed (same rows), averaged over
seeds, with a paired bootstrap 95 % interval over rows.

Targets (the issue, from the seed): V3 beats V0 and V1 on the target scenes; MAML beats plain fine-tuning on
cold-start segments at equal adaptation rows.

    python -m benchmarks.transfer                                   # 10 days x 100k, 3 seeds
    python -m benchmarks.transfer --quick --results-dir /tmp/tr     # smoke: 6 days x 8k, 1 seed
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.model_quality import (
    _digest,
    cached_run,
    generator_digest,
    paired_auc_diff,
    test_truth,
)
from benchmarks.results import add_results_argument, publish
from tfads.core.experiment import ExperimentConfig, load_experiment
from tfads.metrics import auc, bootstrap_ci, logloss

QUICK = {"days": 6, "impressions_per_day": 8000, "seeds": 1, "scene_launch_day": 2, "segments": 6,
         "meta_steps": 20, "shots": "8,32", "bootstrap": 50}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_out/transfer", help="work dir: logs, data, runs (cached by settings)")
    p.add_argument("--config", default=None, help="experiment YAML (default: the package default)")
    p.add_argument("--days", type=int, default=10, help="days of logs (default 10: 7 train, valid, calib, test)")
    p.add_argument("--impressions-per-day", type=int, default=100_000)
    p.add_argument("--data-seed", type=int, default=0, help="generator seed")
    p.add_argument("--scenes", type=int, default=3, help="scenes launching on --scene-launch-day (default 3)")
    p.add_argument("--scene-launch-day", type=int, default=5, help="0-based (default 5: 2 training days of them)")
    p.add_argument("--segments", type=int, default=12, help="cities appearing on the test day (default 12)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per model (default 3)")
    p.add_argument("--v2-backbones", default="", help="more V2 backbones besides the default, e.g. star,mmoe,ple")
    p.add_argument("--finetune-lr", type=float, default=5e-4, help="V3's learning rate (default 5e-4)")
    p.add_argument("--shots", default="16,64,256", help="adaptation rows per segment (default 16,64,256)")
    p.add_argument("--algorithms", default="fomaml,reptile", help="meta-learners (default fomaml,reptile)")
    p.add_argument("--meta-steps", type=int, default=300)
    p.add_argument("--support", type=int, default=64, help="meta-training support rows per task (default 64)")
    p.add_argument("--query", type=int, default=128)
    p.add_argument("--inner-steps", type=int, default=3)
    p.add_argument("--inner-lr", type=float, default=0.05)
    p.add_argument("--bootstrap", type=int, default=300, help="bootstrap resamples of the intervals")
    p.add_argument("--quick", action="store_true", help=f"smoke settings: {QUICK}")
    add_results_argument(p)
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    args.shot_sizes = sorted(int(s) for s in args.shots.split(","))
    return args


def prepare_data(args: argparse.Namespace) -> tuple[str, str, dict[str, Any]]:
    """Logs with the launch plan and their Beam build (reused when the settings match); (logs, manifest, launches)."""
    from tfads.datagen.launches import LaunchPlan
    from tfads.jobs.dataset import synthetic_dataset

    plan = LaunchPlan(scenes=args.scenes, segments=args.segments, launch_day=args.scene_launch_day,
                      segment_launch_day=args.days - 1)
    settings = {"days": args.days, "impressions_per_day": args.impressions_per_day, "seed": args.data_seed,
                "plan": dataclasses.asdict(plan), "generator": generator_digest()}
    logs, manifest = os.path.join(args.out, "logs"), os.path.join(args.out, "data", "manifest.json")
    stamp = os.path.join(args.out, "data.json")
    if not (os.path.exists(stamp) and os.path.exists(manifest) and json.load(open(stamp)) == settings):
        shutil.rmtree(os.path.join(args.out, "data"), ignore_errors=True)
        t = time.monotonic()
        synthetic_dataset(args.out, days=args.days, impressions_per_day=args.impressions_per_day,
                          seed=args.data_seed, workers=2, launch_plan=plan)
        print(f"datagen + Beam job: {args.days} days x {args.impressions_per_day} in {time.monotonic() - t:.0f} s")
        with open(stamp, "w") as f:
            json.dump(settings, f)
    launches = json.load(open(os.path.join(logs, "datagen.json")))["settings"]["launches"]
    return logs, manifest, launches


def scene_configs(base: ExperimentConfig, args: argparse.Namespace, scenes: list[str], seed: int) -> dict:
    """name -> (config, fine-tuned from); V3 fine-tunes V2 of the same seed, V1+ft V1."""
    def with_train(config: ExperimentConfig, **train: Any) -> ExperimentConfig:
        return dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed, **train))

    v2 = with_train(base)
    global_model = dataclasses.replace(base, model=dataclasses.replace(
        base.model, adasparse=dataclasses.replace(base.model.adasparse, enabled=False)))
    configs = {
        "V0": (with_train(base, scenarios=scenes), None),
        "V1": (with_train(global_model), None),
        "V2": (v2, None),
        "V3": (with_train(base, scenarios=scenes, learning_rate=args.finetune_lr), "V2"),
        # the ablation: V3's fine-tune applied to V1 (does fine-tuning help the global model without scene structure?)
        "V1+ft": (with_train(global_model, scenarios=scenes, learning_rate=args.finetune_lr), "V1"),
    }
    for backbone in filter(None, args.v2_backbones.split(",")):
        configs[f"V2_{backbone}"] = (with_train(dataclasses.replace(
            base, model=dataclasses.replace(base.model, backbone=backbone))), None)
    return configs


def run_scene_model(name: str, seed: int, config: ExperimentConfig, init_from: str | None, manifest_path: str,
                    out: str) -> dict[str, Any]:
    """Train (or fine-tune from ``init_from``), score the test split; cached by config and data."""
    run_dir = os.path.join(out, "runs", f"{name}-s{seed}")
    return cached_run(out, run_dir, {"config": config.to_dict(), "init_from": init_from}, f"{name} seed {seed}",
                      lambda: _fit_scene_model(name, seed, config, init_from, manifest_path, run_dir))


def _fit_scene_model(name: str, seed: int, config: ExperimentConfig, init_from: str | None, manifest_path: str,
                     run_dir: str) -> tuple[dict[str, Any], pd.DataFrame]:
    from tfads.core.manifest import load_manifest
    from tfads.predict import predict_split
    from tfads.train import summary_line, train

    print(f"\n=== {name} seed {seed} ===", flush=True)
    t = time.monotonic()
    result = train(config, manifest_path, os.path.join(run_dir, "model"), init_from=init_from, verbose=2)
    print(f"{name} seed {seed}: {summary_line(result.history)} ({time.monotonic() - t:.0f} s)", flush=True)
    scored = predict_split(result.model, load_manifest(manifest_path), "test")[["trace_id", "scenario", "click", "ctr"]]
    return {"train_seconds": time.monotonic() - t, "epochs_run": result.epochs_run,
            "model_dir": os.path.join(run_dir, "model")}, scored


def scene_study(args, base, logs, manifest_path, scenes) -> tuple[dict, dict]:
    """V0-V3 per seed; metrics on the target scenes' test rows (pooled and per scene), paired differences."""
    runs: dict[str, list[pd.DataFrame]] = {}
    for seed in range(args.seeds):
        done: dict[str, dict] = {}
        for name, (config, parent) in scene_configs(base, args, scenes, seed).items():
            init = done[parent]["model_dir"] if parent else None
            done[name] = run_scene_model(name, seed, config, init, manifest_path, args.out)
            runs.setdefault(name, []).append(done[name]["scored"])
    truth = test_truth(logs, manifest_path).set_index("trace_id")["true_ctr"]
    rows, diffs = {}, {}
    first = runs["V3"][0]
    target = first[first["scenario"].isin(scenes)].reset_index(drop=True)
    y = target["click"].to_numpy()
    oracle = truth.loc[target["trace_id"]].to_numpy()
    preds = {n: [f.set_index("trace_id").loc[target["trace_id"], "ctr"].to_numpy() for f in frames]
             for n, frames in runs.items()}
    scene_of = target["scenario"].to_numpy()
    for name, ps in preds.items():
        rows[name] = {"auc": np.mean([auc(y, p) for p in ps]), "logloss": np.mean([logloss(y, p) for p in ps])}
        for scene in scenes:
            m = scene_of == scene
            rows[name][f"auc {scene}"] = np.mean([auc(y[m], p[m]) for p in ps])
        rows[name]["per-scene auc"] = np.mean([rows[name][f"auc {scene}"] for scene in scenes])
    rows["oracle"] = {"auc": auc(y, oracle), "logloss": logloss(y, oracle)}
    pairs = [("V3", other) for other in preds if other != "V3"] + [("V1+ft", "V1")]
    for mine, other in pairs:  # pooled rows (between-scene order counts), then the mean of within-scene AUCs
        diffs[f"{mine} - {other}"] = paired_auc_diff(y, preds[mine], preds[other], args.bootstrap)
        diffs[f"{mine} - {other} (per-scene)"] = paired_auc_diff(y, preds[mine], preds[other], args.bootstrap,
                                                                 groups=scene_of)
    info = {"rows": int(len(y)), "clicks": int(y.sum()),
            "train_rows": _train_rows(manifest_path, scenes)}
    return {"metrics": rows, "paired_auc": diffs}, info


def _train_rows(manifest_path: str, scenes: list[str]) -> int:
    from tfads.core.manifest import load_manifest
    from tfads.data import make_dataset

    manifest = load_manifest(manifest_path)
    ds = make_dataset(manifest.split_files("train"), manifest, 8192, scenarios=scenes, for_training=False)
    return int(sum(int(b[manifest.domain].shape[0]) for b in ds))


SEGMENT_SETTINGS = ("shot_sizes", "algorithms", "meta_steps", "support", "query", "inner_steps", "inner_lr",
                    "bootstrap")


def segment_study(args, manifest_path: str, segments: list[str], v2_dirs: list[str]) -> dict:
    """:func:`segment_result`, cached in ``<out>/segments.json`` by its settings and the V2 runs' keys."""
    v2_keys = [json.load(open(os.path.join(os.path.dirname(d), "result.json")))["key"] for d in v2_dirs]
    key = _digest({"settings": {k: getattr(args, k) for k in SEGMENT_SETTINGS}, "segments": segments,
                   "v2": v2_keys})
    path = os.path.join(args.out, "segments.json")
    if os.path.exists(path):
        with open(path) as f:
            cached = json.load(f)
        if cached["key"] == key:
            print("segments: cached", flush=True)
            return cached["result"]
    result = segment_result(args, manifest_path, segments, v2_dirs)
    with open(path, "w") as f:
        json.dump({"key": key, "result": result}, f, default=float)
    return result


def segment_result(args, manifest_path: str, segments: list[str], v2_dirs: list[str]) -> dict:
    """none / finetune / meta-learners x k on the late segments' test-day rows, per seed, pooled over segments."""
    from tfads.core.manifest import load_manifest
    from tfads.jobs.maml import compiled_model
    from tfads.maml import InnerLoop, MamlConfig, load_rows, meta_train

    manifest = load_manifest(manifest_path)
    test = load_rows(manifest, "test", "city")
    largest = max(args.shot_sizes)
    per_segment = {g: test.of_segment(g) for g in segments}
    per_segment = {g: r for g, r in per_segment.items() if len(r) > largest + 20}
    train_rows = None
    scores: dict[tuple[str, int], list[np.ndarray]] = {}
    y = np.concatenate([r.labels["ctr"][largest:, 0] for r in per_segment.values()])
    meta_curves = {}
    for seed, v2 in enumerate(v2_dirs):
        models = {}
        for method in ["finetune", *args.algorithms.split(",")]:
            cfg = MamlConfig(segment_field="city", algorithm=method if method != "finetune" else "fomaml",
                             meta_steps=args.meta_steps, support=args.support, query=args.query,
                             inner_steps=args.inner_steps, inner_lr=args.inner_lr, seed=seed)
            model, _ = compiled_model(v2, manifest, cfg.outer_lr)
            if method != "finetune":
                train_rows = train_rows or load_rows(manifest, "train", "city")
                t = time.monotonic()
                record = meta_train(model, train_rows, cfg, progress=False)
                meta_curves[f"{method} seed {seed}"] = {"seconds": time.monotonic() - t,
                                                        "first": np.mean(record["query_loss"][:30]),
                                                        "last": np.mean(record["query_loss"][-30:])}
            models[method] = (model, cfg)
        base = models["finetune"][0]
        scores.setdefault(("none", 0), []).append(
            np.concatenate([_predict(base, r.take(np.arange(largest, len(r)))) for r in per_segment.values()]))
        for method, (model, cfg) in models.items():
            loop = InnerLoop(model, cfg.inner_lr)
            loop.save()
            for k in args.shot_sizes:
                parts = []
                for rows in per_segment.values():
                    loop.adapt(rows.take(np.arange(k)), cfg.inner_steps)
                    parts.append(_predict(model, rows.take(np.arange(largest, len(rows)))))
                    loop.restore()
                scores.setdefault((method, k), []).append(np.concatenate(parts))
        print(f"segments seed {seed}: done", flush=True)
    table = {}
    for (method, k), ps in scores.items():
        row = {"method": method, "shots": k, "auc": np.mean([auc(y, p) for p in ps]),
               "logloss": np.mean([logloss(y, p) for p in ps])}
        if method not in ("finetune", "none"):
            row["auc - finetune"] = paired_auc_diff(y, ps, scores[("finetune", k)], args.bootstrap)
            row["logloss - finetune"] = _paired_logloss_diff(y, ps, scores[("finetune", k)], args.bootstrap)
        table[f"{method} k={k}"] = row
    return {"metrics": table, "segments": list(per_segment), "rows": int(len(y)), "clicks": int(y.sum()),
            "meta_training": meta_curves}


def _predict(model: Any, rows: Any) -> np.ndarray:
    features, _, _ = rows.batch()
    return model(features, training=False)["ctr"].numpy().reshape(-1)


def _paired_logloss_diff(y: np.ndarray, ps: list[np.ndarray], qs: list[np.ndarray], reps: int) -> list[float]:
    ci = bootstrap_ci(
        lambda idx: [np.mean([logloss(y[i], p[i]) - logloss(y[i], q[i]) for p, q in zip(ps, qs, strict=True)])
                     for i in idx],
        len(y), np.random.default_rng(0), reps=reps)
    return [ci.estimate, ci.low, ci.high]


def _fmt(v: Any) -> str:
    if isinstance(v, list):
        return f"{v[0]:+.4f} [{v[1]:+.4f}, {v[2]:+.4f}]"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def report(scene: dict, scene_info: dict, segment: dict, args: argparse.Namespace, launches: dict) -> str:
    lines = [f"Data: {args.days} days x {args.impressions_per_day}, launch plan {launches}; seeds {args.seeds}.", "",
             f"## Scenes {', '.join(launches['scenes'])}: test rows {scene_info['rows']} ({scene_info['clicks']} "
             f"clicks); training rows of the scenes {scene_info['train_rows']}", "",
             "| model | " + " | ".join(next(iter(scene["metrics"].values())).keys()) + " |",
             "|---" * (1 + len(next(iter(scene["metrics"].values())))) + "|"]
    for name, row in scene["metrics"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in row.values()) + " |")
    lines += ["", "| paired AUC difference (mean over seeds, 95 % interval) | |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in scene["paired_auc"].items()]
    lines += ["", f"## Late segments {', '.join(segment['segments'])}: evaluated rows {segment['rows']} "
              f"({segment['clicks']} clicks), the same for every k", "",
              "| method | shots | AUC | LogLoss | AUC - finetune | LogLoss - finetune |", "|---|---|---|---|---|---|"]
    for row in segment["metrics"].values():
        lines.append(f"| {row['method']} | {row['shots'] if row['method'] != 'none' else '-'} | {_fmt(row['auc'])} | "
                     f"{_fmt(row['logloss'])} | {_fmt(row.get('auc - finetune', '-'))} | "
                     f"{_fmt(row.get('logloss - finetune', '-'))} |")
    lines += ["", "Meta-training: " + "; ".join(
        f"{k} {v['seconds']:.0f} s, query loss {v['first']:.4f} -> {v['last']:.4f}"
        for k, v in segment["meta_training"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    base = load_experiment(args.config) if args.config else load_experiment()
    logs, manifest, launches = prepare_data(args)
    scene, scene_info = scene_study(args, base, logs, manifest, launches["scenes"])
    v2_dirs = [os.path.join(args.out, "runs", f"V2-s{s}", "model") for s in range(args.seeds)]
    segment = segment_study(args, manifest, launches["segments"], v2_dirs)
    table = report(scene, scene_info, segment, args, launches)
    print(table)
    publish("transfer", {"scenes": scene, "scene_data": scene_info, "segments": segment, "launches": launches,
                         "settings": {k: v for k, v in vars(args).items() if k != "shot_sizes"}}, table, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
