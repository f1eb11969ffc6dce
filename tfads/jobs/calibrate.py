"""``tfads calibrate`` core: posterior statistics (Beam), AdaCalib fitting with the base model frozen,
the combined raw + calibrated model, and a side-by-side comparison with the baseline calibrators."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import tf_keras as keras

from tfads import metrics, plots
from tfads.calibration import (
    AdaCalib,
    CalibStats,
    Calibrator,
    HistogramBinning,
    IsotonicCalibrator,
    NeuCalib,
    PerFieldIsotonic,
    PlattScaling,
    TemperatureScaling,
    fit_adacalib,
)
from tfads.calibration.combined import calibrated_tasks, combined_model, task_rows
from tfads.core.configtools import ConfigError
from tfads.core.manifest import Manifest
from tfads.core.names import CTCVR, CTR, CVR, HEAD_LABELS, RAW_SUFFIX

log = logging.getLogger(__name__)
BASELINES = {
    "Platt": PlattScaling,
    "temperature": TemperatureScaling,
    "histogram binning": HistogramBinning,
    "isotonic": IsotonicCalibrator,
    "per-field isotonic": PerFieldIsotonic,
    "NeuCalib": NeuCalib,
}


def beam_calibration_stats(
    base_model: keras.Model, manifest: Manifest, work_dir: str, beam_args: Sequence[str] = (),
    fields: Sequence[str] = (),
) -> dict[str, CalibStats]:
    """Score the calib split with the frozen base model inside Beam and read back the statistics.

    The base model is exported once (the Beam job loads SavedModels with a ``predict_examples``
    signature, exactly as it would on Dataflow); returns ``{task: stats}`` for each calibrated head.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_jobs import calibration_stats
    from beam_jobs.options import direct_options
    from serving.export import export_model

    shutil.rmtree(work_dir, ignore_errors=True)  # scratch space of this job only
    base_path = export_model(base_model, manifest, os.path.join(work_dir, "base_export"), version=1)
    stats_dir = os.path.join(work_dir, "stats")
    options = PipelineOptions(list(beam_args)) if beam_args else direct_options()
    paths = calibration_stats.compute_stats(base_path, manifest, stats_dir, options, fields=fields)
    return {task: CalibStats.read(path) for task, path in zip(calibrated_tasks(base_model.output_names), paths,
                                                              strict=True)}


HOLDOUT = "calib_holdout"  # the split `--holdout` makes of the calib split's last shard files
EVALUATIONS = {HOLDOUT: "held-out calib rows", "test": "test day"}


def _task_rows(frame: pd.DataFrame, task: str) -> pd.DataFrame:
    return frame[task_rows(frame, task)]


def heads_of(frame: pd.DataFrame) -> list[str]:
    """The heads a scored frame holds: ``ctr``, and ``cvr`` and ``ctcvr`` for ESMM."""
    return [task for task in (CTR, CVR, CTCVR) if task in frame]


def fit_calibration_layers(
    calib: pd.DataFrame, stats: dict[str, CalibStats], fields: Sequence[str], *, epochs: int = 5, seed: int = 0
) -> dict[str, AdaCalib]:
    """One AdaCalib layer per calibrated head (``ctr``; ``cvr`` for ESMM), trained on the base model's
    calib-split predictions (columns: the heads, the labels by role, the fields)."""
    layers = {}
    for task in calibrated_tasks(heads_of(calib)):
        label, _ = HEAD_LABELS[task]
        rows = _task_rows(calib, task)
        layers[task] = fit_adacalib(
            stats[task],
            rows[task].to_numpy(),
            rows[label].to_numpy(),
            {f: rows[f].to_numpy() for f in fields},
            epochs=epochs,
            seed=seed,
        )
    return layers


def fit_baselines(calib: pd.DataFrame, field: str) -> dict[str, dict[str, Calibrator]]:
    """Every baseline calibrator fitted per calibrated head on the base model's calib predictions:
    ``{task: {name: calibrator}}``; per-field baselines use ``field``."""
    fitted = {}
    for task in calibrated_tasks(heads_of(calib)):
        label, _ = HEAD_LABELS[task]
        rows = _task_rows(calib, task)
        fitted[task] = {name: cls().fit(rows[task].to_numpy(), rows[label].to_numpy(), rows[field].to_numpy())
                        for name, cls in BASELINES.items()}
    return fitted


