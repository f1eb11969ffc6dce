"""Entire-space CVR evaluation: pCVR and pCTCVR over every impression against the true probabilities (synthetic
data), pCVR on clicked rows and pCTCVR per field value, each with the oracle (the truth scored as a model) beside.

Scored frames are :func:`tfads.predict.predict_split` rows: labels by role (``click``, ``conversion``), the model's
``ctr``, ``cvr``, ``ctcvr`` and, after :func:`tfads.truth.attach_truth`, ``true_ctr``, ``true_cvr``, ``true_ctcvr``.
The generator knows the post-click CVR of *every* impression, clicked or not, so a pCVR can be scored over the
space it serves (all impressions) instead of the clicked rows its labels live on (ESMM's sample-selection bias).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.special import xlogy

from tfads import metrics
from tfads.core.names import CLICK, CONVERSION, CTCVR, CTR, CVR

TRUE = {CTR: "true_ctr", CVR: "true_cvr", CTCVR: "true_ctcvr"}  # scored-frame column of each head's truth


def _probabilities(where: str, **arrays: ArrayLike) -> list[np.ndarray]:
    """Same-length, non-empty 1-D float arrays of probabilities in [0, 1] (NaN rejected)."""
    out = []
    for name, values in arrays.items():
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim == 2 and arr.shape[1] == 1:  # a Keras predict() column
            arr = arr[:, 0]
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"{where}: `{name}` must be a non-empty 1-D array. Got shape {arr.shape}.")
        if not np.all((arr >= 0) & (arr <= 1)):
            bad = arr[~((arr >= 0) & (arr <= 1))][0]
            raise ValueError(f"{where}: `{name}` must hold probabilities in [0, 1]. Got {bad!r}.")
        if out and arr.size != out[0].size:
            raise ValueError(f"{where}: `{name}` must have the length of `p` ({out[0].size}). Got {arr.size}.")
        out.append(arr)
    return out


def truth_bins(p: ArrayLike, q: ArrayLike, bins: int = 10) -> pd.DataFrame:
    """Equal-frequency bins of the predictions ``p`` (cut as :func:`tfads.metrics.calibration_bins` cuts them)
    with the mean prediction and the mean true probability ``q`` of each.

    Returns:
        DataFrame with columns ``bin, count, mean_p, mean_q`` (empty bins omitted).
    """
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"truth_bins: `bins` must be a positive integer. Got {bins!r}.")
    p, q = _probabilities("truth_bins", p=p, q=q)
    chunks = [c for c in np.array_split(np.argsort(p, kind="stable"), bins) if c.size]
    return pd.DataFrame({"bin": np.arange(len(chunks)), "count": [c.size for c in chunks],
                         "mean_p": [p[c].mean() for c in chunks], "mean_q": [q[c].mean() for c in chunks]})


def rank_correlation(p: ArrayLike, q: ArrayLike) -> float:
    """Spearman rank correlation of ``p`` and ``q`` (ties share their mean rank); NaN when either is constant,
    since a constant prediction orders nothing."""
    p, q = _probabilities("rank_correlation", p=p, q=q)
    if p.min() == p.max() or q.min() == q.max():
        return float("nan")
    return float(np.corrcoef(pd.Series(p).rank().to_numpy(), pd.Series(q).rank().to_numpy())[0, 1])


def against_truth(p: ArrayLike, q: ArrayLike, *, bins: int = 10) -> dict[str, float]:
    """How close predictions ``p`` are to the true probabilities ``q`` of the same rows.

    Returns (in this order):
        ``CE to truth``: mean of ``-(q log p + (1 - q) log(1 - p))`` (``p`` clipped to ``[EPS, 1 - EPS]``), the
        expected log loss of ``p`` on labels drawn from ``q``; the truth's own value is its entropy.
        ``KL to truth``: CE minus that entropy, mean KL(q || p) per row; 0 only when ``p = q``.
        ``p/q``: ``mean(p) / mean(q)``, calibration in the large (1 is perfect).
        ``ECE to truth``: ``(1/N) sum_b N_b |mean p_b - mean q_b|`` over equal-frequency bins of ``p``.
        ``Spearman``: rank correlation of ``p`` and ``q`` (NaN for a constant ``p``).
    """
    p, q = _probabilities("against_truth", p=p, q=q)
    pc = np.clip(p, metrics.EPS, 1 - metrics.EPS)
    ce = -(q * np.log(pc) + (1 - q) * np.log1p(-pc))
    entropy = -(xlogy(q, q) + xlogy(1 - q, 1 - q))
    table = truth_bins(p, q, bins)
    return {
        "CE to truth": float(ce.mean()),
        "KL to truth": float(np.mean(ce - entropy)),
        "p/q": float(p.mean() / q.mean()) if q.any() else float("nan"),
        "ECE to truth": float(np.sum(table["count"] * np.abs(table["mean_p"] - table["mean_q"])) / p.size),
        "Spearman": rank_correlation(p, q),
    }


def has_truth(scored: pd.DataFrame, head: str) -> bool:
    """Whether every row of ``scored`` has the true probability of ``head``."""
    return TRUE[head] in scored and bool(scored[TRUE[head]].notna().all())


def oracle_frame(scored: pd.DataFrame) -> pd.DataFrame:
    """``scored`` with each head's prediction replaced by its true probability: the oracle as a model."""
    return scored.assign(**{head: scored[TRUE[head]] for head in (CTR, CVR, CTCVR) if head in scored})


