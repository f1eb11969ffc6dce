"""Online learning on the generator's drifting days: static vs naive incremental vs full ODL.

    python benchmarks/online.py --out /tmp/online_bench [--days 12] [--impressions-per-day 15000]
    # the regime where naive updates should over-fit and forget, with the calibrated arms:
    python benchmarks/online.py --out /tmp/online_hourly --days 10 --initial-days 5 --shards-per-day 6 \
        --naive-epochs 3 --calibration

Data: ``tfads datagen`` (drift: the category side of the user x category cross rotates 0.15 rad/day,
scenario traffic has its own daily slope, base rates move) -> the Beam job. The first
``--initial-days`` train the starting model (``--pretrain-epochs``; the day after them is its validation
day and, with ``--calibration``, its AdaCalib calibration day); every later day arrives as
``--shards-per-day`` time-ordered shards (by ``ts``: "hourly" updates). Arms, all starting from that model:

  static     trained once, never updated
  naive      every shard: ``--naive-epochs`` epochs on the new rows at the training LR, all layers, no replay,
             no gate
  odl        configs/online.yaml: frozen embeddings, replay from the reservoir, LR x 0.1, validation gate
  odl-*      (--ablations) odl with embeddings trainable (unfrozen) or at the full LR (full-lr)
  static+cal, odl+cal, odl+recal   (--calibration) the calibrated starting model: never updated; odl with the
             calibration fitted once (recalibrate: false); odl refitting AdaCalib from the refreshed
             statistics after each update (recalibrate: true)

Measures per stream day d: progressive AUC / PCOC on all of day d, each shard scored before the model
sees it (the model serving it; "served" PCOC and Field-RCE[scenario] are of the calibrated output for
the calibrated arms), and
forgetting: AUC on each earlier stream day's held-out rows (never trained on) right after that day's
last update minus at the end, and AUC on the starting model's validation day (the day before the stream,
never trained on) at the end minus at the start.
Writes ``online.json``, ``online_auc.png``, ``online_pcoc.png``, ``online_forgetting.png`` and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import tfads  # noqa: F401  (before TensorFlow)
import tensorflow as tf

from tfads.experiment import load_experiment
from tfads.manifest import Manifest, load_manifest
from tfads.metrics import field_rce
from tfads.online import OnlineConfig, OnlineLearner, load_online_config
from tfads.online.evaluation import ctr_metrics, split_holdout
from tfads.online.recalibration import calibrated_scores
from tfads.online.reservoir import read_records
from tfads.plots import metric_over_time


def prepare_data(work: Path, days: int, per_day: int, seed: int) -> Manifest:
    """Generate logs and run the Beam job once (reused when ``work`` already has them)."""
    from beam_jobs.build_examples import run
    from tfads.datagen import generate

    manifest = work / "data" / "manifest.json"
    if not manifest.exists():
        generate(str(work / "logs"), days=days, impressions_per_day=per_day, seed=seed, progress=False)
        run(["--logs", str(work / "logs"), "--out", str(work / "data"), "--runner", "DirectRunner"])
    return load_manifest(str(manifest))


def initial_manifest(manifest: Manifest, initial_days: int) -> Manifest:
    """The same data with train = the first ``initial_days`` days and valid = calib = the next day."""
    days = sorted(manifest.data["days"])
    data = copy.deepcopy(manifest.data)
    for split, chosen in (("train", days[:initial_days]), ("valid", days[initial_days:initial_days + 1]),
                          ("calib", days[initial_days:initial_days + 1])):
        data["splits"][split] = {
            "days": chosen,
            "files": [f for d in chosen for f in manifest.data["days"][d]["files"]],
            "examples": sum(manifest.data["days"][d]["examples"] for d in chosen),
        }
    path = os.path.join(manifest.root, f"manifest_initial{initial_days}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return load_manifest(path)


def train_static(manifest: Manifest, model_dir: Path, epochs: int) -> str:
    """The default experiment trained on the initial days (reused when already trained)."""
    from tfads.train import train

    if not (model_dir / "model" / "saved_model.pb").exists():
        config = load_experiment()
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=epochs, batch_size=512))
        train(config, manifest, str(model_dir), verbose=0)
    return str(model_dir)


def calibrate_static(model_dir: str, manifest: Manifest, out_dir: Path) -> str:
    """The static model + AdaCalib (scenario) fitted on its calib day, combined and saved as ``tfads calibrate``
    does (statistics computed in process rather than by the Beam job); reused when present."""
    import yaml

    from tfads.calibrate import TASKS, combined_model, fit_calibration_layers
    from tfads.calibration import compute_calibration_stats
    from tfads.experiment import experiment_from_dict
    from tfads.model_io import EXPERIMENT, RECORD, load_trained_model, save_trained_model
    from tfads.predict import predict_split

    if not (out_dir / RECORD).exists():
        base = load_trained_model(model_dir)
        calib = predict_split(base, manifest, "calib")
        fields = [n for n, f in manifest.features.items() if f.get("calibration")]
        stats = {}
        for task, (label, only) in TASKS.items():
            rows = calib[calib[only] == 1] if only else calib
            stats[task] = compute_calibration_stats(rows[task], rows[label], {f: rows[f] for f in fields}, task=task)
        layers = fit_calibration_layers(calib, stats, ["scenario"])
        with open(os.path.join(model_dir, EXPERIMENT), encoding="utf-8") as f:
            config = experiment_from_dict(yaml.safe_load(f))
        save_trained_model(combined_model(base, layers), str(out_dir), manifest.path, config,
                           calibration={t: layer.get_config() for t, layer in layers.items()})
    return str(out_dir)


def day_shards(records: list[bytes], count: int) -> list[list[bytes]]:
    """A day's records in ``count`` consecutive time slices (by ``ts``) of about equal size."""
    ts = tf.io.parse_example(tf.constant(records), {"ts": tf.io.FixedLenFeature([], tf.int64, default_value=0)})
    order = np.argsort(ts["ts"].numpy(), kind="stable")
    return [[records[i] for i in part] for part in np.array_split(order, count)]


