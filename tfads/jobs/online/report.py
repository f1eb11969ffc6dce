"""Per-update metrics over time: ``metrics.json`` and PNGs of AUC / PCOC on the newest and older data
(raw outputs and, for a calibrated model, the calibrated ones)."""

from __future__ import annotations

import json
import os
from typing import Any

from tfads.plots import metric_over_time


def write_report(out_dir: str, history: list[dict[str, Any]]) -> list[str]:
    """Write ``metrics.json``, ``online_auc.png`` and ``online_pcoc.png``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "metrics.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"updates": history}, f, indent=1, default=float)
    os.replace(path + ".tmp", path)
    files = [path]
    if not history:
        return files
    steps = [r["step"] for r in history]
    for metric in ("AUC", "PCOC"):
        series = {
            f"{who} on {data}": (steps, [r[key][data][metric] for r in history])
            for who, key in (("candidate", "candidate"), ("serving before", "serving_before"))
            for data in ("newest", "old")
        }
        if all("calibrated" in r for r in history):  # a calibrated model: AdaCalib outputs beside the raw ones
            series.update({
                f"calibrated, {who.replace('_', ' ')} on {data}": (steps, [r["calibrated"][who][data][metric]
                                                                          for r in history])
                for who in ("serving_before", "served_after") for data in ("newest", "old")
            })
        png = os.path.join(out_dir, f"online_{metric.lower()}.png")
        metric_over_time(series, png, ylabel=f"pCTR {metric}", xlabel="update",
                         title=f"online updates: {metric} on the newest shard and on older days")
        files.append(png)
    return files