def compare(
    test: pd.DataFrame,
    baselines: dict[str, dict[str, Calibrator]],
    *,
    fields: Sequence[str],
    task: str = CTR,
    report_fields: Sequence[str] = (),
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Metrics of ``task`` on the evaluation rows ``test``: no calibration, each baseline and AdaCalib.

    ``test`` must come from the combined model (columns ``<head>`` and ``<head>_raw``); ``baselines`` from
    :func:`fit_baselines`. pCTCVR is served as calibrated pCTR x calibrated pCVR
    (:func:`tfads.calibration.combined.combined_model`), so a baseline's pCTCVR is the product of its own
    pCTR and pCVR. Per-field baselines use ``fields[0]``; Field-RCE / Field-ECE are reported for ``fields``
    and ``report_fields``. Returns (rows for :func:`tfads.metrics.metrics_table`, predictions per method on
    the task's rows).
    """
    label, _ = HEAD_LABELS[task]
    test = _task_rows(test, task)
    field = test[fields[0]].to_numpy()
    preds = {"uncalibrated": test[task + RAW_SUFFIX].to_numpy()}
    for name in BASELINES:
        if task == CTCVR:
            preds[name] = np.prod([baselines[t][name].predict(test[t + RAW_SUFFIX].to_numpy(), field)
                                   for t in (CTR, CVR)], axis=0)
        else:
            preds[name] = baselines[task][name].predict(preds["uncalibrated"], field)
    preds["AdaCalib"] = test[task].to_numpy()
    y = test[label].to_numpy()
    truth = f"true_{task}"
    true_p = test[truth].to_numpy() if truth in test and test[truth].notna().all() else None
    by_field = {f: test[f].astype(str).to_numpy() for f in dict.fromkeys([*fields, *report_fields]) if f in test}
    rows = {name: metrics.summarize(y, p, field=by_field, true_p=true_p) for name, p in preds.items()}
    for row in rows.values():
        row.pop("Oracle AUC", None)
        row.pop("Oracle LogLoss", None)
    return rows, preds


def best_baseline(rows: dict[str, dict[str, float]], field: str) -> str:
    """Name of the baseline with the lowest Field-RCE on ``field``."""
    key = f"Field-RCE[{field}]"
    return min((n for n in rows if n in BASELINES), key=lambda n: rows[n][key])


def reliability_plots(
    test: pd.DataFrame,
    preds: dict[str, np.ndarray],
    out_dir: str,
    *,
    field: str,
    task: str = CTR,
    show: Sequence[str] = ("uncalibrated", "AdaCalib"),
    where: str = "test split",
) -> list[str]:
    """Overall reliability diagram and a grid for the 6 largest and 6 long-tail field values."""
    label, _ = HEAD_LABELS[task]
    rows = _task_rows(test, task)
    y = rows[label].to_numpy()
    chosen = {name: preds[name] for name in show if name in preds}
    overall = plots.reliability_diagram(
        {name: (y, p) for name, p in chosen.items()},
        os.path.join(out_dir, f"reliability_{task}.png"),
        title=f"p{task.upper()} reliability ({where})",
    )
    values = plots.head_and_tail_values(rows[field].to_numpy(), k=6, min_count=100)
    grid = plots.reliability_grid(
        y,
        chosen,
        rows[field].to_numpy(),
        values,
        os.path.join(out_dir, f"reliability_{task}_by_{field}.png"),
        bins=5,
        title=f"p{task.upper()} reliability: 6 largest and 6 long-tail {field} values",
    )
    return [overall, grid]


@dataclass
class CalibrationReport:
    """What ``calibrate_and_report`` produced.

    ``results[split][task]`` are the metric rows of every method (:func:`compare`) on an evaluation split
    (``calib_holdout`` with ``holdout``, and ``test``), ``preds[split][task]`` their predictions on the
    task's rows, ``evaluated[split]`` the combined model's predictions (with truth if given) and ``calib``
    the base model's predictions on the rows the calibrators were fitted on.
    """

    model: keras.Model
    model_path: str
    results: dict[str, dict[str, dict[str, dict[str, float]]]]
    table: str
    files: list[str]
    calib: pd.DataFrame
    evaluated: dict[str, pd.DataFrame]
    preds: dict[str, dict[str, dict[str, np.ndarray]]]

    @property
    def rows(self) -> dict[str, dict[str, float]]:
        """pCTR on the test split, every method."""
        return self.results["test"][CTR]

    @property
    def test(self) -> pd.DataFrame:
        """The combined model's test-split predictions."""
        return self.evaluated["test"]


def calibrate_and_report(
    model_dir: str,
    manifest_path: str,
    out_dir: str,
    *,
    fields: Sequence[str] = (),
    logs: str | None = None,
    epochs: int = 5,
    beam_args: Sequence[str] = (),
    calib_from_valid: float | None = None,
    holdout: float | None = None,
) -> CalibrationReport:
    """The whole ``tfads calibrate`` job: stats (Beam) -> fit -> combined model -> comparison report.

    ``fields``: the fields AdaCalib calibrates per value (default: the manifest's first calibration
    field, a domain-aware one when there is one); the report covers every calibration field.
    ``calib_from_valid``: fit on this fraction of the valid split's shards instead of a calib split
    (``Manifest.with_calib_from``). ``holdout``: fit on the calib split less this fraction of its shard
    files and report calibration on those held-out rows (where it is defined) beside the test day (which
    adds the day-to-day drift).
    """
    import json

    from tfads.core.manifest import load_manifest
    from tfads.predict import predict_split
    from tfads.model_io import load_trained_model, read_saved_experiment, save_trained_model
    from tfads.truth import attach_truth

    manifest = load_manifest(manifest_path)
    if calib_from_valid is not None:
        manifest = manifest.with_calib_from("valid", calib_from_valid)
    fields = list(fields or manifest.calibration_fields[:1])
    if not fields:
        raise ConfigError(f"{manifest_path}: no calibration fields: mark fields `calibration: true` in the schema "
                          "or pass --fields")
    if "calib" not in manifest.data["splits"] or not manifest.split_files("calib"):
        raise ConfigError(f"{manifest_path}: no calib split; set splits.calib_days >= 1 in the schema and rebuild, "
                          "or hold a slice of valid out with --calib-from-valid 0.5")
    if holdout is not None:
        manifest = manifest.with_held_out("calib", holdout, HOLDOUT, option="--holdout")
    base = load_trained_model(model_dir)
    stats_fields = list(dict.fromkeys([*fields, *manifest.calibration_fields]))
    stats = beam_calibration_stats(base, manifest, os.path.join(out_dir, "work"), beam_args, stats_fields)
    calib = predict_split(base, manifest, "calib")
    layers = fit_calibration_layers(calib, stats, fields, epochs=epochs)
    model = combined_model(base, layers)
    config = read_saved_experiment(model_dir)
    model_path = save_trained_model(
        model, out_dir, manifest.path, config, calibration={t: layer.get_config() for t, layer in layers.items()}
    )
    splits = [split for split in EVALUATIONS if split in manifest.data["splits"]]
    evaluated = {split: predict_split(model, manifest, split) for split in splits}
    if logs:
        calib = attach_truth(calib, logs, manifest.key)
        evaluated = {split: attach_truth(frame, logs, manifest.key) for split, frame in evaluated.items()}
    baselines = fit_baselines(calib, fields[0])
    results: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    preds: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for split, frame in evaluated.items():
        for task in heads_of(frame):
            results.setdefault(split, {})[task], preds.setdefault(split, {})[task] = compare(
                frame, baselines, fields=fields, task=task, report_fields=manifest.calibration_fields)
    report_dir = os.path.join(out_dir, "report")
    os.makedirs(report_dir, exist_ok=True)
    files = [os.path.join(report_dir, "calibration.md"), os.path.join(report_dir, "calibration.json")]
    sections, short = [], []
    for split, by_task in results.items():
        for task, rows in by_task.items():
            title = f"p{task.upper()} on the {EVALUATIONS[split]} ({_rows_note(task)})"
            sections += [f"## {title}", "", metrics.metrics_table(rows, markdown=True), ""]
            shown = {k: rows[k] for k in ("uncalibrated", best_baseline(rows, fields[0]), "AdaCalib")}
            short += [title + ":", metrics.metrics_table(shown), ""]
    with open(files[0], "w") as f:
        f.write("\n".join(sections))
    with open(files[1], "w") as f:
        json.dump(results, f, indent=2, default=float)
    where = next(iter(evaluated))
    for task in heads_of(evaluated[where]):
        best = best_baseline(results[where][task], fields[0])
        files += [str(p) for p in reliability_plots(evaluated[where], preds[where][task], report_dir, field=fields[0],
                                                    task=task, show=("uncalibrated", best, "AdaCalib"),
                                                    where=EVALUATIONS[where])]
    return CalibrationReport(model, model_path, results, "\n".join(short).rstrip(), files, calib, evaluated, preds)


def _rows_note(task: str) -> str:
    label, only = HEAD_LABELS[task]
    return f"label {label}, rows with {only} = 1" if only else f"label {label}, all impressions"
