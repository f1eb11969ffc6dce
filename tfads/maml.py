"""MAML for cold-start units: tasks are user segments (the values of a field), the inner loop adapts the
embedding tables and the task towers by SGD on a few rows, the outer loop learns an initialisation that
adapts well (first-order MAML or Reptile; Finn et al. 2017, Nichol et al. 2018; docs/methods/data.md "MAML").

The meta-initialisation is a normal model; :func:`adapt` runs the same inner loop on a new segment's rows.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tqdm import tqdm

from tfads.core.manifest import Manifest
from tfads.data import make_dataset, to_targets
from tfads.finetune import embedding_layers, head_layers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MamlConfig:
    """Meta-training and adaptation settings (the adaptation reuses ``inner_*`` and ``support``).

    Args:
      segment_field: the field whose values are the tasks (a raw field or a derived feature).
      algorithm: ``fomaml`` (the query-loss gradient at the adapted weights updates every weight) or
        ``reptile`` (the adapted weights pull the initialisation towards them by ``reptile_step``).
      meta_steps: outer updates; tasks_per_step: segments per outer update.
      support, query: rows per task for the inner loop and for the outer loss (disjoint).
      inner_steps, inner_lr: SGD steps and rate of the inner loop (also of :func:`adapt`).
      outer_lr: Adam rate of the FOMAML outer update.
      min_rows: segments with fewer rows are not tasks.
      as_new_segments: in meta-training, replace the segment field's value of a task's rows by one no
        vocabulary holds, so every task adapts from the out-of-vocabulary row, as a launched segment's rows
        will (the meta-initialisation of that row is what a new segment starts from); off: tasks adapt
        from their own trained rows. Only for a segment field that is a model input.
    """

    segment_field: str
    algorithm: Literal["fomaml", "reptile"] = "fomaml"
    meta_steps: int = 300
    tasks_per_step: int = 8
    support: int = 128
    query: int = 256
    inner_steps: int = 3
    inner_lr: float = 0.05
    outer_lr: float = 5e-4
    reptile_step: float = 0.5
    min_rows: int = 0
    as_new_segments: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("meta_steps", "tasks_per_step", "support", "query", "inner_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"maml: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("inner_lr", "outer_lr", "reptile_step"):
            if not getattr(self, name) > 0:
                raise ValueError(f"maml: {name} must be > 0, got {getattr(self, name)}")
        if self.algorithm not in ("fomaml", "reptile"):
            raise ValueError(f"maml: algorithm must be fomaml or reptile, got {self.algorithm!r}")

    @property
    def task_rows(self) -> int:
        return max(self.min_rows, self.support + self.query)


@dataclass
class Rows:
    """A split held in memory: the model's inputs, labels and sample weights, each row's segment and time."""

    features: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]
    segment: np.ndarray
    time: np.ndarray

    def __len__(self) -> int:
        return len(self.segment)

    def take(self, index: np.ndarray) -> Rows:
        pick = lambda d: {k: v[index] for k, v in d.items()}  # noqa: E731
        return Rows(pick(self.features), pick(self.labels), pick(self.weights), self.segment[index], self.time[index])

    def of_segment(self, value: str) -> Rows:
        """This segment's rows in time order."""
        index = np.flatnonzero(self.segment == value)
        return self.take(index[np.argsort(self.time[index], kind="stable")])

    def batch(self) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        conv = lambda d: {k: tf.constant(v) for k, v in d.items()}  # noqa: E731
        return conv(self.features), conv(self.labels), conv(self.weights)


