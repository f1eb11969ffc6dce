"""Score a split of the manifest with a model and return one row per example (for evaluation,
calibration and replay)."""

from __future__ import annotations

import numpy as np
import pandas as pd

import tensorflow as tf
import tf_keras as keras

from tfads.data import DTYPES, make_dataset
from tfads.core.manifest import Manifest

def predict_files(model: keras.Model, manifest: Manifest, files: list[str], *, batch_size: int = 4096) -> pd.DataFrame:
    """Run ``model`` over ``files``; columns: every scalar raw field and derived feature (list inputs: only their
    ``<name>_length``), the labels by role (``click``, and
    ``conversion`` for ESMM data, whatever the schema calls them), metadata and each model output
    (``ctr``; ``cvr``, ``ctcvr`` for ESMM; for calibrated models also ``*_raw``)."""
    ds = make_dataset(files, manifest, batch_size, with_meta=True, for_training=False)
    inputs = manifest.model_inputs  # the model's raw inputs; the batches also hold the derived features
    lists = set(manifest.list_inputs)  # (batch, max_len) inputs: not columns of the returned frame
    signature = {k: tf.TensorSpec([None, *shape], DTYPES[dtype]) for k, (dtype, shape) in inputs.items()}

    @tf.function(input_signature=[signature])
    def score(features):
        return model(features, training=False)

    parts: list[dict[str, np.ndarray]] = []
    for batch in ds:
        out = score({k: batch[k] for k in inputs})
        row = {k: v.numpy() for k, v in batch.items() if k not in lists}
        row.update({k: v.numpy().reshape(-1) for k, v in out.items()})
        parts.append(row)
    if not parts:
        raise ValueError(f"no examples in {files[:3]}...")
    frame = pd.DataFrame({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    frame = frame.rename(columns={column: role for role, column in manifest.label_roles.items() if column})
    for col, dtype in frame.dtypes.items():
        if pd.api.types.is_object_dtype(dtype):
            frame[col] = frame[col].str.decode("utf-8")
    return frame


def predict_split(model: keras.Model, manifest: Manifest, split: str, *, batch_size: int = 4096) -> pd.DataFrame:
    """:func:`predict_files` over one split of the manifest."""
    return predict_files(model, manifest, manifest.split_files(split), batch_size=batch_size)
