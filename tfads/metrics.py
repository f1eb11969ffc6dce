"""Ranking and calibration metrics for CTR/CVR predictions (numpy/sklearn only, no TensorFlow).

Definitions follow METHODS.md "Calibration and ranking metrics". Every metric takes 1-D arrays of
binary labels ``y`` and probabilities ``p``; grouped metrics take a same-length ``field``/``groups``
array of any hashable values. Equal-frequency bins are formed by sorting ``p`` (within each field
value for the Field-* metrics) and cutting the sorted rows into ``bins`` chunks as ``np.array_split``
does (sizes differ by at most one), so tied predictions at a cut may land in adjacent bins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score

EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] before taking logs


def _as_1d(name: str, where: str, values: ArrayLike) -> np.ndarray:
    """A 1-D array; an (n, 1) column such as Keras ``predict`` output is flattened."""
    arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{where}: `{name}` must be 1-D. Got shape {arr.shape}.")
    return arr


def _check(where: str, y: ArrayLike, p: ArrayLike, **others: ArrayLike | None) -> tuple[np.ndarray, ...]:
    """Validate labels, probabilities and same-length extra arrays; return them as 1-D arrays."""
    y_arr = _as_1d("y", where, y).astype(np.float64)
    p_arr = _as_1d("p", where, p).astype(np.float64)
    if y_arr.size == 0:
        raise ValueError(f"{where}: got empty input (0 rows).")
    if p_arr.size != y_arr.size:
        raise ValueError(f"{where}: `y` and `p` must have the same length. Got {y_arr.size} and {p_arr.size}.")
    if not np.all((y_arr == 0) | (y_arr == 1)):
        bad = y_arr[(y_arr != 0) & (y_arr != 1)][0]
        raise ValueError(f"{where}: `y` must hold binary labels 0/1. Got {bad!r}.")
    if not np.all((p_arr >= 0) & (p_arr <= 1)):  # also rejects NaN
        bad = p_arr[~((p_arr >= 0) & (p_arr <= 1))][0]
        raise ValueError(f"{where}: `p` must hold probabilities in [0, 1]. Got {bad!r}.")
    out = [y_arr, p_arr]
    for name, values in others.items():
        if values is None:
            out.append(None)
            continue
        arr = _as_1d(name, where, values)
        if arr.size != y_arr.size:
            raise ValueError(f"{where}: `{name}` must have the length of `y` ({y_arr.size}). Got {arr.size}.")
        out.append(arr)
    return tuple(out)


def _codes(where: str, name: str, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes 0..G-1 and the unique values of a grouping array (missing values rejected)."""
    codes, uniques = pd.factorize(values, sort=False)
    if np.any(codes < 0):
        raise ValueError(f"{where}: `{name}` contains missing values (None/NaN).")
    return codes.astype(np.int64), np.asarray(uniques)


# ----------------------------------------------------------------------------- ranking


def auc(y: ArrayLike, p: ArrayLike, w: ArrayLike | None = None) -> float:
    """Area under the ROC curve (ties count 1/2); NaN when ``y`` holds a single class.

    Raises:
        ValueError: empty input, mismatched lengths, non-binary labels or probabilities outside [0, 1].
    """
    y, p, w = _check("auc", y, p, w=w)
    if y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, p, sample_weight=w))


def logloss(y: ArrayLike, p: ArrayLike, w: ArrayLike | None = None) -> float:
    """(Weighted) mean binary cross-entropy with ``p`` clipped to [EPS, 1 - EPS]."""
    y, p, w = _check("logloss", y, p, w=w)
    p = np.clip(p, EPS, 1 - EPS)
    losses = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    return float(np.average(losses, weights=w))


def _group_auc(y: np.ndarray, p: np.ndarray, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, ...]:
    """Per-group impressions, positives and AUC (NaN for single-class groups), by Mann-Whitney midranks."""
    order = np.lexsort((p, codes))
    c_s, p_s, y_s = codes[order], p[order], y[order]
    n = y.size
    impressions = np.bincount(codes, minlength=n_groups)
    positives = np.bincount(codes, weights=y, minlength=n_groups)
    group_start = np.concatenate(([0], np.cumsum(impressions)[:-1]))
    # Runs of equal (group, p) share their mid rank.
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = (c_s[1:] != c_s[:-1]) | (p_s[1:] != p_s[:-1])
    run_id = np.cumsum(new_run) - 1
    run_first = np.flatnonzero(new_run)
    run_last = np.append(run_first[1:], n) - 1
    mid = (run_first[run_id] + run_last[run_id]) / 2.0 - group_start[c_s] + 1.0  # 1-based within group
    rank_sum = np.bincount(c_s, weights=mid * y_s, minlength=n_groups)
    negatives = impressions - positives
    with np.errstate(invalid="ignore", divide="ignore"):
        group_auc = (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)
    group_auc[(positives == 0) | (negatives == 0)] = np.nan
    return impressions, positives, group_auc


