"""AdaSparse (Yang et al., CIKM 2022): domain-aware neuron pruning for multi-domain CTR models."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfads.layers.low_precision_cross import MatmulDtype, matmul_policy

FORMS = ("fusion", "binarization", "scaling")


PRUNER_INPUTS = ("domain_hidden", "domain")


def _validate_pruner_args(
    form: str, eps: float, beta: float, r_min: float, r_max: float, hidden_units: int, pruner_input: str
) -> None:
    if hidden_units < 0:
        raise ValueError(f"AdaSparsePruner: `hidden_units` must be >= 0. Received: hidden_units={hidden_units}.")
    if pruner_input not in PRUNER_INPUTS:
        raise ValueError(
            f"AdaSparsePruner: `pruner_input` must be one of {PRUNER_INPUTS}. Received: pruner_input={pruner_input!r}."
        )
    if form not in FORMS:
        raise ValueError(f"AdaSparsePruner: `form` must be one of {FORMS}. Received: form={form!r}.")
    if beta <= 0:
        raise ValueError(f"AdaSparsePruner: `beta` must be positive. Received: beta={beta}.")
    upper = 1.0 if form == "binarization" else beta
    if form != "scaling" and not 0.0 < eps < upper:
        raise ValueError(f"AdaSparsePruner: `eps` must lie in (0, {upper}) for form={form!r}. Received: eps={eps}.")
    if not 0.0 <= r_min <= r_max < 1.0:
        raise ValueError(f"AdaSparsePruner: need 0 <= r_min <= r_max < 1. Received: r_min={r_min}, r_max={r_max}.")


PRUNED_SHARE_SUFFIX = "_pruned_share"  # metric of a pruning layer: the share of units it prunes


@keras.utils.register_keras_serializable(package="tfads")
class AdaSparsePruner(keras.layers.Layer):
    """Domain-aware pruner: multiplies a hidden layer by a per-unit, per-example factor ``pi``.

    ``v = W_p [e_d ; h] + b_p`` (one linear map, ``units`` = width of ``h``; with ``hidden_units`` a
    shallow MLP ``W_p relu(W_1 [e_d ; h] + b_1) + b_p``; with ``pruner_input="domain"`` it reads ``e_d``
    only, so every row of a domain gets the same mask), then

    - ``binarization``: ``pi = 1[sigmoid(alpha v) > eps]``
    - ``scaling``:      ``pi = beta * sigmoid(v)``                       (nothing is pruned)
    - ``fusion``:       ``pi = s * 1[s > eps]`` with ``s = beta * sigmoid(alpha v)``

    Pruned units are exactly 0. The forward pass is the same in training and inference; the hard step
    back-propagates straight through (the gradient of the soft factor ``s``, so pruned units can revive).
    ``alpha`` is a non-trainable variable, annealed by ``AlphaAnnealer``; ``lambda_hat`` is a
    non-trainable variable grown by ``SparsityLambdaScheduler``.

    Sparsity regulariser (added with ``add_loss``, forms binarization/fusion only):
    ``R = lambda_hat * (r_l - r)^2`` when ``r_l`` is outside ``[r_min, r_max]``, else 0, where ``r_l`` is
    the batch-mean fraction of pruned units and ``r = (r_min + r_max) / 2`` (i.e. ``lambda_l * |r_l - r|``
    with ``lambda_l = lambda_hat * |r_l - r|``). Its value uses the hard ``r_l``; its gradient flows
    through the smooth surrogate ``mean(sigmoid(k * (t - alpha v)))`` where ``t`` is the threshold in
    logit space (``logit(eps)``, or ``logit(eps / beta)`` for fusion) and ``k = surrogate_sharpness``.

    Args:
      form: "fusion", "binarization" or "scaling".
      eps: pruning threshold (binarization: in (0, 1); fusion: in (0, beta)). Unused by scaling.
      beta: scale of the soft factor (fusion, scaling).
      alpha_init: initial slope ``alpha`` (before annealing).
      r_min, r_max: target sparsity range.
      lambda_init: initial ``lambda_hat``.
      surrogate_sharpness: ``k`` of the smooth sparsity surrogate.
      hidden_units: width of the pruner's hidden ReLU layer (0: one linear map).
      pruner_input: "domain_hidden" (``[e_d ; h]``) or "domain" (``e_d`` only).
      kernel_initializer, kernel_regularizer: for ``W_p``.

    Call: ``layer([h, domain_emb])`` with ``h`` of shape (batch, units) and ``domain_emb`` of shape
    (batch, d_e); returns ``h * pi`` of shape (batch, units).

    Example:
      >>> pruner = AdaSparsePruner(form="fusion", eps=0.25)
      >>> out = pruner([tf.ones((4, 8)), tf.ones((4, 3))])  # (4, 8)
    """

    def __init__(
        self,
        form: str = "fusion",
        eps: float = 0.25,
        beta: float = 2.0,
        *,
        alpha_init: float = 0.1,
        r_min: float = 0.15,
        r_max: float = 0.25,
        lambda_init: float = 0.01,
        surrogate_sharpness: float = 1.0,
        hidden_units: int = 0,
        pruner_input: str = "domain_hidden",
        kernel_initializer: Any = "glorot_uniform",
        kernel_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _validate_pruner_args(form, eps, beta, r_min, r_max, int(hidden_units), pruner_input)
        self.hidden_units = int(hidden_units)
        self.pruner_input = pruner_input
        self.form = form
        self.eps = float(eps)
        self.beta = float(beta)
        self.alpha_init = float(alpha_init)
        self.r_min = float(r_min)
        self.r_max = float(r_max)
        self.lambda_init = float(lambda_init)
        self.surrogate_sharpness = float(surrogate_sharpness)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.record_masks = False  # set by `sparsity_report`; eager calls then keep `last_keep`
        self.last_keep: tf.Tensor | None = None

    @property
    def prunes(self) -> bool:
        """Whether this form can prune units (scaling never does)."""
        return self.form != "scaling"

    def build(self, input_shape: Sequence[tf.TensorShape]) -> None:
        if not isinstance(input_shape, list | tuple) or len(input_shape) != 2:
            raise ValueError(f"{self.name}: call the pruner on [h, domain_emb]. Got input shape {input_shape}.")
        h_shape, e_shape = (tf.TensorShape(s) for s in input_shape)
        units, emb = h_shape[-1], e_shape[-1]
        if units is None or emb is None:
            raise ValueError(f"{self.name}: the last dimension of h and domain_emb must be known.")
        width = emb + (units if self.pruner_input == "domain_hidden" else 0)
        self.hidden = None
        if self.hidden_units:
            self.hidden = keras.layers.Dense(
                self.hidden_units,
                activation="relu",
                kernel_initializer=keras.initializers.get(keras.initializers.serialize(self.kernel_initializer)),
                kernel_regularizer=self.kernel_regularizer,
                name="w_hidden",
            )
            self.hidden.build(tf.TensorShape([None, width]))
            width = self.hidden_units
        self.dense = keras.layers.Dense(
            units,
            kernel_initializer=self.kernel_initializer,
            kernel_regularizer=self.kernel_regularizer,
            name="w_p",
        )
        self.dense.build(tf.TensorShape([None, width]))
        self.alpha = self.add_weight(
            name="alpha",
            shape=(),
            initializer=keras.initializers.Constant(self.alpha_init),
            trainable=False,
            dtype=tf.float32,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            autocast=False,
        )
        self.lambda_hat = self.add_weight(
            name="lambda_hat",
            shape=(),
            initializer=keras.initializers.Constant(self.lambda_init),
            trainable=False,
            dtype=tf.float32,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            autocast=False,
        )
        super().build(input_shape)

    def _threshold_logit(self) -> float:
        """Threshold on ``alpha v`` equivalent to the form's hard step."""
        ratio = self.eps / self.beta if self.form == "fusion" else self.eps
        return math.log(ratio / (1.0 - ratio))

    def _factor(self, v: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | None]:
        """Returns (pi with a straight-through gradient, keep mask or None for scaling)."""
        if self.form == "scaling":
            return self.beta * tf.sigmoid(v), None
        gate = tf.sigmoid(self.alpha * v)
        soft = self.beta * gate if self.form == "fusion" else gate
        keep = tf.cast(soft > self.eps, v.dtype)
        hard = soft * keep if self.form == "fusion" else keep
        # Forward value is exactly `hard` (soft - soft == 0 in IEEE); the gradient is the soft factor's.
        return hard + (soft - tf.stop_gradient(soft)), keep

    def _sparsity_loss(self, av: tf.Tensor, keep: tf.Tensor) -> tf.Tensor:
        r_hard = 1.0 - tf.reduce_mean(keep)
        r_soft = tf.reduce_mean(tf.sigmoid(self.surrogate_sharpness * (self._threshold_logit() - av)))
        r_l = r_hard + (r_soft - tf.stop_gradient(r_soft))
        target = 0.5 * (self.r_min + self.r_max)
        outside = tf.cast((r_hard < self.r_min) | (r_hard > self.r_max), tf.float32)
        return outside * self.lambda_hat * tf.square(r_l - target)

    def call(self, inputs: Sequence[tf.Tensor]) -> tf.Tensor:
        h, domain_emb = inputs
        x = tf.cast(domain_emb, h.dtype)
        if self.pruner_input == "domain_hidden":
            x = tf.concat([x, h], axis=-1)
        if self.hidden is not None:
            x = self.hidden(x)
        v = tf.cast(self.dense(x), tf.float32)
        pi, keep = self._factor(v)
        if keep is not None:
            self.add_loss(self._sparsity_loss(self.alpha * v, keep))
            # the share of units this layer prunes, in the fit logs (and `val_...` ones) as `<name>_pruned_share`
            self.add_metric(1.0 - tf.reduce_mean(keep), name=f"{self.name}{PRUNED_SHARE_SUFFIX}", aggregation="mean")
            if self.record_masks and tf.executing_eagerly():
                self.last_keep = keep
        return h * tf.cast(pi, h.dtype)

    def compute_output_shape(self, input_shape: Sequence[tf.TensorShape]) -> tf.TensorShape:
        return tf.TensorShape(input_shape[0])

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "form": self.form,
            "eps": self.eps,
            "beta": self.beta,
            "alpha_init": self.alpha_init,
            "r_min": self.r_min,
            "r_max": self.r_max,
            "lambda_init": self.lambda_init,
            "surrogate_sharpness": self.surrogate_sharpness,
            "hidden_units": self.hidden_units,
            "pruner_input": self.pruner_input,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
        }


