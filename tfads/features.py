"""The feature layer: raw feature tensors in, the stacked input ``x0`` (and the domain embedding) out.

Derived features (e.g. scenario = media|slot) are computed from the raw inputs by ``JoinFields`` layers,
so the model's inputs, and a SavedModel's serving signatures, are raw fields only.

Built from the manifest (feature kinds, vocabulary files, hash sizes, numeric statistics), out of
standard Keras preprocessing layers, so the same lookups run in training and inside the SavedModel
(vocabulary files travel as SavedModel assets).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import tensorflow as tf
import tf_keras as keras

from tfads.data import DTYPES
from tfads.core.manifest import Manifest, history_length_input
from tfads.layers.derived import JoinFields
from tfads.layers.sequence import MaskedPooling

FUSED_EMBEDDING = "fused_embedding"


@dataclass
class EmbeddedFeatures:
    """Output of :func:`embed_features`.

    Attributes:
      parts: the blocks of ``x0`` in order, each (batch, width): per-feature embeddings, or one
        (batch, n * dim) block for all fused categorical embeddings, and the numeric encodings.
      domain: concatenated embeddings of the domain-aware (scenario) features, (batch, k*dim).
      domain_index: integer id of the primary domain feature's value (0 = unseen), (batch,).
      num_domains: size of the primary domain feature's id space (vocabulary + OOV).
      embedded: each categorical / hashed feature's embedding, (batch, dim).
      embedders: each categorical / hashed feature's lookup and embedding table as one function of raw values
        of any shape (e.g. a (batch, L) history): the same layers and weights as the feature's own.
    """

    parts: list[tf.Tensor]
    domain: tf.Tensor
    domain_index: tf.Tensor
    num_domains: int
    embedded: dict[str, tf.Tensor] = field(default_factory=dict)
    embedders: dict[str, Callable[[tf.Tensor], tf.Tensor]] = field(default_factory=dict)

    def stacked(self) -> tf.Tensor:
        """All parts concatenated: ``x0``, (batch, total width)."""
        return keras.layers.Concatenate(name="x0")(self.parts) if len(self.parts) > 1 else self.parts[0]


def feature_inputs(manifest: Manifest) -> dict[str, keras.Input]:
    """One Keras input per model input (``manifest.model_inputs``): a scalar per example for the features that
    are not derived and the fields derived features join; a padded (max_len,) list and its length per history."""
    return {
        name: keras.Input(shape=shape, dtype=DTYPES[dtype], name=name)
        for name, (dtype, shape) in manifest.model_inputs.items()
    }


def derive_features(inputs: dict[str, tf.Tensor], manifest: Manifest) -> dict[str, tf.Tensor]:
    """``inputs`` with each derived feature added, computed in the model by a ``JoinFields`` layer named after it."""
    out = dict(inputs)
    for name, spec in manifest.derived.items():
        out[name] = JoinFields(spec.concat, spec.separator, name=name)({p: inputs[p] for p in spec.concat})
    return out


def embed_features(
    inputs: dict[str, tf.Tensor],
    manifest: Manifest,
    dim: int,
    *,
    numeric_encoding: str = "embedding",
    fused: bool = False,
    init_std: float | None = None,
) -> EmbeddedFeatures:
    """Embed every feature (``inputs`` holds the derived ones too, see :func:`derive_features`).

    categorical: StringLookup over the vocabulary file (ints are looked up as decimal strings), one
    OOV bucket. A multi-valued feature (a padded list and its length) is looked up the same way in a table of
    its own and mean-pooled over its real values. hashed: Hashing into ``hash_bins``. Each id then gets an
    embedding: one table per feature, or with ``fused`` one table for all of them (each feature's ids offset
    into its own rows), so a step does one gather and one sparse update instead of one per feature.
    numeric: optional log1p and standardisation with the train split's mean/std, then with
    ``numeric_encoding="embedding"`` times a learned vector (dim wide), with ``"dense"`` the
    standardised value itself (1 wide, as DeepCTR's dense features); plus an embedding of its bucket
    when ``boundaries`` are given.
    Embedding tables start uniform in +-0.05 (Keras' default), or normal with ``init_std``.
    """
    if numeric_encoding not in ("embedding", "dense"):
        raise ValueError(f"numeric_encoding must be 'embedding' or 'dense', got {numeric_encoding!r}")
    ids: dict[str, tuple[tf.Tensor, int]] = {}
    lookups: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {}
    tables: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {}
    embeddings: dict[str, tf.Tensor] = {}
    parts: list[tf.Tensor] = []  # x0 in manifest order (the fused block goes first)
    for name, spec in manifest.features.items():
        kind = spec["kind"]
        if spec.get("multi"):  # its own table (never fused), mean-pooled over the list's real values
            lookup, size = _lookup(name, spec, manifest)
            table = keras.layers.Embedding(size, dim, _init(init_std), name=f"{name}_embedding")
            mask = tf.sequence_mask(inputs[history_length_input(name)], int(spec["max_len"]))
            parts.append(MaskedPooling("mean", name=f"{name}_mean")(table(lookup(inputs[name])), mask=mask))
        elif kind in ("categorical", "hashed"):
            lookups[name], size = _lookup(name, spec, manifest)
            idx = lookups[name](inputs[name])
            ids[name] = idx, size
            if not fused:
                tables[name] = keras.layers.Embedding(size, dim, _init(init_std), name=f"{name}_embedding")
                embeddings[name] = tables[name](idx)
                parts.append(embeddings[name])
        elif kind == "numeric":
            parts.extend(_encode_numeric(name, inputs[name], spec, dim, numeric_encoding, init_std))
        else:
            raise ValueError(f"feature {name!r}: unknown kind {kind!r} in manifest")
    domain_names = [n for n in manifest.domain_features if n in ids]
    if not domain_names:
        raise ValueError("the manifest marks no domain_aware feature; AdaSparse/STAR need one (e.g. scenario)")
    if fused:
        block, embeddings, tables = _fused_embeddings(ids, dim, init_std)
        parts.insert(0, block)
    domain = (
        embeddings[domain_names[0]]
        if len(domain_names) == 1
        else keras.layers.Concatenate(name="domain_embedding")([embeddings[n] for n in domain_names])
    )
    primary = manifest.domain if manifest.domain in ids else domain_names[0]
    embedders = {name: _chain(lookups[name], tables[name]) for name in ids}
    return EmbeddedFeatures(parts, domain, *ids[primary], embedded=embeddings, embedders=embedders)


def _chain(lookup: Callable[[tf.Tensor], tf.Tensor], table: Callable[[tf.Tensor], tf.Tensor]):
    return lambda values: table(lookup(values))


def _init(init_std: float | None) -> str | keras.initializers.Initializer:
    """A fresh initializer per table (an unseeded Keras initializer reused would repeat its values)."""
    return "uniform" if init_std is None else keras.initializers.RandomNormal(stddev=init_std)


def _lookup(name: str, spec: dict, manifest: Manifest) -> tuple[Callable[[tf.Tensor], tf.Tensor], int]:
    """The id function of a categorical (vocabulary, 0 = OOV) or hashed feature, and the id space's size."""
    if spec["kind"] == "hashed":
        size = int(spec["hash_bins"])
        return keras.layers.Hashing(size, name=f"{name}_hash"), size
    lookup = keras.layers.StringLookup(vocabulary=manifest.vocab_path(name), num_oov_indices=1, name=f"{name}_lookup")
    if spec["dtype"] == "string":
        return lookup, lookup.vocabulary_size()
    return (lambda x: lookup(tf.strings.as_string(x))), lookup.vocabulary_size()


def _fused_embeddings(
    ids: dict[str, tuple[tf.Tensor, int]], dim: int, init_std: float | None
) -> tuple[tf.Tensor, dict[str, tf.Tensor], dict[str, Callable[[tf.Tensor], tf.Tensor]]]:
    """One table for every id feature: the (batch, n * dim) block of all embeddings, each feature's (batch, dim)
    embedding, and each feature's table as a function of its ids (offset into its own rows)."""
    names = list(ids)
    offsets, total = {}, 0
    for name, (_, size) in ids.items():
        offsets[name] = total
        total += size
    layer = keras.layers.Embedding(total, dim, _init(init_std), name=FUSED_EMBEDDING)
    rows = tf.stack([tf.cast(idx, tf.int64) for idx, _ in ids.values()], axis=1) + tf.constant(
        list(offsets.values()), tf.int64)
    table = layer(rows)  # (batch, n, dim)
    block = keras.layers.Reshape((len(names) * dim,), name="fused_x0")(table)
    tables = {name: _offset_table(layer, offset) for name, offset in offsets.items()}
    return block, {name: table[:, i, :] for i, name in enumerate(names)}, tables


def _offset_table(layer: keras.layers.Layer, offset: int) -> Callable[[tf.Tensor], tf.Tensor]:
    return lambda idx: layer(tf.cast(idx, tf.int64) + offset)


def _encode_numeric(
    name: str, x: tf.Tensor, spec: dict, dim: int, encoding: str, init_std: float | None
) -> list[tf.Tensor]:
    x = tf.cast(x, tf.float32)
    raw = x
    if spec.get("log"):
        x = tf.math.log1p(tf.maximum(x, 0.0))
    std = float(spec.get("std") or 1.0)
    x = tf.expand_dims((x - float(spec.get("mean", 0.0))) / max(std, 1e-6), -1)
    if encoding == "embedding":
        x = keras.layers.Dense(dim, use_bias=True, name=f"{name}_value_embedding")(x)
    boundaries = spec.get("boundaries") or []
    if not boundaries:
        return [x]
    bucket = keras.layers.Discretization(bin_boundaries=list(boundaries), name=f"{name}_buckets")(raw)
    table = keras.layers.Embedding(len(boundaries) + 1, dim, _init(init_std), name=f"{name}_bucket_embedding")
    bucket_emb = table(bucket)
    if encoding == "embedding":
        return [keras.layers.Add(name=f"{name}_embedding")([x, bucket_emb])]
    return [x, bucket_emb]
