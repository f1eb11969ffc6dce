"""Mixture-of-experts layers: MMoE (Ma et al., KDD 2018) and PLE's CGC levels (Tang et al., RecSys 2020).

Each layer mixes ReLU expert MLPs with softmax gates and returns one representation per *group* (an ESMM
task, or a single group serving every task). What a gate reads is ``gate_input``: ``"input"`` (its group's
input: ``x``, or in PLE the previous level's output), ``"context"`` (a separate tensor such as the domain
embedding) or ``"both"`` (the two concatenated). With ``num_domains`` > 0 every gate has one weight set
per domain and a row uses its own domain's (a per-scene gate).

Inputs are one list: ``x``, then the context when a gate reads it, then the (batch,) int domain index when
``num_domains`` > 0; a layer that needs neither is called on ``x`` itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import tensorflow as tf
import tf_keras as keras

GateInput = Literal["input", "context", "both"]
GATE_INPUTS = ("input", "context", "both")


def _require(cls: str, name: str, value: Any, ok: bool, need: str) -> None:
    if not ok:
        raise ValueError(f"{cls}: `{name}` must be {need}. Received: {name}={value!r}.")


def _uniform(fan_in: int, fan_out: int) -> keras.initializers.Initializer:
    """Glorot-uniform for one (fan_in, fan_out) slice of a stacked kernel (Keras would count the stack in the fans)."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return keras.initializers.RandomUniform(-limit, limit)


def _mix(gate: tf.Tensor, experts: tf.Tensor) -> tf.Tensor:
    """``sum_i gate[:, i] * experts[:, i, :]``: (batch, E), (batch, E, u) -> (batch, u)."""
    return tf.einsum("be,beu->bu", gate, experts)


@keras.utils.register_keras_serializable(package="tfads")
class ExpertBank(keras.layers.Layer):
    """``num_experts`` MLPs of one shape reading one input, computed as batched matmuls.

    Args:
      num_experts: number of experts E.
      units: layer widths of every expert, e.g. ``[64, 32]``.
      activation: activation after every layer (ReLU, as MMoE's experts).

    Call: ``bank(x)``: (batch, d_in) -> (batch, E, units[-1]).

    Example:
      >>> ExpertBank(3, [8, 4])(tf.ones((2, 5))).shape
      TensorShape([2, 3, 4])
    """

    def __init__(self, num_experts: int, units: Sequence[int], activation: Any = "relu", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        units = [int(u) for u in units]
        _require("ExpertBank", "num_experts", num_experts, num_experts >= 1, ">= 1")
        _require("ExpertBank", "units", units, bool(units) and min(units) >= 1, "a non-empty list of positive ints")
        self.num_experts, self.units = int(num_experts), units
        self.activation = keras.activations.get(activation)

    def build(self, input_shape: tf.TensorShape) -> None:
        d = tf.TensorShape(input_shape)[-1]
        if d is None:
            raise ValueError(f"{self.name}: the last dimension of x must be known.")
        self.kernels, self.biases = [], []
        for i, u in enumerate(self.units):
            self.kernels.append(
                self.add_weight(name=f"kernel_{i}", shape=(self.num_experts, d, u), initializer=_uniform(d, u))
            )
            self.biases.append(self.add_weight(name=f"bias_{i}", shape=(self.num_experts, u), initializer="zeros"))
            d = u
        super().build(input_shape)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        h = self.activation(tf.einsum("bd,edu->beu", x, self.kernels[0]) + self.biases[0])
        for kernel, bias in zip(self.kernels[1:], self.biases[1:], strict=True):
            h = self.activation(tf.einsum("bed,edu->beu", h, kernel) + bias)
        return h

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_experts": self.num_experts,
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
        }


