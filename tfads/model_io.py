"""Save and load trained models as (record, experiment config, weights) so a loaded model is rebuilt
from its manifest exactly as it was trained.

Rebuilding (rather than reviving a Keras SavedModel) matters for export: a revived Keras model keeps
its lookup tables but not their vocabulary files, so a SavedModel written from it would carry no
assets and point at the old model directory. A rebuilt model reads the manifest's vocabulary files,
which TensorFlow then copies into every export's ``assets/``. So a model dir holds no Keras SavedModel
(decision 0010): `tfads export` writes the SavedModel that serves.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import tensorflow as tf
import tf_keras as keras
import yaml

from tfads.calibration import AdaCalib
from tfads.calibration.combined import combined_model
from tfads.core.experiment import ExperimentConfig, experiment_from_dict
from tfads.core.manifest import load_manifest

CHECKPOINT_SUBDIR = "checkpoints"
FINAL_CHECKPOINT = "final"
RECORD = "model.json"
EXPERIMENT = "experiment.yaml"


def save_trained_model(
    model: keras.Model,
    model_dir: str,
    manifest_path: str,
    config: ExperimentConfig,
    *,
    calibration: dict[str, dict[str, Any]] | None = None,
) -> str:
    """Write ``checkpoints/final`` (the kept weights), ``experiment.yaml`` and ``model.json`` (manifest path
    and AdaCalib layer configs, if any): what :func:`load_trained_model` rebuilds the model from. Return
    ``model_dir``."""
    model.save_weights(os.path.join(model_dir, CHECKPOINT_SUBDIR, FINAL_CHECKPOINT))
    with tf.io.gfile.GFile(os.path.join(model_dir, EXPERIMENT), "w") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)
    with tf.io.gfile.GFile(os.path.join(model_dir, RECORD), "w") as f:
        json.dump({"manifest": os.path.abspath(manifest_path), "calibration": calibration}, f, default=json_plain)
    return model_dir


def load_trained_model(model_dir: str, *, float32_matmuls: bool = False) -> keras.Model:
    """The model a `tfads train` / `tfads calibrate` run saved under ``model_dir``.

    Rebuilt from its record (``model.json``: the manifest it was trained on), its experiment config and
    its final weights. ``float32_matmuls`` rebuilds a ``model.matmul_dtype: bfloat16`` model with float32
    matmuls (same weights): what `tfads export` serves, since bfloat16-rounded outputs differ with each
    kernel's summation order.

    Raises:
      FileNotFoundError: ``model_dir`` is not a training output, or the manifest it names is gone.
    """
    record_path = os.path.join(model_dir, RECORD)
    if not tf.io.gfile.exists(record_path):
        raise FileNotFoundError(f"{model_dir}: no trained model here (no {RECORD}; run `tfads train` first)")
    with tf.io.gfile.GFile(record_path) as f:
        record = json.load(f)
    if not tf.io.gfile.exists(record["manifest"]):
        raise FileNotFoundError(f"{model_dir}: the manifest it was trained on, {record['manifest']}, is gone; the "
                                "model is rebuilt from it and its vocabularies: restore the data directory")
    return _rebuild(model_dir, record, float32_matmuls)


def read_saved_experiment(model_dir: str) -> ExperimentConfig:
    """The experiment config a `tfads train` / `tfads calibrate` run saved beside its model.

    Raises:
      FileNotFoundError: ``model_dir`` holds no ``experiment.yaml`` (not a training output).
    """
    path = os.path.join(model_dir, EXPERIMENT)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path}: no experiment.yaml (is {model_dir} a `tfads train` output?)")
    with tf.io.gfile.GFile(path) as f:
        return experiment_from_dict(yaml.safe_load(f), where=path)


def _rebuild(model_dir: str, record: dict[str, Any], float32_matmuls: bool) -> keras.Model:
    from tfads.models import build_model

    config = read_saved_experiment(model_dir)
    model_config = dataclasses.replace(config.model, matmul_dtype="float32") if float32_matmuls else config.model
    model = build_model(load_manifest(record["manifest"]), model_config)
    if record.get("calibration"):

        model = combined_model(model, {t: AdaCalib.from_config(c) for t, c in record["calibration"].items()})
    model.load_weights(os.path.join(model_dir, CHECKPOINT_SUBDIR, FINAL_CHECKPOINT)).expect_partial()
    return model


def json_plain(value: Any) -> Any:
    """JSON fallback for numpy values inside layer configs."""
    return value.tolist() if hasattr(value, "tolist") else str(value)
