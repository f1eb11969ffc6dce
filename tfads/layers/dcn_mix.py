"""DCN-Mix (Wang et al., DCN-V2, WWW 2021): a cross layer built from a gated mixture of low-rank experts."""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras as keras


@keras.utils.register_keras_serializable(package="tfads")
class CrossMix(keras.layers.Layer):
    """One DCN-Mix cross layer.

    ``x_{l+1} = sum_i G_i(x_l) * x_0 * (U_i g(C_i g(V_i^T x_l)) + b) + x_l``, where the gate ``G`` is a
    softmax over experts of per-expert linear maps of ``x_l`` (no bias), ``g`` is ``activation``, ``U_i``,
    ``V_i`` are d x r, ``C_i`` is r x r, and ``b`` is shared by the experts (as in the paper's formula).
    With one expert, ``activation=None`` and ``C = I`` this is tfrs' low-rank ``Cross``.

    Args:
      num_experts: number of low-rank experts.
      low_rank: rank r of each expert; None uses ``max(1, d // 4)``.
      activation: g, applied in the low-rank space ("tanh" in common implementations; None for identity).
      use_bias: whether to add the shared bias b.
      kernel_initializer, bias_initializer, kernel_regularizer: for U, V, C, gate kernels / the bias.

    Call: ``layer(x0, x=None)`` like ``tfrs.layers.dcn.Cross``; both (batch, d); returns (batch, d).
    Stack layers as ``x = layer_l(x0, x)``.

    Example:
      >>> x0 = tf.ones((2, 8))
      >>> y = CrossMix(num_experts=4, low_rank=2)(x0)  # (2, 8)
    """

    def __init__(
        self,
        num_experts: int = 4,
        low_rank: int | None = None,
        activation: Any = "tanh",
        use_bias: bool = True,
        *,
        kernel_initializer: Any = "truncated_normal",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_experts < 1:
            raise ValueError(f"CrossMix: `num_experts` must be >= 1. Received: num_experts={num_experts}.")
        if low_rank is not None and low_rank < 1:
            raise ValueError(f"CrossMix: `low_rank` must be >= 1 or None. Received: low_rank={low_rank}.")
        self.num_experts = int(num_experts)
        self.low_rank = low_rank
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def _kernel(self, name: str, shape: tuple[int, ...]) -> tf.Variable:
        return self.add_weight(
            name=name,
            shape=shape,
            initializer=keras.initializers.get(keras.initializers.serialize(self.kernel_initializer)),
            regularizer=self.kernel_regularizer,
        )

    def build(self, input_shape: tf.TensorShape) -> None:
        d = tf.TensorShape(input_shape)[-1]
        if d is None:
            raise ValueError(f"{self.name}: the last dimension of x0 must be known.")
        e, r = self.num_experts, self.low_rank or max(1, d // 4)
        self.v_kernel = self._kernel("v_kernel", (e, d, r))
        self.c_kernel = self._kernel("c_kernel", (e, r, r))
        self.u_kernel = self._kernel("u_kernel", (e, r, d))
        self.gate_kernel = self._kernel("gate_kernel", (d, e))
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(d,), initializer=self.bias_initializer)
        super().build(input_shape)

    def _cast(self, w: tf.Variable) -> tf.Tensor:
        return tf.cast(w, self.compute_dtype)

    def call(self, x0: tf.Tensor, x: tf.Tensor | None = None) -> tf.Tensor:
        if x is None:
            x = x0
        if x0.shape[-1] != x.shape[-1]:
            raise ValueError(f"{self.name}: x0 and x widths differ: {x0.shape[-1]} vs {x.shape[-1]}.")
        cast = self._cast
        low = self.activation(tf.einsum("bd,edr->ber", x, cast(self.v_kernel)))
        low = self.activation(tf.einsum("ber,ers->bes", low, cast(self.c_kernel)))
        expert = tf.einsum("ber,erd->bed", low, cast(self.u_kernel))  # (batch, experts, d)
        if self.bias is not None:
            expert = expert + cast(self.bias)
        gate = tf.nn.softmax(tf.matmul(x, cast(self.gate_kernel)), axis=-1)  # (batch, experts)
        mixed = tf.einsum("be,bed->bd", gate, expert)
        return x0 * mixed + x

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_experts": self.num_experts,
            "low_rank": self.low_rank,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
        }
