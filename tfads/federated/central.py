"""Both parties' models trained in one process on the same batches: the reference the split run must equal
(no noise, same seed), the centralised upper bound of the benchmark, and the ad-only baseline
(``use_media=False``: every row takes the default embedding).

The bottom and top models are built exactly as each party builds its own (same seeds), trained by one
gradient tape over both with each model's own optimizer (Adam, LazyAdam: per parameter, so this equals the
two parties' optimizers).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfads.core.experiment import ModelConfig
from tfads.core.manifest import Manifest
from tfads.federated.config import SplitConfig
from tfads.federated.data import BatchOrder, MediaTable, Split, load_split, media_index
from tfads.federated.models import build_bottom
from tfads.optimizers import make_optimizer
from tfads.federated.training import (TOP_OPTIMIZER, build_seeded_top, esmm_loss, metrics, predict, split_variables,
                                      top_inputs)


class CentralTrainer:
    """One process holding the ad party's splits and the media party's table, joined on the user key."""

    def __init__(self, manifest: Manifest, model_cfg: ModelConfig, cfg: SplitConfig, table: MediaTable,
                 *, use_media: bool = True, train_split: Split | None = None) -> None:
        self.manifest, self.model_cfg, self.cfg, self.use_media = manifest, model_cfg, cfg, use_media
        self.train_split = train_split or load_split(manifest, "train")
        self.order = BatchOrder(len(self.train_split), cfg.batch_size, cfg.seed)
        self.index = {k: i for i, k in enumerate(table.keys)}
        self.features = table.features
        keras.utils.set_random_seed(cfg.seed)
        self.bottom = build_bottom(table.features.shape[1], cfg.bottom_units, cfg.media_dim,
                                   cfg.privacy.embedding_clip)
        self.top = build_seeded_top(manifest, model_cfg, cfg)
        self.bottom_opt = keras.optimizers.Adam(cfg.media_learning_rate)
        self.top_opt = make_optimizer(TOP_OPTIMIZER, cfg.learning_rate)
        self.fusion_opt = keras.optimizers.Adam(cfg.media_learning_rate)
        self.top_vars = split_variables(self.top)
        self.position = self._position(self.train_split)

    def _position(self, split: Split) -> np.ndarray:
        position = media_index(split.features[self.manifest.user_key], self.index)
        return position if self.use_media else np.full_like(position, -1)

    def train(self) -> None:
        for step in range(1, self.order.steps_per_epoch * self.cfg.epochs + 1):
            rows = self.order.rows(step)
            batch = self.train_split.rows(rows)
            position = self.position[rows]
            matched = position >= 0
            slot = np.where(matched, np.cumsum(matched) - 1, int(matched.sum()))  # matched row -> its embedding
            self._step(batch.features, self.features[position[matched]], slot, matched.astype(np.float32),
                       batch.labels, batch.weights)

    @tf.function(reduce_retracing=True)
    def _step(self, features, media_rows, slot, matched, labels, weights) -> None:
        with tf.GradientTape() as tape:
            rows = self.bottom(media_rows, training=True)
            padded = tf.concat([rows, tf.zeros((1, self.cfg.media_dim))], axis=0)
            embedding = tf.gather(padded, slot)
            outputs = self.top(top_inputs(features, embedding, matched), training=True)
            loss = esmm_loss(outputs, labels, weights, self.model_cfg) + tf.add_n([0.0, *self.top.losses])
        bottom, (base, fusion) = self.bottom.trainable_variables, self.top_vars
        grads = tape.gradient(loss, [*bottom, *base, *fusion])
        n, m = len(bottom), len(bottom) + len(base)
        self.bottom_opt.apply_gradients(zip(grads[:n], bottom, strict=True))
        self.top_opt.apply_gradients(zip(grads[n:m], base, strict=True))
        self.fusion_opt.apply_gradients(zip(grads[m:], fusion, strict=True))

    def evaluate(self, split: Split) -> dict[str, float]:
        position = self._position(split)
        matched = position >= 0
        embedding = np.zeros((len(split), self.cfg.media_dim), np.float32)
        if matched.any():
            embedding[matched] = self.bottom(self.features[position[matched]], training=False).numpy()
        return metrics(predict(self.top, split, embedding, matched), split)
