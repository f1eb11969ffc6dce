"""The columnar Example encoder and TFRecord writer produce what TensorFlow parses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import tfads  # noqa: F401
from beam_jobs.examples import encode_examples, varint, write_tfrecord_gz
from beam_jobs.posterior import fit_beta_prior
from beam_jobs.vocab import vocabulary


def test_examples_round_trip_through_tensorflow(tmp_path):
    import tensorflow as tf

    frame = pd.DataFrame({
        "s": ["a", "bé", "", "x" * 300], "i": [0, -5, 2**40, 127], "f": [1.5, -0.25, 3.0, 1e-3],
        "o": np.array(["q", "r", "q", "q"], dtype=object),
    })
    spec = [("s", "bytes"), ("i", "int64"), ("f", "float"), ("o", "bytes")]
    path = str(tmp_path / "x.tfrecord.gz")
    write_tfrecord_gz(path, encode_examples(frame, spec))
    feature_spec = {
        "s": tf.io.FixedLenFeature([], tf.string), "i": tf.io.FixedLenFeature([], tf.int64),
        "f": tf.io.FixedLenFeature([], tf.float32), "o": tf.io.FixedLenFeature([], tf.string),
    }
    batch = next(iter(tf.data.TFRecordDataset(path, compression_type="GZIP").batch(10)))
    parsed = tf.io.parse_example(batch, feature_spec)
    assert [v.decode() for v in parsed["s"].numpy()] == frame["s"].tolist()
    assert parsed["i"].numpy().tolist() == frame["i"].tolist()
    np.testing.assert_allclose(parsed["f"].numpy(), frame["f"].to_numpy(np.float32))
    assert [v.decode() for v in parsed["o"].numpy()] == ["q", "r", "q", "q"]


def test_varint():
    assert varint(1) == b"\x01" and varint(300) == b"\xac\x02" and varint(-1) == b"\xff" * 9 + b"\x01"


def test_vocabulary_order_min_count_top_k():
    counts = pd.Series({"b": 5, "a": 5, "c": 9, "d": 1, "e": 2})
    assert vocabulary(counts, min_count=2, top_k=10) == ["c", "a", "b", "e"]
    assert vocabulary(counts, min_count=2, top_k=2) == ["c", "a"]


def test_beta_prior_method_of_moments():
    rng = np.random.default_rng(0)
    trials = np.full(4000, 100_000.0)
    successes = rng.binomial(100_000, rng.beta(2.0, 48.0, 4000)).astype(float)
    prior = fit_beta_prior(successes, trials)
    assert prior.alpha / (prior.alpha + prior.beta) == pytest.approx(0.04, rel=0.05)
    assert 35 < prior.alpha + prior.beta < 65
    flat = fit_beta_prior(np.array([1.0, 1.0]), np.array([10.0, 10.0]))
    assert flat.alpha + flat.beta == 1e6
