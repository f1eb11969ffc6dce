"""Layers over padded behaviour histories (DIN, Zhou et al., KDD 2018): masked pooling, the DIN attention unit
with its Dice activation, and a serving-side broadcast of one history to a batch of candidates.

Histories are dense ``(batch, L, d)`` tensors with a ``(batch, L)`` mask, True at real elements; a row may be
all False (an empty history). Padded positions never reach an output, and empty rows give zeros, never NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf
import tf_keras as keras

POOLING_MODES = ("mean", "sum", "max")
DIN_ACTIVATIONS = ("prelu", "dice", "sigmoid")
WEIGHT_NORMALIZATIONS = ("none", "softmax")


def _check_choice(cls: str, arg: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{cls}: `{arg}` must be one of {choices}. Received: {arg}={value!r}.")


def _full_mask(mask: tf.Tensor | None, values: tf.Tensor) -> tf.Tensor:
    """The (batch, L) boolean mask; None means every position is real."""
    if mask is None:
        return tf.ones(tf.shape(values)[:2], tf.bool)
    mask = tf.convert_to_tensor(mask)
    if mask.shape.rank != 2:  # e.g. Keras passing a (batch,) mask of DinAttention's query implicitly
        raise ValueError(f"The history mask must be (batch, L); pass it as `mask=`. Received shape {mask.shape}.")
    return tf.cast(mask, tf.bool)


def _zero_padding(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """``values`` with padded positions set to 0 (selected, not multiplied: inf/NaN padding cannot leak)."""
    return tf.where(mask[..., None], values, tf.zeros_like(values))


@keras.utils.register_keras_serializable(package="tfads")
class MaskedPooling(keras.layers.Layer):
    """Mean, sum or max over the real positions of a padded sequence; an empty sequence pools to zeros.

    Args:
      mode: "mean", "sum" or "max".

    Call: ``layer(values, mask=None)``: (batch, L, d), (batch, L) bool -> (batch, d). Without ``mask`` every
    position is real; a Keras mask (e.g. from ``Embedding(mask_zero=True)``) is used when present.

    Example:
      >>> MaskedPooling("max")(tf.constant([[[1.0], [9.0]]]), mask=tf.constant([[True, False]]))  # [[1.]]
    """

    def __init__(self, mode: str = "mean", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_choice("MaskedPooling", "mode", mode, POOLING_MODES)
        self.mode = mode
        self.supports_masking = True

    def call(self, values: tf.Tensor, mask: tf.Tensor | None = None) -> tf.Tensor:
        mask = _full_mask(mask, values)
        real = mask[..., None]
        if self.mode == "max":
            lowest = tf.fill(tf.shape(values), tf.constant(values.dtype.min, values.dtype))
            pooled = tf.reduce_max(tf.where(real, values, lowest), axis=1)
            return tf.where(tf.reduce_any(real, axis=1), pooled, tf.zeros_like(pooled))
        pooled = tf.reduce_sum(_zero_padding(values, mask), axis=1)
        if self.mode == "sum":
            return pooled
        count = tf.reduce_sum(tf.cast(real, values.dtype), axis=1)
        return pooled / tf.maximum(count, 1.0)

    def compute_mask(self, inputs: tf.Tensor, mask: tf.Tensor | None = None) -> None:
        return None  # the sequence axis is pooled away

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


@keras.utils.register_keras_serializable(package="tfads")
class Dice(keras.layers.Layer):
    """Dice activation (DIN): ``y = p * s + (1 - p) * alpha * s``, ``p = sigmoid((s - E[s]) / sqrt(Var[s] + eps))``.

    Per channel (last axis). Training uses the batch's mean/variance over the real positions (all positions
    but the last axis, where ``mask`` is True) and moves the moving statistics by ``1 - momentum``; a batch with
    no real position uses and keeps the moving ones. Inference uses the moving statistics. ``alpha`` is learned
    (per channel, starting at 0).

    Args:
      momentum: moving-average momentum, in [0, 1).
      epsilon: variance epsilon (1e-9 as in the DIN reference code).

    Call: ``layer(s, mask=None, training=None)``: (..., h), mask (...) bool -> (..., h).

    Example:
      >>> y = Dice()(tf.random.normal((4, 8)), training=True)  # (4, 8)
    """

    def __init__(self, momentum: float = 0.99, epsilon: float = 1e-9, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Dice: `momentum` must be in [0, 1). Received: momentum={momentum}.")
        if epsilon <= 0.0:
            raise ValueError(f"Dice: `epsilon` must be > 0. Received: epsilon={epsilon}.")
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.supports_masking = True

    def build(self, input_shape: tf.TensorShape) -> None:
        dim = tf.TensorShape(input_shape)[-1]
        if dim is None:
            raise ValueError(f"{self.name}: the last dimension of the input must be known.")
        self.alpha = self.add_weight(name="alpha", shape=(dim,), initializer="zeros", dtype=tf.float32, autocast=False)
        stat = {"shape": (dim,), "trainable": False, "dtype": tf.float32}
        stat.update(synchronization=tf.VariableSynchronization.ON_READ, aggregation=tf.VariableAggregation.MEAN)
        self.moving_mean = self.add_weight(name="moving_mean", initializer="zeros", **stat)
        self.moving_variance = self.add_weight(name="moving_variance", initializer="ones", **stat)
        super().build(input_shape)

    def _batch_stats(self, s: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        axes = list(range(s.shape.rank - 1))
        weight = tf.cast(mask, tf.float32)[..., None]
        count = tf.reduce_sum(weight)
        s = tf.where(mask[..., None], s, tf.zeros_like(s))
        mean = tf.reduce_sum(weight * s, axes) / tf.maximum(count, 1.0)
        var = tf.reduce_sum(weight * tf.square(s - mean), axes) / tf.maximum(count, 1.0)
        seen, rate = count > 0.0, 1.0 - self.momentum
        mean, var = tf.where(seen, mean, self.moving_mean), tf.where(seen, var, self.moving_variance)
        self.moving_mean.assign(self.moving_mean + rate * (mean - self.moving_mean))
        self.moving_variance.assign(self.moving_variance + rate * (var - self.moving_variance))
        return mean, var

    def call(self, inputs: tf.Tensor, mask: tf.Tensor | None = None, training: bool | None = None) -> tf.Tensor:
        s = tf.cast(inputs, tf.float32)
        mask = tf.ones(tf.shape(s)[:-1], tf.bool) if mask is None else tf.cast(mask, tf.bool)
        if training is None:
            training = keras.backend.learning_phase()
        mean, var = tf.__internal__.smart_cond.smart_cond(
            training,
            lambda: self._batch_stats(s, mask),
            lambda: (tf.identity(self.moving_mean), tf.identity(self.moving_variance)),
        )
        p = tf.sigmoid((s - mean) * tf.math.rsqrt(var + self.epsilon))
        return tf.cast(p * s + (1.0 - p) * self.alpha * s, inputs.dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}


@keras.utils.register_keras_serializable(package="tfads")
class DinAttention(keras.layers.Layer):
    """DIN's activation unit: a history pooled with weights scored by an MLP on ``[q, k, q - k, q * k]``.

    ``w_j = MLP([q, k_j, q - k_j, q * k_j])`` (hidden layers of ``hidden_units`` with ``activation``, then a linear
    unit); padded positions get ``w_j = 0`` exactly. Output: ``sum_j w_j k_j``. With ``weight_normalization="none"``
    (DIN's choice) the raw scores are kept, so the output keeps the history's intensity; "softmax" normalises
    them over the real positions (an empty history gives zero weights).

    Args:
      hidden_units: widths of the score MLP's hidden layers.
      activation: "prelu", "dice" (``Dice``, statistics over real positions) or "sigmoid".
      weight_normalization: "none" or "softmax".
      return_weights: also return the (batch, L) weights.

    Call: ``layer(query, keys, mask=None, training=None)``: (batch, d), (batch, L, d), (batch, L) bool ->
    (batch, d), or ``(output, weights)`` with ``return_weights``. ``attention_weights(...)`` gives the weights alone.

    Example:
      >>> out = DinAttention((8, 4))(tf.ones((2, 3)), tf.ones((2, 5, 3)), mask=tf.sequence_mask([2, 0], 5))  # (2, 3)
    """

    def __init__(
        self,
        hidden_units: Sequence[int] = (80, 40),
        activation: str = "prelu",
        weight_normalization: str = "none",
        *,
        return_weights: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        units = [int(u) for u in hidden_units]
        if any(u < 1 for u in units):
            raise ValueError(f"DinAttention: `hidden_units` must be positive. Received: hidden_units={hidden_units}.")
        _check_choice("DinAttention", "activation", activation, DIN_ACTIVATIONS)
        _check_choice("DinAttention", "weight_normalization", weight_normalization, WEIGHT_NORMALIZATIONS)
        self.hidden_units, self.activation = units, activation
        self.weight_normalization, self.return_weights = weight_normalization, bool(return_weights)
        self.dense_layers = [keras.layers.Dense(u, name=f"dense_{i}") for i, u in enumerate(units)]
        self.activation_layers = [self._activation_layer(i) for i in range(len(units))]
        self.score_layer = keras.layers.Dense(1, name="score")

    def _activation_layer(self, i: int) -> keras.layers.Layer:
        if self.activation == "dice":
            return Dice(name=f"dice_{i}")
        if self.activation == "prelu":
            return keras.layers.PReLU(shared_axes=[1], name=f"prelu_{i}")
        return keras.layers.Activation("sigmoid", name=f"sigmoid_{i}")

    def _scores(self, query: tf.Tensor, keys: tf.Tensor, mask: tf.Tensor, training: bool | None) -> tf.Tensor:
        if query.shape[-1] != keys.shape[-1]:
            raise ValueError(f"{self.name}: query and keys widths differ: {query.shape[-1]} vs {keys.shape[-1]}.")
        q = tf.broadcast_to(query[:, None, :], tf.shape(keys))
        h = tf.concat([q, keys, q - keys, q * keys], axis=-1)
        for dense, act in zip(self.dense_layers, self.activation_layers, strict=True):
            h = dense(h)
            h = act(h, mask=mask, training=training) if isinstance(act, Dice) else act(h)
        return tf.squeeze(self.score_layer(h), axis=-1)  # (batch, L)

    def _weights(self, scores: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        if self.weight_normalization == "none":
            return tf.where(mask, scores, tf.zeros_like(scores))
        lowest = tf.fill(tf.shape(scores), tf.constant(scores.dtype.min, scores.dtype))
        scores = tf.where(mask, scores, lowest)
        e = tf.exp(scores - tf.reduce_max(scores, axis=-1, keepdims=True))
        e = tf.where(mask, e, tf.zeros_like(e))
        return tf.math.divide_no_nan(e, tf.reduce_sum(e, axis=-1, keepdims=True))  # empty row: 0 / 0 -> 0

    def attention_weights(
        self, query: tf.Tensor, keys: tf.Tensor, mask: tf.Tensor | None = None, training: bool | None = None
    ) -> tf.Tensor:
        """The (batch, L) weights ``w`` of ``call`` (0 at padded positions)."""
        mask = _full_mask(mask, keys)
        return self._weights(self._scores(query, _zero_padding(keys, mask), mask, training), mask)

    def call(
        self, query: tf.Tensor, keys: tf.Tensor, mask: tf.Tensor | None = None, training: bool | None = None
    ) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]:
        mask = _full_mask(mask, keys)
        weights = self.attention_weights(query, keys, mask, training)
        output = tf.einsum("bl,bld->bd", weights, _zero_padding(keys, mask))
        return (output, weights) if self.return_weights else output

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "hidden_units": list(self.hidden_units),
            "activation": self.activation,
            "weight_normalization": self.weight_normalization,
            "return_weights": self.return_weights,
        }


@keras.utils.register_keras_serializable(package="tfads")
class BroadcastRows(keras.layers.Layer):
    """``x`` repeated to the reference's batch when ``x`` has one row; otherwise ``x`` unchanged.

    Serving sends one user history with B candidate ads; the history is broadcast in the graph (batch sizes
    may be dynamic), not copied by the client. Any dtype passes through uncast.

    Call: ``layer([x, reference])``: (1 or B, ...), (B, ...) -> (B, ...).

    Example:
      >>> BroadcastRows()([tf.ones((1, 5, 3)), tf.ones((4, 3))]).shape  # TensorShape([4, 5, 3])
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)

    def call(self, inputs: Sequence[tf.Tensor]) -> tf.Tensor:
        x, reference = inputs
        shape = tf.shape(x)
        rows = tf.where(tf.equal(shape[0], 1), tf.shape(reference)[0], shape[0])
        return tf.broadcast_to(x, tf.concat([[rows], shape[1:]], axis=0))
