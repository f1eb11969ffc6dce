"""``tfads ukd``: train UKD's click-adaptive teacher, then an ESMM student on true and pseudo-conversion labels;
the student is a normal model dir (evaluate, calibrate and export it as any other)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass

import tensorflow as tf

from tfads.core.experiment import ExperimentConfig
from tfads.core.manifest import load_manifest
from tfads.data import make_dataset
from tfads.train import TrainResult, train
from tfads.ukd import (
    UkdConfig,
    pseudo_label_targets,
    reference_uncertainty,
    require_conversion,
    save_teacher,
    teacher_heads,
    train_teacher,
)

log = logging.getLogger(__name__)
TEACHER_SUBDIR, STUDENT_SUBDIR = "teacher", "student"
UKD_RECORD = "ukd.json"  # beside the student's model: its teacher and the UKD settings


@dataclass(frozen=True)
class UkdResult:
    """What :func:`run_ukd` wrote: the teacher dir, the student's model dir (and its training), the
    reference uncertainty ``U_ref`` of the pseudo labels' weights."""

    teacher_dir: str
    student_dir: str
    reference_uncertainty: float
    student: TrainResult


def student_experiment(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with the direct pCVR loss on: the student's ``cvr`` head learns the true labels of the
    clicked rows and the pseudo labels of the unclicked ones (at ``model.cvr_loss_weight``)."""
    return dataclasses.replace(config, model=dataclasses.replace(config.model, direct_cvr_loss=True))


def run_ukd(
    config: ExperimentConfig, data: str, out: str, ukd: UkdConfig | None = None, *, verbose: int | str = "auto"
) -> UkdResult:
    """Train the teacher into ``out/teacher`` and the student into ``out/student`` (a normal model dir).

    The student is ``config``'s model with the direct pCVR loss (:func:`student_experiment`), trained by
    ``tfads.train.train`` with the pseudo labels added to its training batches by the frozen teacher in the
    input pipeline; its early stopping and kept weights follow the training protocol (validation pCTR AUC).

    Raises:
      ValueError: the data has no conversion label.
    """
    ukd = ukd or UkdConfig()
    manifest = load_manifest(data)
    require_conversion(manifest)
    teacher_dir, student_dir = os.path.join(out, TEACHER_SUBDIR), os.path.join(out, STUDENT_SUBDIR)
    teacher, history = train_teacher(config, manifest, ukd, verbose=verbose)
    heads = teacher_heads(teacher)
    train_rows = make_dataset(manifest.split_files("train"), manifest, config.train.batch_size)
    reference = reference_uncertainty(heads, train_rows, ukd.reference_batches)
    save_teacher(teacher, teacher_dir, config, {
        "manifest": os.path.abspath(manifest.path), "ukd": dataclasses.asdict(ukd),
        "reference_uncertainty": reference, "history": history,
    })
    log.info("UKD teacher written to %s (reference uncertainty %.3g); training the student", teacher_dir, reference)
    result = train(student_experiment(config), manifest, student_dir,
                   targets=pseudo_label_targets(heads, reference, ukd), verbose=verbose)
    with tf.io.gfile.GFile(os.path.join(student_dir, UKD_RECORD), "w") as f:
        json.dump({"teacher": os.path.abspath(teacher_dir), "ukd": dataclasses.asdict(ukd),
                   "reference_uncertainty": reference}, f, indent=2)
    return UkdResult(teacher_dir, student_dir, reference, result)
