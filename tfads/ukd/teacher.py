"""UKD's click-adaptive teacher: two pCVR heads trained on clicked rows and a click / non-click
discriminator behind a gradient reversal, all on one shared representation (docs/methods/conversion.md "UKD")."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import tensorflow as tf
import tf_keras as keras
import yaml

from tfads.core.experiment import ExperimentConfig, ModelConfig
from tfads.core.manifest import Manifest, load_manifest
from tfads.core.names import CTR, CVR
from tfads.features import derive_features, embed_features, feature_inputs
from tfads.layers.gradient_reversal import GradientReversal
from tfads.layers.low_precision_cross import resolve_matmul_dtype
from tfads.model_io import CHECKPOINT_SUBDIR, EXPERIMENT, FINAL_CHECKPOINT, read_saved_experiment
from tfads.models.backbones import backbone, mlp
from tfads.models.esmm import LogitAUC
from tfads.optimizers import make_optimizer
from tfads.sequences import embed_histories
from tfads.train import adasparse_callbacks, execution_steps, train_valid_datasets, validation_periods
from tfads.ukd.config import UkdConfig

CVR_HEADS = ("cvr_a", "cvr_b")  # two pCVR heads: their disagreement is the pseudo labels' uncertainty
DISCRIMINATOR = "clicked"  # the discriminator's head: was the row clicked?
MONITOR = f"val_{CVR_HEADS[0]}_auc"  # early stopping: pCVR AUC on the clicked validation rows
TEACHER_RECORD = "teacher.json"


def require_conversion(manifest: Manifest) -> None:
    """Raise ValueError unless ``manifest``'s data has a conversion label (UKD distils pCVR)."""
    if not manifest.has_conversion:
        raise ValueError(f"UKD needs a conversion label; {manifest.path} is click-only data "
                         f"(labels {manifest.labels})")


def _logit(rate: float) -> float:
    rate = min(max(rate, 1e-4), 1 - 1e-4)
    return math.log(rate / (1 - rate))


def build_teacher(manifest: Manifest, cfg: ModelConfig, ukd: UkdConfig) -> keras.Model:
    """The teacher: the experiment's feature layer and backbone, then two pCVR towers (``cvr_a``, ``cvr_b``)
    and, behind a ``GradientReversal``, the discriminator ``clicked``; probabilities (batch, 1) out.

    Raises:
      ValueError: the manifest has no conversion label.
    """
    require_conversion(manifest)
    cfg = dataclasses.replace(cfg, matmul_dtype=resolve_matmul_dtype(cfg.matmul_dtype))
    inputs = feature_inputs(manifest)
    feats = embed_features(derive_features(inputs, manifest), manifest, cfg.embedding_dim,
                           numeric_encoding=cfg.numeric_encoding, fused=cfg.fused_embeddings,
                           init_std=cfg.embedding_init_std)
    feats.parts.extend(embed_histories(inputs, manifest, feats, cfg.history))
    h = backbone(feats.stacked(), feats, cfg, (CVR,))
    h = h[CVR] if isinstance(h, dict) else h  # one representation: the one the CVR tower of MMoE / PLE reads
    cvr_bias = keras.initializers.Constant(_logit(float(manifest.data["splits"]["train"].get(CVR) or 0.05)))
    outputs = {}
    for head in CVR_HEADS:
        logit = keras.layers.Dense(1, bias_initializer=cvr_bias, name=f"{head}_logit")(
            mlp(h, cfg.tower_units, f"{head}_tower"))
        outputs[head] = keras.layers.Activation("sigmoid", name=head)(logit)
    reversed_h = GradientReversal(ukd.adversarial_scale, name="gradient_reversal")(h)
    logit = keras.layers.Dense(1, name=f"{DISCRIMINATOR}_logit")(
        mlp(reversed_h, list(ukd.discriminator_units), "discriminator"))
    outputs[DISCRIMINATOR] = keras.layers.Activation("sigmoid", name=DISCRIMINATOR)(logit)
    return keras.Model(inputs=inputs, outputs=outputs, name="ukd_teacher")


def teacher_heads(teacher: keras.Model) -> keras.Model:
    """The teacher's two pCVR heads alone (no discriminator): what labels the unclicked rows."""
    return keras.Model(teacher.input, [teacher.get_layer(head).output for head in CVR_HEADS], name="ukd_teacher_cvr")


