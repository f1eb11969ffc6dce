"""AdaCalib compiled for serving: every field value's calibration function as plain lookup tables.

An AdaCalib layer builds each field value's monotone piecewise-linear functions (one per candidate bin
count) and its selection weights from its networks at every call. At serving time these do not depend
on the request, so the export evaluates them once for every value (``AdaCalib.value_functions``) and
stores the keypoints ``x``/``y``, segment slopes and selection weights; a request then costs one hash
lookup, one ``searchsorted`` and a few gathers per field instead of the networks (about 20 ops instead
of ~380). The compiled function equals the layer's up to float32 rounding (the export check compares them).
"""

from __future__ import annotations

import numpy as np

import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
import tf_keras as keras

from tfads.calibration.adacalib import MAX_LOGIT, AdaCalib
from tfads.calibration.combined import split_calibrated

_PAD_X = 1e9  # keypoints past a candidate's last one: never to the left of an input logit


class _FieldTables(tf.Module):
    """One field's compiled functions: value -> table row, keypoints, slopes and selection weights."""

    def __init__(self, layer: AdaCalib, field: str) -> None:
        super().__init__(name=f"{field}_tables")
        functions = layer.value_functions(field)
        counts = functions.bin_counts
        n_rows, k_max = len(functions.values) + 1, max(counts)
        xs = np.full((n_rows, len(counts), k_max + 1), _PAD_X, np.float32)
        ys = np.zeros_like(xs)
        slopes = np.zeros((n_rows, len(counts), k_max), np.float32)
        for c, (knots, at_knots) in enumerate(zip(functions.knots_x, functions.knots_y, strict=True)):
            k = counts[c]
            xs[:, c, : k + 1], ys[:, c, : k + 1] = knots, at_knots
            slopes[:, c, :k] = np.diff(at_knots, axis=1) / np.diff(knots, axis=1)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(functions.values, tf.string), tf.range(1, n_rows, dtype=tf.int32)
            ),
            default_value=0,
        )
        self.x, self.y, self.slope = (tf.constant(a) for a in (xs, ys, slopes))
        self.weights = tf.constant(functions.selection.astype(np.float32))
        self.last_segment = tf.constant([k - 1 for k in counts], tf.int32)

    def __call__(self, logit: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
        """Calibrated logit ``[B]`` of input logits ``[B]`` for field values ``[B]``."""
        value = tf.reshape(value, [-1])
        if value.dtype != tf.string:
            value = tf.strings.as_string(value)
        row = self.table.lookup(value)
        n_candidates = tf.shape(self.last_segment)[0]
        x = tf.gather(self.x, row)  # [B, C, K+1]
        flat_x = tf.reshape(x, [-1, tf.shape(x)[2]])
        repeated = tf.repeat(logit, n_candidates)
        seg = tf.searchsorted(flat_x, repeated[:, None], side="right")[:, 0] - 1
        seg = tf.clip_by_value(tf.reshape(seg, [-1, n_candidates]), 0, self.last_segment)  # [B, C]
        x_left = tf.gather(x, seg, batch_dims=2)
        y_left = tf.gather(tf.gather(self.y, row), seg, batch_dims=2)
        slope = tf.gather(tf.gather(self.slope, row), seg, batch_dims=2)
        candidates = y_left + slope * (logit[:, None] - x_left)
        return tf.reduce_sum(tf.gather(self.weights, row) * candidates, axis=1)


class CompiledCalibration(tf.Module):
    """An AdaCalib layer's function frozen into lookup tables; ``__call__(prediction, values)``."""

    def __init__(self, layer: AdaCalib) -> None:
        super().__init__(name="compiled_" + layer.name)
        self.layer_input_logit = layer.input_logit
        self.fields = list(layer.fields)
        self.field_tables = [_FieldTables(layer, f) for f in self.fields]
        self.field_weights = tf.constant(layer.field_weights())

    def __call__(self, prediction: tf.Tensor, values: dict[str, tf.Tensor]) -> tf.Tensor:
        """Calibrated probability, same shape as ``prediction``."""
        x = self.layer_input_logit({"prediction": prediction})
        per_field = tf.stack([t(x, values[f]) for f, t in zip(self.fields, self.field_tables, strict=True)], axis=1)
        z = tf.clip_by_value(tf.reduce_sum(self.field_weights[None, :] * per_field, axis=1), -MAX_LOGIT, MAX_LOGIT)
        return tf.reshape(tf.sigmoid(z), tf.shape(prediction))


def compile_calibration(model: keras.Model) -> tuple[keras.Model, dict[str, CompiledCalibration]] | None:
    """For a ``tfads calibrate`` combined model: its base model and each task's compiled AdaCalib.

    Returns None for a model without AdaCalib layers.
    """
    base, layers = split_calibrated(model)
    return (base, {task: CompiledCalibration(layer) for task, layer in layers.items()}) if layers else None
