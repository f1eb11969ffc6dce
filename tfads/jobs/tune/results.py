"""Sweep reports: the trials table (Markdown + CSV), objective plots and the best config as YAML."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from tfads.plots import _figure
from tfads.jobs.tune.config import TuneConfig
from tfads.jobs.tune.tuner import PROJECT, RESULT_FILE

TOP_HPARAMS = 4


@dataclass(frozen=True)
class SweepReport:
    """Paths of what ``write_report`` wrote (``best_yaml`` is None when no trial completed)."""

    table_md: str
    table_csv: str
    objective_png: str
    hparams_png: str
    best_yaml: str | None
    completed: int
    failed: int


def load_results(directory: str) -> list[dict[str, Any]]:
    """Every trial's ``result.json`` under a sweep directory, by trial id."""
    paths = tf.io.gfile.glob(os.path.join(directory, PROJECT, "trial_*", RESULT_FILE))
    results = []
    for path in paths:
        with tf.io.gfile.GFile(path) as f:
            results.append(json.load(f))
    return sorted(results, key=lambda r: int(r["trial_id"]))


def results_table(results: list[dict[str, Any]], tune: TuneConfig) -> pd.DataFrame:
    """One row per trial, best objective first, failed trials last: id, status, objective, the other
    validation metrics, the sampled hyperparameters, the tuner that ran it and the error."""
    rows = []
    for r in results:
        row = {"trial": r["trial_id"], "status": r["status"], tune.objective.name: r["score"]}
        row.update({k: v for k, v in sorted(r["metrics"].items()) if k.startswith("val_") and k != tune.objective.name})
        row.update(r["values"])
        row.update({"tuner": r["tuner_id"], "seconds": r["seconds"], "error": r["error"] or ""})
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    ascending = tune.objective.mode == "min"
    return table.sort_values(tune.objective.name, ascending=ascending, na_position="last", kind="stable").reset_index(
        drop=True
    )


def hparam_importance(table: pd.DataFrame, names: list[str], objective: str) -> dict[str, float]:
    """How strongly each hyperparameter goes with the objective over completed trials, in [0, 1]:
    |Spearman rho| for numbers, the correlation ratio (eta) for categories; most important first."""
    done = table[table["status"] == "COMPLETED"]
    scores = {}
    for name in names:
        if name not in done or done[name].nunique(dropna=True) < 2:
            continue
        x, y = done[name], done[objective].astype(float)
        if pd.api.types.is_numeric_dtype(x) and not pd.api.types.is_bool_dtype(x):
            rho = x.astype(float).corr(y, method="spearman")
            scores[name] = 0.0 if np.isnan(rho) else abs(float(rho))
        else:
            total = float(((y - y.mean()) ** 2).sum())
            between = float(sum(len(g) * (g.mean() - y.mean()) ** 2 for _, g in y.groupby(x.astype(str))))
            scores[name] = float(np.sqrt(between / total)) if total > 0 else 0.0
    return dict(sorted(scores.items(), key=lambda kv: -kv[1]))


def best_experiment_yaml(result: dict[str, Any], tune: TuneConfig) -> str:
    """The best trial's experiment as YAML ``tfads train --config`` accepts (absolute schema path)."""
    header = (
        f"# Best trial {result['trial_id']} of the sweep {tune.path}:\n"
        f"# {tune.objective.name} = {result['score']:.6f} with {json.dumps(result['values'], sort_keys=True)}\n"
    )
    return header + yaml.safe_dump(result["config"], sort_keys=False)


