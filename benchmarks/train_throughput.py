"""Training throughput: tfads (TFRecords -> tf.data -> DCNv2) vs DeepCTR's DCN (numpy in memory).

Criteo-like shape: 26 categorical + 13 numeric features, embedding 16, 3 full-rank cross layers,
MLP 256-128, batch 1024, one epoch per run. Every tfads variant and DeepCTR run once per round,
side by side, for ``--repeats`` rounds; round ``r`` trains every model with seed ``r`` (the machine
is shared: interleaving keeps load drift out of the ratio). Each run is its own process, so each
engine gets its own TensorFlow thread pools (``--threads``; ``--deepctr-threads``, one DeepCTR row
per setting, tfads' ratios taken to the fastest; TensorFlow reads ``TF_NUM_INTEROP_THREADS`` /
``TF_NUM_INTRAOP_THREADS`` at start-up). The table shows medians of speed, the mean AUC over the
seeds, and the JSON every run. ``cpu_ms_per_1k`` is the process CPU
time per 1,000 examples (all threads), a load-robust measure of the work. DeepCTR is installed only
for this benchmark, into ``bench_out/deps`` (``pip install --target``), never into the project
environment.

    python -m benchmarks.train_throughput [--rows 600000] [--repeats 5] [--variants default baseline]

``default`` is the speed options of ``configs/default.yaml`` on the Criteo-shaped DCN above (the
comparison the default config must win: >= 2x DeepCTR's examples/s at equal AUC); ``baseline`` has
every speed option off.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

import tfads  # noqa: F401
import tensorflow as tf
import tf_keras as keras

from benchmarks import criteo_like
from tfads.data import make_dataset
from tfads.core.experiment import AdaSparseConfig, CrossConfig, ModelConfig, load_experiment
from tfads.core.manifest import load_manifest
from tfads.metrics import auc, metrics_table
from tfads.models import build_model, compile_model
from benchmarks.results import add_results_argument, publish

DEEPCTR = "deepctr==0.9.4"
BATCH = 1024
SHAPE = ModelConfig(
    backbone="dcnv2",
    embedding_dim=16,
    deep_units=[256, 128],
    tower_units=[],
    cross=CrossConfig(layers=3, structure="parallel"),  # cross and deep side by side on x0, as DeepCTR's DCN
    adasparse=AdaSparseConfig(enabled=False),
)
FAST = {"numeric_encoding": "dense", "fused_embeddings": True, "embedding_init_std": 0.001}


@dataclasses.dataclass(frozen=True)
class Variant:
    """A tfads run: model config overrides, ``train.steps_per_execution``, make_dataset's shuffle_block and
    ``train.deterministic`` (op determinism and a fixed input order)."""

    model: dict
    steps_per_execution: int = 1
    shuffle_block: int = 1
    deterministic: bool = False


def default_variant() -> Variant:
    """The speed options of ``configs/default.yaml`` (what ``tfads train`` uses unless told otherwise)."""
    config = load_experiment()
    m = config.model
    options = {"numeric_encoding": m.numeric_encoding, "fused_embeddings": m.fused_embeddings,
               "embedding_init_std": m.embedding_init_std, "matmul_dtype": m.matmul_dtype}
    return Variant(options, config.train.steps_per_execution, config.train.shuffle_block)


VARIANTS = {
    "default": default_variant(),
    "default-deterministic": dataclasses.replace(default_variant(), deterministic=True),
    "baseline": Variant({}),
    "dense-numeric": Variant({"numeric_encoding": "dense"}),
    "fast": Variant(FAST, 8),
    "fast-block8": Variant(FAST, 8, shuffle_block=8),
    "fast-bf16": Variant({**FAST, "matmul_dtype": "bfloat16"}, 8, shuffle_block=8),
}
DEEPCTR_NAME = "DeepCTR DCN (numpy)"


class Throughput(keras.callbacks.Callback):
    """Examples/s and CPU ms per 1,000 examples over the epoch, after ``warmup`` steps (tracing, autotuning).

    Uses the step index Keras passes, so it also counts right with ``steps_per_execution`` > 1."""

    def __init__(self, warmup: int = 20) -> None:
        super().__init__()
        self.warmup, self.start, self.steps = warmup, None, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps = batch + 1
        if self.start is None and self.steps >= self.warmup:
            self.start = (self.steps, time.perf_counter(), time.process_time())

    def result(self) -> dict:
        steps, wall, cpu = self.start
        examples = (self.steps - steps) * BATCH
        return {
            "examples_per_s": examples / (time.perf_counter() - wall),
            "cpu_ms_per_1k": 1e6 * (time.process_time() - cpu) / examples,
        }


def run_tfads(data_dir: str, optimizer: str, learning_rate: float, variant: Variant, seed: int) -> dict:
    manifest = load_manifest(os.path.join(data_dir, "manifest.json"))
    if variant.deterministic:
        tf.config.experimental.enable_op_determinism()
    cfg = dataclasses.replace(SHAPE, **variant.model)
    model = build_model(manifest, cfg)
    compile_model(model, cfg, learning_rate, optimizer, steps_per_execution=variant.steps_per_execution)
    files = manifest.split_files("train")
    train = make_dataset(
        files, manifest, BATCH, shuffle=True, shuffle_buffer=20_000, shuffle_block=variant.shuffle_block, seed=seed,
        deterministic=variant.deterministic,
    )
    meter = Throughput()
    steps = math.ceil(manifest.split_count("train") / BATCH)  # steps_per_execution > 1 needs the count
    model.fit(train, epochs=1, steps_per_epoch=steps, callbacks=[meter], verbose=0)
    result = meter.result()
    test = make_dataset(manifest.split_files("test"), manifest, 8192, for_training=False)
    ys, ps = [], []
    for batch in test:
        ps.append(model({k: batch[k] for k in manifest.model_inputs}, training=False)["ctr"].numpy().ravel())
        ys.append(batch["click"].numpy())
    return {**result, "test_auc": auc(np.concatenate(ys), np.concatenate(ps))}


def _import_deepctr(deps_dir: str):
    if deps_dir not in sys.path:
        sys.path.insert(0, deps_dir)
    try:
        return importlib.import_module("deepctr.models"), importlib.import_module("deepctr.feature_column")
    except ImportError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", deps_dir, DEEPCTR], check=True
        )
        importlib.invalidate_caches()
        return importlib.import_module("deepctr.models"), importlib.import_module("deepctr.feature_column")


def deepctr_dcn(arrays: dict, deps_dir: str) -> tuple[keras.Model, Any]:
    """DeepCTR's DCN of the Criteo shape, compiled (Adam, Keras' default 1e-3), and ``inputs(a, b)``: its input
    dict of rows ``a:b`` (standardised log1p numerics, as tfads' manifest statistics)."""
    models, fc = _import_deepctr(deps_dir)
    cats, nums = arrays["cats"], np.log1p(arrays["nums"])
    lo, hi = arrays["bounds"]["train"]
    mean, std = nums[lo:hi].mean(0), nums[lo:hi].std(0)
    nums = (nums - mean) / std
    sparse = [
        fc.SparseFeat(f"C{j + 1}", vocabulary_size=c, embedding_dim=16) for j, c in enumerate(criteo_like.CARDINALITIES)
    ]
    dense = [fc.DenseFeat(f"I{j + 1}", 1) for j in range(criteo_like.N_NUM)]
    model = models.DCN(
        sparse + dense,
        sparse + dense,
        cross_num=3,
        cross_parameterization="matrix",
        dnn_hidden_units=(256, 128),
        task="binary",
    )
    model.compile("adam", "binary_crossentropy")

    def inputs(a, b):
        x = {f"C{j + 1}": cats[a:b, j] for j in range(criteo_like.N_CAT)}
        x.update({f"I{j + 1}": nums[a:b, j] for j in range(criteo_like.N_NUM)})
        return x

    return model, inputs


def run_deepctr(arrays: dict, deps_dir: str) -> dict:
    model, inputs = deepctr_dcn(arrays, deps_dir)
    click = arrays["click"]
    lo, hi = arrays["bounds"]["train"]
    meter = Throughput()
    model.fit(inputs(lo, hi), click[lo:hi], batch_size=BATCH, epochs=1, callbacks=[meter], verbose=0)
    result = meter.result()
    tlo, thi = arrays["bounds"]["test"]
    p = model.predict(inputs(tlo, thi), batch_size=8192, verbose=0).ravel()
    return {**result, "test_auc": auc(click[tlo:thi], p)}


RESULT = "RESULT "


def _threads(spec: str) -> dict[str, str]:
    """``"INTER,INTRA"`` -> environment for TensorFlow's thread pools (0 = TensorFlow's default)."""
    try:
        inter, intra = (int(v) for v in spec.split(","))
    except ValueError:
        raise SystemExit(f"--threads/--deepctr-threads: expected INTER,INTRA (e.g. 1,1 or 0,0), got {spec!r}") from None
    return {k: str(v) for k, v in (("TF_NUM_INTEROP_THREADS", inter), ("TF_NUM_INTRAOP_THREADS", intra)) if v > 0}


def _worker(args: argparse.Namespace, data_dir: str, deps: str) -> None:
    """One run (``--worker``: a variant name or ``deepctr``) in this process; prints its result line."""
    keras.utils.set_random_seed(args.seed)
    if args.worker == "deepctr":
        result = run_deepctr(criteo_like.make(data_dir, args.rows, compression=args.compression), deps)
    else:
        result = run_tfads(data_dir, args.optimizer, args.learning_rate, VARIANTS[args.worker], args.seed)
    print(RESULT + json.dumps({**result, "load": os.getloadavg()[0]}), flush=True)


def _spawn(args: argparse.Namespace, worker: str, seed: int, threads: str) -> dict:
    """Run ``worker`` with ``seed`` in a fresh process with its own thread settings; its result."""
    forwarded = ["--rows", str(args.rows), "--out", args.out, "--compression", args.compression]
    forwarded += ["--optimizer", args.optimizer, "--learning-rate", str(args.learning_rate)]
    command = [sys.executable, "-m", "benchmarks.train_throughput", "--worker", worker, "--seed", str(seed), *forwarded]
    env = {k: v for k, v in os.environ.items() if k not in ("TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS")}
    done = subprocess.run(command, env={**env, **_threads(threads)}, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode or not lines:
        raise SystemExit(f"benchmark run {worker} (seed {seed}) failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT) :])


def summarize(runs: dict[str, list[dict]], references: list[str]) -> tuple[dict[str, dict], str]:
    """Per model: median examples/s and CPU ms/1k, mean AUC over the seeds; for tfads, ratios to the
    fastest of the ``references`` (median of the per-round wall ratios, those ratios, CPU-work ratio,
    AUC delta). Returns the results and the reference chosen."""
    results = {
        name: {
            "examples_per_s": statistics.median(r["examples_per_s"] for r in rs),
            "cpu_ms_per_1k": statistics.median(r["cpu_ms_per_1k"] for r in rs),
            "test_auc": statistics.fmean(r["test_auc"] for r in rs),
        }
        for name, rs in runs.items()
    }
    reference = max(references, key=lambda n: results[n]["examples_per_s"])
    theirs = results[reference]
    for name, ours in results.items():
        if name in references:
            continue
        rounds = [a["examples_per_s"] / b["examples_per_s"] for a, b in zip(runs[name], runs[reference], strict=True)]
        ours["speedup"] = statistics.median(rounds)
        ours["round_speedups"] = rounds
        ours["cpu_work_ratio"] = theirs["cpu_ms_per_1k"] / ours["cpu_ms_per_1k"]
        ours["auc_delta"] = ours["test_auc"] - theirs["test_auc"]
    return results, reference


def determinism_cost(runs: dict[str, list[dict]]) -> list[str]:
    """One line per ``<variant>-deterministic`` run beside ``<variant>``: the median over rounds of the
    examples/s and CPU-per-example ratios (same round, same seed) and the rounds' ratios."""
    lines = []
    for name, theirs in runs.items():
        base = name.removesuffix("-deterministic")
        if name == base or base not in runs:
            continue
        speed = [d["examples_per_s"] / b["examples_per_s"] for d, b in zip(theirs, runs[base], strict=True)]
        cpu = [d["cpu_ms_per_1k"] / b["cpu_ms_per_1k"] for d, b in zip(theirs, runs[base], strict=True)]
        lines.append(
            f"- cost of --deterministic ({name} / {base}, per round): examples/s x{statistics.median(speed):.3f} "
            f"(rounds {', '.join(f'{x:.3f}' for x in speed)}), CPU per example x{statistics.median(cpu):.3f} "
            f"(rounds {', '.join(f'{x:.3f}' for x in cpu)})"
        )
    return lines


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=600_000, help="examples in all (80%% train)")
    parser.add_argument("--out", default="bench_out/train_throughput")
    parser.add_argument("--optimizer", default="lazy_adam", choices=["lazy_adam", "adam", "adagrad"])
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="tfads (DeepCTR: Keras' Adam default, 1e-3)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of (every variant, DeepCTR); seed = round")
    parser.add_argument("--variants", nargs="+", default=["default", "baseline"], choices=sorted(VARIANTS),
                        help="tfads variants: default = configs/default.yaml's speed options, baseline = all off")
    parser.add_argument(
        "--compression", default="none", choices=sorted(criteo_like.COMPRESSION), help="TFRecord shards (tfads)"
    )
    parser.add_argument("--threads", default="0,0", help="tfads runs' inter-op,intra-op threads (0 = TF default)")
    parser.add_argument(
        "--deepctr-threads",
        nargs="+",
        default=["0,0", "2,2"],
        help="DeepCTR runs' inter-op,intra-op threads: one DeepCTR row each; ratios are to the fastest",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one run in this process
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    add_results_argument(parser)
    args = parser.parse_args(argv)
    data_dir = os.path.join(args.out, "data")
    deps = os.path.abspath(os.path.join("bench_out", "deps"))
    if args.worker:
        return _worker(args, data_dir, deps)
    criteo_like.make(data_dir, args.rows, compression=args.compression)
    _import_deepctr(deps)  # install once, before the timed runs
    theirs = {f"{DEEPCTR_NAME} threads {t}": t for t in args.deepctr_threads}
    ours = [f"tfads {v}" for v in args.variants]
    runs: dict[str, list[dict]] = {n: [] for n in [*ours, *theirs]}
    load_before = os.getloadavg()
    for seed in range(args.repeats):
        for variant in args.variants:
            runs[f"tfads {variant}"].append(_spawn(args, variant, seed, args.threads))
        for name, threads in theirs.items():
            runs[name].append(_spawn(args, "deepctr", seed, threads))
    results, reference = summarize(runs, list(theirs))
    summary = {
        "rows": args.rows,
        "batch": BATCH,
        "optimizer": args.optimizer,
        "learning_rate": args.learning_rate,
        "repeats": args.repeats,
        "compression": args.compression,
        "threads": {"tfads": args.threads, "deepctr": args.deepctr_threads},
        "variants": {v: dataclasses.asdict(VARIANTS[v]) for v in args.variants},
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "reference": reference,
        "results": results,
        "runs": runs,
    }
    print(json.dumps(summary, indent=2))
    table = {n: {k: v for k, v in r.items() if k != "round_speedups"} for n, r in results.items()}
    print(metrics_table(table))
    for name in ours:
        r = results[name]
        rounds = ", ".join(f"{x:.2f}" for x in r["round_speedups"])
        print(
            f"{name} (threads {args.threads}): {r['speedup']:.2f}x {reference} examples/s (rounds {rounds}),"
            f" {r['cpu_work_ratio']:.2f}x less CPU work, AUC delta {r['auc_delta']:+.4f}"
        )
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    lines = [metrics_table(table, markdown=True), ""]
    lines += [f"- {name}: {results[name]['speedup']:.2f}x {reference} examples/s, "
              f"{results[name]['cpu_work_ratio']:.2f}x less CPU work, AUC delta {results[name]['auc_delta']:+.4f}"
              for name in ours]
    lines += determinism_cost(runs)
    publish("train_throughput", summary, "\n".join(lines), args)
    return summary


if __name__ == "__main__":
    main()
