"""What a fine-tune may change: ``full`` (every weight), ``heads`` (the task towers only) or
``frozen_embeddings`` (everything but the feature embedding tables)."""

from __future__ import annotations

import re
from typing import Literal

import tf_keras as keras

from tfads.core.names import CTR, CVR, FINETUNE_MODES

FinetuneMode = Literal["full", "heads", "frozen_embeddings"]  # FINETUNE_MODES
# The task towers of tfads.models.esmm: tower MLP, logit, the per-domain logit of STAR / shared-bottom, and
# AutoHERI's towers (one layer, ``heri``).
_HEAD = re.compile(rf"({CTR}|{CVR})_(tower_dense_\d+|logit|domain_net_dense_\d+|domain_logit)|heri")


def embedding_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The feature embedding layers (named ``*_embedding``) that hold weights."""
    return [layer for layer in model.layers if layer.name.endswith("_embedding") and layer.weights]


def head_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The task towers' layers that hold weights (``ctr_tower_dense_0``, ``ctr_logit``, ``cvr_domain_logit``...)."""
    return [layer for layer in model.layers if _HEAD.fullmatch(layer.name) and layer.weights]


def apply_finetune_mode(model: keras.Model, mode: FinetuneMode) -> list[str]:
    """Freeze what ``mode`` keeps fixed (before compiling); return the names of the layers that stay trainable.

    Raises:
      ValueError: on an unknown mode, or a model without the layers the mode trains.
    """
    if mode not in FINETUNE_MODES:
        raise ValueError(f"finetune mode must be one of {', '.join(FINETUNE_MODES)}; got {mode!r}")
    weighted = [layer for layer in model.layers if layer.weights]
    if mode == "full":
        return [layer.name for layer in weighted]
    if mode == "heads":
        keep = {id(layer) for layer in head_layers(model)}
    else:
        frozen = {id(layer) for layer in embedding_layers(model)}
        keep = {id(layer) for layer in weighted if id(layer) not in frozen}
    if not keep:
        raise ValueError(f"finetune mode {mode!r}: the model {model.name} has no layer it could train")
    for layer in weighted:
        layer.trainable = id(layer) in keep
    return [layer.name for layer in weighted if id(layer) in keep]
