"""Online learning on the generator's drifting days: static vs naive incremental vs full ODL.

    python benchmarks/online.py --out /tmp/online_bench [--days 12] [--impressions-per-day 15000]
    # the measured regime (benchmarks/results/online.md): a week of pre-training,
    # 6 streamed days in 6-h shards, 3 data seeds:
    python benchmarks/online.py --out /tmp/online_week --days 14 --impressions-per-day 20000 --initial-days 7 \
        --pretrain-epochs 1 --shards-per-day 4 --later-days 3 --seeds 0,1,2 [--ablations]
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
the calibrated arms), and forgetting (AUC at first minus AUC at the end: > 0 means it forgot) on rows
no arm trains on: each earlier stream day's held-out rows (first: right after that day's last update)
and the whole day before the stream (first: the starting model); each also on only the rows whose user
and ad occur nowhere later in the stream ("unseen ids"), where later updates cannot help through the ids.

``--seeds 0,1,2`` repeats everything (data, starting model, stream) per data seed under ``OUT/seed<k>``
and prints the mean, the standard deviation over seeds and the paired per-seed differences (AUC minus
static's, forgetting minus naive's). A finished seed run with the same flags is reused, so seeds can run
as parallel processes (``--seeds 1``, ``--seeds 2``) and be combined afterwards.
Writes ``online.json`` and ``online_{auc,pcoc,forgetting}.png`` per seed, ``OUT/online_seeds.json`` and
prints the tables.
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

from tfads.core.experiment import load_experiment
from tfads.core.manifest import Manifest, load_manifest
from tfads.metrics import field_rce
from tfads.jobs.online import OnlineConfig, OnlineLearner, load_online_config
from tfads.jobs.online.evaluation import ctr_metrics, split_holdout
from tfads.jobs.online.recalibration import calibrated_scores
from tfads.jobs.online.reservoir import read_records
from tfads.plots import metric_over_time
from benchmarks.results import add_results_argument, publish

ID_FIELDS = ("user_id", "ad_id")  # forgetting on rows whose ids never recur in the stream


def prepare_data(work: Path, days: int, per_day: int, seed: int) -> Manifest:
    """Generate logs and run the Beam job once (reused when ``work`` already has them)."""
    from tfads.jobs.dataset import synthetic_dataset

    manifest = work / "data" / "manifest.json"
    if not manifest.exists():
        synthetic_dataset(str(work), days=days, impressions_per_day=per_day, seed=seed)
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
    from tfads.model_io import RECORD
    from tfads.train import train

    if not (model_dir / RECORD).exists():
        config = load_experiment()
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=epochs, batch_size=512))
        train(config, manifest, str(model_dir), verbose=0)
    return str(model_dir)


def calibrate_static(model_dir: str, manifest: Manifest, out_dir: Path) -> str:
    """The static model + AdaCalib (scenario) fitted on its calib day, combined and saved as ``tfads calibrate``
    does (statistics computed in process rather than by the Beam job); reused when present."""
    from tfads.calibration import compute_calibration_stats
    from tfads.calibration.combined import calibrated_tasks, combined_model, task_rows
    from tfads.core.names import HEAD_LABELS
    from tfads.jobs.calibrate import fit_calibration_layers
    from tfads.model_io import RECORD, load_trained_model, read_saved_experiment, save_trained_model
    from tfads.predict import predict_split

    if not (out_dir / RECORD).exists():
        base = load_trained_model(model_dir)
        calib = predict_split(base, manifest, "calib")
        fields = manifest.calibration_fields
        stats = {}
        for task in calibrated_tasks(base.output_names):
            rows = calib[task_rows(calib, task)]
            label, _ = HEAD_LABELS[task]
            stats[task] = compute_calibration_stats(rows[task], rows[label], {f: rows[f] for f in fields}, task=task)
        layers = fit_calibration_layers(calib, stats, fields[:1])
        config = read_saved_experiment(model_dir)
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


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    """One data seed: generate (or reuse) its days, train the starting model, stream the arms."""
    out = Path(args.out) / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "seeds")}
    if (out / "online.json").exists():  # a finished run of this seed (e.g. by a parallel process) ...
        with open(out / "online.json", encoding="utf-8") as f:
            cached = json.load(f)
        same = [k for k in settings if k not in ("arms", "ablations", "later_days")]
        wanted = args.arms.split(",") if args.arms else None
        if {k: cached["settings"].get(k) for k in same} == {k: settings[k] for k in same} and (
                wanted is None or set(wanted) <= set(cached["summary"])):  # ... with these flags and arms
            return cached
    full = prepare_data(out / "work", args.days, args.impressions_per_day, seed)
    manifest = initial_manifest(full, args.initial_days)
    work = out / "work" / f"static{args.initial_days}x{args.pretrain_epochs}"
    model_dirs = {False: train_static(manifest, work, args.pretrain_epochs)}
    if args.calibration:
        model_dirs[True] = calibrate_static(model_dirs[False], manifest, work.with_name(work.name + "_calibrated"))
    days = sorted(full.data["days"])
    valid_day, stream_days = days[args.initial_days], days[args.initial_days + 1:]
    base = load_online_config(args.config)
    configs = arm_configs(base, args)
    chosen = args.arms.split(",") if args.arms else list(configs)
    if unknown := sorted(set(chosen) - set(configs)):
        raise SystemExit(f"--arms: unknown {unknown}; with these flags the arms are {list(configs)}")
    learners = {arm: _learner(model_dirs[configs[arm][1]], manifest, out, arm, configs[arm][0]) for arm in chosen}
    arms = list(learners)
    day_records = {d: read_records(full.day_files(d)) for d in stream_days}
    holdouts = {d: split_holdout(day_records[d], base.holdout_fraction)[1] for d in stream_days}
    # forgetting sets: each earlier stream day's held-out rows and the whole day before the stream (never
    # trained on), each also restricted to rows whose user and ad never occur in the stream after that day
    ids = {d: record_ids(day_records[d]) for d in stream_days}
    old = {d: holdouts[d] for d in stream_days} | {"before": read_records(full.day_files(valid_day))}
    unseen = {d: absent(record_ids(old[d]), [ids[e] for e in stream_days if e > d]) for d in stream_days}
    unseen["before"] = absent(record_ids(old["before"]), list(ids.values()))
    scores: dict[str, dict[str, dict[str, np.ndarray]]] = {a: {} for a in arms}  # arm -> "d:after" etc.
    for arm, learner in learners.items():
        scores[arm]["before:start"] = learner.score(old["before"])
    progressive: dict[str, list[dict]] = {a: [] for a in arms}
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
            scores[arm][f"{day}:after"] = learner.score(holdouts[day])
        print(f"seed {seed} {day}: " + "  ".join(f"{a} AUC={progressive[a][-1]['AUC']:.4f} "
                                                 f"PCOC={progressive[a][-1]['PCOC served']:.3f}" for a in arms),
              flush=True)
    for arm, learner in learners.items():
        for d in old:
            scores[arm][f"{d}:end"] = learner.score(old[d])
    forgetting = {arm: forgetting_aucs(scores[arm], unseen, stream_days) for arm in arms}
    result = {
        "settings": {**settings, "seed": seed, "stream_days": stream_days, "day_before_stream": valid_day,
                     "online_config": dataclasses.asdict(base)},
        "progressive": progressive,
        "accepted": accepted,
        "update_seconds": timings,
        "forgetting_auc": forgetting,
        "unseen_rows": {d: int(mask.sum()) for d, mask in unseen.items()},
        "summary": summarize(progressive, forgetting, stream_days, args.later_days, timings),
    }
    write_outputs(out, result, stream_days)
    return result


def record_ids(records: list[bytes]) -> dict[str, np.ndarray]:
    """The user and ad id of each record."""
    spec = {k: tf.io.FixedLenFeature([], tf.int64, default_value=-1) for k in ID_FIELDS}
    parsed = tf.io.parse_example(tf.constant(records), spec)
    return {k: parsed[k].numpy() for k in ID_FIELDS}


def absent(rows: dict[str, np.ndarray], later: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Mask of ``rows`` whose user and ad occur in none of the ``later`` days' rows."""
    mask = np.ones(len(rows[ID_FIELDS[0]]), dtype=bool)
    for field in ID_FIELDS:
        if later:
            mask &= ~np.isin(rows[field], np.concatenate([day[field] for day in later]))
    return mask