def load_rows(manifest: Manifest, split: str, segment_field: str, *, batch_size: int = 8192) -> Rows:
    """Read ``split`` into memory with each row's ``segment_field`` value (as a string) and timestamp.

    Raises:
      ValueError: when ``segment_field`` is neither a field nor a derived feature of the data.
    """
    known = set(manifest.features) | set(manifest.derived)
    if segment_field not in known:
        raise ValueError(f"maml: segment field {segment_field!r} is not a feature of the data; "
                         f"features: {', '.join(sorted(known))}")
    inputs = list(manifest.model_inputs)
    targets = [c for c in manifest.label_roles.values() if c] + [manifest.data.get("weight", "weight")]
    parts: list[tuple[dict, dict, dict, np.ndarray, np.ndarray]] = []
    for batch in make_dataset(manifest.split_files(split), manifest, batch_size, with_meta=True, for_training=False):
        feats, labels, weights = to_targets({k: batch[k] for k in [*inputs, *targets]}, manifest)
        segment = batch[segment_field].numpy()
        segment = segment.astype(str) if segment.dtype.kind == "O" else segment.astype(np.int64).astype(str)
        numpy = lambda d: {k: v.numpy() for k, v in d.items()}  # noqa: E731
        parts.append((numpy(feats), numpy(labels), numpy(weights), segment, batch[manifest.timestamp].numpy()))
    if not parts:
        raise ValueError(f"maml: the {split} split has no examples")
    join = lambda i: {k: np.concatenate([p[i][k] for p in parts]) for k in parts[0][i]}  # noqa: E731
    return Rows(join(0), join(1), join(2), np.concatenate([p[3] for p in parts]), np.concatenate([p[4] for p in parts]))


class InnerLoop:
    """SGD on the embedding tables and the task towers of a compiled model (its data loss only)."""

    def __init__(self, model: keras.Model, inner_lr: float) -> None:
        if model.compiled_loss is None:
            raise ValueError("maml: the model must be compiled (tfads.models.compile_model) for its losses")
        self.model = model
        adapted = {id(layer) for layer in [*embedding_layers(model), *head_layers(model)]}
        self.adapted = [v for layer in model.layers if id(layer) in adapted for v in layer.trainable_variables]
        if not self.adapted:
            raise ValueError(f"maml: model {model.name} has no embedding or tower layers to adapt")
        self.lr = tf.constant(inner_lr, tf.float32)
        self.initial = [tf.Variable(v, trainable=False) for v in self.adapted]

    def loss(self, x: dict, y: dict, w: dict) -> tf.Tensor:
        return self.model.compiled_loss(y, self.model(x, training=True), w)

    @tf.function(reduce_retracing=True)
    def step(self, x: dict, y: dict, w: dict) -> tf.Tensor:
        """One SGD step of the adapted variables on a batch; returns the loss before it."""
        with tf.GradientTape() as tape:
            loss = self.loss(x, y, w)
        for var, grad in zip(self.adapted, tape.gradient(loss, self.adapted), strict=True):
            if isinstance(grad, tf.IndexedSlices):
                var.scatter_sub(tf.IndexedSlices(self.lr * grad.values, grad.indices, grad.dense_shape))
            elif grad is not None:
                var.assign_sub(self.lr * grad)
        return loss

    @tf.function(reduce_retracing=True)
    def gradients(self, x: dict, y: dict, w: dict) -> tuple[tf.Tensor, list]:
        """The loss and its gradients for every trainable variable of the model."""
        with tf.GradientTape() as tape:
            loss = self.loss(x, y, w)
        return loss, tape.gradient(loss, self.model.trainable_variables)

    def save(self) -> None:
        for saved, var in zip(self.initial, self.adapted, strict=True):
            saved.assign(var)

    def restore(self) -> None:
        for saved, var in zip(self.initial, self.adapted, strict=True):
            var.assign(saved)

    def adapt(self, rows: Rows, steps: int) -> None:
        x, y, w = rows.batch()
        for _ in range(steps):
            self.step(x, y, w)


def _mean_gradients(per_task: list[list], n: int) -> list:
    """Average the tasks' gradients; sparse ones (embedding rows) are summed per row, not densified."""
    out = []
    for grads in zip(*per_task, strict=True):
        present = [g for g in grads if g is not None]
        if not present:
            out.append(None)
        elif isinstance(present[0], tf.IndexedSlices):
            indices = tf.concat([g.indices for g in present], 0)
            values = tf.concat([g.values for g in present], 0) / n
            unique, position = tf.unique(indices)
            summed = tf.math.unsorted_segment_sum(values, position, tf.size(unique))
            out.append(tf.IndexedSlices(summed, unique, present[0].dense_shape))
        else:
            out.append(tf.add_n(present) / n)
    return out