@keras.utils.register_keras_serializable(package="tfads")
class SoftmaxGate(keras.layers.Layer):
    """Softmax gate over ``num_experts`` experts: ``softmax(g W + b)``, one weight per expert, rows summing to one.

    With ``num_domains`` > 0 there is one ``(W, b)`` per domain and a row uses its own domain's (ids in
    ``[0, num_domains)``; an id outside raises at run time).

    Args:
      num_experts: number of experts the gate weighs.
      num_domains: 0 for one shared gate, else the number of per-domain weight sets.

    Call: ``gate(g)`` or, with ``num_domains``, ``gate([g, domain])``: (batch, d_g)[, (batch,) int]
    -> (batch, num_experts).

    Example:
      >>> w = SoftmaxGate(3, num_domains=2)([tf.ones((4, 5)), tf.constant([0, 1, 1, 0])])  # (4, 3)
    """

    def __init__(self, num_experts: int, num_domains: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _require("SoftmaxGate", "num_experts", num_experts, num_experts >= 1, ">= 1")
        _require("SoftmaxGate", "num_domains", num_domains, num_domains >= 0, ">= 0")
        self.num_experts, self.num_domains = int(num_experts), int(num_domains)

    def build(self, input_shape: Any) -> None:
        shape = tf.TensorShape(input_shape[0] if self.num_domains else input_shape)
        d, n = shape[-1], self.num_experts
        if d is None:
            raise ValueError(f"{self.name}: the last dimension of the gate input must be known.")
        lead = (self.num_domains,) if self.num_domains else ()
        self.kernel = self.add_weight(name="kernel", shape=(*lead, d, n), initializer=_uniform(d, n))
        self.bias = self.add_weight(name="bias", shape=(*lead, n), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs: tf.Tensor | Sequence[tf.Tensor]) -> tf.Tensor:
        if not self.num_domains:
            return tf.nn.softmax(tf.matmul(inputs, self.kernel) + self.bias)
        g, domain = inputs
        d = tf.reshape(domain, [-1])
        # Gather the rows' own (d_g, n) kernels: batch x d_g x n floats, far less than every domain's logits.
        logits = tf.einsum("bd,bdn->bn", g, tf.gather(self.kernel, d)) + tf.gather(self.bias, d)
        return tf.nn.softmax(logits)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_experts": self.num_experts, "num_domains": self.num_domains}


class _GatedExperts(keras.layers.Layer):
    """What MMoE, CGC and PLE share: the expert shape, what the gates read, and the input list."""

    def __init__(
        self,
        expert_units: Sequence[int],
        *,
        gate_input: GateInput = "input",
        num_domains: int = 0,
        expert_activation: Any = "relu",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        cls = type(self).__name__
        units = [int(u) for u in expert_units]
        _require(cls, "expert_units", units, bool(units) and min(units) >= 1, "a non-empty list of positive ints")
        _require(cls, "gate_input", gate_input, gate_input in GATE_INPUTS, f"one of {list(GATE_INPUTS)}")
        _require(cls, "num_domains", num_domains, num_domains >= 0, ">= 0")
        self.expert_units, self.gate_input, self.num_domains = units, gate_input, int(num_domains)
        self.expert_activation = keras.activations.get(expert_activation)

    def _bank(self, num_experts: int, name: str) -> ExpertBank:
        return ExpertBank(num_experts, self.expert_units, self.expert_activation, name=name)

    def _unpack(self, inputs: Any) -> tuple[Any, tf.Tensor | None, tf.Tensor | None]:
        """``(x, context, domain)`` from the call's inputs (``x`` may itself be a list, see CGC)."""
        names = ["x"] + ["context"] * (self.gate_input != "input") + ["domain"] * (self.num_domains > 0)
        if len(names) == 1:
            return inputs, None, None
        if not isinstance(inputs, (list, tuple)) or len(inputs) != len(names):
            received = f"a list of {len(inputs)}" if isinstance(inputs, (list, tuple)) else "one tensor"
            raise ValueError(f"{self.name}: expected the inputs [{', '.join(names)}]. Received: {received}.")
        given = dict(zip(names, inputs, strict=True))
        return given["x"], given.get("context"), given.get("domain")

    def _pack(self, x: Any, context: tf.Tensor | None, domain: tf.Tensor | None) -> Any:
        """The inverse of ``_unpack``."""
        extra = [t for t in (context, domain) if t is not None]
        return [x, *extra] if extra else x

    def _gate(self, gate: SoftmaxGate, h: tf.Tensor, context: tf.Tensor | None, domain: tf.Tensor | None) -> tf.Tensor:
        """``gate`` applied to what it reads: ``h`` (its group's input), the context, or both."""
        if self.gate_input == "input":
            g = h
        elif self.gate_input == "context":
            g = tf.cast(context, self.compute_dtype)
        else:
            g = tf.concat([h, tf.cast(context, h.dtype)], axis=-1)
        return gate([g, domain] if self.num_domains else g)

    def _forward(self, inputs: Any, with_gates: bool) -> tuple[list[tf.Tensor], list[Any]]:
        """The outputs and (computed at least when ``with_gates``) the gates' weights."""
        raise NotImplementedError

    def call(self, inputs: Any) -> list[tf.Tensor]:
        return self._forward(inputs, with_gates=False)[0]

    def gates(self, inputs: Any) -> list[Any]:
        """The gates' weights on ``inputs``, each (batch, experts it mixes) with rows summing to one; the
        order is the outputs' (PLE: a list per level)."""
        return self._forward(inputs, with_gates=True)[1]

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "expert_units": self.expert_units,
            "gate_input": self.gate_input,
            "num_domains": self.num_domains,
            "expert_activation": keras.activations.serialize(self.expert_activation),
        }


@keras.utils.register_keras_serializable(package="tfads")
class MMoE(_GatedExperts):
    """Multi-gate mixture of experts: ``y_k = sum_i g_ki f_i(x)`` with ``g_k = softmax(W_k a + b_k)``.

    ``f_i`` are ``num_experts`` ReLU MLPs (``expert_units``) shared by all gates; ``a`` is what the gates
    read (``gate_input``, module docstring). One expert makes ``y_k = f_1(x)``.

    Args:
      num_experts: number of shared experts.
      expert_units: layer widths of every expert.
      num_gates: number of gates (groups), one output each.
      gate_input: ``"input"`` (x), ``"context"`` or ``"both"``.
      num_domains: > 0 gives every gate per-domain weights (the call then takes the domain index).
      expert_activation: activation of the expert layers.

    Call: ``layer(x)``, ``layer([x, context])``, ``layer([x, domain])`` or ``layer([x, context, domain])``
    as the arguments require: (batch, d_in), (batch, d_c), (batch,) int -> a list of ``num_gates``
    tensors (batch, expert_units[-1]). ``layer.gates(inputs)`` gives the gates' weights, ``num_gates``
    tensors (batch, num_experts).

    Example:
      >>> ctr, cvr = MMoE(num_experts=4, expert_units=[16], num_gates=2)(tf.ones((8, 10)))  # (8, 16) each
    """

    def __init__(
        self,
        num_experts: int,
        expert_units: Sequence[int],
        num_gates: int = 1,
        *,
        gate_input: GateInput = "input",
        num_domains: int = 0,
        expert_activation: Any = "relu",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            expert_units, gate_input=gate_input, num_domains=num_domains, expert_activation=expert_activation, **kwargs
        )
        _require("MMoE", "num_experts", num_experts, num_experts >= 1, ">= 1")
        _require("MMoE", "num_gates", num_gates, num_gates >= 1, ">= 1")
        self.num_experts, self.num_gates = int(num_experts), int(num_gates)
        self.experts = self._bank(self.num_experts, "experts")
        self.gate_layers = [SoftmaxGate(self.num_experts, self.num_domains, name=f"gate_{k}") for k in range(num_gates)]

    def _forward(self, inputs: Any, with_gates: bool) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
        x, context, domain = self._unpack(inputs)
        experts = self.experts(x)
        gates = [self._gate(gate, x, context, domain) for gate in self.gate_layers]
        return [_mix(g, experts) for g in gates], gates

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_experts": self.num_experts, "num_gates": self.num_gates}


@keras.utils.register_keras_serializable(package="tfads")
class CGC(_GatedExperts):
    """One customized-gate-control level of PLE.

    Group k has ``specific_experts`` experts of its own; ``shared_experts`` experts serve every group.
    Group k's output is its gate's mixture of its own and the shared experts. With ``shared_output`` a
    shared gate over *all* experts (every group's and the shared ones) adds one more output: the next
    level's shared input.

    Args:
      num_groups: number of groups (tasks) G.
      specific_experts: experts per group (may be 0 when ``shared_experts`` > 0).
      shared_experts: shared experts (may be 0 when ``specific_experts`` > 0).
      expert_units: layer widths of every expert.
      shared_output: also output the shared gate's mixture (a non-last PLE level).
      gate_input, num_domains, expert_activation: as in ``MMoE``.

    Call: like ``MMoE``, where ``x`` is one (batch, d_in) tensor read by every expert or a list of G + 1
    tensors (each group's input, then the shared experts' input) -> a list of G (+ 1 shared) tensors
    (batch, expert_units[-1]). Group k's gate reads group k's input, the shared gate the shared input.
    ``layer.gates(inputs)`` gives the gates' weights in the same order, (batch, experts each mixes).

    Example:
      >>> ctr, cvr = CGC(2, specific_experts=1, shared_experts=2, expert_units=[16])(tf.ones((8, 10)))
    """

    def __init__(
        self,
        num_groups: int,
        specific_experts: int,
        shared_experts: int,
        expert_units: Sequence[int],
        *,
        shared_output: bool = False,
        gate_input: GateInput = "input",
        num_domains: int = 0,
        expert_activation: Any = "relu",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            expert_units, gate_input=gate_input, num_domains=num_domains, expert_activation=expert_activation, **kwargs
        )
        cls = type(self).__name__
        _check_cgc(cls, num_groups, specific_experts, shared_experts)
        self.num_groups, self.specific_experts = int(num_groups), int(specific_experts)
        self.shared_experts, self.shared_output = int(shared_experts), bool(shared_output)
        p, s, g = self.specific_experts, self.shared_experts, self.num_groups
        self.specific_banks = [self._bank(p, f"specific_experts_{k}") for k in range(g)] if p else []
        self.shared_bank = self._bank(s, "shared_experts") if s else None
        self.group_gates = [SoftmaxGate(p + s, self.num_domains, name=f"gate_{k}") for k in range(g)]
        self.shared_gate = SoftmaxGate(g * p + s, self.num_domains, name="shared_gate") if shared_output else None

    def _forward(self, inputs: Any, with_gates: bool) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
        x, context, domain = self._unpack(inputs)
        g = self.num_groups
        xs = list(x) if isinstance(x, (list, tuple)) else [x] * (g + 1)
        if len(xs) != g + 1:
            raise ValueError(
                f"{self.name}: x must be one tensor or a list of num_groups + 1 = {g + 1}. Received {len(xs)}."
            )
        own = [bank(h) for bank, h in zip(self.specific_banks, xs, strict=False)]
        shared = [self.shared_bank(xs[-1])] if self.shared_bank is not None else []
        outputs, gates = [], []
        for k in range(g):
            gate = self._gate(self.group_gates[k], xs[k], context, domain)
            outputs.append(_mix(gate, tf.concat(own[k : k + 1] + shared, axis=1)))
            gates.append(gate)
        if self.shared_gate is not None:
            gate = self._gate(self.shared_gate, xs[-1], context, domain)
            outputs.append(_mix(gate, tf.concat(own + shared, axis=1)))
            gates.append(gate)
        return outputs, gates

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_groups": self.num_groups,
            "specific_experts": self.specific_experts,
            "shared_experts": self.shared_experts,
            "shared_output": self.shared_output,
        }