def forgetting_aucs(scores: dict[str, dict[str, np.ndarray]], unseen: dict[str, np.ndarray],
                    days: list[str]) -> dict[str, dict[str, float]]:
    """AUC of pCTR per forgetting set and moment: each stream day's held-out rows right after the day
    (``after``) and at the end; the day before the stream at the start and at the end; each on all rows
    and on the rows whose ids are absent from the later stream (``unseen``)."""
    def auc(key: str, mask: np.ndarray | None) -> float:
        scored = scores[key] if mask is None else {k: v[mask] for k, v in scores[key].items()}
        return ctr_metrics(scored)["AUC"]

    result = {}
    for d, first in [*((d, "after") for d in days), ("before", "start")]:
        for rows, mask in (("all", None), ("unseen", unseen[d])):
            result[f"{d}:{rows}"] = {"first": auc(f"{d}:{first}", mask), "end": auc(f"{d}:end", mask)}
    return result


def _learner(model_dir: str, manifest: Manifest, out: Path, arm: str, config: OnlineConfig) -> OnlineLearner:
    root = out / "work" / "arms" / arm
    shutil.rmtree(root, ignore_errors=True)  # a benchmark always starts its arms from the static model
    return OnlineLearner(model_dir, manifest, str(root / "state"), None, config)  # nothing exported