def per_field_auc(y: ArrayLike, p: ArrayLike, field: ArrayLike) -> pd.DataFrame:
    """AUC within each field value, most impressions first.

    Returns:
        DataFrame with columns ``value, impressions, positives, auc`` (``auc`` NaN for single-class values).
    """
    y, p, field = _check("per_field_auc", y, p, field=field)
    codes, uniques = _codes("per_field_auc", "field", field)
    impressions, positives, group_auc = _group_auc(y, p, codes, uniques.size)
    df = pd.DataFrame(
        {
            "value": uniques,
            "impressions": impressions,
            "positives": positives.astype(np.int64),
            "auc": group_auc,
        }
    )
    df = df.sort_values(["impressions", "value"], ascending=[False, True], kind="stable")
    return df.reset_index(drop=True)


def gauc(y: ArrayLike, p: ArrayLike, groups: ArrayLike) -> float:
    """Impression-weighted mean of per-group (per-user) AUC over groups holding both labels; NaN if none."""
    y, p, groups = _check("gauc", y, p, groups=groups)
    codes, uniques = _codes("gauc", "groups", groups)
    impressions, _, group_auc = _group_auc(y, p, codes, uniques.size)
    ok = ~np.isnan(group_auc)
    if not ok.any():
        return float("nan")
    return float(np.average(group_auc[ok], weights=impressions[ok]))


# ----------------------------------------------------------------------------- calibration


def pcoc(y: ArrayLike, p: ArrayLike) -> float:
    """Predicted over observed rate, mean(p) / mean(y); 1.0 is perfect, NaN without positives."""
    y, p = _check("pcoc", y, p)
    return float(p.mean() / y.mean()) if y.any() else float("nan")


