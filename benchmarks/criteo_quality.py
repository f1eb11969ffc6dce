"""Test AUC of the default experiment on Criteo-shaped data, beside other training protocols and DeepCTR's DCN.

Data nobody tuned the defaults on: the click-only Criteo-shaped generator of ``benchmarks.criteo_like`` (26
categorical + 13 numeric features, 80/10/10 train/valid/test). Every experiment YAML (``--config``, default
``configs/default.yaml``, and each ``--against``) is trained by ``tfads.train.train`` as ``tfads train`` would,
for seeds 0 .. ``--repeats`` - 1; DeepCTR's DCN (0.9.4, the model and input of ``benchmarks.train_throughput``:
numpy arrays in memory, Adam 1e-3) is trained once per seed with validation after every epoch, giving two
rows: its test AUC after one epoch (as ``benchmarks.train_throughput`` measures it) and with early stopping
(patience 2 epochs on the validation AUC, best epoch kept, cap 20). Every run is its own process; results are
cached under ``--out`` by configuration, seed and data. The table shows per row the mean test AUC over the
seeds, its range, epochs trained and where the kept weights were validated, and the paired difference of
``--config``'s model minus that row (mean over seeds k of AUC(config, k) - AUC(row, k) on the same test rows,
with a paired-bootstrap 95 % interval over test rows).

    python -m benchmarks.criteo_quality --repeats 3 --against benchmarks/configs/one_epoch.yaml \\
        benchmarks/configs/early_stopped.yaml
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import tfads  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from benchmarks import criteo_like
from benchmarks.model_quality import paired_auc_diff
from benchmarks.results import add_results_argument, publish
from tfads.core.experiment import DEFAULT_EXPERIMENT, load_experiment
from tfads.metrics import auc, logloss, metrics_table

DEEPCTR_PATIENCE, DEEPCTR_CAP = 2, 20
DIFF_COLUMN = "dAUC --config - this [95% CI]"


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_tfads(config_path: str, seed: int, data_dir: str) -> dict[str, Any]:
    """Train ``config_path`` with train seed ``seed`` on the Criteo-shaped data; test predictions in file order."""
    import dataclasses
    import tempfile

    from tfads.core.manifest import load_manifest
    from tfads.data import make_dataset
    from tfads.train import train

    config = load_experiment(config_path)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
    manifest = load_manifest(os.path.join(data_dir, "manifest.json"))
    t = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="criteo-quality-") as model_dir:
        result = train(config, manifest, model_dir, verbose=2)
    seconds = time.monotonic() - t
    ys, ps = [], []
    for path in manifest.split_files("test"):  # one file at a time: rows in array order, as DeepCTR's
        for batch in make_dataset([path], manifest, 8192, for_training=False):
            ps.append(result.model({k: batch[k] for k in manifest.model_inputs}, training=False)["ctr"].numpy().ravel())
            ys.append(batch["click"].numpy().ravel())
    return {
        "runs": {"": {"p": np.concatenate(ps), "epochs_run": result.epochs_run, "best_epoch": result.best_epoch}},
        "y": np.concatenate(ys),
        "train_seconds": seconds,
    }


def run_deepctr(arrays: dict, deps_dir: str) -> dict[str, Any]:
    """DeepCTR's DCN validated after every epoch: the test predictions after epoch 1 and at the best
    validation epoch (early stopping with patience ``DEEPCTR_PATIENCE``, cap ``DEEPCTR_CAP``)."""
    import tf_keras as keras

    from benchmarks.train_throughput import BATCH, deepctr_dcn

    model, inputs = deepctr_dcn(arrays, deps_dir)
    click = arrays["click"]
    (lo, hi), (vlo, vhi), (tlo, thi) = (arrays["bounds"][s] for s in ("train", "valid", "test"))

    class Watch(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.val: list[float] = []
            self.first: np.ndarray | None = None
            self.best: np.ndarray | None = None

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            val = auc(click[vlo:vhi], self.model.predict(inputs(vlo, vhi), batch_size=8192, verbose=0).ravel())
            test = self.model.predict(inputs(tlo, thi), batch_size=8192, verbose=0).ravel()
            self.first = test if self.first is None else self.first
            if not self.val or val > max(self.val):
                self.best = test
            self.val.append(val)
            best_at = int(np.argmax(self.val))
            print(f"DeepCTR epoch {epoch + 1}: val AUC {val:.4f} (best epoch {best_at + 1})", flush=True)
            if len(self.val) - 1 - best_at >= DEEPCTR_PATIENCE:
                self.model.stop_training = True

    watch = Watch()
    t = time.monotonic()
    model.fit(inputs(lo, hi), click[lo:hi], batch_size=BATCH, epochs=DEEPCTR_CAP, callbacks=[watch], verbose=2)
    epochs, best = len(watch.val), int(np.argmax(watch.val)) + 1
    return {
        "runs": {
            " 1 epoch": {"p": watch.first, "epochs_run": 1, "best_epoch": 1},
            " early-stopped": {"p": watch.best, "epochs_run": epochs, "best_epoch": best},
        },
        "y": click[tlo:thi],
        "train_seconds": time.monotonic() - t,
        "val_auc": watch.val,
    }


def _worker(args: argparse.Namespace) -> None:
    """One run in this process (``--worker tfads|deepctr``); writes ``--result`` (npz + json)."""
    import tf_keras as keras

    keras.utils.set_random_seed(args.seed)
    data_dir = os.path.join(args.out, "data")
    if args.worker == "deepctr":
        deps = os.path.abspath(os.path.join("bench_out", "deps"))
        found = run_deepctr(criteo_like.make(data_dir, args.rows, compression="none"), deps)
    else:
        found = run_tfads(args.worker_config, args.seed, data_dir)
    np.savez(args.result, y=found["y"], **{f"p{k}": r["p"] for k, r in found["runs"].items()})
    meta = {k: v for k, v in found.items() if k not in ("runs", "y")}
    meta["runs"] = {k: {m: v for m, v in r.items() if m != "p"} for k, r in found["runs"].items()}
    Path(args.result).with_suffix(".json").write_text(json.dumps(meta, indent=2))


def _run(args: argparse.Namespace, name: str, worker: str, seed: int, key: dict) -> dict[str, Any]:
    """Result of one run (cached by ``key``): ``{suffix: {"p", "epochs_run", "best_epoch"}}``, labels, seconds."""
    base = os.path.join(args.out, "runs", f"{name.replace(' ', '_')}-s{seed}")
    meta_path, npz_path = base + ".json", base + ".npz"
    digest = _digest({**key, "seed": seed, "rows": args.rows})
    if not (os.path.exists(meta_path) and json.loads(Path(meta_path).read_text()).get("key") == digest):
        os.makedirs(os.path.dirname(base), exist_ok=True)
        command = [sys.executable, "-m", "benchmarks.criteo_quality", "--worker", worker, "--seed", str(seed),
                   "--rows", str(args.rows), "--out", args.out, "--result", npz_path]
        if worker == "tfads":
            command += ["--worker-config", key["config_path"]]
        print(f"=== {name} seed {seed} ===", flush=True)
        subprocess.run(command, check=True)
        meta = json.loads(Path(meta_path).read_text())
        Path(meta_path).write_text(json.dumps({**meta, "key": digest}, indent=2))
    meta = json.loads(Path(meta_path).read_text())
    arrays = np.load(npz_path)
    runs = {k: {**r, "p": arrays[f"p{k}"]} for k, r in meta["runs"].items()}
    return {"runs": runs, "y": arrays["y"], "train_seconds": meta["train_seconds"], "val_auc": meta.get("val_auc")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=600_000, help="examples in all (80%% train)")
    p.add_argument("--repeats", type=int, default=3, help="seeds 0 .. repeats - 1 for every row")
    p.add_argument("--config", default=str(DEFAULT_EXPERIMENT), help="the experiment YAML the others are compared to")
    p.add_argument(
        "--against", nargs="*", default=[], metavar="YAML", help="other experiment YAMLs (rows tfads@<stem>)"
    )
    p.add_argument("--no-deepctr", action="store_true", help="skip DeepCTR's DCN")
    p.add_argument("--bootstrap", type=int, default=200, help="paired bootstrap resamples")
    p.add_argument("--out", default="bench_out/criteo_quality")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-config", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    add_results_argument(p)
    args = p.parse_args(argv)
    args.out = os.path.abspath(args.out)
    if args.worker:
        _worker(args)
        return 0
    data_dir = os.path.join(args.out, "data")
    criteo_like.make(data_dir, args.rows, compression="none")
    data_key = json.loads(Path(data_dir, "manifest.json").read_text())["generator"]
    rows: dict[str, list[dict]] = {}
    y = None
    configs = {"tfads": args.config, **{f"tfads@{Path(a).stem}": a for a in args.against}}
    for seed in range(args.repeats):
        for name, path in configs.items():
            key = {"config": load_experiment(path).to_dict(), "config_path": os.path.abspath(path), "data": data_key}
            found = _run(args, name, "tfads", seed, key)
            rows.setdefault(name, []).append({**found["runs"][""], "train_seconds": found["train_seconds"]})
            y = found["y"] if y is None else y
            if not np.array_equal(y, found["y"]):
                raise RuntimeError(f"{name}: test labels differ between runs (file order changed?)")
        if not args.no_deepctr:
            found = _run(args, "DeepCTR DCN", "deepctr", seed,
                         {"deepctr": "0.9.4", "patience": DEEPCTR_PATIENCE, "cap": DEEPCTR_CAP, "data": data_key})
            if not np.array_equal(y, found["y"]):
                raise RuntimeError("DeepCTR's test labels differ from tfads' (the TFRecords are not in array order)")
            for suffix, run in found["runs"].items():
                rows.setdefault(f"DeepCTR DCN{suffix}", []).append({**run, "train_seconds": found["train_seconds"]})
    reference = [r["p"] for r in rows["tfads"]]
    table: dict[str, dict[str, Any]] = {}
    for name, runs in rows.items():
        aucs = [auc(y, r["p"]) for r in runs]
        table[name] = {
            "AUC": float(np.mean(aucs)),
            "AUC range": max(aucs) - min(aucs),
            "AUCs": aucs,
            "LogLoss": float(np.mean([logloss(y, r["p"]) for r in runs])),
            "epochs": float(np.mean([r["epochs_run"] for r in runs])),
            "best epoch": float(np.mean([r["best_epoch"] for r in runs])),
            "train s": float(np.mean([r["train_seconds"] for r in runs])),
        }
        if name != "tfads":
            table[name][DIFF_COLUMN] = paired_auc_diff(y, reference, [r["p"] for r in runs], args.bootstrap)
    report = {
        "data": {**data_key, "test_rows": int(len(y)), "test_ctr": float(np.mean(y))},
        "repeats": args.repeats,
        "configs": configs,
        "deepctr": {"version": "0.9.4", "patience": DEEPCTR_PATIENCE, "cap": DEEPCTR_CAP},
        "models": table,
    }

    def cell(v: Any) -> Any:
        if isinstance(v, list):
            return f"{v[0]:+.4f} [{v[1]:+.4f}, {v[2]:+.4f}]"
        return round(v, 4) if isinstance(v, float) else v

    shown = {n: {k: cell(v) for k, v in r.items() if k != "AUCs"} for n, r in table.items()}
    print(metrics_table(shown))
    publish("criteo_quality", report, metrics_table(shown, markdown=True), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
