"""tf.data input pipeline over the Beam job's TFRecords: interleave, shuffle, batch, parse, prefetch."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from tfads.core.manifest import Manifest, history_length_input
from tfads.core.names import CLICK, CONVERSION, CTCVR, CTR, CVR
from tfads.layers.derived import add_derived

DTYPES = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}
DEFAULTS = {"string": "", "int64": 0, "float32": 0.0}


def feature_spec(manifest: Manifest, *, with_labels: bool = True, with_meta: bool = False) -> dict[str, Any]:
    """``tf.io.parse_example`` spec for the model's inputs, the raw fields and histories (ragged; see
    :func:`parse_examples`), and labels / metadata.

    Derived features are not read from the examples: :func:`with_derived` computes them from the raw fields
    with the model's own function."""
    spec = {
        name: tf.io.FixedLenFeature([], DTYPES[dtype], default_value=DEFAULTS[dtype])
        for name, dtype in manifest.input_dtypes.items()
    }
    for name, (dtype, _) in manifest.list_inputs.items():
        spec[name] = tf.io.RaggedFeature(DTYPES[dtype])
    if with_labels:
        for label in manifest.labels:
            spec[label] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
        spec[manifest.data.get("weight", "weight")] = tf.io.FixedLenFeature([], tf.float32, default_value=1.0)
    if with_meta:
        for name, default in ((manifest.key, "string"), (manifest.timestamp, "int64")):
            if name is None:  # a table without a key
                continue
            dtype = manifest.raw_dtype(name, default)
            spec[name] = tf.io.FixedLenFeature([], DTYPES[dtype], default_value=DEFAULTS[dtype])
        spec[manifest.source_feature] = tf.io.FixedLenFeature([], tf.string, default_value="ad")
    return spec


def parse_examples(serialized: tf.Tensor, manifest: Manifest, spec: dict[str, Any]) -> dict[str, tf.Tensor]:
    """``tf.io.parse_example`` with ``spec`` (:func:`feature_spec`), each list input (history, multi-valued
    feature) then padded to its ``max_len`` with its ``<name>_length`` added: the model's input form, in
    training and in serving."""
    parsed = tf.io.parse_example(serialized, spec)
    return pad_lists(parsed, manifest)


def pad_lists(parsed: dict[str, tf.Tensor], manifest: Manifest) -> dict[str, tf.Tensor]:
    """Ragged list inputs (one list per example) -> (batch, max_len) padded tensors plus their lengths."""
    out = dict(parsed)
    for name, (dtype, max_len) in manifest.list_inputs.items():
        ragged = parsed[name][:, :max_len]
        out[name] = ragged.to_tensor(default_value=DEFAULTS[dtype], shape=[None, max_len])
        out[history_length_input(name)] = tf.cast(ragged.row_lengths(), tf.int64)
    return out


def derived_parts(manifest: Manifest) -> dict[str, tuple[list[str], str]]:
    """Derived feature -> (raw fields joined, separator), as ``tfads.layers.derived.add_derived`` takes them."""
    return {name: (list(d.concat), d.separator) for name, d in manifest.derived.items()}


def with_derived(batch: dict[str, tf.Tensor], manifest: Manifest) -> dict[str, tf.Tensor]:
    """``batch`` (parsed raw fields) with the derived features added, computed exactly as the model does."""
    return add_derived(batch, derived_parts(manifest))


def to_targets(parsed: dict[str, tf.Tensor], manifest: Manifest, *, use_sample_weight: bool = True):
    """Split a parsed batch into (features, labels, sample weights) for the model's heads.

    ``ctr`` learns the click label; with a conversion label (ESMM) ``ctcvr`` learns click-and-conversion
    over all impressions and ``cvr`` carries the conversion label weighted by the click, used only
    when the direct CVR loss is on.
    """
    parsed = dict(parsed)
    roles = manifest.label_roles
    click = tf.cast(parsed.pop(roles[CLICK]), tf.float32)[:, None]
    weight = parsed.pop(manifest.data.get("weight", "weight"))
    if not use_sample_weight:
        weight = tf.ones_like(weight)
    labels, weights = {CTR: click}, {CTR: weight}
    if manifest.has_conversion:
        conversion = tf.cast(parsed.pop(roles[CONVERSION]), tf.float32)[:, None]
        labels.update({CVR: conversion, CTCVR: conversion})
        weights.update({CVR: weight * click[:, 0], CTCVR: weight})
    return parsed, labels, weights


