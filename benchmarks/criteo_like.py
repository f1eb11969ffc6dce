"""A Criteo-shaped synthetic dataset (26 categorical + 13 numeric features, click label) written in
the Beam job's output format (TFRecords + vocabularies + manifest.json), for throughput benchmarks.

Labels come from a logistic model with per-value effects and pairwise crosses, so AUC is meaningful.
"""

from __future__ import annotations

import json
import os

import numpy as np

import tfads  # noqa: F401
import tensorflow as tf

N_CAT, N_NUM = 26, 13
# Criteo-like cardinalities: a few huge id fields (hashed), the rest small enough for a vocabulary.
CARDINALITIES = [
    1000,
    500,
    100_000,
    50_000,
    300,
    20,
    10_000,
    600,
    3,
    60_000,
    5000,
    80_000,
    3000,
    25,
    10_000,
    70_000,
    10,
    4000,
    2000,
    4,
    90_000,
    15,
    15,
    40_000,
    80,
    30_000,
]
HASHED_ABOVE = 20_000
COMPRESSION = {"gzip": ("GZIP", ".tfrecord.gz"), "none": ("", ".tfrecord")}  # TFRecordWriter option, suffix


def make(
    out_dir: str, rows: int, *, seed: int = 0, shards: int = 4, compression: str = "gzip"
) -> dict[str, np.ndarray]:
    """Write ``rows`` examples split 80/10/10 into train/valid/test; return the arrays (for DeepCTR).

    ``compression``: ``gzip`` (``*.tfrecord.gz``, as the Beam job writes) or ``none`` (``*.tfrecord``).
    The files are written once per (rows, seed, shards, compression): a manifest recording the same
    settings is reused, since the arrays are regenerated identically from the seed.
    """
    if compression not in COMPRESSION:
        raise ValueError(f"compression must be one of {sorted(COMPRESSION)}, got {compression!r}")
    settings = {"rows": rows, "seed": seed, "shards": shards, "compression": compression, "labels": "click"}
    rng = np.random.default_rng(seed)
    cats = np.stack([np.minimum(rng.zipf(1.3, rows) - 1, c - 1) for c in CARDINALITIES], axis=1).astype(np.int64)
    nums = rng.lognormal(0.0, 1.5, size=(rows, N_NUM)).astype(np.float32)
    effects = [rng.normal(0, 0.4, c) for c in CARDINALITIES]
    logit = -3.0 + sum(effects[j][cats[:, j]] for j in range(N_CAT))
    u, v = rng.normal(0, 0.6, (CARDINALITIES[0], 4)), rng.normal(0, 0.6, (CARDINALITIES[4], 4))
    logit += np.sum(u[cats[:, 0]] * v[cats[:, 4]], axis=1)  # a real feature cross
    logit += 0.3 * np.log1p(nums[:, 0]) - 0.2 * np.log1p(nums[:, 1])
    click = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)

    n_train = int(rows * 0.8)
    bounds = {"train": (0, n_train), "valid": (n_train, int(rows * 0.9)), "test": (int(rows * 0.9), rows)}
    arrays = {"cats": cats, "nums": nums, "click": click, "bounds": bounds}
    manifest_path = os.path.join(out_dir, "manifest.json")
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            if json.load(f).get("generator") == settings:
                return arrays
    os.makedirs(os.path.join(out_dir, "vocab"), exist_ok=True)
    features: dict[str, dict] = {}
    for j, card in enumerate(CARDINALITIES):
        name = f"C{j + 1}"
        if card > HASHED_ABOVE:
            features[name] = {"kind": "hashed", "dtype": "int64", "hash_bins": card}
        else:
            values, counts = np.unique(cats[:n_train, j], return_counts=True)
            order = np.lexsort((values, -counts))
            path = os.path.join("vocab", f"{name}.txt")
            np.savetxt(os.path.join(out_dir, path), values[order], fmt="%d")
            features[name] = {"kind": "categorical", "dtype": "int64", "vocab": path, "vocab_size": len(values)}
    features["C1"]["domain_aware"] = True
    for j in range(N_NUM):
        logged = np.log1p(nums[:n_train, j])
        features[f"I{j + 1}"] = {
            "kind": "numeric",
            "dtype": "float32",
            "log": True,
            "mean": float(logged.mean()),
            "std": float(logged.std()),
            "boundaries": [],
        }
    splits = {}
    for split, (lo, hi) in bounds.items():
        files = []
        for s, idx in enumerate(np.array_split(np.arange(lo, hi), shards)):
            options, suffix = COMPRESSION[compression]
            path = os.path.join("examples", split, f"part-{s:05d}-of-{shards:05d}{suffix}")
            os.makedirs(os.path.dirname(os.path.join(out_dir, path)), exist_ok=True)
            _write(os.path.join(out_dir, path), cats[idx], nums[idx], click[idx], options)
            files.append(path)
        splits[split] = {
            "days": [split],
            "files": files,
            "examples": hi - lo,
            "clicks": int(click[lo:hi].sum()),
            "conversions": 0,
            "ctr": float(click[lo:hi].mean()),
            "cvr": 0.0,
        }
    manifest = {
        "version": 1,
        "features": features,
        "labels": ["click"],  # click only, as Criteo: a CTR model, like DeepCTR's DCN
        "label_roles": {"click": "click", "conversion": None},
        "weight": "weight",
        "splits": splits,
        "days": {k: {"files": v["files"], "examples": v["examples"]} for k, v in splits.items()},
        "generator": settings,
    }
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    return arrays


def _write(path: str, cats: np.ndarray, nums: np.ndarray, click: np.ndarray, options: str) -> None:
    with tf.io.TFRecordWriter(path, options=options) as writer:
        for c, n, y in zip(cats, nums, click, strict=True):
            feature = {
                f"C{j + 1}": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(c[j])])) for j in range(N_CAT)
            }
            feature.update(
                {
                    f"I{j + 1}": tf.train.Feature(float_list=tf.train.FloatList(value=[float(n[j])]))
                    for j in range(N_NUM)
                }
            )
            feature["click"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(y)]))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
