"""``tfads meta-train`` and ``tfads adapt``: a MAML meta-initialisation from a trained model, and its k-shot
adaptation to a new segment; both write normal model dirs (export, evaluate and serve them as any other)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfads.core.configtools import from_dict
from tfads.core.manifest import Manifest, load_manifest
from tfads.maml import MamlConfig, Rows, adapt, load_rows, meta_train
from tfads.model_io import json_plain, read_saved_experiment, save_trained_model
from tfads.models import build_model, compile_model
from tfads.train import resolve_checkpoint

log = logging.getLogger(__name__)
MAML_RECORD = "maml.json"  # the meta-training settings and curve, beside the model


def compiled_model(model_dir: str, manifest: Manifest, learning_rate: float) -> tuple[keras.Model, object]:
    """The model of ``model_dir`` rebuilt on ``manifest`` with its weights, compiled for its losses."""
    config = read_saved_experiment(model_dir)
    keras.utils.set_random_seed(config.train.seed)
    model = build_model(manifest, config.model)
    model.load_weights(resolve_checkpoint(model_dir)).expect_partial()
    compile_model(model, config.model, learning_rate, "adam")
    return model, config


def read_maml_config(model_dir: str) -> MamlConfig | None:
    """The settings a `tfads meta-train` run saved in ``model_dir`` (None for any other model)."""
    path = os.path.join(model_dir, MAML_RECORD)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return from_dict(MamlConfig, json.load(f)["config"], where=path)


def run_meta_train(
    model_dir: str, data: str, out: str, cfg: MamlConfig, *, exclude: list[str] = (), progress: bool = True
) -> dict:
    """Meta-train the model of ``model_dir`` over the train split's segments (minus ``exclude``) into ``out``."""
    manifest = load_manifest(data)
    model, config = compiled_model(model_dir, manifest, cfg.outer_lr)
    rows = load_rows(manifest, "train", cfg.segment_field)
    if exclude:
        rows = rows.take(np.flatnonzero(~np.isin(rows.segment, list(exclude))))
    record = meta_train(model, rows, cfg, progress=progress)
    save_trained_model(model, out, manifest.path, config)
    record.update(init_from=model_dir, excluded=list(exclude))
    with tf.io.gfile.GFile(os.path.join(out, MAML_RECORD), "w") as f:
        json.dump(record, f, indent=2, default=json_plain)
    curve = record["query_loss"]
    tenth = max(1, len(curve) // 10)
    log.info("meta-trained %s: query loss %.5f (first tenth) -> %.5f (last tenth)", out,
             np.mean(curve[:tenth]), np.mean(curve[-tenth:]))
    return record


@dataclass(frozen=True)
class Adaptation:
    """What :func:`run_adapt` did: the segment, the rows it adapted on, their time range and the output."""

    segment: str
    rows: int
    first_time: int
    last_time: int
    model_path: str


def segment_shots(rows: Rows, segment: str, shots: int) -> Rows:
    """The first ``shots`` rows of ``segment`` in time order (what a launch has seen first).

    Raises:
      ValueError: when the segment has no rows in the split.
    """
    mine = rows.of_segment(segment)
    if not len(mine):
        raise ValueError(f"adapt: segment {segment!r} has no rows in the split")
    return mine.take(np.arange(min(shots, len(mine))))


def run_adapt(
    model_dir: str, data: str, out: str, *, segment: str, shots: int, split: str = "train",
    cfg: MamlConfig | None = None,
) -> Adaptation:
    """Adapt ``model_dir`` to ``segment``'s first ``shots`` rows of ``split`` with the inner loop (``cfg``,
    else the model's meta-training settings); write the model to ``out``.

    Raises:
      ValueError: when ``model_dir`` has no meta-training settings and ``cfg`` is not given."""
    cfg = cfg or read_maml_config(model_dir)
    if cfg is None:
        raise ValueError(f"adapt: {model_dir} is not a `tfads meta-train` output; give the segment field")
    manifest = load_manifest(data)
    model, config = compiled_model(model_dir, manifest, cfg.outer_lr)
    shots_rows = segment_shots(load_rows(manifest, split, cfg.segment_field), segment, shots)
    adapt(model, shots_rows, cfg)
    path = save_trained_model(model, out, manifest.path, config)
    with tf.io.gfile.GFile(os.path.join(out, "adaptation.json"), "w") as f:
        json.dump({"from": model_dir, "segment": segment, "rows": len(shots_rows), "split": split,
                   "config": dataclasses.asdict(cfg)}, f, indent=2)
    return Adaptation(segment, len(shots_rows), int(shots_rows.time.min()), int(shots_rows.time.max()), path)
