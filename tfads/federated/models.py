"""The split model: the media party's bottom model and the ad party's top model around a tfads model.

* bottom (media party): its features -> an MLP -> a ``media_dim`` embedding, each row clipped to an L2
  bound (:class:`ClipRows`, inside the graph so the gradient flows through the clip);
* top (ad party): the tfads model built from the manifest and config (unchanged), plus two inputs,
  ``media_embedding`` (batch, media_dim) and ``media_matched`` (batch,) in {0, 1}. Rows without a media match
  use a learned default embedding (:class:`MediaDefault`). A fusion head adds one logit per task to the
  tfads model's own logits from an MLP over [media embedding, ``x0``] (``x0``: the tfads model's stacked
  feature embeddings) and a DCN-style cross ``x0 * W m`` (each feature embedding coordinate times a linear
  map of the media embedding); the heads are then the usual ``ctr``, ``cvr``, ``ctcvr = ctr * cvr``.
  The fusion layers (``fusion_*``, ``media_default``) train with the media learning rate
  (:func:`fusion_variables`).
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from tfads.core.experiment import ModelConfig
from tfads.core.manifest import Manifest
from tfads.core.names import CTCVR, CTR, CVR
from tfads.models import build_model

MEDIA_EMBEDDING = "media_embedding"
MEDIA_MATCHED = "media_matched"
MEDIA_FEATURES = "media_features"


@keras.utils.register_keras_serializable(package="tfads")
class ClipRows(keras.layers.Layer):
    """Scale each row down to L2 norm at most ``bound``: (batch, d) -> (batch, d)."""

    def __init__(self, bound: float, **kwargs) -> None:
        super().__init__(**kwargs)
        if not bound > 0:
            raise ValueError(f"ClipRows: bound must be > 0. Received: bound={bound}")
        self.bound = float(bound)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return tf.clip_by_norm(x, self.bound, axes=[1])

    def get_config(self) -> dict:
        return {**super().get_config(), "bound": self.bound}


@keras.utils.register_keras_serializable(package="tfads")
class MediaDefault(keras.layers.Layer):
    """``matched * embedding + (1 - matched) * default`` with a learned ``default`` row:
    [(batch, d), (batch,)] -> (batch, d)."""

    def __init__(self, dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.dim = int(dim)

    def build(self, input_shape) -> None:
        self.default = self.add_weight(name="default", shape=(self.dim,), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs) -> tf.Tensor:
        embedding, matched = inputs
        m = tf.reshape(tf.cast(matched, embedding.dtype), [-1, 1])
        return m * embedding + (1.0 - m) * self.default

    def get_config(self) -> dict:
        return {**super().get_config(), "dim": self.dim}


def build_bottom(n_features: int, units: list[int], dim: int, clip: float) -> keras.Model:
    """The media party's model: (batch, n_features) float32 -> (batch, dim), rows clipped to ``clip``."""
    x = inputs = keras.Input((n_features,), name=MEDIA_FEATURES)
    for i, width in enumerate(units):
        x = keras.layers.Dense(width, activation="relu", name=f"bottom_{i}")(x)
    x = keras.layers.Dense(dim, name="bottom_out")(x)
    return keras.Model(inputs, ClipRows(clip, name=MEDIA_EMBEDDING)(x), name="media_bottom")


def _logit_layer(model: keras.Model, task: str) -> tf.Tensor:
    names = {layer.name for layer in model.layers}
    return model.get_layer(f"{task}_logit_total" if f"{task}_logit_total" in names else f"{task}_logit").output


def fusion_variables(top: keras.Model) -> list[tf.Variable]:
    """The top model's fusion head and default embedding (the rest is the tfads model)."""
    layers = [layer for layer in top.layers if layer.name == "media_default" or layer.name.startswith("fusion_")]
    return [v for layer in layers for v in layer.trainable_variables]


def build_top(manifest: Manifest, cfg: ModelConfig, media_dim: int, fusion_units: list[int]) -> keras.Model:
    """The ad party's model: the tfads model's inputs plus ``media_embedding`` and ``media_matched``; the
    outputs of the tfads model (``ctr`` and, with a conversion label, ``cvr`` and ``ctcvr``)."""
    base = build_model(manifest, cfg)
    tasks = [t for t in (CTR, CVR) if t in base.output_names]
    inner = keras.Model(base.inputs, [base.get_layer("x0").output, *(_logit_layer(base, t) for t in tasks)],
                        name="tfads_base")
    inputs = dict(zip(base.input_names, base.inputs, strict=True))
    embedding = keras.Input((media_dim,), name=MEDIA_EMBEDDING)
    matched = keras.Input((), name=MEDIA_MATCHED)
    x0, *logits = inner(inputs)
    media = MediaDefault(media_dim, name="media_default")([embedding, matched])
    cross = keras.layers.Multiply(name="fusion_cross")([x0, keras.layers.Dense(x0.shape[-1], name="fusion_x0")(media)])
    h = keras.layers.Concatenate(name="fusion_in")([media, x0])
    for i, width in enumerate(fusion_units):
        h = keras.layers.Dense(width, activation="relu", name=f"fusion_{i}")(h)
    h = keras.layers.Concatenate(name="fusion_out")([h, cross])
    delta = keras.layers.Dense(len(tasks), kernel_initializer="zeros", name="fusion_logits")(h)
    outputs = {}
    for i, task in enumerate(tasks):
        logit = keras.layers.Add(name=f"{task}_fused_logit")([logits[i], delta[:, i : i + 1]])
        outputs[task] = keras.layers.Activation("sigmoid", name=task)(logit)
    if CVR in outputs:
        outputs[CTCVR] = keras.layers.Multiply(name=CTCVR)([outputs[CTR], outputs[CVR]])
    all_inputs = {**inputs, MEDIA_EMBEDDING: embedding, MEDIA_MATCHED: matched}
    return keras.Model(all_inputs, outputs, name="federated_top")
