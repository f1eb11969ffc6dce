"""Ground-truth probabilities the synthetic generator writes beside its logs (never features)."""

from __future__ import annotations

import glob
import os

import pandas as pd

TRUTH_KEY = "trace_id"  # the generator's truth files name each impression so, whatever the logs call it


def read_truth(logs_dir: str) -> pd.DataFrame:
    """All ``truth/<day>/*.jsonl.gz`` files under ``logs_dir`` as (``TRUTH_KEY``, p_ctr, p_cvr)."""
    files = sorted(glob.glob(os.path.join(logs_dir, "truth", "*", "*.jsonl.gz")))
    if not files:
        raise FileNotFoundError(f"{logs_dir}: no truth/ files (is this a `tfads datagen` output?)")
    return pd.concat([pd.read_json(f, lines=True, dtype={TRUTH_KEY: str}) for f in files], ignore_index=True)


def attach_truth(scored: pd.DataFrame, logs_dir: str, key: str | None) -> pd.DataFrame:
    """Add ``true_ctr``, ``true_cvr`` and ``true_ctcvr`` to scored rows whose ``key`` column (the schema's key
    field, however the logs name it) holds the generator's trace id; feed samples and rows without truth get NaN.

    Raises:
      ValueError: when the scored rows have no ``key`` column."""
    if key not in scored:
        raise ValueError(f"truth: the scored rows have no key column {key!r} to join the truth on")
    truth = read_truth(logs_dir).rename(columns={"p_ctr": "true_ctr", "p_cvr": "true_cvr", TRUTH_KEY: key})
    truth["true_ctcvr"] = truth["true_ctr"] * truth["true_cvr"]
    return scored.merge(truth[[key, "true_ctr", "true_cvr", "true_ctcvr"]], on=key, how="left")
