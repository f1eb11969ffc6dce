"""Online learning on the generator's drifting days: static vs naive incremental vs full ODL.

    python benchmarks/online.py --out /tmp/online_bench [--days 12] [--impressions-per-day 15000]

Data: ``tfads datagen`` (drift: the category side of the user x category cross rotates 0.15 rad/day,
scenario traffic has its own daily slope, base rates move) -> the Beam job. The first
``--initial-days`` train the starting model (the day after them is its validation day); every later
day arrives as one shard. Arms, all starting from that model:

  static   trained once, never updated
  naive    every day: 1 epoch on the new day at the training LR, all layers, no replay, no gate
  odl      configs/online.yaml: frozen embeddings, replay from the reservoir, LR x 0.1, validation gate
  odl-*    (--ablations) odl with embeddings trainable (unfrozen) or at the full LR (full-lr)

Measures per stream day d: progressive AUC / PCOC on all of day d before the model sees it (the
model serving that day), and, after the last day, forgetting: AUC on each earlier day's held-out
rows (never trained on) right after that day's update minus at the end. Writes ``online.json``,
``online_auc.png``, ``online_pcoc.png``, ``online_forgetting.png`` and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import tfads  # noqa: F401  (before TensorFlow)
import tensorflow as tf

from tfads.experiment import load_experiment
from tfads.manifest import Manifest, load_manifest
from tfads.online import OnlineConfig, OnlineLearner, load_online_config
from tfads.online.evaluation import ctr_metrics, split_holdout
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
    """The same data with train = the first ``initial_days`` days and valid = the next day."""
    days = sorted(manifest.data["days"])
    data = copy.deepcopy(manifest.data)
    for split, chosen in (("train", days[:initial_days]), ("valid", days[initial_days:initial_days + 1])):
        data["splits"][split] = {
            "days": chosen,
            "files": [f for d in chosen for f in manifest.data["days"][d]["files"]],
            "examples": sum(manifest.data["days"][d]["examples"] for d in chosen),
        }
    path = os.path.join(manifest.root, f"manifest_initial{initial_days}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return load_manifest(path)


def train_static(manifest: Manifest, model_dir: Path) -> str:
    """The default experiment trained on the initial days (reused when already trained)."""
    from tfads.train import train

    if not (model_dir / "model" / "saved_model.pb").exists():
        config = load_experiment()
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=3, batch_size=512))
        train(config, manifest, str(model_dir), verbose=0)
    return str(model_dir)


def arm_configs(base: OnlineConfig, ablations: bool) -> dict[str, OnlineConfig]:
    """naive and odl; with ``ablations`` also odl with its embeddings trainable or at the full LR."""
    naive = dataclasses.replace(base, frozen_embeddings=False, replay_ratio=0.0, learning_rate_scale=1.0,
                                gate_margin=1e9, seed_reservoir_from_train=False)
    arms = {"naive": naive, "odl": base}
    if ablations:
        arms["odl-unfrozen"] = dataclasses.replace(base, frozen_embeddings=False)
        arms["odl-full-lr"] = dataclasses.replace(base, learning_rate_scale=1.0)
    return arms


def run_benchmark(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    full = prepare_data(out / "work", args.days, args.impressions_per_day, args.seed)
    manifest = initial_manifest(full, args.initial_days)
    model_dir = train_static(manifest, out / "work" / f"static{args.initial_days}")
    stream_days = sorted(full.data["days"])[args.initial_days + 1:]
    base = load_online_config(args.config)
    learners = {"static": _learner(model_dir, manifest, out, "static", dataclasses.replace(base, replay_ratio=0.0))}
    for arm, config in arm_configs(base, args.ablations).items():
        learners[arm] = _learner(model_dir, manifest, out, arm, config)
    arms = list(learners)
    day_records = {d: read_records(full.day_files(d)) for d in stream_days}
    holdouts = {d: split_holdout(day_records[d], base.holdout_fraction)[1] for d in stream_days}
    progressive: dict[str, list[dict]] = {a: [] for a in arms}
    after: dict[str, dict[str, dict[str, float]]] = {a: {} for a in arms}  # arm -> day -> AUC on its holdout
    accepted: dict[str, list[bool]] = {a: [] for a in arms}
    timings: dict[str, float] = {a: 0.0 for a in arms}
    shard_dir = out / "work" / "shards"
    shard_dir.mkdir(exist_ok=True)
    for day in stream_days:
        shard = shard_dir / f"{day}.tfrecord.gz"
        if not shard.exists():
            with tf.io.TFRecordWriter(str(shard), options="GZIP") as writer:
                for record in day_records[day]:
                    writer.write(record)
        for arm, learner in learners.items():
            progressive[arm].append({"day": day, **ctr_metrics(learner.score(day_records[day]))})
            if arm != "static":
                start = time.perf_counter()
                accepted[arm].append(learner.update(shard.name, str(shard))["accepted"])
                timings[arm] += time.perf_counter() - start
            after[arm][day] = ctr_metrics(learner.score(holdouts[day]))["AUC"]
        print(f"{day}: " + "  ".join(f"{a} AUC={progressive[a][-1]['AUC']:.4f} PCOC={progressive[a][-1]['PCOC']:.3f}"
                                     for a in arms), flush=True)
    final = {arm: {d: ctr_metrics(learners[arm].score(holdouts[d]))["AUC"] for d in stream_days} for arm in arms}
    result = {
        "settings": {**vars(args), "stream_days": stream_days, "online_config": dataclasses.asdict(base)},
        "progressive": progressive,
        "accepted": accepted,
        "update_seconds": timings,
        "auc_after_own_day": after,
        "auc_at_end": final,
        "summary": summarize(progressive, after, final, stream_days, args.later_days),
    }
    write_outputs(out, result, stream_days)
    return result


def _learner(model_dir: str, manifest: Manifest, out: Path, arm: str, config: OnlineConfig) -> OnlineLearner:
    root = out / "work" / "arms" / arm
    if root.exists():  # a benchmark always starts its arms from the static model
        import shutil

        shutil.rmtree(root)
    return OnlineLearner(model_dir, manifest, str(root / "state"), str(root / "export"), config)


def summarize(progressive: dict, after: dict, final: dict, days: list[str], later: int) -> dict[str, dict]:
    """Per arm: mean progressive AUC / |PCOC - 1| over all and the last ``later`` days, and forgetting."""
    rows = {}
    for arm, recs in progressive.items():
        auc = np.array([r["AUC"] for r in recs])
        pcoc = np.array([r["PCOC"] for r in recs])
        forgetting = [after[arm][d] - final[arm][d] for d in days[:-1]]
        rows[arm] = {
            "AUC (all days)": float(np.nanmean(auc)),
            f"AUC (last {later})": float(np.nanmean(auc[-later:])),
            "|PCOC-1| (all days)": float(np.nanmean(np.abs(pcoc - 1))),
            f"|PCOC-1| (last {later})": float(np.nanmean(np.abs(pcoc[-later:] - 1))),
            "forgetting (AUC drop on earlier days)": float(np.nanmean(forgetting)),
            "AUC at end on earlier days": float(np.nanmean([final[arm][d] for d in days[:-1]])),
        }
    return rows


def write_outputs(out: Path, result: dict, days: list[str]) -> None:
    with open(out / "online.json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, default=float)
    x = list(range(1, len(days) + 1))
    for metric in ("AUC", "PCOC"):
        series = {arm: (x, [r[metric] for r in recs]) for arm, recs in result["progressive"].items()}
        metric_over_time(series, out / f"online_{metric.lower()}.png", ylabel=f"pCTR {metric} (next day)",
                         xlabel="stream day", title=f"progressive {metric}: model before it sees the day")
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
    parser.add_argument("--later-days", type=int, default=4, help="days averaged as 'later days'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ablations", action="store_true", help="also odl with each of its parts switched off")
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "online.yaml"))
    args = parser.parse_args(argv)
    result = run_benchmark(args)
    print(json.dumps(result["summary"], indent=1))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