NEW_SEGMENT = "\x00new segment"  # a value no vocabulary holds (strings); integer fields get -1


def as_new_segment(rows: Rows, field: str) -> Rows:
    """``rows`` with ``field``'s input replaced by a value outside every vocabulary (unchanged if not an input)."""
    if field not in rows.features:
        return rows
    column = rows.features[field]
    unseen = NEW_SEGMENT.encode() if column.dtype.kind in "OSU" else -1
    return dataclasses.replace(rows, features={**rows.features, field: np.full_like(column, unseen)})


def task_segments(rows: Rows, cfg: MamlConfig) -> dict[str, np.ndarray]:
    """Segment value -> its row indices, for the segments with enough rows to be tasks."""
    values, inverse, counts = np.unique(rows.segment, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    groups = np.split(order, np.cumsum(counts)[:-1])
    return {str(v): g for v, g, c in zip(values, groups, counts, strict=True) if c >= cfg.task_rows}


def meta_train(model: keras.Model, rows: Rows, cfg: MamlConfig, *, progress: bool = True) -> dict[str, Any]:
    """Meta-train ``model`` (compiled) in place on ``rows``' segments; returns the mean query loss per step.

    Raises:
      ValueError: when fewer than two segments have ``support + query`` rows.
    """
    tasks = task_segments(rows, cfg)
    if len(tasks) < 2:
        raise ValueError(f"maml: {len(tasks)} segment(s) of {cfg.segment_field!r} have >= {cfg.task_rows} rows; "
                         "meta-training needs at least 2 (lower support/query or use a coarser segment field)")
    names = sorted(tasks)
    rng = np.random.default_rng(cfg.seed)
    inner = InnerLoop(model, cfg.inner_lr)
    outer = keras.optimizers.Adam(cfg.outer_lr)
    variables = model.trainable_variables
    losses = []
    log.info("maml: %s over %d segments of %s, %d meta-steps", cfg.algorithm, len(names), cfg.segment_field,
             cfg.meta_steps)
    for _ in tqdm(range(cfg.meta_steps), desc=f"meta-train ({cfg.algorithm})", unit="step", disable=not progress):
        chosen = rng.choice(len(names), min(cfg.tasks_per_step, len(names)), replace=False)
        inner.save()
        grads, deltas, step_loss = [], [], []
        for t in chosen:
            index = rng.choice(tasks[names[t]], cfg.support + cfg.query, replace=False)
            support, query = rows.take(index[: cfg.support]), rows.take(index[cfg.support :])
            if cfg.as_new_segments:
                support, query = as_new_segment(support, cfg.segment_field), as_new_segment(query, cfg.segment_field)
            inner.adapt(support, cfg.inner_steps)
            if cfg.algorithm == "fomaml":
                loss, g = inner.gradients(*query.batch())
                grads.append(g)
            else:
                loss = inner.loss(*query.batch())
                deltas.append([v - s for v, s in zip(inner.adapted, inner.initial, strict=True)])
            step_loss.append(float(loss))
            inner.restore()
        if cfg.algorithm == "fomaml":
            mean = _mean_gradients(grads, len(chosen))
            outer.apply_gradients([(g, v) for g, v in zip(mean, variables, strict=True) if g is not None])
        else:
            for var, *d in zip(inner.adapted, *deltas, strict=True):
                var.assign_add(cfg.reptile_step * tf.add_n(d) / len(d))
        losses.append(float(np.mean(step_loss)))
    return {"query_loss": losses, "segments": len(names), "config": dataclasses.asdict(cfg)}


def adapt(model: keras.Model, rows: Rows, cfg: MamlConfig) -> keras.Model:
    """Adapt ``model`` (compiled) in place to one segment's ``rows``: ``cfg.inner_steps`` SGD steps of the
    embeddings and towers at ``cfg.inner_lr``, the inner loop of meta-training (full batch)."""
    if not len(rows):
        raise ValueError("maml: no rows to adapt on")
    InnerLoop(model, cfg.inner_lr).adapt(rows, cfg.inner_steps)
    return model
