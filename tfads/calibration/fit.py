"""Train an AdaCalib layer on calibration-split predictions with log loss (base model frozen)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

import tfads  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tf_keras as keras

from tfads.calibration.adacalib import PREDICTION, AdaCalib
from tfads.calibration.stats import CalibStats


def calibration_inputs(pred: ArrayLike, fields: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
    """The AdaCalib input dict from a prediction array and field-value arrays (values as strings)."""
    p = np.asarray(pred, dtype=np.float32).reshape(-1)
    out = {PREDICTION: p}
    for name, values in fields.items():
        v = np.asarray(values).reshape(-1).astype(str).astype(object)
        if v.shape != p.shape:
            raise ValueError(f"calibration_inputs: field `{name}` has {v.size} rows, predictions {p.size}.")
        out[name] = v
    return out


def fit_adacalib(
    stats: CalibStats,
    p_calib: ArrayLike,
    y_calib: ArrayLike,
    field_calib: Mapping[str, ArrayLike],
    *,
    epochs: int = 5,
    batch_size: int = 2048,
    lr: float = 0.003,
    seed: int = 0,
    **layer_kwargs: Any,
) -> AdaCalib:
    """Fit an ``AdaCalib`` layer by minimising log loss of its calibrated output.

    Args:
      stats: posterior statistics (ideally from rows disjoint from the training rows, see
        docs/methods/calibration.md "AdaCalib").
      p_calib: uncalibrated probabilities ``[n]`` (logits if ``input_space="logit"`` is passed).
      y_calib: 0/1 labels ``[n]``.
      field_calib: calibration field name -> values ``[n]``; its keys are the layer's fields.
      epochs / batch_size / lr: Adam training schedule; the learning rate decays linearly from ``lr`` to 0
        so the last steps settle instead of leaving the function at a noisy point.
      seed: seeds weight initialisation and shuffling.
      **layer_kwargs: forwarded to ``AdaCalib`` (selection, temperature, hidden_units, ...).

    Returns:
      The trained layer.
    """
    y = np.asarray(y_calib, dtype=np.float32).reshape(-1)
    x = calibration_inputs(p_calib, field_calib)
    if y.shape != x[PREDICTION].shape:
        raise ValueError(f"fit_adacalib: `y_calib` has {y.size} rows, `p_calib` {x[PREDICTION].size}.")
    keras.utils.set_random_seed(seed)
    layer = AdaCalib(stats, fields=list(field_calib), **layer_kwargs)
    inputs = {PREDICTION: keras.Input(shape=(), name=PREDICTION, dtype="float32")}
    inputs.update({f: keras.Input(shape=(), name=f, dtype="string") for f in field_calib})
    model = keras.Model(inputs, layer(inputs))
    steps = epochs * -(-y.size // batch_size)
    schedule = keras.optimizers.schedules.PolynomialDecay(lr, max(steps, 1), end_learning_rate=0.0)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=keras.losses.BinaryCrossentropy())
    model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    return layer
