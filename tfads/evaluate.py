"""Evaluation: ranking and calibration metrics for the model's heads (pCTR; pCVR and pCTCVR for ESMM),
beside the oracle of the generator's true probabilities when known, written as JSON and PNG plots."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field as dataclass_field
from typing import Any

import numpy as np
import pandas as pd

from tfads import entire_space, metrics, plots
from tfads.calibration.combined import task_rows
from tfads.core.names import CLICK, CTCVR, CTR, CVR, HEAD_LABELS

log = logging.getLogger(__name__)



@dataclass
class Evaluation:
    """Metrics per task (and oracle), the per-scenario AUC table and, for ESMM, the entire-space metrics."""

    metrics: dict[str, dict[str, Any]]
    per_scenario: pd.DataFrame
    by_field: dict[str, pd.DataFrame]  # field -> pCTR metrics per value (metrics.per_field_metrics)
    # pCVR / pCTCVR over every impression against the truth, beside the oracle (entire_space.truth_rows)
    against_truth: dict[str, dict[str, float]] = dataclass_field(default_factory=dict)
    ctcvr_by_field: dict[str, pd.DataFrame] = dataclass_field(default_factory=dict)  # entire_space.ctcvr_by_field

    def table(self) -> str:
        """Readable table: one row per task (model and oracle); then the entire-space table when there is one."""
        rows = {}
        for task, m in self.metrics.items():
            rows[task] = {k: v for k, v in m.items() if not k.startswith(("Oracle", "MAE", "RMSE"))}
            if "Oracle AUC" in m:
                rows[f"{task} (oracle)"] = {"AUC": m["Oracle AUC"], "LogLoss": m["Oracle LogLoss"]}
        text = metrics.metrics_table(rows)
        if self.against_truth:
            text += ("\n\nEvery impression (clicked or not) against the true probabilities:\n"
                     + metrics.metrics_table(self.against_truth))
        return text

    def report(self) -> dict[str, Any]:
        """What ``metrics.json`` holds: the metrics per task, and ``against_truth`` when measured."""
        return {**self.metrics, **({"against_truth": self.against_truth} if self.against_truth else {})}


def evaluate_frame(
    scored: pd.DataFrame, *, field: str | None, users: str | None, by: list[str] | tuple[str, ...] = ()
) -> Evaluation:
    """Metrics for each head present in scored rows (from :func:`tfads.predict.predict_split`).

    ``field``: Field-RCE / Field-ECE and the per-value AUC table are by this field (e.g. the domain);
    ``users``: GAUC groups by this field. Either may be None (not reported). ``by``: fields whose
    per-value pCTR metrics (AUC, GAUC, PCOC, RCE and their impression-weighted mean) are tabled, and, with a
    ``ctcvr`` head, the same of pCTCVR (:func:`tfads.entire_space.ctcvr_by_field`). With a ``cvr`` head and its
    truth, pCVR and pCTCVR are also measured over every impression against the true probabilities.
    """
    missing = [f for f in by if f not in scored]
    if missing:
        raise ValueError(f"--by {missing}: not columns of the scored rows (features: {sorted(scored.columns)})")
    if "sample_source" in scored:  # feed (cold-start) samples are training help, not ad traffic
        scored = scored[scored["sample_source"] != "feed"]
    results: dict[str, dict[str, Any]] = {}
    for task in (t for t in (CTR, CVR, CTCVR) if t in scored):
        label, _ = HEAD_LABELS[task]
        pred, truth = task, f"true_{task}"
        rows = scored[task_rows(scored, task)]
        if rows[label].nunique() < 2:
            log.warning("%s: only one label class in the evaluation rows; skipped", task)
            continue
        true_p = rows[truth].to_numpy() if truth in rows and rows[truth].notna().all() else None
        results[task] = metrics.summarize(
            rows[label].to_numpy(),
            rows[pred].to_numpy(),
            field=rows[field].to_numpy() if field in rows else None,
            users=rows[users].to_numpy() if users in rows and task == CTR else None,
            true_p=true_p,
        )
        results[task]["rows"] = int(len(rows))
    y, p = scored[CLICK].to_numpy(), scored[CTR].to_numpy()
    values = scored[field].to_numpy() if field in scored else np.zeros(len(scored), dtype=object)
    user_ids = scored[users].to_numpy() if users in scored else None
    by_field = {f: metrics.per_field_metrics(y, p, scored[f].astype(str).to_numpy(), user_ids) for f in by}
    esmm = CVR in scored
    return Evaluation(results, metrics.per_field_auc(y, p, values), by_field,
                      against_truth=entire_space.truth_rows(scored) if esmm else {},
                      ctcvr_by_field=entire_space.ctcvr_by_field(scored, by) if esmm else {})


def write_report(
    evaluation: Evaluation,
    scored: pd.DataFrame,
    out_dir: str,
    *,
    model_name: str = "model",
    sparsity: tuple[np.ndarray, list[str], list[str]] | None = None,
) -> dict[str, str]:
    """Write ``metrics.json``, ``per_scenario_auc.csv``, ``by_<field>[_ctcvr].csv`` and the PNG plots into
    ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    files = {"metrics": os.path.join(out_dir, "metrics.json")}
    with open(files["metrics"], "w") as f:
        json.dump(evaluation.report(), f, indent=2, default=float)
    files["per_scenario"] = os.path.join(out_dir, "per_scenario_auc.csv")
    evaluation.per_scenario.to_csv(files["per_scenario"], index=False)
    tables = {**evaluation.by_field, **{f"{name}_ctcvr": t for name, t in evaluation.ctcvr_by_field.items()}}
    for name, table in tables.items():
        files[f"by_{name}"] = os.path.join(out_dir, f"by_{name}.csv")
        table.to_csv(files[f"by_{name}"], index=False)
    files["per_scenario_png"] = plots.per_field_auc_vs_traffic(
        {model_name: evaluation.per_scenario}, os.path.join(out_dir, "per_scenario_auc.png")
    )
    y = scored[CLICK].to_numpy()
    curves = {f"{model_name} pCTR": (y, scored[CTR].to_numpy())}
    if "true_ctr" in scored and scored["true_ctr"].notna().all():
        curves["oracle pCTR"] = (y, scored["true_ctr"].to_numpy())
    files["reliability"] = plots.reliability_diagram(
        curves, os.path.join(out_dir, "reliability.png"), title="pCTR reliability (test split)"
    )
    if CVR in evaluation.against_truth:
        files["reliability_truth"] = plots.reliability_diagram(
            {f"{model_name} pCVR": (scored["true_cvr"].to_numpy(), scored[CVR].to_numpy())},
            os.path.join(out_dir, "reliability_cvr_truth.png"), bins=20, against_truth=True,
            title="pCVR vs the true pCVR, every impression (test split)",
        )
    if sparsity is not None:
        matrix, layer_names, domain_names = sparsity
        files["sparsity_map"] = plots.sparsity_map(
            matrix, layer_names, domain_names, os.path.join(out_dir, "sparsity_map.png")
        )
    return files
