"""What the split and the one-process training share: the top model's loss and step inputs, and the metrics."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras
from sklearn.metrics import log_loss, roc_auc_score

from tfads.core.experiment import ModelConfig
from tfads.core.manifest import Manifest
from tfads.core.names import CTCVR, CTR, CVR
from tfads.federated.config import SplitConfig
from tfads.federated.data import Split
from tfads.federated.models import MEDIA_EMBEDDING, MEDIA_MATCHED, build_top, fusion_variables
from tfads.models.esmm import loss_weights

TOP_SEED_OFFSET = 1  # the top model is built after set_random_seed(seed + 1), the bottom after seed
TOP_OPTIMIZER = "lazy_adam"  # as tfads training: plain Adam's momentum moves every embedding row each step


def build_seeded_top(manifest: Manifest, model_cfg: ModelConfig, cfg: SplitConfig) -> keras.Model:
    """The ad party's top model, built from the run's seed (the same weights in every process)."""
    keras.utils.set_random_seed(cfg.seed + TOP_SEED_OFFSET)
    return build_top(manifest, model_cfg, cfg.media_dim, cfg.fusion_units)


def split_variables(top: keras.Model) -> tuple[list[tf.Variable], list[tf.Variable]]:
    """(the tfads model's trainable variables, the fusion head's): they train with different optimizers."""
    fusion = fusion_variables(top)
    ids = {id(v) for v in fusion}
    return [v for v in top.trainable_variables if id(v) not in ids], fusion


def esmm_loss(outputs: dict[str, tf.Tensor], labels: dict, weights: dict, model_cfg: ModelConfig) -> tf.Tensor:
    """The ESMM loss of :func:`tfads.models.compile_model`: weighted BCE per head, summed with the head weights."""
    bce = keras.losses.BinaryCrossentropy()
    head_weights = loss_weights(model_cfg)
    total = tf.constant(0.0)
    for head in (CTR, CVR, CTCVR):
        if head in outputs and head_weights[head]:
            total += head_weights[head] * bce(labels[head], outputs[head], sample_weight=weights[head])
    return total


def top_inputs(features: dict, embedding: np.ndarray | tf.Tensor, matched: np.ndarray | tf.Tensor) -> dict:
    """The top model's inputs: the ad features plus the media embedding and the match flags."""
    return {**features, MEDIA_EMBEDDING: embedding, MEDIA_MATCHED: tf.cast(matched, tf.float32)}


def full_embedding(rows: np.ndarray, matched: np.ndarray, dim: int) -> np.ndarray:
    """(batch, dim): the ``rows`` (one per matched row, in batch order) at the matched rows, zeros elsewhere."""
    out = np.zeros((len(matched), dim), np.float32)
    out[matched] = rows
    return out


def predict(top: keras.Model, split: Split, embedding: np.ndarray, matched: np.ndarray,
            batch_size: int = 4096) -> dict[str, np.ndarray]:
    """The top model's outputs over a whole split, (n,) per head."""
    out: dict[str, list[np.ndarray]] = {}
    for lo in range(0, len(split), batch_size):
        sl = slice(lo, lo + batch_size)
        batch = top_inputs({k: v[sl] for k, v in split.features.items()}, embedding[sl], matched[sl])
        for head, values in top(batch, training=False).items():
            out.setdefault(head, []).append(np.reshape(values.numpy(), -1))
    return {head: np.concatenate(parts) for head, parts in out.items()}


def metrics(predictions: dict[str, np.ndarray], split: Split) -> dict[str, float]:
    """AUC and log loss of pCTR (all rows), pCVR (clicked rows) and pCTCVR (all rows)."""
    click = split.labels[CTR].ravel()
    out = {"ctr_auc": roc_auc_score(click, predictions[CTR]),
           "ctr_logloss": log_loss(click, np.clip(predictions[CTR], 1e-7, 1 - 1e-7), labels=[0, 1])}
    if CVR in predictions:
        conversion, clicked = split.labels[CVR].ravel(), click > 0
        out["cvr_auc"] = roc_auc_score(conversion[clicked], predictions[CVR][clicked])
        out["ctcvr_auc"] = roc_auc_score(conversion, predictions[CTCVR])
        out["ctcvr_logloss"] = log_loss(conversion, np.clip(predictions[CTCVR], 1e-7, 1 - 1e-7), labels=[0, 1])
    return {k: float(v) for k, v in out.items()}