def calibration_bins(y: ArrayLike, p: ArrayLike, bins: int = 10, field: ArrayLike | None = None) -> pd.DataFrame:
    """Equal-frequency calibration bins, within each field value when ``field`` is given.

    Returns:
        DataFrame with columns ``value`` (field value, or None), ``bin``, ``count``, ``mean_p``,
        ``mean_y``; empty bins (values with fewer rows than ``bins``) are omitted.
    """
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"calibration_bins: `bins` must be a positive integer. Got {bins!r}.")
    y, p, field = _check("calibration_bins", y, p, field=field)
    if field is None:
        codes, uniques = np.zeros(y.size, dtype=np.int64), np.array([None], dtype=object)
    else:
        codes, uniques = _codes("calibration_bins", "field", field)
    order = np.lexsort((p, codes))
    c_s = codes[order]
    sizes = np.bincount(codes, minlength=uniques.size)
    start = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    position = np.arange(y.size) - start[c_s]
    # As np.array_split: the first (n % bins) bins of a value hold one row more than the others.
    n = sizes[c_s]
    small, extra = n // bins, n % bins
    cut = extra * (small + 1)
    bin_id = np.where(position < cut, position // (small + 1), extra + (position - cut) // np.maximum(small, 1))
    key = c_s * bins + bin_id
    n_keys = uniques.size * bins
    count = np.bincount(key, minlength=n_keys)
    sum_p = np.bincount(key, weights=p[order], minlength=n_keys)
    sum_y = np.bincount(key, weights=y[order], minlength=n_keys)
    used = np.flatnonzero(count)
    return pd.DataFrame(
        {
            "value": uniques[used // bins],
            "bin": used % bins,
            "count": count[used],
            "mean_p": sum_p[used] / count[used],
            "mean_y": sum_y[used] / count[used],
        }
    )


def _binned_ece(table: pd.DataFrame) -> float:
    count = table["count"].to_numpy()
    gap = np.abs(table["mean_p"].to_numpy() - table["mean_y"].to_numpy())
    return float(np.sum(count * gap) / count.sum())


def ece(y: ArrayLike, p: ArrayLike, bins: int = 10) -> float:
    """Expected calibration error, (1/N) sum_b N_b |mean p_b - mean y_b| over equal-frequency bins."""
    return _binned_ece(calibration_bins(y, p, bins))


def field_ece(y: ArrayLike, p: ArrayLike, field: ArrayLike, bins: int = 10) -> float:
    """Field-ECE: ECE over equal-frequency bins formed within each field value, pooled over all rows."""
    return _binned_ece(calibration_bins(y, p, bins, field=field))


def field_rce(y: ArrayLike, p: ArrayLike, field: ArrayLike) -> float:
    """Field-RCE: impression-weighted mean over field values of |sum(y - p)| / sum(y).

    Values with no positives are skipped and N counts the rows of the values kept; NaN if none is kept.
    """
    y, p, field = _check("field_rce", y, p, field=field)
    codes, uniques = _codes("field_rce", "field", field)
    n = np.bincount(codes, minlength=uniques.size)
    positives = np.bincount(codes, weights=y, minlength=uniques.size)
    residual = np.bincount(codes, weights=y - p, minlength=uniques.size)
    keep = positives > 0
    if not keep.any():
        return float("nan")
    return float(np.sum(n[keep] * np.abs(residual[keep]) / positives[keep]) / n[keep].sum())


def per_field_metrics(y: ArrayLike, p: ArrayLike, field: ArrayLike, users: ArrayLike | None = None) -> pd.DataFrame:
    """AUC, GAUC (with ``users``), PCOC and RCE = |sum(y - p)| / sum(y) within each field value, most
    impressions first, then a last row ``value = "(weighted mean)"``: each column's impression-weighted
    mean over the values where it is defined (so its RCE is the Field-RCE).

    Returns:
        DataFrame with columns ``value, impressions, positives, auc, gauc, pcoc, rce``.
    """
    y, p, field, users = _check("per_field_metrics", y, p, field=field, users=users)
    codes, uniques = _codes("per_field_metrics", "field", field)
    impressions, positives, group_auc = _group_auc(y, p, codes, uniques.size)
    predicted = np.bincount(codes, weights=p, minlength=uniques.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        pcoc_values = np.where(positives > 0, predicted / positives, np.nan)
        rce = np.where(positives > 0, np.abs(positives - predicted) / positives, np.nan)
    group_gauc = np.full(uniques.size, np.nan)
    if users is not None:
        for k in range(uniques.size):
            rows = codes == k
            group_gauc[k] = gauc(y[rows], p[rows], users[rows])
    df = pd.DataFrame({"value": uniques.astype(object), "impressions": impressions,
                       "positives": positives.astype(np.int64), "auc": group_auc, "gauc": group_gauc,
                       "pcoc": pcoc_values, "rce": rce})
    df = df.sort_values(["impressions", "value"], ascending=[False, True], kind="stable").reset_index(drop=True)
    mean = {"value": "(weighted mean)", "impressions": int(impressions.sum()), "positives": int(positives.sum())}
    for column in ("auc", "gauc", "pcoc", "rce"):
        ok = df[column].notna().to_numpy()
        mean[column] = float(np.average(df[column][ok], weights=df["impressions"][ok])) if ok.any() else np.nan
    return pd.concat([df, pd.DataFrame([mean])], ignore_index=True)


# ----------------------------------------------------------------------------- summaries


def oracle_metrics(y: ArrayLike, true_p: ArrayLike, p: ArrayLike | None = None) -> dict[str, float]:
    """AUC/LogLoss of the true probabilities (the ceiling) and, given ``p``, its distance to them."""
    out = {"Oracle AUC": auc(y, true_p), "Oracle LogLoss": logloss(y, true_p)}
    if p is not None:
        _, p, true_p = _check("oracle_metrics", y, p, true_p=true_p)
        diff = p - true_p.astype(np.float64)
        out["MAE to truth"] = float(np.mean(np.abs(diff)))
        out["RMSE to truth"] = float(np.sqrt(np.mean(diff**2)))
    return out


def summarize(
    y: ArrayLike,
    p: ArrayLike,
    *,
    field: ArrayLike | Mapping[str, ArrayLike] | None = None,
    users: ArrayLike | None = None,
    true_p: ArrayLike | None = None,
    bins: int = 10,
) -> dict[str, float]:
    """All metrics of one model in a fixed key order.

    Args:
        y: binary labels.
        p: predicted probabilities.
        field: values for Field-RCE/Field-ECE; a mapping ``name -> values`` gives keys such as
            ``Field-RCE[scenario]`` for each field.
        users: user ids for GAUC.
        true_p: true probabilities (synthetic data) for the oracle metrics and the distance to them.
        bins: equal-frequency bins for ECE and Field-ECE.

    Returns:
        ``AUC, LogLoss, GAUC, PCOC, ECE, Field-RCE, Field-ECE, Oracle AUC, Oracle LogLoss,
        MAE to truth, RMSE to truth``, each present only when its inputs are given.
    """
    out = {"AUC": auc(y, p), "LogLoss": logloss(y, p)}
    if users is not None:
        out["GAUC"] = gauc(y, p, users)
    out["PCOC"] = pcoc(y, p)
    out["ECE"] = ece(y, p, bins)
    fields = field if isinstance(field, Mapping) else ({} if field is None else {"": field})
    for name, values in fields.items():
        suffix = f"[{name}]" if name else ""
        out[f"Field-RCE{suffix}"] = field_rce(y, p, values)
        out[f"Field-ECE{suffix}"] = field_ece(y, p, values, bins)
    if true_p is not None:
        out.update(oracle_metrics(y, true_p, p))
    return out


def _format_cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return "nan" if np.isnan(value) else f"{value:.4f}"
    return str(value)


def metrics_table(rows: Mapping[str, Mapping[str, object]], *, markdown: bool = False) -> str:
    """Models as rows, metrics as columns (union of keys, first-seen order), 4 decimals, '-' if missing.

    Args:
        rows: ``model name -> {metric: value}``, e.g. from :func:`summarize`.
        markdown: a GitHub markdown table instead of the fixed-width text table.
    """
    if not rows:
        raise ValueError("metrics_table: `rows` is empty; give at least one model.")
    columns = list(dict.fromkeys(k for metrics in rows.values() for k in metrics))
    header = ["model", *columns]
    body = [[str(name), *(_format_cell(metrics.get(c)) for c in columns)] for name, metrics in rows.items()]
    if markdown:
        lines = [header, ["---", *("---:" for _ in columns)], *body]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in body)])


