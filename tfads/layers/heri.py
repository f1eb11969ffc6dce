"""AutoHERI (Wei et al., CIKM 2021): CTR and CVR towers where the CVR tower reads the CTR tower's hidden layers
through gated edges, the gates searched one-shot and then pruned to a fixed edge set (docs/methods/conversion.md
"AutoHERI").
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Literal

import tensorflow as tf
import tf_keras as keras

HeriMode = Literal["search", "fixed"]
HERI_MODES = ("search", "fixed")


def binary_entropy(gate_logits: tf.Tensor) -> tf.Tensor:
    """``-g log g - (1 - g) log(1 - g)`` of ``g = sigmoid(gate_logits)``, elementwise, in nats (0 at g = 0 or 1,
    ``log 2`` at g = 1/2); computed from the logits, so it stays finite for saturated gates."""
    g = tf.sigmoid(gate_logits)
    return g * tf.nn.softplus(-gate_logits) + (1.0 - g) * tf.nn.softplus(gate_logits)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_edges(edges: Any, num_layers: int, where: str = "HeriTowers") -> list[list[int]]:
    """``edges`` as a sorted list of ``[i, j]`` (CTR layer i feeds CVR layer j, both 0-based hidden layers).

    Raises:
      ValueError: an edge is not a pair of ints in ``[0, num_layers)``, or appears twice.
    """
    pairs = []
    for edge in edges:
        ok = isinstance(edge, Sequence) and len(edge) == 2 and all(_is_int(v) for v in edge)
        if not ok or not all(0 <= v < num_layers for v in edge):
            raise ValueError(
                f"{where}: every edge must be a pair [i, j] of tower layer indices in [0, {num_layers}). "
                f"Received: edges={edges!r}."
            )
        pairs.append([int(edge[0]), int(edge[1])])
    if len({tuple(p) for p in pairs}) != len(pairs):
        raise ValueError(f"{where}: `edges` lists an edge twice. Received: edges={edges!r}.")
    return sorted(pairs)


@keras.utils.register_keras_serializable(package="tfads")
class HeriTowers(keras.layers.Layer):
    """The ESMM CTR and CVR towers with AutoHERI's hierarchical edges from every CTR layer to every CVR layer.

    Both towers are ReLU MLPs of widths ``units``. CVR layer ``j`` reads its own previous layer (its tower's
    input for ``j = 0``) concatenated with the outputs ``u_i`` of the CTR layers it is connected to:

        c_j = act(W_j [c_{j-1}; g_0j u_0; ...; g_(L-1)j u_(L-1)] + b_j)

    which is the same as adding a linear projection ``g_ij W_ij u_i`` of every connected CTR layer to the
    layer's pre-activation. In ``search`` mode every pair (i, j) is an edge and ``g_ij = sigmoid(a_ij)``,
    ``a`` the architecture parameters: a non-trainable (L, L) variable starting at 0 (every gate 1/2), so
    weight updates (``fit``, any optimizer over ``trainable_variables``) never move it; the architecture
    step of :class:`tfads.autoheri.ArchitectureSteps` does, on its own loss plus :meth:`entropy_penalty`.
    In ``fixed`` mode only ``edges`` exist, with gate 1, and there are no architecture parameters: without
    edges the layer is two plain towers (the CVR tower does not depend on the CTR tower at all). Gradients of
    the CVR loss flow through an edge into the CTR layer it reads.

    Args:
      units: widths of both towers' hidden layers, e.g. ``[64, 32]`` (L = len(units) layers each, L x L
        candidate edges; one layer gives a single edge).
      mode: ``search`` (every edge, sigmoid gates) or ``fixed`` (the ``edges`` given, ungated).
      edges: with ``fixed``, the ``[i, j]`` pairs kept (CTR layer i -> CVR layer j, 0-based); empty in search.
      entropy_weight: weight of the mean binary entropy of the gates in :meth:`entropy_penalty` (search).
      activation: activation of every hidden layer.

    Call: ``layer([x_ctr, x_cvr])`` (each tower's input; pass one tensor twice for a shared backbone):
    (batch, d_ctr), (batch, d_cvr) -> ``[ctr_hidden, cvr_hidden]``, each (batch, units[-1]).

    Example:
      >>> towers = HeriTowers([8, 4], mode="fixed", edges=[[0, 1]])
      >>> ctr_h, cvr_h = towers([tf.ones((2, 5)), tf.ones((2, 5))])  # (2, 4) each
    """

    def __init__(
        self,
        units: Sequence[int],
        *,
        mode: HeriMode = "search",
        edges: Sequence[Sequence[int]] = (),
        entropy_weight: float = 0.0,
        activation: Any = "relu",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        units = [int(u) for u in units]
        if not units or min(units) < 1:
            raise ValueError(f"HeriTowers: `units` must be a non-empty list of positive ints. Received: units={units}.")
        if mode not in HERI_MODES:
            raise ValueError(f"HeriTowers: `mode` must be one of {list(HERI_MODES)}. Received: mode={mode!r}.")
        edges = check_edges(edges, len(units))
        if mode == "search" and edges:
            raise ValueError(f"HeriTowers: `edges` is for mode 'fixed' (search has every edge). Received: {edges}.")
        if not entropy_weight >= 0.0:
            raise ValueError(f"HeriTowers: `entropy_weight` must be >= 0. Received: entropy_weight={entropy_weight}.")
        self.units, self.mode = units, mode
        self._edges = frozenset((i, j) for i, j in edges)  # a frozenset: Keras does not wrap it for tracking
        self.entropy_weight = float(entropy_weight)
        self.activation = keras.activations.get(activation)
        self.ctr_layers = [keras.layers.Dense(u, self.activation, name=f"ctr_dense_{i}") for i, u in enumerate(units)]
        self.cvr_layers = [keras.layers.Dense(u, self.activation, name=f"cvr_dense_{j}") for j, u in enumerate(units)]
        self.gate_logits: tf.Variable | None = None

    def build(self, input_shape: Sequence[tf.TensorShape]) -> None:
        if self.mode == "search":
            n = len(self.units)
            self.gate_logits = self.add_weight(
                name="gate_logits", shape=(n, n), initializer="zeros", trainable=False, dtype=tf.float32
            )
        super().build(input_shape)

    @property
    def edges(self) -> list[list[int]]:
        """The fixed edges ``[i, j]``, sorted (empty in search mode)."""
        return [list(e) for e in sorted(self._edges)]

    @property
    def arch_variables(self) -> list[tf.Variable]:
        """The architecture parameters (search mode: the gate logits; fixed: none)."""
        return [self.gate_logits] if self.gate_logits is not None else []

    def gates(self) -> tf.Tensor:
        """The (L, L) edge weights, row i = CTR layer, column j = CVR layer: ``sigmoid`` of the gate logits in
        search mode, the 0/1 edge mask in fixed mode."""
        if self.mode == "search":
            return tf.sigmoid(self.gate_logits)
        n = len(self.units)
        mask = [[1.0 if (i, j) in self._edges else 0.0 for j in range(n)] for i in range(n)]
        return tf.constant(mask, tf.float32)

    def entropy_penalty(self) -> tf.Tensor:
        """``entropy_weight`` x the mean binary entropy of the gates: 0 at 0/1 gates, largest at 1/2 (0 in fixed)."""
        if self.mode != "search":
            return tf.constant(0.0)
        return self.entropy_weight * tf.reduce_mean(binary_entropy(self.gate_logits))

    def call(self, inputs: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        x_ctr, x_cvr = inputs
        ctr = []
        h = x_ctr
        for layer in self.ctr_layers:
            h = layer(h)
            ctr.append(h)
        gates = tf.cast(tf.sigmoid(self.gate_logits), self.compute_dtype) if self.mode == "search" else None
        c = x_cvr
        for j, layer in enumerate(self.cvr_layers):
            if gates is not None:
                reads = [gates[i, j] * u for i, u in enumerate(ctr)]
            else:
                reads = [u for i, u in enumerate(ctr) if (i, j) in self._edges]
            c = layer(tf.concat([c, *reads], axis=-1) if reads else c)
        return [ctr[-1], c]

    def compute_output_shape(self, input_shape: Sequence[tf.TensorShape]) -> list[tf.TensorShape]:
        return [tf.TensorShape(shape)[:-1].concatenate([self.units[-1]]) for shape in input_shape]

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "units": list(self.units),
            "mode": self.mode,
            "edges": self.edges,
            "entropy_weight": self.entropy_weight,
            "activation": keras.activations.serialize(self.activation),
        }
