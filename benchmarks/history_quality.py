"""User behaviour histories on the generator data: no history vs mean-pooled vs DIN, quality and cost.

The history variants of ``benchmarks.model_quality`` live in this separate module (that one is already
long). Generates logs (``tfads.datagen``, whose users have persistent drifting interests that their clicks
reveal, ``--interest-scale``), builds them once with a schema ``history:`` of the user's last ``--max-len``
clicked categories (``hist_category``) and clicked ad ids (``hist_ad_id``), point in time (strictly before
each impression, decision 0029), and trains on the same data. The first ``--history-days`` days only feed
histories (their examples are left out of training through a second manifest): the logs start with no past,
so without them the training days' histories are much shorter than the test day's (first run: mean length
0.4 on the first training day, 1.7 over the training days, 3.7 on the test day), a shift a production
system with a long past does not have. Variants:

- ``none``: the default experiment (DCNv2 + AdaSparse) with ``model.history.pooling: none`` (the history
  inputs are there but unread: the no-history model); ``mean``: masked mean pooling; ``din``: DIN attention;
- ``dcnv2_none`` / ``dnn_none``: no-history models without AdaSparse, so that "the best no-history model" is
  the best of several backbones, not just the default's; ``dcnv2_din`` (not run by default): DIN on DCNv2.

No impression-based history: the generator serves ads independently of the user (an impression's ad is
drawn from the global ad popularity, ``World.sample``), so the ads a user was shown carry nothing about their
interests; only what they clicked does.

Every variant is trained ``--seeds`` times (train seeds 0, 1, ...; same data). The table shows per variant
the mean test pCTR AUC, LogLoss and GAUC (per user), the oracle AUC (the generator's true probabilities,
same rows), the gap to it, the share of the (best no-history model -> oracle) gap the variant closes, and
the mean over seeds of the paired AUC difference to ``none`` (seed k against seed k) with a paired
bootstrap 95 % interval over test rows. Costs, each measured side by side for all variants in one process:
training examples/s of the compiled train step (rounds of ``--train-steps`` steps per variant, interleaved;
also the wall-clock rate of the real training runs, validations included) and serving latency of one
request of ``--candidates`` candidates through each seed-0 model's exported SavedModel ``serving_default``
called in process (the history sent once, shape (1, max_len), broadcast in the graph), after warm-up,
``--serving-calls`` calls per model interleaved in random order. Also: the share of test impressions with a
non-empty history, AUC on rows with / without one, and the oracle without the generator's interest term
(how much AUC the users' interests are worth at most). Targets (the issue): DIN closes >= 1/3 of the gap
between the best no-history model and the oracle, at <= 1.5x the serving p50 of ``none``.

    python -m benchmarks.history_quality                          # 11 days x 100k (3 + 5 + 3), 3 seeds
    python -m benchmarks.history_quality --quick --results-dir /tmp/hq   # smoke: 5 days x 5k, 1 seed
    python -m benchmarks.history_quality --variants none,din,dcnv2_none,dcnv2_din --seeds 2

Data and per-training results are cached under ``--out`` (keyed by their settings), so a re-run only
trains what changed; the cost measurements always run.
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

import tfads  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from benchmarks.model_quality import (
    _test_day_world, cached_run, generator_digest, paired_auc_diff, test_truth,
)
from benchmarks.results import RESULTS_DIR, add_results_argument, publish
from tfads.core.experiment import DEFAULT_EXPERIMENT, ExperimentConfig, load_experiment
from tfads.metrics import auc, bootstrap_ci, gauc, logloss, metrics_table

BASELINE = "none"  # the no-history model of the default backbone: paired differences and cost ratios
TARGET_MODEL = "din"
TARGETS = {"din_gap_closed_min": 1 / 3, "din_serving_p50_ratio_max": 1.5}
VARIANTS: dict[str, dict[str, Any]] = {  # backbone / adasparse absent: the --config's
    "none": {"pooling": "none"},
    "mean": {"pooling": "mean"},
    "din": {"pooling": "din"},
    "dcnv2_none": {"pooling": "none", "backbone": "dcnv2", "adasparse": False},
    "dnn_none": {"pooling": "none", "backbone": "dnn", "adasparse": False},
    "dcnv2_din": {"pooling": "din", "backbone": "dcnv2", "adasparse": False},
}
DEFAULT_VARIANTS = "none,mean,din,dcnv2_none,dnn_none"
QUICK = {"days": 6, "history_days": 1, "impressions_per_day": 5000, "seeds": 1, "bootstrap": 50, "serving_calls": 50,
         "train_steps": 16, "train_rounds": 2}


def history_spec(max_len: int) -> dict[str, dict[str, Any]]:
    """The schema ``history:`` block: the user's last ``max_len`` clicked categories and clicked ad ids."""
    return {
        "hist_category": {"field": "category", "events": "click", "max_len": max_len},
        "hist_ad_id": {"field": "ad_id", "events": "click", "max_len": max_len},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--days", type=int, default=11, help="days of logs in all: --history-days, then training days, "
                   "then valid / calib / test, one day each (default: %(default)s)")
    p.add_argument("--history-days", type=int, default=3,
                   help="first days whose examples only feed the histories, not training (default: %(default)s)")
    p.add_argument("--impressions-per-day", type=int, default=100_000,
                   help="generated impressions per day (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="data (generator) seed (default: %(default)s)")
    p.add_argument("--interest-scale", type=float, default=None,
                   help="std of the users' interest term in the true CTR logit (default: the generator's, 0.75; "
                   "0 = the histories carry no signal)")
    p.add_argument("--max-len", type=int, default=20, help="events per history, both (default: %(default)s)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help=f"comma list of {', '.join(VARIANTS)}; must include none (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=3,
                   help="trainings per variant, train seeds 0, 1, ... (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=None, help="epochs cap (default: the experiment's train.epochs; "
                   "early stopping ends training first)")
    p.add_argument("--config", default=str(DEFAULT_EXPERIMENT),
                   help="experiment YAML the variants start from (default: the package's default.yaml)")
    p.add_argument("--bootstrap", type=int, default=200,
                   help="bootstrap resamples of the intervals, 0 = none (default: %(default)s)")
    p.add_argument("--candidates", type=int, default=100, help="candidates per serving request (default: %(default)s)")
    p.add_argument("--serving-calls", type=int, default=300,
                   help="timed serving calls per model, after the warm-up (default: %(default)s)")
    p.add_argument("--serving-warmup", type=int, default=30,
                   help="untimed serving calls per model first (default: %(default)s)")
    p.add_argument("--train-steps", type=int, default=96,
                   help="steps per variant and round of the side-by-side training throughput (default: %(default)s)")
    p.add_argument("--train-rounds", type=int, default=3,
                   help="rounds of the training throughput, median reported (default: %(default)s)")
    p.add_argument("--out", default=None,
                   help="work directory: logs, data, runs (default: bench_out/history_quality, or "
                   "bench_out/history_quality_quick with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())
                   + " unless given; results under <--out>/results unless --results-dir is given")
    add_results_argument(p)
    args = p.parse_args(argv)
    if args.quick:  # the smoke sizes become the defaults; flags given still win
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    args.out = args.out or ("bench_out/history_quality_quick" if args.quick else "bench_out/history_quality")
    if args.quick and args.results_dir == str(RESULTS_DIR):
        args.results_dir = os.path.join(args.out, "results")
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    if BASELINE not in args.variants.split(","):
        p.error(f"--variants must include {BASELINE!r} (the paired differences and cost ratios are against it)")
    if args.history_days < 0 or args.days < args.history_days + 4:
        p.error("--days must be >= --history-days + 4 (>= 0; one training day, and valid, calib and test take one "
                "day each)")
    if min(args.seeds, args.max_len, args.candidates, args.serving_calls, args.train_steps, args.train_rounds) < 1:
        p.error("--seeds, --max-len, --candidates, --serving-calls, --train-steps and --train-rounds must be >= 1")
    return args


# ----------------------------------------------------------------------------- data


def prepare_data(out: str, args: argparse.Namespace) -> tuple[str, str]:
    """Generator logs and the Beam build with the histories under ``out`` (reused when the settings, the
    generator and the history definitions match); returns (logs dir, manifest path)."""
    import yaml

    from tfads.core.schema import DEFAULT_SCHEMA
    from tfads.datagen import generate
    from tfads.datagen import world as W
    from tfads.jobs.dataset import build_dataset

    logs, data = os.path.join(out, "logs"), os.path.join(out, "data")
    stamp, manifest = os.path.join(out, "data.json"), os.path.join(data, "manifest.json")
    interest = W.INTEREST_SCALE if args.interest_scale is None else args.interest_scale
    settings = {
        "days": args.days,
        "impressions_per_day": args.impressions_per_day,
        "seed": args.seed,
        "interest_scale": interest,
        "history": history_spec(args.max_len),
        "history_days": args.history_days,  # only the training manifest depends on it
        "generator": generator_digest(),
    }
    if os.path.exists(stamp) and os.path.exists(manifest):
        with open(stamp) as f:
            if json.load(f) == settings:
                return logs, training_manifest(manifest, args.history_days)
    t = time.monotonic()
    generate(logs, days=args.days, impressions_per_day=args.impressions_per_day, seed=args.seed,
             interest_scale=interest, progress=False)
    print(f"datagen: {args.days} days x {args.impressions_per_day} in {time.monotonic() - t:.0f} s", flush=True)
    schema = yaml.safe_load(open(DEFAULT_SCHEMA))
    schema["history"] = settings["history"]
    schema_path = os.path.join(out, "schema.yaml")
    with open(schema_path, "w") as f:
        yaml.safe_dump(schema, f, sort_keys=False)
    t = time.monotonic()
    shutil.rmtree(data, ignore_errors=True)
    build_dataset(logs, data, workers=2, schema=schema_path)  # a history: the keyed graph
    print(f"Beam job (keyed graph, histories): {time.monotonic() - t:.0f} s", flush=True)
    with open(stamp, "w") as f:
        json.dump(settings, f)
    return logs, training_manifest(manifest, args.history_days)


def training_manifest(path: str, history_days: int) -> str:
    """``path`` itself, or with ``history_days`` > 0 a copy beside it whose train split leaves out its first
    ``history_days`` days (listed under ``history_only_days``; their events still fill the later days'
    histories; vocabularies, numeric statistics and the train CTR keep counting them)."""
    if not history_days:
        return path
    with open(path) as f:
        data = json.load(f)
    train = data["splits"]["train"]
    dropped, kept = train["days"][:history_days], train["days"][history_days:]
    if not kept:
        raise SystemExit(f"--history-days {history_days} leaves no training day (train days: {train['days']})")
    train.update(days=kept, files=[f for day in kept for f in data["days"][day]["files"]],
                 examples=sum(int(data["days"][day]["examples"]) for day in kept), history_only_days=dropped)
    out = os.path.join(os.path.dirname(path), f"manifest_train_from_day{history_days + 1}.json")
    with open(out, "w") as f:
        json.dump(data, f, indent=2)
    return out


# ----------------------------------------------------------------------------- training and scoring


def variant_config(base: ExperimentConfig, name: str, seed_index: int, epochs: int | None) -> ExperimentConfig:
    """``base`` with variant ``name``'s pooling (and backbone / AdaSparse) and train seed ``base + seed_index``."""
    v, m = VARIANTS[name], base.model
    ada = dataclasses.replace(m.adasparse, enabled=v.get("adasparse", m.adasparse.enabled))
    model = dataclasses.replace(m, backbone=v.get("backbone", m.backbone), adasparse=ada,
                                history=dataclasses.replace(m.history, pooling=v["pooling"]))
    train = dataclasses.replace(base.train, seed=base.train.seed + seed_index, epochs=epochs or base.train.epochs)
    return dataclasses.replace(base, model=model, train=train)


def score_test(model: Any, manifest: Any) -> pd.DataFrame:
    """pCTR of every test example with its key, user, click and history lengths (the histories included in the
    model's inputs, the rest of the examples' columns left out)."""
    import tensorflow as tf

    from tfads.core.manifest import history_length_input
    from tfads.data import DTYPES, make_dataset

    inputs = manifest.model_inputs
    spec = {k: tf.TensorSpec([None, *shape], DTYPES[dtype]) for k, (dtype, shape) in inputs.items()}

    @tf.function(input_signature=[spec])
    def score(features: dict[str, tf.Tensor]) -> tf.Tensor:
        return tf.reshape(model(features, training=False)["ctr"], [-1])

    keep = {manifest.key: "trace_id", manifest.label_roles["click"]: "click", manifest.data["user_key"]: "user_id"}
    keep.update({history_length_input(h): history_length_input(h) for h in manifest.history})
    parts: dict[str, list[np.ndarray]] = {c: [] for c in [*keep.values(), "ctr"]}
    for batch in make_dataset(manifest.split_files("test"), manifest, 4096, with_meta=True, for_training=False):
        parts["ctr"].append(score({k: batch[k] for k in inputs}).numpy())
        for column, name in keep.items():
            parts[name].append(batch[column].numpy())
    frame = pd.DataFrame({k: np.concatenate(v) for k, v in parts.items()})
    frame["trace_id"] = frame["trace_id"].str.decode("utf-8")
    return frame


def _run_dir(out: str, name: str, seed_index: int) -> str:
    return os.path.join(out, "runs", f"{name}-s{seed_index}")


def run_variant(name: str, seed_index: int, config: ExperimentConfig, manifest_path: str, out: str) -> dict[str, Any]:
    """Train, score the test split and (first seed) export; the record plus the scored frame (cached)."""
    run_dir = _run_dir(out, name, seed_index)
    return cached_run(out, run_dir, {"config": config.to_dict()}, f"{name} seed {seed_index}",
                      lambda: _fit_variant(name, seed_index, config, manifest_path, run_dir))


def _fit_variant(name: str, seed_index: int, config: ExperimentConfig, manifest_path: str,
                 run_dir: str) -> tuple[dict[str, Any], pd.DataFrame]:
    from serving.export import export_model
    from tfads.core.manifest import load_manifest
    from tfads.model_io import load_trained_model
    from tfads.train import summary_line, train

    manifest = load_manifest(manifest_path)
    print(f"\n=== {name} seed {seed_index}: training ===", flush=True)
    t = time.monotonic()
    result = train(config, manifest, os.path.join(run_dir, "model"), verbose=2)
    train_s = time.monotonic() - t
    print(f"{name} seed {seed_index}: {summary_line(result.history)} ({train_s:.0f} s)", flush=True)
    scored = score_test(result.model, manifest)
    export = None
    if seed_index == 0:  # serving is measured on the first seed's model
        served = load_trained_model(os.path.join(run_dir, "model"), float32_matmuls=True)
        export = export_model(served, manifest, os.path.join(run_dir, "export"), version=1)
    record = {
        "config": config.to_dict(),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "train_seconds": train_s,
        "fit_examples_per_s": manifest.split_count("train") * result.epochs_run / train_s,
        "best_val_ctr_auc": max(result.history.get("val_ctr_auc", [float("nan")])),
        "export": export,
    }
    return record, scored


def history_coverage(manifest: Any) -> dict[str, dict[str, float]]:
    """Per split of ``manifest``: the share of examples with a non-empty (and a full) first history, and its mean
    length (the click histories all have the same events, so the same lengths)."""
    import tensorflow as tf

    from tfads.data import DTYPES, compression_of

    name, h = next(iter(manifest.history.items()))
    spec = {name: tf.io.RaggedFeature(DTYPES[h["dtype"]])}
    out = {}
    for split in ("train", "valid", "calib", "test"):
        files = manifest.split_files(split)
        records = tf.data.TFRecordDataset(files, compression_type=compression_of(files)).batch(16384)
        lengths = np.concatenate([
            b.numpy() for b in records.map(lambda r: tf.io.parse_example(r, spec)[name].row_lengths())
        ])
        out[f"{split} ({name})"] = {"examples": len(lengths), "non-empty share": float((lengths > 0).mean()),
                                    "full share": float((lengths >= int(h["max_len"])).mean()),
                                    "mean length": float(lengths.mean())}
    return out


# ----------------------------------------------------------------------------- costs


def train_throughput(configs: dict[str, ExperimentConfig], manifest: Any, steps: int, rounds: int) -> dict[str, dict]:
    """Examples/s and process CPU ms per 1,000 examples of each variant's compiled train step (its config's
    batch size and steps per execution), all models in one process: a warm-up call each, then ``rounds``
    rounds of ``steps`` steps per variant in turn (the order rotating), medians over rounds."""
    import tensorflow as tf

    from tfads.models import build_model, compile_model
    from tfads.train import train_valid_datasets

    models = {}
    for name, config in configs.items():
        tc = config.train
        per_call = max(1, tc.steps_per_execution)
        model = build_model(manifest, config.model)
        compile_model(model, config.model, tc.learning_rate, tc.optimizer, steps_per_execution=per_call)
        iterator = iter(train_valid_datasets(tc, manifest)[0])
        step = model.make_train_function()
        calls = max(1, round(steps / per_call))
        tf.nest.map_structure(lambda v: v.numpy(), step(iterator))  # trace and warm up
        models[name] = (step, iterator, calls * per_call * tc.batch_size, calls)
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    names = list(models)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            step, iterator, examples, calls = models[name]
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                logs = step(iterator)
            tf.nest.map_structure(lambda v: v.numpy(), logs)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            measured[name].append((examples / wall, 1e6 * cpu / examples))
    return {
        name: {
            "examples_per_s": float(np.median([m[0] for m in ms])),
            "cpu_ms_per_1k": float(np.median([m[1] for m in ms])),
            "rounds": [list(m) for m in ms],
        }
        for name, ms in measured.items()
    }


def serving_request(manifest: Any, candidates: int) -> dict[str, Any]:
    """One request of ``candidates`` test rows, every history and length sent once (shape (1, max_len) / (1,)):
    those of the test row with the longest category history among the first 4,096."""
    import tensorflow as tf

    from tfads.core.manifest import history_length_input
    from tfads.data import feature_spec, parse_examples

    records = tf.data.TFRecordDataset(manifest.split_files("test"), compression_type="GZIP").batch(4096)
    batch = parse_examples(next(iter(records)), manifest, feature_spec(manifest, with_labels=False))
    first = next(iter(manifest.history))
    user = int(tf.argmax(batch[history_length_input(first)]))
    once = {n for h in manifest.history for n in (h, history_length_input(h))}
    return {
        name: tf.identity(batch[name][user:user + 1] if name in once else batch[name][:candidates])
        for name in manifest.model_inputs
    }


def serving_latency(exports: dict[str, str], request: dict[str, Any], calls: int, warmup: int) -> dict[str, dict]:
    """p50 / p95 / mean ms of one ``serving_default`` call per export, all loaded in one process: ``warmup``
    calls each, then ``calls`` rounds, each calling every model once in a random order."""
    import tensorflow as tf

    functions = {name: tf.saved_model.load(path).signatures["serving_default"] for name, path in exports.items()}
    for fn in functions.values():
        for _ in range(warmup):
            fn(**request)["ctr"].numpy()
    times: dict[str, list[float]] = {name: [] for name in functions}
    names = list(functions)
    rng = np.random.default_rng(0)
    for _ in range(calls):
        for i in rng.permutation(len(names)):
            fn = functions[names[i]]
            t = time.perf_counter()
            fn(**request)["ctr"].numpy()
            times[names[i]].append(1e3 * (time.perf_counter() - t))
    return {
        name: {"p50_ms": float(np.percentile(ts, 50)), "p95_ms": float(np.percentile(ts, 95)),
               "mean_ms": float(np.mean(ts)), "calls": len(ts)}
        for name, ts in times.items()
    }


# ----------------------------------------------------------------------------- evaluation


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def interest_parts(logs: str, manifest_path: str, truth: pd.DataFrame) -> pd.DataFrame | None:
    """Per test row: the true CTR logit ``z`` and its interest term (``interest_scale * <u_user(t), c_ad>``),
    the test day rebuilt from the generator's seed (checked against the logged truth); None if the logs were
    generated without the term."""
    world, x, tid, t, _ = _test_day_world(logs, manifest_path)
    if not world.interest_scale:
        return None
    frame = pd.DataFrame({"trace_id": tid, "z": np.log(x["p_ctr"] / (1.0 - x["p_ctr"])),
                          "interest": world.interest_scale * world.interest(x, t)})
    check = truth.merge(frame, on="trace_id")
    if len(check) != len(truth) or not np.allclose(_sigmoid(check["z"].to_numpy()), check["true_ctr"].to_numpy(),
                                                   rtol=1e-4, atol=1e-7):
        raise RuntimeError("interest_parts: the rebuilt test day does not match the logged truth (generator changed?)")
    return frame


def gap_closed(y: np.ndarray, ps: list[np.ndarray], qs: list[np.ndarray], oracle: np.ndarray, reps: int) -> list[float]:
    """Share of the gap between ``qs`` (the best no-history model's trainings) and the oracle that ``ps`` closes,
    ``(AUC(p) - AUC(q)) / (AUC(oracle) - AUC(q))`` with mean AUCs over trainings, and a paired percentile
    bootstrap 95 % interval over test rows."""

    def stat(idx: np.ndarray) -> list[float]:
        out = []
        for i in idx:
            mine, best = np.mean([auc(y[i], p[i]) for p in ps]), np.mean([auc(y[i], q[i]) for q in qs])
            out.append((mine - best) / (auc(y[i], oracle[i]) - best))
        return out

    if not reps:
        return [float(stat(np.arange(len(y))[None])[0]), float("nan"), float("nan")]
    ci = bootstrap_ci(stat, len(y), np.random.default_rng(1), reps=reps)
    return [ci.estimate, ci.low, ci.high]


def evaluate(
    runs: dict[str, list[dict[str, Any]]], truth: pd.DataFrame, parts: pd.DataFrame | None, reps: int,
    max_len: int,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Metric rows per variant (means over seeds) and the oracle; plus the best no-history variant, the per-seed
    paired differences, AUC by history status and the oracle without the interest term."""
    first = runs[BASELINE][0]["scored"].merge(truth, on="trace_id", how="left")
    if first["true_ctr"].isna().any():
        raise RuntimeError("test rows without truth: are the logs and the Beam output from the same run?")
    for name, trainings in runs.items():
        if not all((r["scored"]["trace_id"].to_numpy() == first["trace_id"].to_numpy()).all() for r in trainings):
            raise RuntimeError(f"{name}: test rows differ from {BASELINE}'s")
    y, oracle, users = first["click"].to_numpy(), first["true_ctr"].to_numpy(), first["user_id"].to_numpy()
    preds = {name: [r["scored"]["ctr"].to_numpy() for r in trainings] for name, trainings in runs.items()}
    oracle_auc = auc(y, oracle)
    mean_auc = {name: float(np.mean([auc(y, p) for p in ps])) for name, ps in preds.items()}
    no_history = [n for n in runs if VARIANTS[n]["pooling"] == "none"]
    best = max(no_history, key=mean_auc.__getitem__)
    rows: dict[str, dict[str, Any]] = {}
    per_seed: dict[str, list[float]] = {}
    for name, ps in [*preds.items(), ("oracle", [oracle])]:
        aucs = [auc(y, p) for p in ps]
        row: dict[str, Any] = {
            "network / history": describe(runs[name][0]["config"]) if name in runs else "true pCTR",
            "AUC": float(np.mean(aucs)),
            "AUC sd": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else None,
            "LogLoss": float(np.mean([logloss(y, p) for p in ps])),
            "GAUC": float(np.mean([gauc(y, p, users) for p in ps])),
            "Oracle AUC": oracle_auc,
            "Oracle gap": oracle_auc - float(np.mean(aucs)),
        }
        if name != "oracle":
            row["gap closed"] = gap_closed(y, ps, preds[best], oracle, reps) if name != best else 0.0
            if name != BASELINE:
                per_seed[name] = [auc(y, p) - auc(y, q) for p, q in zip(ps, preds[BASELINE], strict=True)]
                if reps:
                    row[f"dAUC vs {BASELINE} [95% CI]"] = paired_auc_diff(y, ps, preds[BASELINE], reps)
                else:
                    row[f"dAUC vs {BASELINE} [95% CI]"] = float(np.mean(per_seed[name]))
            runs_of = runs[name]
            row["epochs"] = round(float(np.mean([r["epochs_run"] for r in runs_of])), 2)
            row["train s"] = round(float(np.mean([r["train_seconds"] for r in runs_of])))
        rows[name] = row

    extra: dict[str, Any] = {"best_no_history": best, "paired_dauc_vs_none_per_seed": per_seed}
    lengths = {c: first[c].to_numpy() for c in first.columns if c.endswith("_length")}
    extra["history_coverage"] = {
        c.removesuffix("_length"): {
            "non_empty_share": float((v > 0).mean()),
            "full_share (max_len)": float((v >= max_len).mean()),
            "mean_length": float(v.mean()),
        }
        for c, v in lengths.items()
    }
    has = lengths["hist_category_length"] > 0
    by_history: dict[str, dict[str, Any]] = {}
    for name, ps in [*preds.items(), ("oracle", [oracle])]:
        by_history[name] = {
            "AUC, no click history": float(np.mean([auc(y[~has], p[~has]) for p in ps])) if (~has).any() else None,
            "AUC, with click history": float(np.mean([auc(y[has], p[has]) for p in ps])) if has.any() else None,
        }
        if name != "oracle" and name != BASELINE:
            by_history[name]["dAUC vs none, no history"] = float(np.mean(
                [auc(y[~has], p[~has]) - auc(y[~has], q[~has]) for p, q in zip(ps, preds[BASELINE], strict=True)]
            )) if (~has).any() else None
            by_history[name]["dAUC vs none, with history"] = float(np.mean(
                [auc(y[has], p[has]) - auc(y[has], q[has]) for p, q in zip(ps, preds[BASELINE], strict=True)]
            )) if has.any() else None
    extra["auc_by_history"] = by_history
    if parts is not None:
        merged = first[["trace_id"]].merge(parts, on="trace_id", how="left")
        z, zi = merged["z"].to_numpy(), merged["interest"].to_numpy()
        extra["oracle_decomposition"] = {
            "oracle AUC": oracle_auc,
            "oracle without the interest term": auc(y, _sigmoid(z - zi)),
            "interest term alone": auc(y, _sigmoid(zi)),
            "interest term std": float(np.std(zi)),
        }
    return rows, extra


def describe(config: dict[str, Any]) -> str:
    """``backbone[+adasparse form] / history pooling`` of a run's config."""
    m = config["model"]
    ada = f"+{m['adasparse']['form']}" if m["adasparse"]["enabled"] else ""
    return f"{m['backbone']}{ada} / {m['history']['pooling']}"


def _cell(v: Any) -> Any:
    if isinstance(v, list):
        if np.isnan(v[1]):
            return f"{v[0]:+.4f}"
        return f"{v[0]:+.4f} [{v[1]:+.4f}, {v[2]:+.4f}]"
    return v


def report_tables(rows: dict, costs: dict, extra: dict, targets: dict, data: str) -> tuple[str, str]:
    """(markdown, text) of the quality table, the costs, the history coverage and AUC by history, the targets and
    the line ``data`` describing the data."""
    shown = {n: {k: _cell(v) for k, v in r.items()} for n, r in rows.items()}
    sections = [("", shown), ("Costs (side by side in one process; ratios to `none`)", costs),
                ("History coverage per split (the training manifest's splits)", extra["coverage_by_split"]),
                ("AUC on test rows without / with a click history (mean over seeds)", extra["auc_by_history"])]
    if "oracle_decomposition" in extra:
        sections.append(("Oracle without the generator's interest term (the most the users' interests are worth)",
                         {"oracle": extra["oracle_decomposition"]}))
    sections.append(("Targets", targets))
    md, text = [], []
    for title, table in sections:
        if title:
            md.append(f"\n**{title}**\n")
            text.append(f"\n{title}")
        md.append(metrics_table(table, markdown=True))
        text.append(metrics_table(table))
    return "\n".join([*md, f"\n{data}"]), "\n".join([*text, f"\n{data}"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    base = load_experiment(args.config)
    logs, manifest_path = prepare_data(out, args)
    from tfads.core.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    names = args.variants.split(",")
    configs = {n: [variant_config(base, n, k, args.epochs) for k in range(args.seeds)] for n in names}
    runs = {n: [run_variant(n, k, c, manifest_path, out) for k, c in enumerate(cs)] for n, cs in configs.items()}

    truth = test_truth(logs, manifest_path)
    parts = interest_parts(logs, manifest_path, truth)
    rows, extra = evaluate(runs, truth, parts, args.bootstrap, args.max_len)
    extra["coverage_by_split"] = history_coverage(manifest)

    print("\n=== costs: training throughput, then serving latency ===", flush=True)
    training = train_throughput({n: cs[0] for n, cs in configs.items()}, manifest, args.train_steps, args.train_rounds)
    exports = {n: rs[0]["export"] for n, rs in runs.items()}
    serving = serving_latency(exports, serving_request(manifest, args.candidates), args.serving_calls,
                              args.serving_warmup)
    costs = {}
    for n in names:
        fit = float(np.mean([r["fit_examples_per_s"] for r in runs[n]]))
        costs[n] = {
            "train ex/s": round(training[n]["examples_per_s"]),
            "train ex/s ratio": training[n]["examples_per_s"] / training[BASELINE]["examples_per_s"],
            "train CPU ms/1k ex": training[n]["cpu_ms_per_1k"],
            "fit ex/s (incl. validation)": round(fit),
            f"serve p50 ms ({args.candidates} cand.)": serving[n]["p50_ms"],
            "serve p95 ms": serving[n]["p95_ms"],
            "p50 ratio": serving[n]["p50_ms"] / serving[BASELINE]["p50_ms"],
        }

    targets: dict[str, dict[str, Any]] = {}
    if TARGET_MODEL in runs:
        closed = rows[TARGET_MODEL]["gap closed"]
        ratio = costs[TARGET_MODEL]["p50 ratio"]
        targets = {
            f"DIN closes >= 1/3 of the gap ({extra['best_no_history']} -> oracle)": {
                "target": TARGETS["din_gap_closed_min"], "measured": _cell(closed),
                "met": bool(closed[0] >= TARGETS["din_gap_closed_min"])},
            "DIN serving p50 <= 1.5x none's": {
                "target": TARGETS["din_serving_p50_ratio_max"], "measured": ratio,
                "met": bool(ratio <= TARGETS["din_serving_p50_ratio_max"])},
        }
    train_days = len(manifest.data["splits"]["train"]["days"])
    histories = ", ".join(f"{n} (last {h['max_len']} {h['field']} {h['events']}s)" for n, h in manifest.history.items())
    data = (
        f"Data: {args.days} days x {args.impressions_per_day:,} generator impressions (seed {args.seed}), the first "
        f"{args.history_days} only feeding histories, {train_days} training days "
        f"({manifest.split_count('train'):,} rows), valid / calib / test one day each "
        f"({manifest.split_count('test'):,} test rows); histories {histories}; {args.seeds} train seeds per variant; "
        f"serving: {args.candidates} candidates per request, {args.serving_calls} timed calls per model after "
        f"{args.serving_warmup} warm-up calls."
    )
    md, text = report_tables(rows, costs, extra, targets, data)
    report = {
        "data": {
            "days": args.days,
            "history_only_days": args.history_days,
            "train_days": manifest.data["splits"]["train"]["days"],
            "impressions_per_day": args.impressions_per_day,
            "seed": args.seed,
            "interest_scale": json.load(open(os.path.join(out, "data.json")))["interest_scale"],
            "train_rows": manifest.split_count("train"),
            "test_rows": manifest.split_count("test"),
            "history": manifest.history,
            "seeds": args.seeds,
        },
        "models": rows,
        "best_no_history": extra["best_no_history"],
        "paired_dauc_vs_none_per_seed": extra["paired_dauc_vs_none_per_seed"],
        "per_seed": {n: [{k: r[k] for k in ("epochs_run", "best_epoch", "train_seconds", "fit_examples_per_s",
                                             "best_val_ctr_auc")} for r in rs] for n, rs in runs.items()},
        "history_coverage": extra["history_coverage"],
        "history_coverage_by_split": extra["coverage_by_split"],
        "auc_by_history": extra["auc_by_history"],
        "oracle_decomposition": extra.get("oracle_decomposition"),
        "costs": costs,
        "train_throughput": training,
        "serving": {"candidates": args.candidates, "warmup": args.serving_warmup, "latency": serving},
        "targets": targets,
        "configs": {n: cs[0].to_dict() for n, cs in configs.items()},
    }
    with open(os.path.join(out, "history_quality.json"), "w") as f:
        json.dump(report, f, indent=2, default=float)
    print()
    print(text)
    publish("history_quality", report, md, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