# ----------------------------------------------------------------------------- uncertainty


class ConfidenceInterval(NamedTuple):
    """A point estimate with a percentile-bootstrap interval."""

    estimate: float
    low: float
    high: float


def bootstrap_ci(
    values_fn: Callable[[np.ndarray], ArrayLike],
    n: int,
    rng: np.random.Generator,
    reps: int = 200,
    alpha: float = 0.05,
    max_cells: int = 10_000_000,
) -> ConfidenceInterval:
    """Percentile bootstrap interval of a statistic over ``n`` rows.

    ``values_fn`` receives an integer index matrix of shape ``(k, n)`` (one resample per row) and
    returns the ``k`` statistics, e.g. ``lambda idx: clicks[idx].mean(axis=1)``; it is called on
    ``np.arange(n)[None]`` for the point estimate and on resamples in chunks of at most
    ``max_cells`` indices.

    Raises:
        ValueError: ``n`` or ``reps`` below 1, ``alpha`` outside (0, 1), or a wrongly shaped result.
    """
    if n < 1 or reps < 1:
        raise ValueError(f"bootstrap_ci: `n` and `reps` must be >= 1. Got n={n}, reps={reps}.")
    if not 0 < alpha < 1:
        raise ValueError(f"bootstrap_ci: `alpha` must be in (0, 1). Got {alpha}.")

    def call(idx: np.ndarray) -> np.ndarray:
        out = np.asarray(values_fn(idx), dtype=np.float64).reshape(-1)
        if out.size != idx.shape[0]:
            raise ValueError(
                f"bootstrap_ci: `values_fn` must return one value per resample row ({idx.shape[0]}). Got {out.size}."
            )
        return out

    estimate = float(call(np.arange(n)[None, :])[0])
    chunk = max(1, max_cells // n)
    stats = np.concatenate([call(rng.integers(0, n, size=(min(chunk, reps - s), n))) for s in range(0, reps, chunk)])
    low, high = np.nanquantile(stats, [alpha / 2, 1 - alpha / 2])
    return ConfidenceInterval(estimate, float(low), float(high))
