"""Ground-truth probabilities the synthetic generator writes beside its logs (never features)."""

from __future__ import annotations

import glob
import os

import pandas as pd


def read_truth(logs_dir: str) -> pd.DataFrame:
    """All ``truth/<day>/*.jsonl.gz`` files under ``logs_dir`` as (trace_id, p_ctr, p_cvr)."""
    files = sorted(glob.glob(os.path.join(logs_dir, "truth", "*", "*.jsonl.gz")))
    if not files:
        raise FileNotFoundError(f"{logs_dir}: no truth/ files (is this a `tfads datagen` output?)")
    return pd.concat([pd.read_json(f, lines=True, dtype={"trace_id": str}) for f in files], ignore_index=True)


def attach_truth(scored: pd.DataFrame, logs_dir: str) -> pd.DataFrame:
    """Add ``true_ctr``, ``true_cvr`` and ``true_ctcvr`` to scored rows by trace_id (feed samples
    and rows without truth get NaN)."""
    truth = read_truth(logs_dir).rename(columns={"p_ctr": "true_ctr", "p_cvr": "true_cvr"})
    truth["true_ctcvr"] = truth["true_ctr"] * truth["true_cvr"]
    return scored.merge(truth[["trace_id", "true_ctr", "true_cvr", "true_ctcvr"]], on="trace_id", how="left")