def teacher_targets(manifest: Manifest):
    """A map from the input pipeline's ``(features, labels, sample_weights)`` (``tfads.data.to_targets``) to
    the teacher's: both pCVR heads learn the conversion on clicked rows, the discriminator the click on all.

    The weights are normalised so each loss is a mean over its own rows: the pCVR heads' by the click rate
    (CE averaged over clicked rows), the discriminator's so clicked and unclicked rows carry half the loss
    each (it compares two populations; it is not a click model).
    """
    ctr = min(max(float(manifest.data["splits"]["train"].get(CTR) or 0.05), 1e-4), 1 - 1e-4)

    def to_teacher(features, labels, weights):
        click, weight = labels[CTR][:, 0], weights[CTR]
        cvr_weight = weight * click / ctr
        domain_weight = weight * (click * 0.5 / ctr + (1 - click) * 0.5 / (1 - ctr))
        out_labels = {head: labels[CVR] for head in CVR_HEADS}
        out_weights = {head: cvr_weight for head in CVR_HEADS}
        out_labels[DISCRIMINATOR], out_weights[DISCRIMINATOR] = labels[CTR], domain_weight
        return features, out_labels, out_weights

    return to_teacher


def compile_teacher(model: keras.Model, learning_rate: float, optimizer: str, *, steps_per_execution: int = 1) -> None:
    """Cross-entropy on every head (weights from :func:`teacher_targets`), a logit-space AUC per head."""
    heads = (*CVR_HEADS, DISCRIMINATOR)
    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate),
        loss={head: keras.losses.BinaryCrossentropy() for head in heads},
        weighted_metrics={head: [LogitAUC(name="auc")] for head in heads},
        steps_per_execution=steps_per_execution,
    )


def train_teacher(
    config: ExperimentConfig, manifest: Manifest, ukd: UkdConfig, *, verbose: int | str = "auto"
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train the teacher with the experiment's training settings (batch, optimizer, rate, validations per
    epoch, patience) for at most ``ukd.teacher_epochs`` epochs, early-stopping on the first head's pCVR AUC
    over the clicked validation rows and keeping the best validation's weights; returns (model, history)."""
    tc = dataclasses.replace(config.train, epochs=ukd.teacher_epochs or config.train.epochs)
    keras.utils.set_random_seed(tc.seed)
    train_ds, valid_ds, steps = train_valid_datasets(tc, manifest)
    fit_epochs, fit_steps = validation_periods(tc, steps)
    steps_per_execution, validation_steps = execution_steps(tc, manifest, fit_steps)
    model = build_teacher(manifest, config.model, ukd)
    compile_teacher(model, tc.learning_rate, tc.optimizer, steps_per_execution=steps_per_execution)
    to_teacher = teacher_targets(manifest)
    stop = keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=tc.early_stopping_patience,
                                         restore_best_weights=True)
    history = model.fit(
        train_ds.map(to_teacher),
        validation_data=valid_ds.map(to_teacher),
        epochs=fit_epochs,
        steps_per_epoch=fit_steps,
        validation_steps=validation_steps,
        callbacks=[stop, *adasparse_callbacks(config.model.adasparse, steps_per_epoch=steps, model=model)],
        verbose=verbose,
    )
    return model, {k: [float(v) for v in vals] for k, vals in history.history.items()}


def save_teacher(model: keras.Model, teacher_dir: str, config: ExperimentConfig, record: dict[str, Any]) -> None:
    """Write ``checkpoints/final`` (weights), ``experiment.yaml`` and ``teacher.json`` (``record``: the
    manifest, the UKD settings, the reference uncertainty, the history) under ``teacher_dir``.

    Not a model dir of ``tfads evaluate``: the teacher has no pCTR head; :func:`load_teacher` rebuilds it."""
    tf.io.gfile.makedirs(teacher_dir)
    model.save_weights(os.path.join(teacher_dir, CHECKPOINT_SUBDIR, FINAL_CHECKPOINT))
    with tf.io.gfile.GFile(os.path.join(teacher_dir, EXPERIMENT), "w") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)
    with tf.io.gfile.GFile(os.path.join(teacher_dir, TEACHER_RECORD), "w") as f:
        json.dump(record, f, indent=2)


def load_teacher(teacher_dir: str) -> tuple[keras.Model, dict[str, Any]]:
    """The teacher :func:`save_teacher` wrote, rebuilt on its manifest with its weights, and its record."""
    path = os.path.join(teacher_dir, TEACHER_RECORD)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path}: no UKD teacher record (is {teacher_dir} a `tfads ukd` teacher/?)")
    with tf.io.gfile.GFile(path) as f:
        record = json.load(f)
    ukd = UkdConfig(**{**record["ukd"], "discriminator_units": tuple(record["ukd"]["discriminator_units"])})
    model = build_teacher(load_manifest(record["manifest"]), read_saved_experiment(teacher_dir).model, ukd)
    model.load_weights(os.path.join(teacher_dir, CHECKPOINT_SUBDIR, FINAL_CHECKPOINT)).expect_partial()
    return model, record
