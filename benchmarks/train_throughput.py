"""Training throughput: tfads (TFRecords -> tf.data -> DCNv2) vs DeepCTR's DCN (numpy in memory).

Criteo-like shape: 26 categorical + 13 numeric features, embedding 16, 3 full-rank cross layers,
MLP 256-128, batch 1024, one epoch per run. Every tfads variant and DeepCTR run once per round,
side by side, for ``--repeats`` rounds (the machine is shared: interleaving keeps load drift out of the
ratio); the table shows medians, the JSON every run. ``cpu_ms_per_1k`` is the process CPU time per
1,000 examples (all threads), a load-robust measure of the work. DeepCTR is installed only for this
benchmark, into ``bench_out/deps`` (``pip install --target``), never into the project environment.

    python -m benchmarks.train_throughput [--rows 600000] [--repeats 3] [--variants baseline fast]
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

import numpy as np

import tfads  # noqa: F401
import tensorflow as tf
import tf_keras as keras

from benchmarks import criteo_like
from tfads.data import make_dataset
from tfads.experiment import AdaSparseConfig, CrossConfig, ModelConfig
from tfads.manifest import load_manifest
from tfads.metrics import auc, metrics_table
from tfads.models import build_model, compile_model

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
# tfads variants: model config overrides and steps_per_execution (the tfads train options they stand for)
VARIANTS = {
    "baseline": ({}, 1),
    "dense-numeric": ({"numeric_encoding": "dense"}, 1),
    "fast": ({"numeric_encoding": "dense", "fused_embeddings": True, "embedding_init_std": 0.01}, 8),
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


def run_tfads(data_dir: str, optimizer: str, overrides: dict, steps_per_execution: int) -> dict:
    manifest = load_manifest(os.path.join(data_dir, "manifest.json"))
    cfg = dataclasses.replace(SHAPE, **overrides)
    model = build_model(manifest, cfg)
    compile_model(model, cfg, 1e-3, optimizer, steps_per_execution=steps_per_execution)
    train = make_dataset(manifest.split_files("train"), manifest, BATCH, shuffle=True, shuffle_buffer=20_000)
    meter = Throughput()
    steps = math.ceil(manifest.split_count("train") / BATCH)  # steps_per_execution > 1 needs the count
    model.fit(train, epochs=1, steps_per_epoch=steps, callbacks=[meter], verbose=0)
    result = meter.result()
    test = make_dataset(manifest.split_files("test"), manifest, 8192, for_training=False)
    ys, ps = [], []
    for batch in test:
        ps.append(model({k: batch[k] for k in manifest.features}, training=False)["ctr"].numpy().ravel())
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


def run_deepctr(arrays: dict, deps_dir: str) -> dict:
    models, fc = _import_deepctr(deps_dir)
    cats, nums, click = arrays["cats"], np.log1p(arrays["nums"]), arrays["click"]
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

    meter = Throughput()
    model.fit(inputs(lo, hi), click[lo:hi], batch_size=BATCH, epochs=1, callbacks=[meter], verbose=0)
    result = meter.result()
    tlo, thi = arrays["bounds"]["test"]
    p = model.predict(inputs(tlo, thi), batch_size=8192, verbose=0).ravel()
    return {**result, "test_auc": auc(click[tlo:thi], p)}


def _median(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=600_000, help="examples in all (80%% train)")
    parser.add_argument("--out", default="bench_out/train_throughput")
    parser.add_argument("--optimizer", default="lazy_adam", choices=["lazy_adam", "adam", "adagrad"])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of (every variant, DeepCTR)")
    parser.add_argument(
        "--variants", nargs="+", default=["baseline", "dense-numeric", "fast"], choices=sorted(VARIANTS)
    )
    args = parser.parse_args(argv)
    data_dir = os.path.join(args.out, "data")
    arrays = criteo_like.make(data_dir, args.rows)
    deps = os.path.abspath(os.path.join("bench_out", "deps"))
    names = [f"tfads {v}" for v in args.variants] + [DEEPCTR_NAME]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        for variant in args.variants:
            keras.utils.set_random_seed(0)
            runs[f"tfads {variant}"].append(run_tfads(data_dir, args.optimizer, *VARIANTS[variant]))
            keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        runs[DEEPCTR_NAME].append(run_deepctr(arrays, deps))
        keras.backend.clear_session()
    results = {n: _median(r) for n, r in runs.items()}
    theirs = results[DEEPCTR_NAME]
    for name in names[:-1]:
        ours = results[name]
        ours["speedup"] = ours["examples_per_s"] / theirs["examples_per_s"]
        ours["round_speedups"] = [
            a["examples_per_s"] / b["examples_per_s"] for a, b in zip(runs[name], runs[DEEPCTR_NAME], strict=True)
        ]
        ours["auc_delta"] = ours["test_auc"] - theirs["test_auc"]
    summary = {
        "rows": args.rows,
        "batch": BATCH,
        "optimizer": args.optimizer,
        "repeats": args.repeats,
        "variants": {v: {"model": VARIANTS[v][0], "steps_per_execution": VARIANTS[v][1]} for v in args.variants},
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "results": results,
        "runs": runs,
    }
    print(json.dumps(summary, indent=2))
    table = {n: {k: v for k, v in r.items() if k != "round_speedups"} for n, r in results.items()}
    print(metrics_table(table))
    for name in names[:-1]:
        r = results[name]
        print(f"{name}: {r['speedup']:.2f}x DeepCTR examples/s, AUC delta {r['auc_delta']:+.4f}")
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    return summary


if __name__ == "__main__":
    main()