def _check_cgc(cls: str, num_groups: int, specific_experts: int, shared_experts: int) -> None:
    _require(cls, "num_groups", num_groups, num_groups >= 1, ">= 1")
    _require(cls, "specific_experts", specific_experts, specific_experts >= 0, ">= 0")
    _require(cls, "shared_experts", shared_experts, shared_experts >= 0, ">= 0")
    total = specific_experts + shared_experts
    _require(cls, "specific_experts + shared_experts", total, total >= 1, ">= 1 (a gate needs an expert)")


@keras.utils.register_keras_serializable(package="tfads")
class PLE(_GatedExperts):
    """Progressive layered extraction: ``num_levels`` stacked ``CGC`` levels.

    Level 1's experts all read ``x``; at level l > 1, group k's experts read group k's output of level
    l - 1 and the shared experts read the shared gate's output of level l - 1. Every level but the last
    has a shared gate; the last level's group outputs are the layer's outputs. ``num_levels=1`` is one CGC.

    Args:
      num_groups, specific_experts, shared_experts, expert_units: as in ``CGC`` (the same at every level).
      num_levels: number of CGC levels.
      gate_input, num_domains, expert_activation: as in ``MMoE``; a level's gates read its own inputs
        (and the same context and domain at every level).

    Call: like ``MMoE``: ``x`` (batch, d_in) -> a list of G tensors (batch, expert_units[-1]).
    ``layer.gates(inputs)`` gives each level's gate weights, a list per level as ``CGC.gates``.

    Example:
      >>> ctr, cvr = PLE(2, specific_experts=1, shared_experts=1, expert_units=[16], num_levels=2)(tf.ones((8, 10)))
    """

    def __init__(
        self,
        num_groups: int,
        specific_experts: int,
        shared_experts: int,
        expert_units: Sequence[int],
        num_levels: int = 2,
        *,
        gate_input: GateInput = "input",
        num_domains: int = 0,
        expert_activation: Any = "relu",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            expert_units, gate_input=gate_input, num_domains=num_domains, expert_activation=expert_activation, **kwargs
        )
        _check_cgc("PLE", num_groups, specific_experts, shared_experts)
        _require("PLE", "num_levels", num_levels, num_levels >= 1, ">= 1")
        self.num_groups, self.num_levels = int(num_groups), int(num_levels)
        self.specific_experts, self.shared_experts = int(specific_experts), int(shared_experts)
        self.cgc_levels = [
            CGC(
                num_groups,
                specific_experts,
                shared_experts,
                self.expert_units,
                shared_output=level < num_levels - 1,
                gate_input=gate_input,
                num_domains=num_domains,
                expert_activation=self.expert_activation,
                name=f"level_{level}",
            )
            for level in range(num_levels)
        ]

    def _forward(self, inputs: Any, with_gates: bool) -> tuple[list[tf.Tensor], list[list[tf.Tensor]]]:
        x, context, domain = self._unpack(inputs)
        h, gates = x, []
        for level in self.cgc_levels:
            packed = self._pack(h, context, domain)
            if with_gates:
                gates.append(level.gates(packed))
            h = level(packed)
        return h, gates

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_groups": self.num_groups,
            "specific_experts": self.specific_experts,
            "shared_experts": self.shared_experts,
            "num_levels": self.num_levels,
        }
