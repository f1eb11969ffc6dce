"""The feature layer: raw feature tensors in, one embedding per feature out.

Built from the manifest (feature kinds, vocabulary files, hash sizes, numeric statistics), out of
standard Keras preprocessing layers, so the same lookups run in training and inside the SavedModel
(vocabulary files travel as SavedModel assets).
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf
import tf_keras as keras

from tfads.data import DTYPES
from tfads.manifest import Manifest


@dataclass
class EmbeddedFeatures:
    """Output of :func:`embed_features`.

    Attributes:
      embeddings: feature name -> (batch, dim) embedding, in manifest order.
      domain: concatenated embeddings of the domain-aware (scenario) features, (batch, k*dim).
      domain_index: integer id of the primary domain feature's value (0 = unseen), (batch,).
      num_domains: size of the primary domain feature's id space (vocabulary + OOV).
    """

    embeddings: dict[str, tf.Tensor]
    domain: tf.Tensor
    domain_index: tf.Tensor
    num_domains: int

    def stacked(self) -> tf.Tensor:
        """All embeddings concatenated: (batch, num_features * dim)."""
        return keras.layers.Concatenate(name="x0")(list(self.embeddings.values()))


def feature_inputs(manifest: Manifest) -> dict[str, keras.Input]:
    """One scalar-per-example Keras input per raw feature, named as in the manifest."""
    return {name: keras.Input(shape=(), dtype=DTYPES[f["dtype"]], name=name) for name, f in manifest.features.items()}


def embed_features(
    inputs: dict[str, tf.Tensor], manifest: Manifest, dim: int, *, primary_domain: str = "scenario"
) -> EmbeddedFeatures:
    """Embed every raw feature.

    categorical: StringLookup over the vocabulary file (ints are looked up as decimal strings),
    one OOV bucket, then an embedding. hashed: Hashing into ``hash_bins``, then an embedding.
    numeric: optional log1p, standardisation with the train split's mean/std, times a learned
    vector; plus an embedding of its bucket when ``boundaries`` are given.
    """
    embeddings: dict[str, tf.Tensor] = {}
    indices: dict[str, tf.Tensor] = {}
    sizes: dict[str, int] = {}
    for name, spec in manifest.features.items():
        x = inputs[name]
        kind = spec["kind"]
        if kind == "categorical":
            if spec["dtype"] != "string":
                x = tf.strings.as_string(x)
            lookup = keras.layers.StringLookup(
                vocabulary=manifest.vocab_path(name), num_oov_indices=1, name=f"{name}_lookup"
            )
            idx = lookup(x)
            size = lookup.vocabulary_size()
            embeddings[name] = keras.layers.Embedding(size, dim, name=f"{name}_embedding")(idx)
        elif kind == "hashed":
            size = int(spec["hash_bins"])
            idx = keras.layers.Hashing(size, name=f"{name}_hash")(x)
            embeddings[name] = keras.layers.Embedding(size, dim, name=f"{name}_embedding")(idx)
        elif kind == "numeric":
            embeddings[name] = _embed_numeric(name, x, spec, dim)
            continue
        else:
            raise ValueError(f"feature {name!r}: unknown kind {kind!r} in manifest")
        indices[name], sizes[name] = idx, size
    domain_names = [n for n in manifest.domain_features if n in embeddings]
    if not domain_names:
        raise ValueError("the manifest marks no domain_aware feature; AdaSparse/STAR need one (e.g. scenario)")
    domain = (
        embeddings[domain_names[0]]
        if len(domain_names) == 1
        else keras.layers.Concatenate(name="domain_embedding")([embeddings[n] for n in domain_names])
    )
    primary = primary_domain if primary_domain in indices else domain_names[0]
    return EmbeddedFeatures(embeddings, domain, indices[primary], sizes[primary])


def _embed_numeric(name: str, x: tf.Tensor, spec: dict, dim: int) -> tf.Tensor:
    x = tf.cast(x, tf.float32)
    raw = x
    if spec.get("log"):
        x = tf.math.log1p(tf.maximum(x, 0.0))
    std = float(spec.get("std") or 1.0)
    x = (x - float(spec.get("mean", 0.0))) / max(std, 1e-6)
    emb = keras.layers.Dense(dim, use_bias=True, name=f"{name}_value_embedding")(tf.expand_dims(x, -1))
    boundaries = spec.get("boundaries") or []
    if boundaries:
        bucket = keras.layers.Discretization(bin_boundaries=list(boundaries), name=f"{name}_buckets")(raw)
        bucket_emb = keras.layers.Embedding(len(boundaries) + 1, dim, name=f"{name}_bucket_embedding")(bucket)
        emb = keras.layers.Add(name=f"{name}_embedding")([emb, bucket_emb])
    return emb
