"""Posterior calibration statistics: per field value, equal-frequency bins of the predictions and their
observed rates, for every candidate bin count (the tables the AdaCalib layer is built from).

Pure numpy; the JSON format (``FORMAT_VERSION``) is documented in docs/methods/calibration.md "AdaCalib".
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

FORMAT_VERSION = 1
GLOBAL = "__global__"  # the name of the all-rows entry; never a field value
Task = Literal["ctr", "cvr"]


@dataclass(frozen=True)
class BinTable:
    """Equal-frequency bins of one value's predictions for one bin count ``K``.

    Attributes:
      boundaries: ``K + 1`` non-decreasing prediction quantiles (probabilities); the first is the
        smallest prediction, the last the largest. Row ``i`` falls in bin
        ``searchsorted(boundaries[1:-1], p, side="right")``.
      impressions: rows per bin (``K`` ints).
      positives: positive labels per bin.
      posterior: Beta-posterior mean rate per bin, smoothed toward the value's own smoothed rate.
      mean_pred: mean prediction per bin (the bin's boundary midpoint when the bin is empty).
    """

    boundaries: list[float]
    impressions: list[int]
    positives: list[int]
    posterior: list[float]
    mean_pred: list[float]


@dataclass(frozen=True)
class ValueStats:
    """Statistics of one field value (or of all rows, for the global entry).

    Attributes:
      impressions / positives: rows and positive labels of the value.
      rate: smoothed rate of the value (Beta posterior mean toward the global rate).
      mean_pred: mean prediction of the value.
      max_bins: the largest candidate bin count the value supports (0: too few rows for any; the
        layer then uses the global function for it).
      tables: one ``BinTable`` per candidate bin count, keyed by the count.
    """

    impressions: int
    positives: int
    rate: float
    mean_pred: float
    max_bins: int
    tables: dict[int, BinTable]


@dataclass(frozen=True)
class CalibStats:
    """Posterior calibration statistics for one task over one set of calibration fields.

    Attributes:
      task: ``ctr`` (rows = impressions) or ``cvr`` (rows = clicked impressions).
      bin_counts: candidate bin counts, increasing.
      min_per_bin / min_positives_per_bin: a value supports ``K`` bins when it has at least
        ``K * min_per_bin`` rows and ``K * min_positives_per_bin`` positives.
      prior_strength: pseudo-count of the Beta smoothing (bins toward their value, values toward global).
      global_stats: the entry over all rows (always supports at least the smallest bin count).
      fields: field name -> value (string) -> statistics.
    """

    task: Task
    bin_counts: tuple[int, ...]
    min_per_bin: int
    min_positives_per_bin: int
    prior_strength: float
    global_stats: ValueStats
    fields: dict[str, dict[str, ValueStats]] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise to the versioned JSON text (see docs/methods/calibration.md "AdaCalib")."""
        doc = asdict(self)
        doc["format_version"] = FORMAT_VERSION
        doc["global"] = doc.pop("global_stats")
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, where: str = "<calibration stats>") -> CalibStats:
        """Parse JSON written by ``to_json``; raise ValueError naming ``where`` on a bad document."""
        try:
            doc = json.loads(text)
            version = doc.get("format_version")
            if version != FORMAT_VERSION:
                raise ValueError(f"format_version must be {FORMAT_VERSION}. Got {version!r}.")
            return cls(
                task=doc["task"],
                bin_counts=tuple(int(k) for k in doc["bin_counts"]),
                min_per_bin=int(doc["min_per_bin"]),
                min_positives_per_bin=int(doc["min_positives_per_bin"]),
                prior_strength=float(doc["prior_strength"]),
                global_stats=_value_from_dict(doc["global"]),
                fields={
                    f: {v: _value_from_dict(s) for v, s in values.items()} for f, values in doc["fields"].items()
                },
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError, ValueError) as e:
            raise ValueError(f"{where}: not a calibration stats document: {e}") from e

    def write(self, path: str) -> None:
        """Write the JSON document to a local ``path`` (Beam jobs write ``to_json()`` via FileSystems)."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json())

    @classmethod
    def read(cls, path: str) -> CalibStats:
        """Read a document written by ``write``."""
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read(), where=path)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document as a dict (used in Keras layer configs)."""
        return json.loads(self.to_json())

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> CalibStats:
        """Inverse of ``to_dict``."""
        return cls.from_json(json.dumps(doc))


def _value_from_dict(d: Mapping[str, Any]) -> ValueStats:
    return ValueStats(
        impressions=int(d["impressions"]),
        positives=int(d["positives"]),
        rate=float(d["rate"]),
        mean_pred=float(d["mean_pred"]),
        max_bins=int(d["max_bins"]),
        tables={int(k): BinTable(**t) for k, t in d["tables"].items()},
    )


