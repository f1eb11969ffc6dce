"""The calibrated model: a frozen base model with one AdaCalib layer per task, and the way back apart."""

from __future__ import annotations

import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tf_keras as keras

from tfads.calibration.adacalib import AdaCalib

TASKS = {"ctr": ("click", None), "cvr": ("conversion", "click")}  # task -> (label, row filter)
HEADS = ("ctr", "cvr", "ctcvr")


def combined_model(base: keras.Model, layers: dict[str, AdaCalib]) -> keras.Model:
    """Frozen base model + AdaCalib: outputs ctr, cvr, ctcvr (calibrated) and ctr_raw, cvr_raw, ctcvr_raw."""
    base.trainable = False
    inputs = {name: keras.Input(shape=(), dtype=t.dtype, name=name) for name, t in base.input.items()}
    raw = base(inputs, training=False)
    outputs = {f"{k}_raw": keras.layers.Identity(name=f"{k}_raw")(raw[k]) for k in HEADS}
    for task, layer in layers.items():
        calibrated = layer({"prediction": raw[task], **{f: inputs[f] for f in layer.fields}})
        outputs[task] = keras.layers.Reshape((1,), name=task)(calibrated)
    outputs["ctcvr"] = keras.layers.Multiply(name="ctcvr")([outputs["ctr"], outputs["cvr"]])
    return keras.Model(inputs, outputs, name=f"{base.name}_adacalib")


def split_calibrated(model: keras.Model, *, trainable_base: bool = False) -> tuple[keras.Model, dict[str, AdaCalib]]:
    """The inverse of :func:`combined_model`: ``(base, {task: AdaCalib})``; ``(model, {})`` for a plain model.

    ``trainable_base`` unfreezes the base (``combined_model`` froze it), e.g. to keep training it online.
    """
    names = {layer.name for layer in model.layers}
    sources = {task: model.get_layer(task).inbound_nodes[0].inbound_layers for task in ("ctr", "cvr") if task in names}
    layers = {task: layer for task, layer in sources.items() if isinstance(layer, AdaCalib)}
    if not layers:
        return model, {}
    (base,) = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if trainable_base:
        base.trainable = True
    return base, layers