def truth_rows(scored: pd.DataFrame, *, bins: int = 10) -> dict[str, dict[str, float]]:
    """:func:`against_truth` of pCVR and pCTCVR over every row, beside the oracle's values: rows ``cvr``,
    ``cvr (oracle)``, ``ctcvr``, ``ctcvr (oracle)`` for the heads present with their truth (none: empty)."""
    rows: dict[str, dict[str, float]] = {}
    for head in (CVR, CTCVR):
        if head in scored and has_truth(scored, head):
            q = scored[TRUE[head]].to_numpy()
            rows[head] = against_truth(scored[head].to_numpy(), q, bins=bins)
            rows[f"{head} (oracle)"] = against_truth(q, q, bins=bins)
    return rows


def ctcvr_by_field(scored: pd.DataFrame, fields: Sequence[str]) -> dict[str, pd.DataFrame]:
    """pCTCVR AUC, PCOC and RCE against the conversion label per value of each field, over every impression
    (:func:`tfads.metrics.per_field_metrics`, last row the impression-weighted mean), with the oracle's AUC and
    PCOC beside when ``true_ctcvr`` is known.

    Returns:
        ``field -> DataFrame`` with columns ``value, impressions, positives, auc, pcoc, rce`` (+ ``oracle_auc,
        oracle_pcoc``); empty when ``scored`` has no ``ctcvr``.

    Raises:
        ValueError: a field is not a column of ``scored``.
    """
    missing = [f for f in fields if f not in scored]
    if missing:
        raise ValueError(f"ctcvr_by_field: fields {missing} are not columns of the scored rows "
                         f"(columns: {sorted(scored.columns)})")
    if CTCVR not in scored:
        return {}
    y = scored[CONVERSION].to_numpy()
    out = {}
    for field in fields:
        values = scored[field].astype(str).to_numpy()
        table = metrics.per_field_metrics(y, scored[CTCVR].to_numpy(), values).drop(columns="gauc")
        if has_truth(scored, CTCVR):
            oracle = metrics.per_field_metrics(y, scored[TRUE[CTCVR]].to_numpy(), values)
            oracle = oracle[["value", "auc", "pcoc"]].rename(columns={"auc": "oracle_auc", "pcoc": "oracle_pcoc"})
            table = table.merge(oracle, on="value", how="left")
        out[field] = table
    return out


def cvr_summary(scored: pd.DataFrame, fields: Sequence[str] = (), *, bins: int = 10) -> dict[str, float]:
    """One model's CVR quality as one flat row (benchmark columns), from a frame with a ``cvr`` head.

    ``pCVR AUC / LogLoss / PCOC (clicks)`` on clicked rows against the conversion label; with ``true_cvr``, the
    :func:`against_truth` keys of pCVR over every row (``pCVR KL to truth``, ...); ``pCTCVR AUC / PCOC`` over every
    row; per field ``f``: ``pCTCVR AUC[f]`` and ``pCTCVR Field-RCE[f]``, the impression-weighted means over its
    values (:func:`ctcvr_by_field`). Score :func:`oracle_frame` for the oracle's row.
    """
    clicked = scored[scored[CLICK] == 1]
    y, p = clicked[CONVERSION].to_numpy(), clicked[CVR].to_numpy()
    out = {"pCVR AUC (clicks)": metrics.auc(y, p), "pCVR LogLoss (clicks)": metrics.logloss(y, p),
           "pCVR PCOC (clicks)": metrics.pcoc(y, p)}
    if has_truth(scored, CVR):
        out.update({f"pCVR {k}": v for k, v in against_truth(scored[CVR], scored[TRUE[CVR]], bins=bins).items()})
    y, p = scored[CONVERSION].to_numpy(), scored[CTCVR].to_numpy()
    out.update({"pCTCVR AUC": metrics.auc(y, p), "pCTCVR PCOC": metrics.pcoc(y, p)})
    for field, table in ctcvr_by_field(scored.drop(columns=TRUE[CTCVR], errors="ignore"), fields).items():
        mean = table.iloc[-1]
        out[f"pCTCVR AUC[{field}]"], out[f"pCTCVR Field-RCE[{field}]"] = float(mean["auc"]), float(mean["rce"])
    return out
