"""STAR (Sheng et al., CIKM 2021): star-topology FC layers and partitioned normalisation.

Every layer here is called on ``[x, domain]`` where ``domain`` is an int tensor of shape (batch,) or
(batch, 1) holding domain (scenario) indices in ``[0, num_domains)``; ids outside that range raise an
error at run time (reserve an index for unknown domains, e.g. the lookup's OOV index).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf
import tf_keras as keras


def _domain_index(domain: tf.Tensor) -> tf.Tensor:
    return tf.reshape(tf.cast(domain, tf.int32), [-1])


def _check_num_domains(cls: str, num_domains: int) -> None:
    if num_domains < 1:
        raise ValueError(f"{cls}: `num_domains` must be >= 1. Received: num_domains={num_domains}.")


@keras.utils.register_keras_serializable(package="tfads")
class StarDense(keras.layers.Layer):
    """Star-topology dense layer: ``y = act(x @ (W_p * W) + (b_p + b))`` for the row's domain p.

    ``W`` and ``b`` are shared; ``W_p`` (initialised to ones, so training starts from the shared layer)
    and ``b_p`` (zeros) are per domain. Rows are partitioned by domain, so the cost is one
    (rows_p x d_in) @ (d_in x units) product per domain.

    Args:
      units: output width.
      num_domains: number of domains P.
      activation: activation function (None for linear).
      kernel_initializer, kernel_regularizer: for the shared kernel W (W_p use the same regulariser).

    Call: ``layer([x, domain])``: (batch, d_in), (batch,) int -> (batch, units).

    Example:
      >>> y = StarDense(8, num_domains=3, activation="relu")([tf.ones((4, 5)), tf.constant([0, 2, 1, 0])])
    """

    def __init__(
        self,
        units: int,
        num_domains: int,
        activation: Any = None,
        *,
        kernel_initializer: Any = "glorot_uniform",
        kernel_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if units < 1:
            raise ValueError(f"StarDense: `units` must be >= 1. Received: units={units}.")
        _check_num_domains("StarDense", num_domains)
        self.units, self.num_domains = int(units), int(num_domains)
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape: Sequence[tf.TensorShape]) -> None:
        d_in = tf.TensorShape(input_shape[0])[-1]
        if d_in is None:
            raise ValueError(f"{self.name}: the last dimension of x must be known.")
        p = self.num_domains
        self.kernel = self.add_weight(
            name="kernel",
            shape=(d_in, self.units),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
        self.domain_kernel = self.add_weight(
            name="domain_kernel", shape=(p, d_in, self.units), initializer="ones", regularizer=self.kernel_regularizer
        )
        self.domain_bias = self.add_weight(name="domain_bias", shape=(p, self.units), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs: Sequence[tf.Tensor]) -> tf.Tensor:
        x, domain = inputs
        d = _domain_index(domain)
        dtype = self.compute_dtype
        # One (P, d_in, units) product, unstacked: slicing per domain would make each slice's gradient a
        # full (P, d_in, units) tensor.
        kernels = tf.unstack(tf.cast(self.domain_kernel * self.kernel, dtype), num=self.num_domains)
        parts = tf.dynamic_partition(x, d, self.num_domains)
        rows = tf.dynamic_partition(tf.range(tf.shape(x)[0]), d, self.num_domains)
        outs = [tf.matmul(part, k) for part, k in zip(parts, kernels, strict=True)]
        y = tf.dynamic_stitch(rows, outs)
        y = y + tf.cast(self.bias + tf.gather(self.domain_bias, d), dtype)
        return self.activation(y)

    def compute_output_shape(self, input_shape: Sequence[tf.TensorShape]) -> tf.TensorShape:
        return tf.TensorShape(input_shape[0])[:-1].concatenate([self.units])

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "units": self.units,
            "num_domains": self.num_domains,
            "activation": keras.activations.serialize(self.activation),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
        }


@keras.utils.register_keras_serializable(package="tfads")
class PartitionedNormalization(keras.layers.Layer):
    """Partitioned normalisation: ``(gamma * gamma_p) * (z - mu_p) / sqrt(var_p + eps) + (beta + beta_p)``.

    Statistics are per domain in training and inference alike, so both see the same normalisation
    (STAR trains on single-domain batches, where batch statistics are the domain's; tfads batches mix
    domains). Training: a domain with at least ``min_rows`` rows in the batch uses the mean/variance of
    those rows; a thinner domain uses its moving statistics. Every domain with >= 2 rows in the batch
    updates its moving mean/variance (unbiased) with ``momentum``. Inference uses the moving statistics.

    Args:
      num_domains: number of domains P.
      momentum: moving-average momentum.
      epsilon: variance epsilon.
      min_rows: fewest rows of a domain in a batch for its batch statistics to be used in training.

    Call: ``layer([z, domain], training=...)``: (batch, d), (batch,) int -> (batch, d).
    """

    def __init__(
        self, num_domains: int, momentum: float = 0.99, epsilon: float = 1e-3, min_rows: int = 8, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        _check_num_domains("PartitionedNormalization", num_domains)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"PartitionedNormalization: `momentum` must be in [0, 1). Received: {momentum}.")
        if min_rows < 2:
            raise ValueError(f"PartitionedNormalization: `min_rows` must be >= 2. Received: {min_rows}.")
        self.num_domains, self.momentum = int(num_domains), float(momentum)
        self.epsilon, self.min_rows = float(epsilon), int(min_rows)

    def build(self, input_shape: Sequence[tf.TensorShape]) -> None:
        dim = tf.TensorShape(input_shape[0])[-1]
        if dim is None:
            raise ValueError(f"{self.name}: the last dimension of z must be known.")
        p = self.num_domains

        def weight(name: str, shape: tuple[int, ...], init: str, trainable: bool = True) -> tf.Variable:
            extra = (
                {}
                if trainable
                else {
                    "synchronization": tf.VariableSynchronization.ON_READ,
                    "aggregation": tf.VariableAggregation.MEAN,
                }
            )
            return self.add_weight(
                name=name, shape=shape, initializer=init, trainable=trainable, dtype=tf.float32, autocast=False, **extra
            )

        self.gamma = weight("gamma", (dim,), "ones")
        self.beta = weight("beta", (dim,), "zeros")
        self.domain_gamma = weight("domain_gamma", (p, dim), "ones")
        self.domain_beta = weight("domain_beta", (p, dim), "zeros")
        self.moving_mean = weight("moving_mean", (p, dim), "zeros", trainable=False)
        self.moving_variance = weight("moving_variance", (p, dim), "ones", trainable=False)
        super().build(input_shape)

    def _training_stats(self, z: tf.Tensor, d: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-domain (P, dim) statistics for training, updating the moving ones."""
        p = self.num_domains
        counts = tf.math.unsorted_segment_sum(tf.ones_like(z[:, :1]), d, p)  # (P, 1)
        mean = tf.math.unsorted_segment_sum(z, d, p) / tf.maximum(counts, 1.0)
        sq = tf.math.unsorted_segment_sum(tf.square(z - tf.gather(mean, d)), d, p)
        var = sq / tf.maximum(counts, 1.0)
        seen = counts >= 2.0
        rate = 1.0 - self.momentum
        unbiased = sq / tf.maximum(counts - 1.0, 1.0)
        self.moving_mean.assign(tf.where(seen, self.moving_mean + rate * (mean - self.moving_mean), self.moving_mean))
        self.moving_variance.assign(
            tf.where(seen, self.moving_variance + rate * (unbiased - self.moving_variance), self.moving_variance)
        )
        enough = counts >= float(self.min_rows)
        return tf.where(enough, mean, self.moving_mean), tf.where(enough, var, self.moving_variance)

    def call(self, inputs: Sequence[tf.Tensor], training: bool | None = None) -> tf.Tensor:
        z_in, domain = inputs
        d = _domain_index(domain)
        z = tf.cast(z_in, tf.float32)
        if training is None:
            training = keras.backend.learning_phase()
        mean, var = tf.__internal__.smart_cond.smart_cond(
            training,
            lambda: self._training_stats(z, d),
            lambda: (tf.identity(self.moving_mean), tf.identity(self.moving_variance)),
        )
        normed = (z - tf.gather(mean, d)) * tf.math.rsqrt(tf.gather(var, d) + self.epsilon)
        scale = self.gamma * tf.gather(self.domain_gamma, d)
        shift = self.beta + tf.gather(self.domain_beta, d)
        return tf.cast(scale * normed + shift, z_in.dtype)

    def compute_output_shape(self, input_shape: Sequence[tf.TensorShape]) -> tf.TensorShape:
        return tf.TensorShape(input_shape[0])

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_domains": self.num_domains,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "min_rows": self.min_rows,
        }


