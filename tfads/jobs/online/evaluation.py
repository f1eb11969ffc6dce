"""Scoring serialized examples and the per-update metrics (pCTR AUC / LogLoss / PCOC) and gate."""

from __future__ import annotations

import zlib

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfads import metrics
from tfads.data import parse_examples, feature_spec, to_targets, with_derived
from tfads.core.manifest import Manifest
from tfads.core.names import CLICK, CTR, CVR


def split_holdout(records: list[bytes], fraction: float) -> tuple[list[bytes], list[bytes]]:
    """(train, held out): a record is held out when its CRC32 falls in the lowest ``fraction``."""
    cut = int(fraction * 2**32)
    train, held = [], []
    for record in records:
        (held if zlib.crc32(record) < cut else train).append(record)
    return train, held


def records_dataset(
    records: list[bytes], manifest: Manifest, batch_size: int, *, shuffle_seed: int | None = None,
    for_training: bool = True,
) -> tf.data.Dataset:
    """Batches parsed from in-memory serialized tf.Examples: ``(x, y, w)`` of the model's raw inputs when
    ``for_training``, else the parsed dict with the derived features added."""
    spec = feature_spec(manifest)
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(records, dtype=tf.string))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(records), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda s: parse_examples(s, manifest, spec))
    if for_training:
        ds = ds.map(lambda b: to_targets(b, manifest))
    else:
        ds = ds.map(lambda b: with_derived(b, manifest))
    return ds.prefetch(tf.data.AUTOTUNE)


class Scorer:
    """Scores records with ``model``'s current weights; returns the calibrated heads' outputs (``ctr``, and
    ``cvr`` for ESMM), the labels by role (``click``, ``conversion``) and the chosen fields."""

    def __init__(self, model: keras.Model, manifest: Manifest, fields: list[str], batch_size: int = 4096) -> None:
        self.manifest = manifest
        self.fields = fields
        self.batch_size = batch_size
        self.model = model
        self.names = list(manifest.model_inputs)

    def __call__(self, records: list[bytes]) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {}
        for batch in records_dataset(records, self.manifest, self.batch_size, for_training=False):
            out = self.model({k: batch[k] for k in self.names}, training=False)  # eager: no tracing per process
            row = {k: out[k].numpy().reshape(-1) for k in (CTR, CVR) if k in out}
            row.update({role: batch[column].numpy() for role, column in self.manifest.label_roles.items() if column})
            row.update({k: batch[k].numpy() for k in self.fields})
            for k, v in row.items():
                parts.setdefault(k, []).append(v)
        return {k: np.concatenate(v) for k, v in parts.items()}


def ctr_metrics(scored: dict[str, np.ndarray]) -> dict[str, float]:
    """pCTR AUC, LogLoss and PCOC (NaN where undefined or when predictions are not finite)."""
    y, p = scored[CLICK], scored[CTR]
    if not len(y) or not np.all(np.isfinite(p)):
        return {"AUC": float("nan"), "LogLoss": float("nan"), "PCOC": float("nan")}
    row = metrics.summarize(y, np.clip(p, 1e-7, 1 - 1e-7))
    return {k: row[k] for k in ("AUC", "LogLoss", "PCOC")}


def gate(candidate: dict[str, float], serving: dict[str, float], metric: str, margin: float) -> tuple[bool, float]:
    """(accept, improvement): accept unless the candidate is worse by more than ``margin``.

    Improvement is candidate - serving for AUC and serving - candidate for LogLoss; an undefined
    metric (no positives in the held-out rows, non-finite predictions) rejects the candidate.
    """
    key = "AUC" if metric == "auc" else "LogLoss"
    gain = candidate[key] - serving[key] if metric == "auc" else serving[key] - candidate[key]
    return bool(np.isfinite(gain) and gain >= -margin), float(gain)
