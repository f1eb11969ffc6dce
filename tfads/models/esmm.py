"""ESMM heads over a shared backbone: pCTR, pCVR and pCTCVR = pCTR * pCVR."""

from __future__ import annotations

import dataclasses
import logging
import math

import tensorflow as tf
import tf_keras as keras

from tfads.core.experiment import ModelConfig
from tfads.features import derive_features, embed_features, feature_inputs
from tfads.sequences import embed_histories
from tfads.layers.heri import HeriTowers
from tfads.layers.low_precision_cross import resolve_matmul_dtype
from tfads.core.manifest import Manifest
from tfads.core.names import CTCVR, CTR, CVR
from tfads.models.backbones import backbone, mlp
from tfads.optimizers import make_optimizer

log = logging.getLogger(__name__)
HERI_LAYER = "heri"  # the HeriTowers layer of a model with model.heri enabled


def _logit(h: tf.Tensor, name: str, base_rate: float) -> tf.Tensor:
    """A task's logit; its bias starts at the base rate's logit so training starts calibrated."""
    rate = min(max(base_rate, 1e-4), 1 - 1e-4)
    init = keras.initializers.Constant(math.log(rate / (1 - rate)))
    return keras.layers.Dense(1, bias_initializer=init, name=f"{name}_logit")(h)


def _heri_towers(reps: dict[str, tf.Tensor], cfg: ModelConfig) -> dict[str, tf.Tensor]:
    """With ``heri`` enabled and both towers, the AutoHERI towers' outputs (the CVR tower reading the CTR
    tower's layers through its edges); else ``{}`` (plain towers)."""
    heri = cfg.heri
    if not heri.enabled:
        return {}
    if set(reps) != {CTR, CVR}:
        log.info("model.heri is enabled, but the data has no conversion label: plain towers, no AutoHERI edges")
        return {}
    layer = HeriTowers(
        cfg.tower_units, mode=heri.mode, edges=heri.edges, entropy_weight=heri.entropy_weight, name=HERI_LAYER
    )
    ctr, cvr = layer([reps[CTR], reps[CVR]])
    return {CTR: ctr, CVR: cvr}


def build_model(manifest: Manifest, cfg: ModelConfig) -> keras.Model:
    """Build the model: raw fields and user histories in (derived features are computed inside), probabilities
    (batch, 1) out for the heads the labels train: ``{"ctr", "cvr", "ctcvr"}`` (ESMM) with a conversion label,
    ``{"ctr"}`` for click-only data.

    STAR and shared-bottom add a per-domain logit (STAR's auxiliary network; shared-bottom's
    domain-specific head) to every tower. MMoE and PLE with ``moe.use: tasks`` give each tower its own
    representation (its gate's mixture). With ``heri`` enabled (and a conversion label) the towers are one
    :class:`~tfads.layers.heri.HeriTowers` layer named ``heri``.
    """
    cfg = dataclasses.replace(cfg, matmul_dtype=resolve_matmul_dtype(cfg.matmul_dtype))
    inputs = feature_inputs(manifest)
    feats = embed_features(
        derive_features(inputs, manifest),
        manifest,
        cfg.embedding_dim,
        numeric_encoding=cfg.numeric_encoding,
        fused=cfg.fused_embeddings,
        init_std=cfg.embedding_init_std,
    )
    feats.parts.extend(embed_histories(inputs, manifest, feats, cfg.history))
    towers = (CTR, CVR) if manifest.has_conversion else (CTR,)
    h = backbone(feats.stacked(), feats, cfg, towers)
    logits = {}
    train_stats = manifest.data["splits"]["train"]
    reps = {task: h[task] if isinstance(h, dict) else h for task in towers}  # a backbone may give each its own
    heri = _heri_towers(reps, cfg)
    for task in towers:
        hidden = heri[task] if heri else mlp(reps[task], cfg.tower_units, f"{task}_tower")
        logit = _logit(hidden, task, float(train_stats.get(task) or 0.05))
        if cfg.backbone in ("star", "shared_bottom"):
            aux = keras.layers.Dense(1, name=f"{task}_domain_logit")(mlp(feats.domain, [16], f"{task}_domain_net"))
            logit = keras.layers.Add(name=f"{task}_logit_total")([logit, aux])
        logits[task] = logit
    outputs = {task: keras.layers.Activation("sigmoid", name=task)(logits[task]) for task in towers}
    if manifest.has_conversion:
        outputs[CTCVR] = keras.layers.Multiply(name=CTCVR)([outputs[CTR], outputs[CVR]])
    return keras.Model(inputs=inputs, outputs=outputs, name=f"tfads_{cfg.backbone}")


