"""Backbones: map the stacked embeddings ``x0`` (and the domain embedding) to a shared representation."""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from tfads.core.experiment import ModelConfig
from tfads.features import EmbeddedFeatures
from tfads.layers import AdaSparseMLP, AdaSparsePruner, CrossMix, LowPrecisionCross, StarTower, matmul_policy
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


def backbone(x0: tf.Tensor, feats: EmbeddedFeatures, cfg: ModelConfig) -> tf.Tensor:
    """The shared representation the ESMM towers read."""
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
    raise ValueError(f"unknown backbone {cfg.backbone!r}")


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
