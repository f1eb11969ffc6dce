"""``tfads autoheri``: AutoHERI's search -> prune -> retrain; writes a normal model dir (the retrained model with the
found edges fixed), its search run under ``search/`` and the edges in ``autoheri.json``."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import tensorflow as tf

from tfads.autoheri import edges_from_gates, heri_layer
from tfads.core.experiment import ExperimentConfig
from tfads.core.manifest import load_manifest
from tfads.train import train

log = logging.getLogger(__name__)
AUTOHERI_RECORD = "autoheri.json"  # the searched gates and the edges kept, beside the retrained model
SEARCH_SUBDIR = "search"  # the search run's model dir, inside the output dir


def with_heri(config: ExperimentConfig, **changes) -> ExperimentConfig:
    """``config`` with AutoHERI enabled and ``changes`` to ``model.heri``."""
    heri = dataclasses.replace(config.model.heri, enabled=True, **changes)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, heri=heri))


def run_autoheri(config: ExperimentConfig, data: str, out: str, *, verbose: int | str = "auto") -> dict:
    """Search the edges of ``config`` (``model.heri`` with mode ``search``, every other setting as given) on
    ``data``, keep the edges whose gate is above ``model.heri.threshold`` and retrain with them fixed into ``out``.

    Both phases are ordinary ``tfads.train.train`` runs (early stopping, checkpoints, resume within a phase);
    the search's architecture steps read the valid split. Returns the record written to ``out/autoheri.json``:
    ``edges``, ``gates`` (row: CTR layer, column: CVR layer), ``threshold``, ``tower_units`` and both runs'
    ``epochs_run`` / ``best_epoch``.

    Raises:
      ValueError: the data has no conversion label (AutoHERI needs the CVR tower).
    """
    manifest = load_manifest(data)
    if not manifest.has_conversion:
        raise ValueError(f"AutoHERI needs a conversion label (ESMM's CVR tower); {data} has clicks only")
    heri = config.model.heri
    search_dir = os.path.join(out, SEARCH_SUBDIR)
    search = train(with_heri(config, mode="search", edges=[]), manifest, search_dir, verbose=verbose)
    gates = heri_layer(search.model).gates().numpy()
    edges = edges_from_gates(gates, heri.threshold)
    log.info("AutoHERI kept %d of %d edges (gate > %g): %s", len(edges), gates.size, heri.threshold, edges)
    final = train(with_heri(config, mode="fixed", edges=edges), manifest, out, verbose=verbose)
    record = {
        "edges": edges,
        "gates": gates.tolist(),
        "threshold": heri.threshold,
        "tower_units": list(config.model.tower_units),
        "search": {"model_dir": search_dir, "epochs_run": search.epochs_run, "best_epoch": search.best_epoch},
        "retrain": {"model_dir": out, "epochs_run": final.epochs_run, "best_epoch": final.best_epoch},
    }
    with tf.io.gfile.GFile(os.path.join(out, AUTOHERI_RECORD), "w") as f:
        json.dump(record, f, indent=2)
    return record