@keras.utils.register_keras_serializable(package="tfads")
class AdaSparseMLP(keras.layers.Layer):
    """MLP whose every hidden layer is followed by an ``AdaSparsePruner`` (AdaSparse DNN / DCNv2 deep part).

    Each layer: ``h = activation(Dense(units_i)(h))``, ``h = pruner_i([h, domain_emb])``, optional dropout.

    Args:
      units: widths of the hidden layers, e.g. ``[256, 128]``.
      activation: activation of every hidden layer.
      dropout: dropout rate after each pruned layer (0 disables).
      pruner: keyword arguments for every ``AdaSparsePruner`` (e.g. ``{"form": "fusion", "eps": 0.25}``).
      kernel_initializer, kernel_regularizer: for the hidden ``Dense`` layers.
      matmul_dtype: ``bfloat16`` runs the hidden ``Dense`` layers' matmuls in bfloat16 (float32 variables;
        the pruners compute in float32).

    Call: ``block([x, domain_emb])``: (batch, d_in), (batch, d_e) -> (batch, units[-1]).

    Example:
      >>> mlp = AdaSparseMLP([64, 32], pruner={"form": "binarization"})
      >>> y = mlp([tf.ones((4, 10)), tf.ones((4, 3))])  # (4, 32)
    """

    def __init__(
        self,
        units: Sequence[int],
        activation: Any = "relu",
        dropout: float = 0.0,
        pruner: dict[str, Any] | None = None,
        *,
        kernel_initializer: Any = "glorot_uniform",
        kernel_regularizer: Any = None,
        matmul_dtype: MatmulDtype = "float32",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        units = [int(u) for u in units]
        if not units or min(units) <= 0:
            raise ValueError(f"AdaSparseMLP: `units` must be a non-empty list of positive ints. Received: {units}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"AdaSparseMLP: `dropout` must be in [0, 1). Received: dropout={dropout}.")
        self.units = units
        self.activation = keras.activations.get(activation)
        self.dropout = float(dropout)
        self.pruner = dict(pruner or {})
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.matmul_dtype = matmul_dtype
        self.dense_layers = [
            keras.layers.Dense(
                u,
                activation=self.activation,
                kernel_initializer=keras.initializers.get(keras.initializers.serialize(self.kernel_initializer)),
                kernel_regularizer=self.kernel_regularizer,
                dtype=matmul_policy(matmul_dtype),
                name=f"dense_{i}",
            )
            for i, u in enumerate(units)
        ]
        self.pruners = [AdaSparsePruner(**self.pruner, name=f"pruner_{i}") for i in range(len(units))]
        self.dropouts = [keras.layers.Dropout(self.dropout) for _ in units] if self.dropout else []

    def call(self, inputs: Sequence[tf.Tensor], training: bool | None = None) -> tf.Tensor:
        h, domain_emb = inputs
        for i, (dense, pruner) in enumerate(zip(self.dense_layers, self.pruners, strict=True)):
            h = pruner([dense(h), domain_emb])
            if self.dropouts:
                h = self.dropouts[i](h, training=training)
        return h

    def compute_output_shape(self, input_shape: Sequence[tf.TensorShape]) -> tf.TensorShape:
        return tf.TensorShape(input_shape[0])[:-1].concatenate([self.units[-1]])

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "dropout": self.dropout,
            "pruner": self.pruner,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "matmul_dtype": self.matmul_dtype,
        }


def find_pruners(model: keras.layers.Layer) -> list[AdaSparsePruner]:
    """All ``AdaSparsePruner`` layers inside ``model`` (nested blocks included), in creation order."""
    return [m for m in model._flatten_layers(include_self=True) if isinstance(m, AdaSparsePruner)]


@dataclass(frozen=True)
class SparsityReport:
    """Fraction of pruned units per pruner layer and per domain.

    Attributes:
      layers: pruner paths (``block/pruner_0``), rows of ``matrix``.
      domains: domain ids seen, columns of ``matrix`` (sorted).
      matrix: (len(layers), len(domains)) mean fraction of pruned units of each layer on each domain's rows.
      per_layer: layer path -> fraction of pruned units over all rows.
      rows: domain id -> number of rows seen.
      unit_keep: per layer, (len(domains), units) share of each domain's rows on which each unit is kept
        (the domains' sub-networks: similar domains should keep similar units).
    """

    layers: list[str]
    domains: list[int]
    matrix: np.ndarray
    per_layer: dict[str, float]
    rows: dict[int, int]
    unit_keep: list[np.ndarray]


def _pruner_paths(model: keras.layers.Layer) -> dict[int, str]:
    """Maps id(pruner) to a readable path such as ``adasparse_mlp/pruner_1``."""
    paths: dict[int, str] = {}

    def walk(layer: keras.layers.Layer, prefix: str) -> None:
        for child in layer._flatten_layers(include_self=False, recursive=False):
            path = f"{prefix}{child.name}"
            if isinstance(child, AdaSparsePruner):
                paths.setdefault(id(child), path)
            walk(child, path + "/")

    walk(model, "")
    return paths


def sparsity_report(model: keras.layers.Layer, batches: Iterable[tuple[Any, Any]]) -> SparsityReport:
    """Measures per-layer and per-domain sparsity of every pruning ``AdaSparsePruner`` in ``model``.

    Runs ``model(inputs, training=False)`` eagerly on each batch and counts pruned units (``pi == 0``,
    independent of zeros produced by the activation).

    Args:
      model: a Keras model or layer containing pruners (scaling pruners are skipped: they never prune).
      batches: iterable of ``(inputs, domain_ids)``; ``domain_ids`` is a 1-D int array aligned with the
        batch rows (e.g. the scenario index). Pass ``[(x, d)]`` for a single batch.

    Returns:
      A ``SparsityReport``.

    Raises:
      ValueError: if the model has no pruning pruner or a batch's domain ids do not match its rows.
    """
    paths = _pruner_paths(model)
    pruners = [p for p in find_pruners(model) if p.prunes]
    if not pruners:
        raise ValueError("sparsity_report: the model has no AdaSparsePruner of form fusion/binarization.")
    kept: dict[tuple[int, int], np.ndarray] = {}  # (layer index, domain) -> per-unit count of rows kept
    rows: dict[int, int] = {}
    for p in pruners:
        p.record_masks = True
    try:
        for inputs, domain_ids in batches:
            for p in pruners:
                p.last_keep = None
            model(inputs, training=False)
            domains = np.asarray(domain_ids).reshape(-1).astype(np.int64)
            for i, p in enumerate(pruners):
                if p.last_keep is None:
                    raise ValueError(f"sparsity_report: pruner {paths.get(id(p), p.name)} did not run eagerly.")
                keep = p.last_keep.numpy()
                if keep.shape[0] != domains.shape[0]:
                    raise ValueError(
                        f"sparsity_report: {domains.shape[0]} domain ids for a batch of {keep.shape[0]} rows."
                    )
                for d in np.unique(domains):
                    kept[(i, int(d))] = kept.get((i, int(d)), 0.0) + keep[domains == d].sum(axis=0)
            for d, n in zip(*np.unique(domains, return_counts=True), strict=True):
                rows[int(d)] = rows.get(int(d), 0) + int(n)
    finally:
        for p in pruners:
            p.record_masks = False
            p.last_keep = None
    domains_sorted = sorted(rows)
    unit_keep = [np.stack([kept[(i, d)] / rows[d] for d in domains_sorted]) for i in range(len(pruners))]
    matrix = np.stack([1.0 - u.mean(axis=1) for u in unit_keep])
    names = [paths.get(id(p), p.name) for p in pruners]
    weights = np.array([rows[d] for d in domains_sorted]) / sum(rows.values())
    per_layer = {name: float(matrix[i] @ weights) for i, name in enumerate(names)}
    return SparsityReport(names, domains_sorted, matrix, per_layer, rows, unit_keep)
