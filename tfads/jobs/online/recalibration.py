"""Calibration that follows drift in the served model: the AdaCalib layers of a ``tfads calibrate`` model
are rebuilt from the refreshed posterior statistics and refitted after each accepted update, and the
exported version is the combined model (calibrated ``ctr`` / ``cvr`` / ``ctcvr`` plus ``*_raw``).

The base model is trained by the updates as before; the layers only read its predictions.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tf_keras as keras

from tfads.calibration.combined import combined_model
from tfads.calibration import AdaCalib, CalibStats, fit_adacalib
from tfads.calibration.fit import calibration_inputs
from tfads.model_io import json_plain

# AdaCalib's keyword-only settings (selection, temperature, ...): kept when a layer is rebuilt
SETTINGS = tuple(n for n, p in inspect.signature(AdaCalib.__init__).parameters.items() if p.kind == p.KEYWORD_ONLY)


def refit(
    layer: AdaCalib, stats: CalibStats, pred: ArrayLike, label: ArrayLike, field_values: Mapping[str, ArrayLike],
    *, epochs: int, seed: int,
) -> AdaCalib:
    """A new AdaCalib over ``stats`` with ``layer``'s fields and settings, fitted on (pred, label)."""
    config = layer.get_config()
    settings = {k: config[k] for k in SETTINGS}
    return fit_adacalib(stats, pred, label, {f: field_values[f] for f in layer.fields},
                        epochs=epochs, seed=seed, name=layer.name, **settings)


def calibrated_scores(layers: Mapping[str, AdaCalib], scored: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``scored`` (base outputs, labels, fields) with each task's output replaced by its calibrated value."""
    out = dict(scored)
    for task, layer in layers.items():
        x = calibration_inputs(scored[task], {f: scored[f] for f in layer.fields})
        out[task] = np.asarray(layer(x, training=False)).reshape(-1)
    return out


def export_view(base: keras.Model, layers: Mapping[str, AdaCalib]) -> keras.Model:
    """The model to export: ``base`` itself, or base + layers combined (``base`` is then frozen)."""
    return combined_model(base, dict(layers)) if layers else base


def write_layers(directory: str, layers: Mapping[str, AdaCalib]) -> None:
    """Each layer's config (``adacalib_<task>.json``, statistics included) and weights (``.npz``)."""
    for task, layer in layers.items():
        with open(os.path.join(directory, f"adacalib_{task}.json"), "w", encoding="utf-8") as f:
            json.dump(layer.get_config(), f, default=json_plain)
        np.savez(os.path.join(directory, f"adacalib_{task}.npz"), *layer.get_weights())


def read_layers(directory: str, tasks: list[str]) -> dict[str, AdaCalib]:
    """The layers :func:`write_layers` wrote, rebuilt and carrying their fitted weights."""
    layers = {}
    for task in tasks:
        with open(os.path.join(directory, f"adacalib_{task}.json"), encoding="utf-8") as f:
            layer = AdaCalib.from_config(json.load(f))
        layer(calibration_inputs(np.full(1, 0.5), {name: ["?"] for name in layer.fields}))  # builds the weights
        with np.load(os.path.join(directory, f"adacalib_{task}.npz")) as saved:
            layer.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])
        layers[task] = layer
    return layers
