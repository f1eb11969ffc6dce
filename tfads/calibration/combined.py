"""The calibrated model: a frozen base model with one AdaCalib layer per task, and the way back apart."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tf_keras as keras

from tfads.calibration.adacalib import AdaCalib
from tfads.core.names import CTCVR, CTR, CVR, HEAD_LABELS, RAW_SUFFIX
from tfads.layers.derived import JoinFields, derived_layers


def calibrated_tasks(heads: tuple[str, ...] | list[str]) -> list[str]:
    """The heads AdaCalib calibrates among a model's ``heads``: ``ctr``, and ``cvr`` for ESMM.

    Each is fitted on the rows of ``names.HEAD_LABELS[task]`` (CVR: clicked impressions); the served
    pCTCVR is the product of the two calibrated heads, the number an oCPA bid multiplies (why not a
    layer of its own: docs/decisions/0035-calibrated-bids.md).
    """
    return [task for task in (CTR, CVR) if task in heads]


def task_rows(labels: Mapping[str, ArrayLike], task: str) -> np.ndarray:
    """Boolean mask of the rows ``task`` is calibrated and evaluated on, from label columns by role."""
    label, only = HEAD_LABELS[task]
    return np.asarray(labels[only]) == 1 if only else np.ones(len(labels[label]), bool)


def combined_model(base: keras.Model, layers: dict[str, AdaCalib]) -> keras.Model:
    """Frozen base model + AdaCalib: each head calibrated (``ctr``; ``cvr`` and their product ``ctcvr`` for
    ESMM) beside its uncalibrated output ``<head>_raw``. The inputs are the base model's raw fields; a
    calibration field that is a derived feature (the default, scenario) is computed from them by a copy
    of the base model's own ``JoinFields`` layer."""
    base.trainable = False
    inputs = {name: keras.Input(shape=(), dtype=t.dtype, name=name) for name, t in base.input.items()}
    values = dict(inputs)
    wanted = {f for layer in layers.values() for f in layer.fields if f not in inputs}
    for name, join in derived_layers(base).items():
        if name in wanted:
            copy = JoinFields.from_config(join.get_config())
            values[name] = copy({f: inputs[f] for f in copy.fields})
    unknown = sorted(wanted - set(values))
    if unknown:
        raise ValueError(f"combined_model: calibration field(s) {unknown} are neither inputs of the base model nor "
                         f"derived in it (inputs: {sorted(inputs)})")
    raw = base(inputs, training=False)
    outputs = {k + RAW_SUFFIX: keras.layers.Identity(name=k + RAW_SUFFIX)(raw[k]) for k in raw}
    for task in calibrated_tasks(list(raw)):
        layer = layers.get(task)
        if layer is None:
            outputs[task] = keras.layers.Identity(name=task)(raw[task])
            continue
        calibrated = layer({"prediction": raw[task], **{f: values[f] for f in layer.fields}})
        outputs[task] = keras.layers.Reshape((1,), name=task)(calibrated)
    if CTCVR in raw:
        outputs[CTCVR] = keras.layers.Multiply(name=CTCVR)([outputs[CTR], outputs[CVR]])
    return keras.Model(inputs, outputs, name=f"{base.name}_adacalib")


def split_calibrated(model: keras.Model, *, trainable_base: bool = False) -> tuple[keras.Model, dict[str, AdaCalib]]:
    """The inverse of :func:`combined_model`: ``(base, {task: AdaCalib})``; ``(model, {})`` for a plain model.

    ``trainable_base`` unfreezes the base (``combined_model`` froze it), e.g. to keep training it online.
    """
    names = {layer.name for layer in model.layers}
    sources = {task: model.get_layer(task).inbound_nodes[0].inbound_layers for task in (CTR, CVR) if task in names}
    layers = {task: layer for task, layer in sources.items() if isinstance(layer, AdaCalib)}
    if not layers:
        return model, {}
    (base,) = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if trainable_base:
        base.trainable = True
    return base, layers
