"""Backbones: map the stacked embeddings ``x0`` (and the domain embedding) to the representation the towers read."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
import tf_keras as keras

from tfads.core.experiment import ModelConfig
from tfads.features import EmbeddedFeatures
from tfads.layers import PLE, AdaSparseMLP, AdaSparsePruner, CrossMix, LowPrecisionCross, MMoE, StarTower, matmul_policy
from tfads.layers.low_precision_cross import MatmulDtype


def mlp(
    x: tf.Tensor, units: list[int], name: str, dropout: float = 0.0, matmul_dtype: MatmulDtype = "float32"
) -> tf.Tensor:
    """Plain ReLU MLP; ``matmul_dtype="bfloat16"`` gives its Dense layers the mixed_bfloat16 policy."""
    policy = matmul_policy(matmul_dtype)
    for i, u in enumerate(units):
        x = keras.layers.Dense(u, activation="relu", name=f"{name}_dense_{i}", dtype=policy)(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"{name}_dropout_{i}")(x)
    return x


def deep(x: tf.Tensor, feats: EmbeddedFeatures, cfg: ModelConfig, name: str = "deep") -> tf.Tensor:
    """The deep part: an MLP, with AdaSparse domain-aware pruners after each layer when enabled."""
    a = cfg.adasparse
    if not a.enabled:
        return mlp(x, cfg.deep_units, name, cfg.dropout, cfg.matmul_dtype)
    block = AdaSparseMLP(
        units=list(cfg.deep_units),
        dropout=cfg.dropout,
        pruner=pruner_kwargs(cfg),
        matmul_dtype=cfg.matmul_dtype,
        name=f"{name}_adasparse",
    )
    return block([x, feats.domain])


def cross_network(x0: tf.Tensor, cfg: ModelConfig) -> tf.Tensor:
    """DCNv2 cross layers (tfrs Cross, full or low rank; bfloat16 matmuls with ``matmul_dtype``) or DCN-Mix."""
    c = cfg.cross
    x = x0
    for i in range(c.layers):
        if c.num_experts > 0:
            layer = CrossMix(num_experts=c.num_experts, low_rank=c.expert_rank, name=f"cross_mix_{i}")
        else:  # tfrs Cross; exactly tfrs' own layer when matmul_dtype is float32
            layer = LowPrecisionCross(matmul_dtype=cfg.matmul_dtype, projection_dim=c.projection_dim, name=f"cross_{i}")
        x = layer(x0, x)
    return x


def backbone(
    x0: tf.Tensor, feats: EmbeddedFeatures, cfg: ModelConfig, tasks: Sequence[str] = ()
) -> tf.Tensor | dict[str, tf.Tensor]:
    """The representation the ESMM towers read: one tensor all of them share, or (``mmoe`` / ``ple`` with
    ``moe.use: tasks``) a tensor per task of ``tasks``."""
    x_in = x0
    if cfg.adasparse.enabled and cfg.adasparse.on_embedding:
        x_in = _prune_embedding(x0, feats, cfg)
    if cfg.backbone == "dnn":
        return deep(x_in, feats, cfg)
    if cfg.backbone == "dcnv2":
        crossed = cross_network(x_in, cfg)
        if cfg.cross.structure == "stacked":
            return deep(crossed, feats, cfg)
        return keras.layers.Concatenate(name="cross_deep")([crossed, deep(x_in, feats, cfg)])
    if cfg.backbone == "star":
        tower = StarTower(units=list(cfg.deep_units), num_domains=feats.num_domains, name="star_tower")
        return tower([x_in, feats.domain_index])
    if cfg.backbone == "shared_bottom":
        return mlp(x_in, cfg.deep_units, "shared_bottom", cfg.dropout)
    if cfg.backbone in ("mmoe", "ple"):
        return mixture_of_experts(x_in, feats, cfg, tasks)
    raise ValueError(f"unknown backbone {cfg.backbone!r}")


def mixture_of_experts(
    x: tf.Tensor, feats: EmbeddedFeatures, cfg: ModelConfig, tasks: Sequence[str]
) -> tf.Tensor | dict[str, tf.Tensor]:
    """MMoE or PLE on ``x`` (docs/methods/models.md "MMoE and PLE"): with ``moe.use: tasks`` one group per task
    (a dict task -> tensor); with ``scenes`` one group for every task, its gates reading the domain
    embedding or, for ``gate_input: features``, weighted per scene by the row's domain index."""
    m = cfg.moe
    groups = len(tasks) if m.use == "tasks" else 1
    if groups < 1:
        raise ValueError("moe.use: tasks needs the tasks the towers predict")
    gate_input = {"features": "input", "domain": "context", "features_domain": "both"}[m.gate_input]
    num_domains = feats.num_domains if m.use == "scenes" and m.gate_input == "features" else 0
    extra = ([feats.domain] if gate_input != "input" else []) + ([feats.domain_index] if num_domains else [])
    common = {"gate_input": gate_input, "num_domains": num_domains, "name": cfg.backbone}
    if cfg.backbone == "mmoe":
        layer = MMoE(m.num_experts, m.expert_units, num_gates=groups, **common)
    else:
        layer = PLE(groups, m.specific_experts, m.shared_experts, m.expert_units, num_levels=m.levels, **common)
    outputs = layer([x, *extra] if extra else x)
    return dict(zip(tasks, outputs, strict=True)) if m.use == "tasks" else outputs[0]


def pruner_kwargs(cfg: ModelConfig) -> dict:
    """AdaSparsePruner arguments from the config."""
    a = cfg.adasparse
    return {
        "form": a.form,
        "eps": a.eps,
        "beta": a.beta,
        "alpha_init": a.alpha_start,
        "r_min": a.r_min,
        "r_max": a.r_max,
        "lambda_init": a.lambda_start,
        "hidden_units": a.pruner_hidden_units,
        "pruner_input": a.pruner_input,
    }


def _prune_embedding(x0: tf.Tensor, feats: EmbeddedFeatures, cfg: ModelConfig) -> tf.Tensor:
    return AdaSparsePruner(**pruner_kwargs(cfg), name="embedding_pruner")([x0, feats.domain])