def _value_stats(
    pred: np.ndarray,
    label: np.ndarray,
    prior_rate: float,
    bin_counts: Sequence[int],
    *,
    min_per_bin: int,
    min_positives_per_bin: int,
    prior_strength: float,
) -> ValueStats:
    n, pos = len(pred), int(label.sum())
    rate = (pos + prior_strength * prior_rate) / (n + prior_strength)
    tables = {}
    for k in bin_counts:
        bounds = np.quantile(pred, np.linspace(0.0, 1.0, k + 1))
        bins = np.searchsorted(bounds[1:-1], pred, side="right")
        imps = np.bincount(bins, minlength=k)
        hits = np.bincount(bins, weights=label, minlength=k)
        post = (hits + prior_strength * rate) / (imps + prior_strength)
        sums = np.bincount(bins, weights=pred, minlength=k)
        mean = np.where(imps > 0, sums / np.maximum(imps, 1), (bounds[:-1] + bounds[1:]) / 2)
        tables[k] = BinTable(
            boundaries=bounds.tolist(),
            impressions=imps.astype(int).tolist(),
            positives=hits.astype(int).tolist(),
            posterior=post.tolist(),
            mean_pred=mean.tolist(),
        )
    supported = [k for k in bin_counts if n >= k * min_per_bin and pos >= k * min_positives_per_bin]
    return ValueStats(impressions=n, positives=pos, rate=float(rate), mean_pred=float(pred.mean()),
                      max_bins=max(supported, default=0), tables=tables)


def compute_calibration_stats(
    pred: ArrayLike,
    label: ArrayLike,
    field_values: Mapping[str, ArrayLike],
    bin_counts: Sequence[int] = (4, 8, 16, 32),
    min_per_bin: int = 50,
    *,
    min_positives_per_bin: int = 3,
    prior_strength: float = 20.0,
    task: Task = "ctr",
) -> CalibStats:
    """Compute posterior calibration statistics of uncalibrated predictions.

    Args:
      pred: uncalibrated probabilities, shape ``[n]``.
      label: 0/1 labels, shape ``[n]`` (for CVR pass clicked rows only, label = conversion).
      field_values: calibration field name -> values (any type, stringified), each shape ``[n]``.
      bin_counts: candidate numbers of equal-frequency bins, strictly increasing, each >= 2.
      min_per_bin / min_positives_per_bin: support thresholds (see ``CalibStats``).
      prior_strength: Beta pseudo-count for smoothing, > 0.
      task: ``ctr`` or ``cvr``.

    Returns:
      CalibStats with a global entry and one entry per (field, value).

    Raises:
      ValueError: on empty input, mismatched shapes, predictions outside [0, 1], labels not 0/1 or bad
        bin counts.
    """
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    y = np.asarray(label, dtype=np.float64).reshape(-1)
    if p.size == 0:
        raise ValueError("compute_calibration_stats: `pred` is empty.")
    if y.shape != p.shape:
        raise ValueError(f"compute_calibration_stats: `label` has {y.size} rows, `pred` {p.size}.")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("compute_calibration_stats: `pred` must be probabilities in [0, 1].")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("compute_calibration_stats: `label` must be 0/1.")
    ks = tuple(int(k) for k in bin_counts)
    if not ks or ks[0] < 2 or any(a >= b for a, b in zip(ks, ks[1:], strict=False)):
        raise ValueError(f"compute_calibration_stats: `bin_counts` must be increasing and >= 2. Got {ks}.")
    if task not in ("ctr", "cvr"):
        raise ValueError(f"compute_calibration_stats: `task` must be 'ctr' or 'cvr'. Got {task!r}.")
    if prior_strength <= 0:
        raise ValueError(f"compute_calibration_stats: `prior_strength` must be > 0. Got {prior_strength}.")
    opts = dict(min_per_bin=min_per_bin, min_positives_per_bin=min_positives_per_bin,
                prior_strength=prior_strength)
    global_rate = float(y.mean())
    glob = _value_stats(p, y, global_rate, ks, **opts)
    if glob.max_bins == 0:  # the global function is the last fallback: it always has the smallest count
        glob = replace(glob, max_bins=ks[0])
    fields: dict[str, dict[str, ValueStats]] = {}
    for name, values in field_values.items():
        v = np.asarray(values).reshape(-1).astype(str)
        if v.shape != p.shape:
            raise ValueError(f"compute_calibration_stats: field `{name}` has {v.size} rows, `pred` {p.size}.")
        if GLOBAL in v:
            raise ValueError(f"compute_calibration_stats: field `{name}` uses the reserved value {GLOBAL!r}.")
        order = np.argsort(v, kind="stable")
        uniq, starts = np.unique(v[order], return_index=True)
        groups = np.split(order, starts[1:])
        fields[name] = {str(u): _value_stats(p[g], y[g], glob.rate, ks, **opts) for u, g in zip(uniq, groups,
                                                                                                 strict=True)}
    return CalibStats(task=task, bin_counts=ks, global_stats=glob, fields=fields, **opts)
