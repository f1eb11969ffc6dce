"""Evaluation: ranking and calibration metrics for the three ESMM heads, beside the oracle of the
generator's true probabilities, written as JSON and PNG plots."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tfads import metrics, plots

log = logging.getLogger(__name__)

# task -> (label column, prediction column, truth column, rows it is evaluated on)
TASKS = {
    "ctr": ("click", "ctr", "true_ctr", "all impressions"),
    "cvr": ("conversion", "cvr", "true_cvr", "clicked impressions"),
    "ctcvr": ("conversion", "ctcvr", "true_ctcvr", "all impressions"),
}


@dataclass
class Evaluation:
    """Metrics per task (and oracle) plus the per-scenario AUC table."""

    metrics: dict[str, dict[str, Any]]
    per_scenario: pd.DataFrame

    def table(self) -> str:
        """Readable table: one row per task (model and oracle)."""
        rows = {}
        for task, m in self.metrics.items():
            rows[task] = {k: v for k, v in m.items() if not k.startswith(("Oracle", "MAE", "RMSE"))}
            if "Oracle AUC" in m:
                rows[f"{task} (oracle)"] = {"AUC": m["Oracle AUC"], "LogLoss": m["Oracle LogLoss"]}
        return metrics.metrics_table(rows)


def evaluate_frame(scored: pd.DataFrame, *, field: str = "scenario", users: str = "user_id") -> Evaluation:
    """Metrics for each head on scored rows (from :func:`tfads.predict.predict_split`)."""
    if "sample_source" in scored:  # feed (cold-start) samples are training help, not ad traffic
        scored = scored[scored["sample_source"] != "feed"]
    results: dict[str, dict[str, Any]] = {}
    for task, (label, pred, truth, _) in TASKS.items():
        rows = scored[scored["click"] == 1] if task == "cvr" else scored
        if rows[label].nunique() < 2:
            log.warning("%s: only one label class in the evaluation rows; skipped", task)
            continue
        true_p = rows[truth].to_numpy() if truth in rows and rows[truth].notna().all() else None
        results[task] = metrics.summarize(
            rows[label].to_numpy(),
            rows[pred].to_numpy(),
            field=rows[field].to_numpy() if field in rows else None,
            users=rows[users].to_numpy() if users in rows and task == "ctr" else None,
            true_p=true_p,
        )
        results[task]["rows"] = int(len(rows))
    per_scenario = metrics.per_field_auc(scored["click"].to_numpy(), scored["ctr"].to_numpy(), scored[field].to_numpy())
    return Evaluation(results, per_scenario)


def write_report(
    evaluation: Evaluation,
    scored: pd.DataFrame,
    out_dir: str,
    *,
    model_name: str = "model",
    sparsity: tuple[np.ndarray, list[str], list[str]] | None = None,
) -> dict[str, str]:
    """Write ``metrics.json``, ``per_scenario_auc.csv`` and the PNG plots into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    files = {"metrics": os.path.join(out_dir, "metrics.json")}
    with open(files["metrics"], "w") as f:
        json.dump(evaluation.metrics, f, indent=2, default=float)
    files["per_scenario"] = os.path.join(out_dir, "per_scenario_auc.csv")
    evaluation.per_scenario.to_csv(files["per_scenario"], index=False)
    files["per_scenario_png"] = plots.per_field_auc_vs_traffic(
        {model_name: evaluation.per_scenario}, os.path.join(out_dir, "per_scenario_auc.png")
    )
    curves = {f"{model_name} pCTR": (scored["click"].to_numpy(), scored["ctr"].to_numpy())}
    if "true_ctr" in scored and scored["true_ctr"].notna().all():
        curves["oracle pCTR"] = (scored["click"].to_numpy(), scored["true_ctr"].to_numpy())
    files["reliability"] = plots.reliability_diagram(
        curves, os.path.join(out_dir, "reliability.png"), title="pCTR reliability (test split)"
    )
    if sparsity is not None:
        matrix, layer_names, domain_names = sparsity
        files["sparsity_map"] = plots.sparsity_map(
            matrix, layer_names, domain_names, os.path.join(out_dir, "sparsity_map.png")
        )
    return files