def compression_of(files: list[str]) -> str:
    """``"GZIP"`` when every file is named ``*.gz``, ``""`` (uncompressed) when none is.

    Uncompressed shards take ~5x the disk but no inflating: ~1.5 CPU ms per 1024-record batch, ~15% of
    the input pipeline, on the Criteo-shaped benchmark (benchmarks/results/train_throughput.md)."""
    gzipped = {f.endswith(".gz") for f in files}
    if len(gzipped) > 1:
        raise ValueError(f"make_dataset: mixed gzipped and uncompressed TFRecord files, e.g. {sorted(files)[:2]}")
    return "GZIP" if gzipped == {True} else ""


def make_dataset(
    files: list[str],
    manifest: Manifest,
    batch_size: int,
    *,
    shuffle: bool = False,
    shuffle_buffer: int = 50_000,
    shuffle_block: int = 1,
    seed: int | None = None,
    repeat: bool = False,
    scenarios: list[str] | None = None,
    with_meta: bool = False,
    for_training: bool = True,
    use_sample_weight: bool = True,
    deterministic: bool = False,
) -> tf.data.Dataset:
    """Dataset of parsed batches from TFRecord ``files``.

    Args:
      files: TFRecord paths (local or gs://), e.g. ``manifest.split_files("train")``: gzipped when
        named ``*.gz``, uncompressed otherwise (see :func:`compression_of`).
      manifest: gives the feature names and dtypes.
      batch_size: examples per batch (the last batch may be smaller).
      shuffle: shuffle files and records (training).
      shuffle_block: with ``shuffle``, shuffle blocks of this many consecutive records of a shard
        instead of single records (the buffer still holds ``shuffle_buffer`` records): tf.data's
        per-element cost in interleave and shuffle falls by the block size, and a batch still mixes
        ``batch_size / shuffle_block`` blocks from the buffer.
      scenarios: keep only examples whose primary domain feature (``manifest.domain``) has one of
        these values (fine-tuning on a scene).
      with_meta: also parse the impression key, the timestamp and the sample source (ad / feed).
      for_training: yield ``(features, labels, sample_weights)`` with the model's raw inputs as features;
        otherwise the parsed dict, with the derived features added (:func:`with_derived`).
      deterministic: keep the element order of the parallel stages fixed even when shuffling (with a
        ``seed``, the same order every run; a little slower).
    """
    if not files:
        raise ValueError("make_dataset: no input files")
    if shuffle_block < 1:
        raise ValueError(f"make_dataset: shuffle_block must be >= 1, got {shuffle_block}")
    spec = feature_spec(manifest, with_meta=with_meta)
    compression = compression_of(files)
    block = shuffle_block if shuffle else 1

    def read(file: tf.Tensor) -> tf.data.Dataset:
        records = tf.data.TFRecordDataset(file, compression_type=compression)
        return records.batch(block) if block > 1 else records

    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ordered = deterministic or not shuffle
    ds = ds.interleave(
        read, cycle_length=min(4, len(files)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=ordered
    )
    if shuffle:
        ds = ds.shuffle(max(1, shuffle_buffer // block), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    derive = scenarios or not for_training  # training itself needs no derived column: the model computes them

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = parse_examples(serialized, manifest, spec)
        return with_derived(parsed, manifest) if derive else parsed

    ds = (ds.rebatch(batch_size) if block > 1 else ds.batch(batch_size)).map(
        parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=ordered
    )
    if scenarios:
        domain = manifest.domain
        if domain is None:
            raise ValueError("make_dataset: a scenario filter needs a domain-aware feature in the schema")
        keep = tf.constant(sorted(scenarios))

        def _filter(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            value = batch[domain] if batch[domain].dtype == tf.string else tf.strings.as_string(batch[domain])
            mask = tf.reduce_any(tf.equal(value[:, None], keep[None, :]), axis=1)
            return {k: tf.boolean_mask(v, mask) for k, v in batch.items()}

        ds = ds.map(_filter).filter(lambda b: tf.size(b[domain]) > 0)
    if for_training:
        derived = set(manifest.derived)  # the model computes these itself
        ds = ds.map(lambda b: to_targets({k: v for k, v in b.items() if k not in derived}, manifest,
                                         use_sample_weight=use_sample_weight))
    return ds.prefetch(tf.data.AUTOTUNE)
