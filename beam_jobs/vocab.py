"""Vocabularies of categorical features from train-split value counts."""

from __future__ import annotations

import pandas as pd


def vocabulary(counts: pd.Series, *, min_count: int, top_k: int) -> list:
    """Values seen at least ``min_count`` times, most frequent first, ties by value, at most ``top_k``."""
    kept = counts[counts >= min_count]
    frame = pd.DataFrame({"value": kept.index, "count": kept.to_numpy()})
    frame = frame.sort_values(["count", "value"], ascending=[False, True], kind="stable")
    return frame["value"].head(top_k).tolist()


def left_out(counts: pd.Series, values: list, *, min_count: int) -> dict[str, int]:
    """What a vocabulary leaves to the OOV bucket: distinct values seen fewer than ``min_count`` times, other
    values beyond ``top_k``, and the train impressions all of them carry."""
    kept = set(values)
    out = counts[[v not in kept for v in counts.index]]
    below = int((out < min_count).sum())
    return {"below_min_count": below, "beyond_top_k": int(len(out) - below),
            "train_impressions": int(out.sum())}


def vocab_text(values: list) -> bytes:
    """A vocabulary file: one value per line (UTF-8)."""
    return "".join(f"{v}\n" for v in values).encode("utf-8")
