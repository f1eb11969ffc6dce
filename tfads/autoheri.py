"""AutoHERI's one-shot search inside ``tfads.train.train``: architecture steps on the gates between weight steps,
and the pruning of the searched gates to a fixed edge set (docs/methods/conversion.md "AutoHERI")."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfads.core.experiment import ExperimentConfig
from tfads.core.manifest import Manifest
from tfads.data import make_dataset
from tfads.layers.heri import HeriTowers
from tfads.models.esmm import loss_weights

log = logging.getLogger(__name__)


def heri_layer(model: keras.Model) -> HeriTowers | None:
    """The model's AutoHERI towers (None without)."""
    found = [m for m in model.submodules if isinstance(m, HeriTowers)]
    return found[0] if found else None


def edges_from_gates(gates: np.ndarray, threshold: float) -> list[list[int]]:
    """The ``[i, j]`` pairs (CTR layer i -> CVR layer j) whose searched gate is above ``threshold``."""
    return [[int(i), int(j)] for i, j in zip(*np.nonzero(np.asarray(gates) > threshold), strict=True)]


class ArchitectureSteps(keras.callbacks.Callback):
    """AutoHERI's architecture steps: after every training call (``steps_per_call`` weight steps), as many Adam
    steps on the gate logits alone, each on the next batch of ``dataset`` (the held-out data of the search).

    The loss of a step is the ESMM loss (``weights`` per head, the model in inference mode: no dropout, no
    moving statistics updated from held-out rows) plus the layer's entropy penalty. The gate logits are
    non-trainable variables, so the weight steps of ``fit`` never move them and these steps move nothing else.

    Args:
      model: the model whose ``layer`` is searched.
      layer: its :class:`~tfads.layers.heri.HeriTowers` in search mode.
      dataset: an endless dataset of ``(features, labels, sample weights)`` batches.
      weights: each head's weight in the loss (:func:`tfads.models.esmm.loss_weights`).
      learning_rate: Adam's rate on the gate logits.
      steps_per_call: weight steps per training call (``steps_per_execution``), matched one to one.
    """

    def __init__(
        self,
        model: keras.Model,
        layer: HeriTowers,
        dataset: tf.data.Dataset,
        weights: dict[str, float],
        learning_rate: float,
        steps_per_call: int = 1,
    ) -> None:
        super().__init__()
        if not layer.arch_variables:
            raise ValueError(f"ArchitectureSteps: the layer {layer.name} has no gates (mode {layer.mode!r}).")
        if steps_per_call < 1:
            raise ValueError(f"ArchitectureSteps: `steps_per_call` must be >= 1. Received: {steps_per_call}.")
        self.set_model(model)
        self.layer, self.dataset, self.steps_per_call = layer, dataset, int(steps_per_call)
        self.head_weights = {head: w for head, w in weights.items() if w and head in model.output_names}
        self.optimizer = keras.optimizers.Adam(learning_rate)
        self.optimizer.build(layer.arch_variables)  # its moments exist before the steps are traced
        self._bce = keras.losses.BinaryCrossentropy()
        self._iterator: Any = None
        self._run = tf.function(self._steps)

    def architecture_loss(self, features: Any, labels: dict, sample_weights: dict) -> tf.Tensor:
        """The ESMM loss of the batch plus the gates' entropy penalty."""
        pred = self.model(features, training=False)
        data = [w * self._bce(labels[h], pred[h], sample_weights[h]) for h, w in self.head_weights.items()]
        return tf.add_n(data) + self.layer.entropy_penalty()

    def step(self, features: Any, labels: dict, sample_weights: dict) -> tf.Tensor:
        """One architecture step on one batch; returns its loss."""
        gates = self.layer.gate_logits
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(gates)
            loss = self.architecture_loss(features, labels, sample_weights)
        self.optimizer.apply_gradients([(tape.gradient(loss, gates), gates)])
        return loss

    def _steps(self, iterator: Any) -> None:
        for _ in tf.range(self.steps_per_call):
            self.step(*next(iterator))

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._iterator = iter(self.dataset)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._run(self._iterator)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        gates = np.round(self.layer.gates().numpy(), 3).tolist()
        log.info("AutoHERI gates after period %d (row: CTR layer, column: CVR layer): %s", epoch + 1, gates)


def heri_callbacks(
    config: ExperimentConfig, manifest: Manifest, model: keras.Model, steps_per_call: int = 1
) -> list[keras.callbacks.Callback]:
    """The architecture steps of a model in AutoHERI search mode (``[]`` for any other model), on shuffled
    batches of the valid split, endlessly; ``steps_per_call`` is the run's steps per execution.

    Raises:
      ValueError: the search runs under a distribution strategy with several replicas (unsupported).
    """
    layer = heri_layer(model)
    if layer is None or not layer.arch_variables:
        return []
    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        raise ValueError("model.heri.mode search runs in one process; retrain the found edges (mode fixed) distributed")
    tc, heri = config.train, config.model.heri
    dataset = make_dataset(
        manifest.split_files("valid"),
        manifest,
        tc.batch_size,
        shuffle=True,
        shuffle_buffer=tc.shuffle_buffer,
        seed=tc.seed + 1,
        repeat=True,
        scenarios=tc.scenarios,
        use_sample_weight=tc.use_sample_weight,
    )
    weights = loss_weights(config.model)
    return [ArchitectureSteps(model, layer, dataset, weights, heri.arch_learning_rate, steps_per_call)]