FORGETTING = {  # summary column -> (forgetting set, rows): AUC at first minus AUC at the end (> 0: forgot)
    "forgetting, earlier days": ("days", "all"),
    "forgetting, earlier days, unseen ids": ("days", "unseen"),
    "forgetting, day before stream": ("before", "all"),
    "forgetting, day before stream, unseen ids": ("before", "unseen"),
}


def summarize(progressive: dict, forgetting: dict, days: list[str], later: int,
              timings: dict[str, float]) -> dict[str, dict]:
    """Per arm: mean progressive AUC / |PCOC - 1| (raw and served) over all and the last ``later`` days,
    forgetting (AUC right after a stream day minus at the end on its held-out rows, mean over the earlier
    stream days; AUC on the day before the stream at the start minus at the end), update time."""
    rows = {}
    for arm, recs in progressive.items():
        auc = np.array([r["AUC"] for r in recs])
        pcoc = np.abs(np.array([r["PCOC"] for r in recs]) - 1)
        served = np.abs(np.array([r["PCOC served"] for r in recs]) - 1)
        rows[arm] = {
            "AUC (all days)": float(np.nanmean(auc)),
            f"AUC (last {later})": float(np.nanmean(auc[-later:])),
            "|PCOC-1| raw": float(np.nanmean(pcoc)),
            "|PCOC-1| served": float(np.nanmean(served)),
            f"|PCOC-1| served (last {later})": float(np.nanmean(served[-later:])),
            "Field-RCE[scenario] raw": float(np.nanmean([r.get("Field-RCE raw", np.nan) for r in recs])),
            "Field-RCE[scenario] served": float(np.nanmean([r.get("Field-RCE served", np.nan) for r in recs])),
        }
        for column, (where, which) in FORGETTING.items():
            keys = [f"{d}:{which}" for d in days[:-1]] if where == "days" else [f"before:{which}"]
            rows[arm][column] = float(np.nanmean([forgetting[arm][k]["first"] - forgetting[arm][k]["end"]
                                                  for k in keys]))
        rows[arm]["AUC at end, earlier days"] = float(np.nanmean([forgetting[arm][f"{d}:all"]["end"]
                                                                  for d in days[:-1]]))
        rows[arm]["update s"] = timings[arm]
    return rows


