"""Training throughput: tfads (TFRecords -> tf.data -> DCNv2) vs DeepCTR's DCN (numpy in memory).

Criteo-like shape: 26 categorical + 13 numeric features, embedding 16, 3 full-rank cross layers,
MLP 256-128, batch 1024, one epoch each, side by side in one run. DeepCTR is installed only for this
benchmark, into ``bench_out/deps`` (``pip install --target``), never into the project environment.

    python -m benchmarks.train_throughput [--rows 600000]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
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


class Throughput(keras.callbacks.Callback):
    """Examples/s over the epoch, skipping the first ``warmup`` steps (tracing, autotuning)."""

    def __init__(self, warmup: int = 20) -> None:
        super().__init__()
        self.warmup, self.steps, self.start = warmup, 0, None

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == self.warmup:
            self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.rate = (self.steps - self.warmup) * BATCH / (time.perf_counter() - self.start)


def run_tfads(data_dir: str, optimizer: str) -> dict:
    manifest = load_manifest(os.path.join(data_dir, "manifest.json"))
    cfg = ModelConfig(
        backbone="dcnv2",
        embedding_dim=16,
        deep_units=[256, 128],
        tower_units=[],
        cross=CrossConfig(layers=3),
        adasparse=AdaSparseConfig(enabled=False),
    )
    model = build_model(manifest, cfg)
    compile_model(model, cfg, 1e-3, optimizer)
    train = make_dataset(manifest.split_files("train"), manifest, BATCH, shuffle=True, shuffle_buffer=20_000)
    meter = Throughput()
    start = time.perf_counter()
    model.fit(train, epochs=1, callbacks=[meter], verbose=0)
    wall = time.perf_counter() - start
    test = make_dataset(manifest.split_files("test"), manifest, 8192, for_training=False)
    ys, ps = [], []
    for batch in test:
        ps.append(model({k: batch[k] for k in manifest.features}, training=False)["ctr"].numpy().ravel())
        ys.append(batch["click"].numpy())
    return {"examples_per_s": meter.rate, "epoch_wall_s": wall, "test_auc": auc(np.concatenate(ys), np.concatenate(ps))}


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
    start = time.perf_counter()
    model.fit(inputs(lo, hi), click[lo:hi], batch_size=BATCH, epochs=1, callbacks=[meter], verbose=0)
    wall = time.perf_counter() - start
    tlo, thi = arrays["bounds"]["test"]
    p = model.predict(inputs(tlo, thi), batch_size=8192, verbose=0).ravel()
    return {"examples_per_s": meter.rate, "epoch_wall_s": wall, "test_auc": auc(click[tlo:thi], p)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=600_000, help="examples in all (80%% train)")
    parser.add_argument("--out", default="bench_out/train_throughput")
    parser.add_argument("--optimizer", default="lazy_adam", choices=["lazy_adam", "adam", "adagrad"])
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    data_dir = os.path.join(args.out, "data")
    arrays = criteo_like.make(data_dir, args.rows)
    results = {"tfads DCNv2 (TFRecords)": run_tfads(data_dir, args.optimizer)}
    keras.backend.clear_session()
    results["DeepCTR DCN (numpy)"] = run_deepctr(arrays, os.path.abspath(os.path.join("bench_out", "deps")))
    ours, theirs = results["tfads DCNv2 (TFRecords)"], results["DeepCTR DCN (numpy)"]
    summary = {
        "rows": args.rows,
        "batch": BATCH,
        "threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "results": results,
        "speedup": ours["examples_per_s"] / theirs["examples_per_s"],
        "auc_delta": ours["test_auc"] - theirs["test_auc"],
    }
    print(json.dumps(summary, indent=2))
    print(metrics_table(results))
    print(f"speedup (examples/s): {summary['speedup']:.2f}x   AUC delta: {summary['auc_delta']:+.4f}")
    return summary


if __name__ == "__main__":
    main()