def write_report(directory: str, tune: TuneConfig) -> SweepReport:
    """Write ``results.md``, ``results.csv``, ``objective.png``, ``hparams.png`` and ``best.yaml``
    into the sweep directory from the trials' result files."""
    results = load_results(directory)
    table = results_table(results, tune)
    files = ("results.md", "results.csv", "objective.png", "hparams.png")
    paths = {name: os.path.join(directory, name) for name in files}
    _write(paths["results.csv"], table.to_csv(index=False))
    _write(paths["results.md"], _markdown(table, tune))
    _write(paths["objective.png"], _png(plot_objective(table, tune.objective.name, tune.objective.mode)))
    hparams = [p.name for p in tune.space.params]
    importance = hparam_importance(table, hparams, tune.objective.name) if not table.empty else {}
    _write(paths["hparams.png"], _png(plot_hparams(table, importance, tune)))
    completed = [r for r in results if r["status"] == "COMPLETED"]
    best_yaml = None
    if completed:
        best = table.loc[table["status"] == "COMPLETED", "trial"].iloc[0]
        best_yaml = os.path.join(directory, "best.yaml")
        _write(best_yaml, best_experiment_yaml(next(r for r in completed if r["trial_id"] == best), tune))
    return SweepReport(
        table_md=paths["results.md"],
        table_csv=paths["results.csv"],
        objective_png=paths["objective.png"],
        hparams_png=paths["hparams.png"],
        best_yaml=best_yaml,
        completed=len(completed),
        failed=len(results) - len(completed),
    )


def plot_objective(table: pd.DataFrame, objective: str, mode: str) -> Figure:
    """Objective per trial (trial order) with the best-so-far line; failed trials marked on the axis."""
    fig = _figure((7, 4))
    ax = fig.add_subplot()
    if not table.empty:
        ordered = table.assign(_id=table["trial"].astype(int)).sort_values("_id")
        done = ordered[ordered["status"] == "COMPLETED"]
        ax.plot(done["_id"], done[objective], "o", label="trial")
        best = done[objective].cummax() if mode == "max" else done[objective].cummin()
        ax.step(done["_id"], best, where="post", label="best so far")
        failed = ordered[ordered["status"] != "COMPLETED"]
        if len(failed):
            ax.plot(failed["_id"], [ax.get_ylim()[0]] * len(failed), "rx", label="failed")
        ax.legend()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title(f"{objective} per trial")
    fig.tight_layout()
    return fig


def plot_hparams(table: pd.DataFrame, importance: dict[str, float], tune: TuneConfig) -> Figure:
    """Objective against each of the most important hyperparameters (one panel each)."""
    names = list(importance)[:TOP_HPARAMS]
    fig = _figure((4 * max(1, len(names)), 3.5))
    if not names:
        fig.add_subplot().text(0.5, 0.5, "fewer than two completed trials varying a hyperparameter", ha="center")
    done = table[table["status"] == "COMPLETED"] if not table.empty else table
    params = {p.name: p for p in tune.space.params}
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        x = done[name]
        if params[name].kind == "choice":
            categories = [str(v) for v in params[name].values]
            ax.plot([categories.index(str(v)) for v in x], done[tune.objective.name], "o")
            ax.set_xticks(range(len(categories)), categories)
        else:
            ax.plot(x, done[tune.objective.name], "o")
            spec = params[name]
            if spec.log:
                ax.set_xscale("log")
                if spec.high / spec.low >= 10:  # major ticks exist: minor labels would only crowd
                    ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlim(spec.low, spec.high)
        ax.set_xlabel(name)
        ax.set_ylabel(tune.objective.name)
        ax.set_title(f"importance {importance[name]:.2f}")
    fig.tight_layout()
    return fig


def _markdown(table: pd.DataFrame, tune: TuneConfig) -> str:
    o = tune.objective
    title = f"# Sweep {tune.path}\n\nObjective: {o.name} ({o.mode}), oracle: {tune.oracle.type}\n\n"
    if table.empty:
        return title + "No finished trials.\n"
    cells = table.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else _cell(v))
    lines = ["| " + " | ".join(cells.columns) + " |", "|" + "---|" * len(cells.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.astype(str).itertuples(index=False)]
    return title + "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "/")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _write(path: str, data: str | bytes) -> None:
    with tf.io.gfile.GFile(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
