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
from tfads.calibration.combined import TASKS, combined_model
from tfads.core.manifest import Manifest

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
    base_model: keras.Model, manifest: Manifest, work_dir: str, beam_args: Sequence[str] = ()
) -> dict[str, CalibStats]:
    """Score the calib split with the frozen base model inside Beam and read back the statistics.

    The base model is exported once (the Beam job loads SavedModels with a ``predict_examples``
    signature, exactly as it would on Dataflow); returns ``{"ctr": ..., "cvr": ...}``.
    """
    from beam_jobs import calibration_stats
    from serving.export import export_model

    shutil.rmtree(work_dir, ignore_errors=True)  # scratch space of this job only
    base_path = export_model(base_model, manifest, os.path.join(work_dir, "base_export"), version=1)
    stats_dir = os.path.join(work_dir, "stats")
    argv = [
        "--model",
        base_path,
        "--data",
        manifest.path,
        "--out",
        stats_dir,
        *(beam_args or ["--runner", "DirectRunner"]),
    ]
    if calibration_stats.run(argv) != 0:
        raise RuntimeError("the calibration statistics Beam job failed (see the error above)")
    return {task: CalibStats.read(os.path.join(stats_dir, f"calibration_stats_{task}.json")) for task in TASKS}


def _task_rows(frame: pd.DataFrame, task: str) -> pd.DataFrame:
    _, only = TASKS[task]
    return frame[frame[only] == 1] if only else frame


def fit_calibration_layers(
    calib: pd.DataFrame, stats: dict[str, CalibStats], fields: Sequence[str], *, epochs: int = 5, seed: int = 0
) -> dict[str, AdaCalib]:
    """One AdaCalib layer per task, trained on the base model's calib-split predictions."""
    layers = {}
    for task, (label, _) in TASKS.items():
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
    task: str = "ctr",
    fields: Sequence[str] = ("scenario",),
    report_fields: Sequence[str] = ("scenario", "advertiser_id"),
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Metrics on the test split for: no calibration, each baseline (fitted on calib) and AdaCalib.

    ``test`` must come from the combined model (columns ``<task>`` and ``<task>_raw``); ``calib`` from
    the base model. Returns (rows for :func:`tfads.metrics.metrics_table`, predictions per method).
    """
    label, _ = TASKS[task]
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
    by_field = {f: test[f].astype(str).to_numpy() for f in report_fields if f in test}
    rows = {name: metrics.summarize(y, p, field=by_field, true_p=true_p) for name, p in preds.items()}
    for row in rows.values():
        row.pop("Oracle AUC", None)
        row.pop("Oracle LogLoss", None)
    return rows, preds


def best_baseline(rows: dict[str, dict[str, float]], key: str = "Field-RCE[scenario]") -> str:
    """Name of the baseline with the lowest ``key``."""
    return min((n for n in rows if n in BASELINES), key=lambda n: rows[n][key])


def reliability_plots(
    test: pd.DataFrame,
    preds: dict[str, np.ndarray],
    out_dir: str,
    *,
    task: str = "ctr",
    field: str = "scenario",
    show: Sequence[str] = ("uncalibrated", "AdaCalib"),
) -> list[str]:
    """Overall reliability diagram and a grid for the 6 largest and 6 long-tail field values."""
    label, _ = TASKS[task]
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
    fields: Sequence[str] = ("scenario",),
    logs: str | None = None,
    epochs: int = 5,
    beam_args: Sequence[str] = (),
) -> CalibrationReport:
    """The whole ``tfads calibrate`` job: stats (Beam) -> fit -> combined model -> comparison report."""
    import json

    from tfads.core.manifest import load_manifest
    from tfads.predict import predict_split
    from tfads.model_io import load_trained_model, read_saved_experiment, save_trained_model
    from tfads.truth import attach_truth

    manifest = load_manifest(manifest_path)
    base = load_trained_model(model_dir)
    stats = beam_calibration_stats(base, manifest, os.path.join(out_dir, "work"), beam_args)
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
    rows, preds = compare(calib, test, fields=fields)
    best = best_baseline(rows)
    shown = {k: rows[k] for k in ("uncalibrated", best, "AdaCalib")}
    table = metrics.metrics_table(shown)
    files = [os.path.join(report_dir, "calibration.md"), os.path.join(report_dir, "calibration.json")]
    with open(files[0], "w") as f:
        f.write(metrics.metrics_table(rows, markdown=True) + "\n")
    with open(files[1], "w") as f:
        json.dump(rows, f, indent=2, default=float)
    files += [str(p) for p in reliability_plots(test, preds, report_dir, show=("uncalibrated", best, "AdaCalib"))]
    return CalibrationReport(model, model_path, rows, table, files, calib=calib, test=test, preds=preds)