def arm_configs(base: OnlineConfig, args: argparse.Namespace) -> dict[str, tuple[OnlineConfig, bool]]:
    """Arm -> (online config, starts from the calibrated model); the static arms get no updates."""
    naive = dataclasses.replace(base, frozen_embeddings=False, replay_ratio=0.0, learning_rate_scale=1.0,
                                gate_margin=1e9, seed_reservoir_from_train=False, epochs=args.naive_epochs)
    static = dataclasses.replace(base, replay_ratio=0.0)
    arms = {"static": (static, False), "naive": (naive, False), "odl": (base, False)}
    if args.ablations:
        arms["odl-unfrozen"] = (dataclasses.replace(base, frozen_embeddings=False), False)
        arms["odl-full-lr"] = (dataclasses.replace(base, learning_rate_scale=1.0), False)
    if args.calibration:
        arms["static+cal"] = (static, True)
        arms["odl+cal"] = (dataclasses.replace(base, recalibrate=False), True)
        arms["odl+recal"] = (dataclasses.replace(base, recalibrate=True), True)
    return arms


def run_benchmark(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    full = prepare_data(out / "work", args.days, args.impressions_per_day, args.seed)
    manifest = initial_manifest(full, args.initial_days)
    work = out / "work" / f"static{args.initial_days}x{args.pretrain_epochs}"
    model_dirs = {False: train_static(manifest, work, args.pretrain_epochs)}
    if args.calibration:
        model_dirs[True] = calibrate_static(model_dirs[False], manifest, work.with_name(work.name + "_calibrated"))
    stream_days = sorted(full.data["days"])[args.initial_days + 1:]
    base = load_online_config(args.config)
    configs = arm_configs(base, args)
    chosen = args.arms.split(",") if args.arms else list(configs)
    if unknown := sorted(set(chosen) - set(configs)):
        raise SystemExit(f"--arms: unknown {unknown}; with these flags the arms are {list(configs)}")
    learners = {arm: _learner(model_dirs[configs[arm][1]], manifest, out, arm, configs[arm][0]) for arm in chosen}
    arms = list(learners)
    day_records = {d: read_records(full.day_files(d)) for d in stream_days}
    holdouts = {d: split_holdout(day_records[d], base.holdout_fraction)[1] for d in stream_days}
    valid = learners[arms[0]].old_eval  # the starting model's validation day, just before the stream
    valid_start = {arm: ctr_metrics(learner.score(valid))["AUC"] for arm, learner in learners.items()}
    progressive: dict[str, list[dict]] = {a: [] for a in arms}
    after: dict[str, dict[str, float]] = {a: {} for a in arms}  # arm -> day -> AUC on its holdout
    accepted: dict[str, list[bool]] = {a: [] for a in arms}
    timings: dict[str, float] = {a: 0.0 for a in arms}
    shard_dir = out / "work" / f"shards{args.shards_per_day}"
    shard_dir.mkdir(exist_ok=True)
    for day in stream_days:
        seen: dict[str, list[dict[str, np.ndarray]]] = {a: [] for a in arms}
        for i, records in enumerate(day_shards(day_records[day], args.shards_per_day)):
            shard = shard_dir / f"{day}-{i:02d}.tfrecord.gz"
            if not shard.exists():
                with tf.io.TFRecordWriter(str(shard), options="GZIP") as writer:
                    for record in records:
                        writer.write(record)
            for arm, learner in learners.items():
                scored = learner.score(records)
                served = calibrated_scores(learner.layers, scored) if learner.layers else scored
                seen[arm].append({"click": scored["click"], "ctr": scored["ctr"], "served": served["ctr"],
                                  "scenario": scored["scenario"]})
                if not arm.startswith("static"):
                    start = time.perf_counter()
                    accepted[arm].append(learner.update(shard.name, str(shard))["accepted"])
                    timings[arm] += time.perf_counter() - start
        for arm, learner in learners.items():
            rows = {k: np.concatenate([part[k] for part in seen[arm]]) for k in seen[arm][0]}
            served = ctr_metrics({"click": rows["click"], "ctr": rows["served"]})
            progressive[arm].append({
                "day": day, **ctr_metrics(rows), "PCOC served": served["PCOC"],
                "Field-RCE raw": field_rce(rows["click"], rows["ctr"], rows["scenario"]),
                "Field-RCE served": field_rce(rows["click"], rows["served"], rows["scenario"]),
            })
            after[arm][day] = ctr_metrics(learner.score(holdouts[day]))["AUC"]
        print(f"{day}: " + "  ".join(f"{a} AUC={progressive[a][-1]['AUC']:.4f} "
                                     f"PCOC={progressive[a][-1]['PCOC served']:.3f}" for a in arms), flush=True)
    final = {arm: {d: ctr_metrics(learners[arm].score(holdouts[d]))["AUC"] for d in stream_days} for arm in arms}
    valid_end = {arm: ctr_metrics(learner.score(valid))["AUC"] for arm, learner in learners.items()}
    result = {
        "settings": {**vars(args), "stream_days": stream_days, "online_config": dataclasses.asdict(base)},
        "progressive": progressive,
        "accepted": accepted,
        "update_seconds": timings,
        "auc_after_own_day": after,
        "auc_at_end": final,
        "pretraining_valid_auc": {"start": valid_start, "end": valid_end},
        "summary": summarize(progressive, after, final, stream_days, args.later_days, valid_start, valid_end, timings),
    }
    write_outputs(out, result, stream_days)
    return result


def _learner(model_dir: str, manifest: Manifest, out: Path, arm: str, config: OnlineConfig) -> OnlineLearner:
    root = out / "work" / "arms" / arm
    shutil.rmtree(root, ignore_errors=True)  # a benchmark always starts its arms from the static model
    return OnlineLearner(model_dir, manifest, str(root / "state"), None, config)  # nothing exported


def summarize(
    progressive: dict, after: dict, final: dict, days: list[str], later: int,
    valid_start: dict[str, float], valid_end: dict[str, float], timings: dict[str, float],
) -> dict[str, dict]:
    """Per arm: mean progressive AUC / |PCOC - 1| (raw and served) over all and the last ``later`` days,
    forgetting of the earlier stream days and of the day before the stream, update time."""
    rows = {}
    for arm, recs in progressive.items():
        auc = np.array([r["AUC"] for r in recs])
        pcoc = np.abs(np.array([r["PCOC"] for r in recs]) - 1)
        served = np.abs(np.array([r["PCOC served"] for r in recs]) - 1)
        forgetting = [after[arm][d] - final[arm][d] for d in days[:-1]]
        rows[arm] = {
            "AUC (all days)": float(np.nanmean(auc)),
            f"AUC (last {later})": float(np.nanmean(auc[-later:])),
            "|PCOC-1| raw": float(np.nanmean(pcoc)),
            "|PCOC-1| served": float(np.nanmean(served)),
            f"|PCOC-1| served (last {later})": float(np.nanmean(served[-later:])),
            "Field-RCE[scenario] raw": float(np.nanmean([r.get("Field-RCE raw", np.nan) for r in recs])),
            "Field-RCE[scenario] served": float(np.nanmean([r.get("Field-RCE served", np.nan) for r in recs])),
            "forgetting (AUC drop on earlier days)": float(np.nanmean(forgetting)),
            "AUC at end, earlier days": float(np.nanmean([final[arm][d] for d in days[:-1]])),
            "AUC day before stream, end - start": valid_end[arm] - valid_start[arm],
            "update s": timings[arm],
        }
    return rows


def write_outputs(out: Path, result: dict, days: list[str]) -> None:
    with open(out / "online.json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, default=float)
    x = list(range(1, len(days) + 1))
    for metric, key in (("AUC", "AUC"), ("PCOC", "PCOC served")):
        series = {arm: (x, [r[key] for r in recs]) for arm, recs in result["progressive"].items()}
        metric_over_time(series, out / f"online_{metric.lower()}.png", ylabel=f"pCTR {metric} (next day)",
                         xlabel="stream day", title=f"progressive {metric}: model before it sees the rows")
    series = {arm: (x[:-1], [result["auc_after_own_day"][arm][d] - result["auc_at_end"][arm][d] for d in days[:-1]])
              for arm in result["progressive"]}
    metric_over_time(series, out / "online_forgetting.png", ylabel="AUC after own day - AUC at end",
                     xlabel="stream day (held-out rows)", title="forgetting of earlier days (lower is better)")


def table(result: dict) -> str:
    from tfads.metrics import metrics_table

    return metrics_table(result["summary"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--days", type=int, default=12)
    parser.add_argument("--impressions-per-day", type=int, default=15000)
    parser.add_argument("--initial-days", type=int, default=3)
    parser.add_argument("--pretrain-epochs", type=int, default=3, help="epochs of the starting model")
    parser.add_argument("--shards-per-day", type=int, default=1, help="time-ordered shards (updates) per stream day")
    parser.add_argument("--naive-epochs", type=int, default=1, help="epochs per shard of the naive arm (full LR)")
    parser.add_argument("--later-days", type=int, default=4, help="days averaged as 'later days'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ablations", action="store_true", help="also odl with each of its parts switched off")
    parser.add_argument("--calibration", action="store_true",
                        help="also the calibrated starting model: static, odl with fixed and with refitted AdaCalib")
    parser.add_argument("--arms", default=None, help="comma-separated subset of the arms (default: all)")
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "online.yaml"))
    args = parser.parse_args(argv)
    result = run_benchmark(args)
    print(json.dumps(result["summary"], indent=1))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