@keras.utils.register_keras_serializable(package="tfads")
class StarTower(keras.layers.Layer):
    """STAR's main tower: ``PartitionedNormalization`` on the input, then a stack of ``StarDense`` layers.

    (The auxiliary network of STAR is a small MLP on the domain embedding whose logit is added to this
    tower's logit; build it with plain ``Dense`` layers.)

    Args:
      units: widths of the star-topology layers, e.g. ``[256, 128]``.
      num_domains: number of domains P.
      activation: activation of every layer.
      normalize_input: apply partitioned normalisation to the input.
      momentum, epsilon, min_rows: passed to ``PartitionedNormalization``.

    Call: ``tower([x, domain], training=...)``: (batch, d_in), (batch,) int -> (batch, units[-1]).
    """

    def __init__(
        self,
        units: Sequence[int],
        num_domains: int,
        activation: Any = "relu",
        normalize_input: bool = True,
        *,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        min_rows: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        units = [int(u) for u in units]
        if not units:
            raise ValueError("StarTower: `units` must be a non-empty list of positive ints. Received: [].")
        self.units, self.num_domains = units, int(num_domains)
        self.activation = keras.activations.get(activation)
        self.normalize_input = bool(normalize_input)
        self.momentum, self.epsilon, self.min_rows = float(momentum), float(epsilon), int(min_rows)
        self.norm = (
            PartitionedNormalization(num_domains, momentum, epsilon, min_rows, name="pn") if normalize_input else None
        )
        self.dense_layers = [
            StarDense(u, num_domains, self.activation, name=f"star_dense_{i}") for i, u in enumerate(units)
        ]

    def call(self, inputs: Sequence[tf.Tensor], training: bool | None = None) -> tf.Tensor:
        x, domain = inputs
        if self.norm is not None:
            x = self.norm([x, domain], training=training)
        for layer in self.dense_layers:
            x = layer([x, domain])
        return x

    def compute_output_shape(self, input_shape: Sequence[tf.TensorShape]) -> tf.TensorShape:
        return tf.TensorShape(input_shape[0])[:-1].concatenate([self.units[-1]])

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "units": self.units,
            "num_domains": self.num_domains,
            "activation": keras.activations.serialize(self.activation),
            "normalize_input": self.normalize_input,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "min_rows": self.min_rows,
        }