@keras.utils.register_keras_serializable(package="tfads")
class LogitAUC(keras.metrics.AUC):
    """Streaming ROC AUC with ``num_thresholds`` thresholds evenly spaced in **logit** space over
    ``logit_range``: ad probabilities sit far below Keras' default linear thresholds' 0.005 spacing,
    which would lump most predictions into one bucket.

    Predictions are mapped to ``(logit(p) - lo) / (hi - lo)`` (clipped to [0, 1]) and counted against
    evenly spaced thresholds there, which takes Keras' bucketed O(batch) path instead of comparing
    every prediction with every threshold (O(batch x thresholds); that cost 10% of a training step).
    """

    def __init__(
        self, num_thresholds: int = 1000, logit_range: tuple[float, float] = (-12.0, 6.0), name: str = "auc", **kwargs
    ) -> None:
        super().__init__(num_thresholds=num_thresholds, name=name, **kwargs)
        lo, hi = (float(v) for v in logit_range)
        if not lo < hi:
            raise ValueError(f"LogitAUC: logit_range must be increasing, got {logit_range}")
        self.logit_range = (lo, hi)

    def update_state(self, y_true, y_pred, sample_weight=None):
        lo, hi = self.logit_range
        p = tf.clip_by_value(tf.cast(y_pred, tf.float32), 1e-7, 1.0 - 1e-7)
        z = (tf.math.log(p) - tf.math.log1p(-p) - lo) / (hi - lo)
        return super().update_state(y_true, tf.clip_by_value(z, 0.0, 1.0), sample_weight)

    def get_config(self) -> dict:
        return {**super().get_config(), "logit_range": list(self.logit_range)}


def loss_weights(cfg: ModelConfig) -> dict[str, float]:
    """Each head's weight in the ESMM loss: CTR and CTCVR 1, CVR ``cvr_loss_weight`` with the direct CVR loss."""
    return {CTR: 1.0, CTCVR: 1.0, CVR: cfg.cvr_loss_weight if cfg.direct_cvr_loss else 0.0}


def compile_model(
    model: keras.Model,
    cfg: ModelConfig,
    learning_rate: float,
    optimizer: str = "lazy_adam",
    *,
    steps_per_execution: int = 1,
) -> None:
    """ESMM losses: CE(click, pCTR) + CE(click & conversion, pCTCVR) over all impressions, plus an
    optional direct CE(conversion, pCVR) on clicked samples (its sample weight is the click); a
    click-only model (outputs ``ctr`` alone) has the CTR loss only.

    ``steps_per_execution`` runs that many training steps per call into the compiled graph (fewer
    Python round trips; batch callbacks then run once per call)."""
    bce = keras.losses.BinaryCrossentropy()
    weights = loss_weights(cfg)
    heads = [name for name in (CTR, CVR, CTCVR) if name in model.output_names]
    # Keras prefixes a metric with its head's name only when the model has several outputs: a click-only
    # model names its AUC ``ctr_auc`` itself, so early stopping and the history read ``val_ctr_auc`` always.
    auc_name = "auc" if len(heads) > 1 else f"{CTR}_auc"
    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate),
        loss={head: bce for head in heads},
        loss_weights={head: weights[head] for head in heads},
        weighted_metrics={head: [LogitAUC(name=auc_name)] for head in heads if head != CVR},
        steps_per_execution=steps_per_execution,
    )
