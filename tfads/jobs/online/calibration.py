"""AdaCalib statistics that follow drift: incremental posterior counts merged with the old ones.

Each update adds the new shard's rows to the previous :class:`CalibStats`: a (field, value) seen
before keeps its bin boundaries, its old counts are multiplied by ``decay`` and the new rows are
counted into the same bins; its rate and the bins' posteriors are recomputed from the merged counts
(the Beta smoothing of ``compute_calibration_stats``). New values get fresh tables from the new rows.
With ``decay`` < 1 old traffic fades out geometrically (effective memory 1 / (1 - decay) updates).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

from tfads.calibration.stats import BinTable, CalibStats, ValueStats, compute_calibration_stats


def refresh_stats(
    old: CalibStats | None,
    pred: ArrayLike,
    label: ArrayLike,
    field_values: Mapping[str, ArrayLike],
    *,
    decay: float = 1.0,
    task: str = "ctr",
) -> CalibStats:
    """``old`` statistics (or none) updated with new rows; same format, readable by AdaCalib."""
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    y = np.asarray(label, dtype=np.float64).reshape(-1)
    if old is None:
        return compute_calibration_stats(p, y, field_values, task=task)
    fresh = compute_calibration_stats(
        p, y, field_values, old.bin_counts, old.min_per_bin,
        min_positives_per_bin=old.min_positives_per_bin, prior_strength=old.prior_strength, task=old.task,
    )
    glob = _merge(old, old.global_stats, p, y, decay, prior_rate=None)
    fields: dict[str, dict[str, ValueStats]] = {}
    for name, values in field_values.items():
        v = np.asarray(values).reshape(-1).astype(str)
        merged = {k: _decayed(old, s, decay, glob.rate) for k, s in old.fields.get(name, {}).items()}
        for value, stats in fresh.fields[name].items():
            rows = v == value
            merged[value] = (_merge(old, merged[value], p[rows], y[rows], 1.0, glob.rate)
                             if value in merged else stats)
        fields[name] = merged
    return CalibStats(task=old.task, bin_counts=old.bin_counts, min_per_bin=old.min_per_bin,
                      min_positives_per_bin=old.min_positives_per_bin, prior_strength=old.prior_strength,
                      global_stats=glob, fields=fields)


def _decayed(old: CalibStats, vs: ValueStats, decay: float, prior_rate: float) -> ValueStats:
    return _merge(old, vs, np.zeros(0), np.zeros(0), decay, prior_rate)


def _merge(
    old: CalibStats, vs: ValueStats, p: np.ndarray, y: np.ndarray, decay: float, prior_rate: float | None
) -> ValueStats:
    """One value's statistics with old counts x ``decay`` plus the rows (p, y) in the same bins."""
    m = old.prior_strength
    n = vs.impressions * decay + len(p)
    pos = vs.positives * decay + float(y.sum())
    is_global = prior_rate is None
    if is_global:  # the global entry is smoothed toward its own rate and always supports the smallest K
        prior_rate = pos / max(n, 1e-12)
    rate = (pos + m * prior_rate) / (n + m)
    tables = {}
    for k, t in vs.tables.items():
        bounds = np.asarray(t.boundaries, dtype=np.float64)
        if len(p):
            bounds[0], bounds[-1] = min(bounds[0], p.min()), max(bounds[-1], p.max())
        bins = np.searchsorted(bounds[1:-1], p, side="right")
        imps = np.asarray(t.impressions, dtype=np.float64) * decay + np.bincount(bins, minlength=k)
        hits = np.asarray(t.positives, dtype=np.float64) * decay + np.bincount(bins, weights=y, minlength=k)
        sums = (np.asarray(t.mean_pred) * np.asarray(t.impressions, dtype=np.float64) * decay
                + np.bincount(bins, weights=p, minlength=k))
        mean = np.where(imps > 0, sums / np.maximum(imps, 1e-12), (bounds[:-1] + bounds[1:]) / 2)
        tables[k] = BinTable(boundaries=bounds.tolist(), impressions=np.round(imps, 3).tolist(),
                             positives=np.round(hits, 3).tolist(), posterior=((hits + m * rate) / (imps + m)).tolist(),
                             mean_pred=mean.tolist())
    supported = [k for k in old.bin_counts if n >= k * old.min_per_bin and pos >= k * old.min_positives_per_bin]
    mean_pred = (vs.mean_pred * vs.impressions * decay + float(p.sum())) / max(n, 1e-12)
    max_bins = max(supported, default=old.bin_counts[0] if is_global else 0)
    return ValueStats(impressions=int(round(n)), positives=int(round(pos)), rate=float(rate),
                      mean_pred=float(mean_pred), max_bins=max_bins, tables=tables)
