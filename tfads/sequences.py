"""User behaviour histories in the model: each history's values looked up in the table of the feature it shares
(``share_embedding_with``), then pooled (mean / sum / max over the real positions) or attended to by the
candidate through DIN's activation unit; the result joins ``x0`` like any other feature block."""

from __future__ import annotations

import tensorflow as tf

from tfads.core.experiment import HistoryConfig
from tfads.core.manifest import Manifest, history_length_input
from tfads.features import EmbeddedFeatures
from tfads.layers.sequence import BroadcastRows, DinAttention, MaskedPooling


def embed_histories(
    inputs: dict[str, tf.Tensor], manifest: Manifest, feats: EmbeddedFeatures, cfg: HistoryConfig
) -> list[tf.Tensor]:
    """One (batch, dim) block per history of the manifest (none with ``pooling: none``).

    A history input with one row is broadcast to the batch of candidates in the graph (``BroadcastRows``): a
    request sends the user's history once for all its candidate ads."""
    if cfg.pooling == "none":
        return []
    reference = inputs[next(iter(manifest.input_dtypes))]  # any per-candidate input gives the batch size
    blocks = []
    for name, h in manifest.history.items():
        table = h["share_embedding_with"]
        values = BroadcastRows(name=f"{name}_rows")([inputs[name], reference])
        length = BroadcastRows(name=f"{name}_length_rows")([inputs[history_length_input(name)], reference])
        keys = feats.embedders[table](values)  # (batch, max_len, dim), the shared table's rows
        mask = tf.sequence_mask(length, int(h["max_len"]))
        if cfg.pooling == "din":
            din = DinAttention(cfg.din_units, cfg.din_activation, name=f"{name}_din")
            blocks.append(din(feats.embedded[table], keys, mask=mask))
        else:
            blocks.append(MaskedPooling(cfg.pooling, name=f"{name}_{cfg.pooling}")(keys, mask=mask))
    return blocks

