"""PNG plots for evaluation, calibration, online learning and A/B reports (matplotlib, no pyplot).

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas, so nothing here
touches pyplot's global state or needs a display. Each function writes one PNG of exactly
``figsize * DPI`` pixels and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from tfads.entire_space import truth_bins
from tfads.metrics import calibration_bins

DPI = 100


def _figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def _reliability_axes(
    ax: Axes, curves: Mapping[str, tuple[ArrayLike, ArrayLike]], bins: int, against_truth: bool = False
) -> None:
    """Mean label (``against_truth``: mean true probability) vs mean prediction per equal-frequency bin, one
    line per curve, with the diagonal."""
    top = 0.0
    for name, (y, p) in curves.items():
        if against_truth:
            table = truth_bins(p, y, bins).rename(columns={"mean_q": "mean_y"})
        else:
            table = calibration_bins(y, p, bins)
        ax.plot(table["mean_p"], table["mean_y"], marker="o", markersize=3, label=name)
        top = max(top, table["mean_p"].max(), table["mean_y"].max())
    top = min(1.0, top * 1.05) or 1.0
    ax.plot([0, top], [0, top], linestyle="--", color="grey", linewidth=1, label="perfect")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)


def reliability_diagram(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    path: str | Path,
    bins: int = 10,
    title: str = "Reliability diagram",
    figsize: tuple[float, float] = (6.0, 7.0),
    *,
    against_truth: bool = False,
) -> Path:
    """Reliability diagram of several models over equal-frequency bins, above a histogram of predictions.

    Args:
        curves: ``model name -> (y, p)``; with ``against_truth``, ``model name -> (true probability, p)``.
        path: PNG file to write (parent directories are created).
        bins: equal-frequency bins per model.
        title: figure title.
        figsize: inches; the PNG is ``figsize * DPI`` pixels.
        against_truth: plot the mean true probability per bin (synthetic data) instead of the mean label.
    """
    if not curves:
        raise ValueError("reliability_diagram: `curves` is empty; give at least one model.")
    fig = _figure(figsize)
    ax, hist = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]})
    _reliability_axes(ax, curves, bins, against_truth)
    ax.set_ylabel("true probability (mean q)" if against_truth else "observed rate (mean y)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize="small")
    high = ax.get_xlim()[1]
    for name, (_, p) in curves.items():
        clipped = np.clip(np.asarray(p, dtype=float), 0, high)
        hist.hist(clipped, bins=40, range=(0, high), histtype="step", label=name)
    hist.set_yscale("log")
    hist.set_xlim(0, high)
    hist.set_xlabel("predicted probability (mean p)")
    hist.set_ylabel("count")
    fig.tight_layout()
    return _save(fig, path)


def head_and_tail_values(field: ArrayLike, k: int = 6, min_count: int = 100) -> list:
    """The ``k`` most frequent values of ``field`` and the ``k`` least frequent with ``min_count`` rows."""
    counts = pd.Series(np.asarray(field)).value_counts(sort=True)
    head = list(counts.index[:k])
    tail = [v for v in counts[counts >= min_count].index[::-1] if v not in head][:k]
    return head + tail[::-1]


def reliability_grid(
    y: ArrayLike,
    preds: Mapping[str, ArrayLike],
    field: ArrayLike,
    values: Sequence,
    path: str | Path,
    bins: int = 10,
    ncols: int = 4,
    title: str = "Reliability by field value",
) -> Path:
    """Small multiples: one reliability diagram per field value, several models overlaid.

    Args:
        y: binary labels.
        preds: ``model name -> p`` (same rows as ``y``).
        field: field value of each row; ``values`` picks the panels (see :func:`head_and_tail_values`).
        path: PNG file to write.
        bins: equal-frequency bins per panel and model.
        ncols: panels per row; the figure is 3 x 2.6 inches per panel.
        title: figure title.
    """
    if not values:
        raise ValueError("reliability_grid: `values` is empty; give at least one field value.")
    if not preds:
        raise ValueError("reliability_grid: `preds` is empty; give at least one model.")
    y, field = np.asarray(y), np.asarray(field)
    preds = {name: np.asarray(p) for name, p in preds.items()}
    ncols = min(ncols, len(values))
    nrows = -(-len(values) // ncols)
    fig = _figure((3.0 * ncols, 2.6 * nrows + 0.4))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, value in zip(axes, values, strict=False):
        rows = field == value
        if not rows.any():
            raise ValueError(f"reliability_grid: field value {value!r} has no rows.")
        _reliability_axes(ax, {name: (y[rows], p[rows]) for name, p in preds.items()}, bins)
        ax.set_title(f"{value} (n={int(rows.sum())})", fontsize="small")
        ax.tick_params(labelsize="x-small")
    for ax in axes[len(values) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize="small")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path)


def per_field_auc_vs_traffic(
    df_by_model: Mapping[str, pd.DataFrame],
    path: str | Path,
    title: str = "AUC per field value vs traffic",
    figsize: tuple[float, float] = (7.0, 5.0),
) -> Path:
    """Scatter of per-value AUC against impressions (log x), one colour per model.

    Args:
        df_by_model: ``model name -> DataFrame`` from :func:`tfads.metrics.per_field_auc`.
    """
    if not df_by_model:
        raise ValueError("per_field_auc_vs_traffic: `df_by_model` is empty; give at least one model.")
    fig = _figure(figsize)
    ax = fig.subplots()
    for name, df in df_by_model.items():
        missing = {"impressions", "auc"} - set(df.columns)
        if missing:
            raise ValueError(f"per_field_auc_vs_traffic: frame of {name!r} lacks columns {sorted(missing)}.")
        ax.scatter(df["impressions"], df["auc"], s=10, alpha=0.6, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("impressions")
    ax.set_ylabel("AUC")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def sparsity_map(
    matrix: ArrayLike,
    layer_names: Sequence[str],
    domain_names: Sequence[str],
    path: str | Path,
    title: str = "Pruned share of units per layer and scenario",
    figsize: tuple[float, float] = (10.0, 4.0),
    max_labels: int = 40,
) -> Path:
    """Heatmap of a (layers x domains) matrix, e.g. AdaSparse sparsity; at most ``max_labels`` x ticks."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (len(layer_names), len(domain_names)):
        raise ValueError(
            f"sparsity_map: `matrix` shape {matrix.shape} does not match "
            f"{len(layer_names)} layer names x {len(domain_names)} domain names."
        )
    fig = _figure(figsize)
    ax = fig.subplots()
    image = ax.imshow(matrix, aspect="auto", interpolation="nearest", cmap="viridis")
    fig.colorbar(image, ax=ax)
    ax.set_yticks(range(len(layer_names)), labels=list(layer_names))
    step = max(1, -(-len(domain_names) // max_labels))
    ticks = range(0, len(domain_names), step)
    ax.set_xticks(ticks, labels=[str(domain_names[i]) for i in ticks], rotation=90, fontsize="x-small")
    ax.set_xlabel("domain")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def metric_over_time(
    series: Mapping[str, tuple[ArrayLike, ArrayLike]],
    path: str | Path,
    ylabel: str,
    xlabel: str = "day",
    title: str = "",
    figsize: tuple[float, float] = (7.0, 4.5),
) -> Path:
    """Lines of a metric over days, hours or tuner trials: ``series`` maps name -> (x, y)."""
    if not series:
        raise ValueError("metric_over_time: `series` is empty; give at least one line.")
    fig = _figure(figsize)
    ax = fig.subplots()
    for name, (x, values) in series.items():
        ax.plot(x, values, marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def bar_with_ci(
    arms: Mapping[str, tuple[float, float, float]],
    path: str | Path,
    ylabel: str,
    title: str = "",
    figsize: tuple[float, float] = (6.0, 4.5),
) -> Path:
    """Bars with error bars for A/B arms: ``arms`` maps name -> (estimate, low, high).

    Accepts :class:`tfads.metrics.ConfidenceInterval` values as they are.
    """
    if not arms:
        raise ValueError("bar_with_ci: `arms` is empty; give at least one arm.")
    est, low, high = (np.array(v, dtype=float) for v in zip(*arms.values(), strict=True))
    if np.any(low > est) or np.any(high < est):
        raise ValueError("bar_with_ci: each arm needs low <= estimate <= high.")
    fig = _figure(figsize)
    ax = fig.subplots()
    x = np.arange(len(arms))
    ax.bar(x, est, yerr=np.vstack([est - low, high - est]), capsize=6, color="tab:blue", alpha=0.8)
    ax.set_xticks(x, labels=list(arms))
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def importance_bars(
    panels: Mapping[str, tuple[Sequence[str], ArrayLike, ArrayLike | None]],
    path: str | Path,
    title: str = "Feature importance",
) -> Path:
    """Horizontal bars of per-feature importance, one panel per method side by side, features top to bottom in
    the order given; ``panels`` maps method -> (features, values, std or None); NaN values draw no bar.

    The figure is 4.5 inches wide per panel and 0.28 inches high per feature (plus 1.5).
    """
    if not panels:
        raise ValueError("importance_bars: `panels` is empty; give at least one method.")
    rows = max(len(names) for names, _, _ in panels.values())
    fig = _figure((4.5 * len(panels), 0.28 * rows + 1.5))
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    for ax, (method, (names, values, std)) in zip(axes, panels.items(), strict=True):
        y = np.arange(len(names))
        ax.barh(y, np.nan_to_num(np.asarray(values, dtype=float)), xerr=None if std is None else np.nan_to_num(std),
                color="tab:blue", alpha=0.8, capsize=2)
        ax.set_yticks(y, labels=list(names), fontsize="small")
        ax.invert_yaxis()
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.set_title(method)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
