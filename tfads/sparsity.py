"""AdaSparse sparsity of a trained model per pruned layer and per scenario (for the sparsity map)."""

from __future__ import annotations

import numpy as np
import tf_keras as keras

from tfads.data import make_dataset
from tfads.layers import find_pruners, sparsity_report
from tfads.layers.adasparse import SparsityReport
from tfads.core.manifest import Manifest


def scenario_report(
    model: keras.Model, manifest: Manifest, split: str = "test", *, max_batches: int = 8, domain: str | None = None
) -> tuple[SparsityReport, list[str]] | None:
    """``sparsity_report`` over the first ``max_batches`` batches of 2048 rows of ``split``, with the value
    names of its domains (``domain``: default the primary domain feature); None when the model has no
    pruning AdaSparse layer."""
    if not any(p.prunes for p in find_pruners(model)):
        return None
    domain = domain or manifest.domain
    lookup = model.get_layer(f"{domain}_lookup")
    vocabulary = lookup.get_vocabulary()
    ds = make_dataset(manifest.split_files(split), manifest, 2048, for_training=False).take(max_batches)
    names = list(manifest.model_inputs)
    batches = [({k: b[k] for k in names}, lookup(b[domain]).numpy()) for b in ds]
    report = sparsity_report(model, batches)
    return report, [vocabulary[d] for d in report.domains]


def scenario_sparsity(
    model: keras.Model, manifest: Manifest, split: str = "test", *, max_batches: int = 8, domain: str | None = None
) -> tuple[np.ndarray, list[str], list[str]] | None:
    """(matrix layers x scenarios of pruned-unit fractions, layer names, scenario names), or None when
    the model has no pruning AdaSparse layer."""
    found = scenario_report(model, manifest, split, max_batches=max_batches, domain=domain)
    if found is None:
        return None
    report, scenarios = found
    return report.matrix, report.layers, scenarios


def mask_sharing(report: SparsityReport, groups: np.ndarray, min_rows: int = 1000) -> dict[str, dict[str, float]]:
    """Per layer: how domain-driven the masks are and whether domains of one group keep the same units.

    ``groups[j]`` is a group label of ``report.domains[j]`` (e.g. the generator's scenario cluster).
    Returns per layer ``between_share`` (share of the per-unit keep variance that lies between domains;
    1 when masks depend on the domain only) and ``same_group`` / ``other_group``: mean correlation of
    the keep profiles (centred on the all-rows mean) of domains with >= ``min_rows`` rows, over pairs in the
    same group and in different groups.
    """
    rows = np.array([report.rows[d] for d in report.domains], dtype=float)
    big = rows >= min_rows
    same = groups[big][:, None] == groups[big][None, :]
    off_diagonal = ~np.eye(int(big.sum()), dtype=bool)
    out = {}
    for name, keep in zip(report.layers, report.unit_keep, strict=True):
        mean = rows @ keep / rows.sum()
        total = mean * (1 - mean)
        between = rows @ (keep - mean) ** 2 / rows.sum()
        profiles = keep[big] - mean
        profiles /= np.linalg.norm(profiles, axis=1, keepdims=True) + 1e-12
        corr = profiles @ profiles.T
        out[name] = {
            "between_share": float(between.sum() / total.sum()) if total.sum() > 0 else float("nan"),
            "same_group": float(corr[same & off_diagonal].mean()) if (same & off_diagonal).any() else float("nan"),
            "other_group": float(corr[~same].mean()) if (~same).any() else float("nan"),
            "domains": int(big.sum()),
        }
    return out
