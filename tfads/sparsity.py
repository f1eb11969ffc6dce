"""AdaSparse sparsity of a trained model per pruned layer and per scenario (for the sparsity map)."""

from __future__ import annotations

import numpy as np
import tf_keras as keras

from tfads.data import make_dataset
from tfads.layers import find_pruners, sparsity_report
from tfads.manifest import Manifest


def scenario_sparsity(
    model: keras.Model, manifest: Manifest, split: str = "test", *, max_batches: int = 8, domain: str = "scenario"
) -> tuple[np.ndarray, list[str], list[str]] | None:
    """(matrix layers x scenarios of pruned-unit fractions, layer names, scenario names), or None when
    the model has no pruning AdaSparse layer."""
    if not any(p.prunes for p in find_pruners(model)):
        return None
    lookup = model.get_layer(f"{domain}_lookup")
    vocabulary = lookup.get_vocabulary()
    ds = make_dataset(manifest.split_files(split), manifest, 2048, for_training=False).take(max_batches)
    names = list(manifest.features)
    batches = [({k: b[k] for k in names}, lookup(b[domain]).numpy()) for b in ds]
    report = sparsity_report(model, batches)
    return report.matrix, report.layers, [vocabulary[d] for d in report.domains]