def combine(results: list[dict], arms: list[str] | None, later: int) -> dict:
    """Across seeds, for ``arms`` (None: all of the first run's): each arm's summary (recomputed with
    ``later``) as mean and standard deviation, and the paired per-seed differences the benchmark is
    about (AUC minus static's, forgetting minus naive's)."""
    arms = arms or list(results[0]["progressive"])
    summaries = [summarize({a: r["progressive"][a] for a in arms}, r["forgetting_auc"], r["settings"]["stream_days"],
                           later, r["update_seconds"]) for r in results]
    columns = list(summaries[0][arms[0]])
    mean = {a: {c: float(np.mean([s[a][c] for s in summaries])) for c in columns} for a in arms}
    sd = {a: {c: float(np.std([s[a][c] for s in summaries], ddof=1)) if len(results) > 1 else float("nan")
              for c in columns} for a in arms}
    pairs = [(f"AUC (last {later})", "static"), ("AUC (all days)", "static"),
             *((column, "naive") for column in FORGETTING)]
    paired = {}
    for arm in arms:
        for column, reference in pairs:
            if reference in arms and arm != reference:
                diffs = [s[arm][column] - s[reference][column] for s in summaries]
                paired.setdefault(arm, {})[f"{column} - {reference}"] = {
                    "per seed": diffs, "mean": float(np.mean(diffs)),
                    "sd": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else float("nan")}
    return {"seeds": [r["settings"]["seed"] for r in results], "mean": mean, "sd": sd, "paired": paired}


def write_outputs(out: Path, result: dict, days: list[str]) -> None:
    with open(out / "online.json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, default=float)
    x = list(range(1, len(days) + 1))
    for metric, key in (("AUC", "AUC"), ("PCOC", "PCOC served")):
        series = {arm: (x, [r[key] for r in recs]) for arm, recs in result["progressive"].items()}
        metric_over_time(series, out / f"online_{metric.lower()}.png", ylabel=f"pCTR {metric} (next day)",
                         xlabel="stream day", title=f"progressive {metric}: model before it sees the rows")
    forgetting = result["forgetting_auc"]
    series = {arm: (x[:-1], [forgetting[arm][f"{d}:all"]["first"] - forgetting[arm][f"{d}:all"]["end"]
                             for d in days[:-1]]) for arm in result["progressive"]}
    metric_over_time(series, out / "online_forgetting.png", ylabel="AUC after own day - AUC at end",
                     xlabel="stream day (held-out rows)", title="forgetting of earlier days (lower is better)")


def table(combined: dict) -> str:
    """The mean summary, the seeds' standard deviations and the paired differences as text tables."""
    from tfads.metrics import metrics_table

    paired = {arm: {name: f"{d['mean']:+.4f} ({', '.join(f'{x:+.4f}' for x in d['per seed'])})"
                    for name, d in rows.items()} for arm, rows in combined["paired"].items()}
    parts = [f"mean over seeds {combined['seeds']}", metrics_table(combined["mean"])]
    if len(combined["seeds"]) > 1:
        parts += ["standard deviation over seeds", metrics_table(combined["sd"])]
    parts += ["paired differences: mean (per seed)", "\n".join(
        f"{arm:14s} {name}: {value}" for arm, rows in paired.items() for name, value in rows.items())]
    return "\n\n".join(parts)


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
    parser.add_argument("--seeds", default="0",
                        help="comma-separated data seeds, each run under OUT/seed<k> (a finished seed run with "
                             "the same flags is reused, so seeds can run in parallel processes and be combined)")
    parser.add_argument("--ablations", action="store_true", help="also odl with each of its parts switched off")
    parser.add_argument("--calibration", action="store_true",
                        help="also the calibrated starting model: static, odl with fixed and with refitted AdaCalib")
    parser.add_argument("--arms", default=None, help="comma-separated subset of the arms (default: all)")
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "online.yaml"))
    add_results_argument(parser)
    args = parser.parse_args(argv)
    results = [run_seed(args, int(seed)) for seed in args.seeds.split(",")]
    combined = combine(results, args.arms.split(",") if args.arms else None, args.later_days)
    with open(Path(args.out) / "online_seeds.json", "w", encoding="utf-8") as f:
        json.dump(combined, f, indent=1)
    print(table(combined))
    publish("online", combined, table(combined), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
