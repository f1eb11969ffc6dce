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
from tfads.core.names import CTR, CVR, HEAD_LABELS

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


def _task_rows(frame: pd.DataFrame, task: str) -> pd.DataFrame:
    return frame[task_rows(frame, task)]


def fit_calibration_layers(
    calib: pd.DataFrame, stats: dict[str, CalibStats], fields: Sequence[str], *, epochs: int = 5, seed: int = 0
) -> dict[str, AdaCalib]:
    """One AdaCalib layer per calibrated head (``ctr``; ``cvr`` for ESMM), trained on the base model's
    calib-split predictions (columns: the heads, the labels by role, the fields)."""
    layers = {}
    for task in calibrated_tasks([c for c in (CTR, CVR) if c in calib]):
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


def compare(
    calib: pd.DataFrame,
    test: pd.DataFrame,
    *,
    fields: Sequence[str],
    task: str = CTR,
    report_fields: Sequence[str] = (),
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Metrics on the test split for: no calibration, each baseline (fitted on calib) and AdaCalib.

    ``test`` must come from the combined model (columns ``<task>`` and ``<task>_raw``); ``calib`` from
    the base model. Per-field baselines use ``fields[0]``; Field-RCE / Field-ECE are reported for
    ``fields`` and ``report_fields``. Returns (rows for :func:`tfads.metrics.metrics_table`,
    predictions per method).
    """
    label, _ = HEAD_LABELS[task]
    calib, test = _task_rows(calib, task), _task_rows(test, task)
    field = fields[0]
    preds = {"uncalibrated": test[f"{task}_raw"].to_numpy()}
    for name, cls in BASELINES.items():
        calibrator = cls().fit(calib[task].to_numpy(), calib[label].to_numpy(), calib[field].to_numpy())
        preds[name] = calibrator.predict(preds["uncalibrated"], test[field].to_numpy())
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
) -> list[str]:
    """Overall reliability diagram and a grid for the 6 largest and 6 long-tail field values."""
    label, _ = HEAD_LABELS[task]
    rows = _task_rows(test, task)
    y = rows[label].to_numpy()
    chosen = {name: preds[name] for name in show if name in preds}
    overall = plots.reliability_diagram(
        {name: (y, p) for name, p in chosen.items()},
        os.path.join(out_dir, f"reliability_{task}.png"),
        title=f"p{task.upper()} reliability (test split)",
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
    """What ``calibrate_and_report`` produced."""

    model: keras.Model
    model_path: str
    rows: dict[str, dict[str, float]]
    table: str
    files: list[str]
    calib: pd.DataFrame | None = None  # the base model's calib-split predictions
    test: pd.DataFrame | None = None  # the combined model's test-split predictions (with truth if given)
    preds: dict[str, np.ndarray] | None = None  # calibrated pCTR of each method on the test rows


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
) -> CalibrationReport:
    """The whole ``tfads calibrate`` job: stats (Beam) -> fit -> combined model -> comparison report.

    ``fields``: the fields AdaCalib calibrates per value (default: the manifest's first calibration
    field, a domain-aware one when there is one); the report covers every calibration field.
    ``calib_from_valid``: fit on this fraction of the valid split's shards instead of a calib split
    (``Manifest.with_calib_from``).
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
    test = predict_split(model, manifest, "test")
    if logs:
        calib, test = attach_truth(calib, logs), attach_truth(test, logs)
    report_dir = os.path.join(out_dir, "report")
    os.makedirs(report_dir, exist_ok=True)
    rows, preds = compare(calib, test, fields=fields, report_fields=manifest.calibration_fields)
    best = best_baseline(rows, fields[0])
    shown = {k: rows[k] for k in ("uncalibrated", best, "AdaCalib")}
    table = metrics.metrics_table(shown)
    files = [os.path.join(report_dir, "calibration.md"), os.path.join(report_dir, "calibration.json")]
    with open(files[0], "w") as f:
        f.write(metrics.metrics_table(rows, markdown=True) + "\n")
    with open(files[1], "w") as f:
        json.dump(rows, f, indent=2, default=float)
    files += [str(p) for p in reliability_plots(test, preds, report_dir, field=fields[0],
                                                show=("uncalibrated", best, "AdaCalib"))]
    return CalibrationReport(model, model_path, rows, table, files, calib=calib, test=test, preds=preds)
