"""Derived features in the model: the same bytes as the Beam job's column, a serialisable layer, raw-only inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
import tf_keras as keras

from beam_jobs.join import add_derived as beam_add_derived
from tfads.core.configtools import ConfigError
from tfads.core.manifest import Manifest, load_manifest
from tfads.core.schema import DerivedField, EventLog, FieldSpec, Labels, Schema
from tfads.data import feature_spec, make_dataset, with_derived
from tfads.layers.derived import JoinFields, join_fields

INT64 = np.iinfo(np.int64)
PARTS = {  # every field type `concat` may join, with the awkward values of each
    "media": ["app", "", "web|site", "é漢字", "a b"],
    "hour": [0, 7, -1, INT64.max, INT64.min],
    "slot": ["feed", "x", "", "🙂", "-3"],
}


def _beam(frame: pd.DataFrame, concat: list[str], separator: str) -> list[bytes]:
    """The Beam job's derived column for ``frame``, encoded as the examples store it."""
    fields = {"trace_id": FieldSpec("string"), "ts": FieldSpec("int")}
    fields.update({c: FieldSpec("int" if frame[c].dtype.kind == "i" else "string") for c in concat})
    schema = Schema(key="trace_id", timestamp="ts", fields=fields, clicks=EventLog({"trace_id": "string", "ts": "int"}),
                    derived={"d": DerivedField(concat, separator)}, labels=Labels(conversion=None))
    return [v.encode() for v in beam_add_derived(frame.copy(), schema, "2024-01-01")["d"]]


@pytest.mark.parametrize(
    ("concat", "separator"),
    [(["media", "slot"], "|"), (["media", "hour", "slot"], "::"), (["hour"], "|"), (["slot", "hour"], "")],
)
def test_join_fields_is_byte_identical_to_the_beam_job(concat, separator):
    frame = pd.DataFrame({"media": PARTS["media"], "slot": PARTS["slot"],
                          "hour": np.array(PARTS["hour"], dtype=np.int64)})
    parts = [tf.constant(frame[c].to_numpy(np.int64)) if c == "hour" else tf.constant(list(frame[c])) for c in concat]
    assert join_fields(parts, separator).numpy().tolist() == _beam(frame, concat, separator)


def test_join_fields_refuses_floats_and_nothing():
    with pytest.raises(ValueError, match="part 1 has dtype float32"):
        join_fields([tf.constant(["a"]), tf.constant([0.5])], "|")
    with pytest.raises(ValueError, match="parts must not be empty"):
        join_fields([], "|")
    with pytest.raises(ValueError, match="Received: fields=\\[\\]"):
        JoinFields([], "|")


def test_join_fields_layer_serialises_and_survives_a_saved_model(tmp_path):
    inputs = {"site": keras.Input(shape=(), dtype=tf.string, name="site"),
              "day": keras.Input(shape=(), dtype=tf.int64, name="day")}
    layer = JoinFields(["site", "day"], " / ", name="surface")
    assert JoinFields.from_config(layer.get_config()).get_config() == layer.get_config()
    model = keras.Model(inputs, layer(inputs))
    batch = {"site": tf.constant(["a", "b"]), "day": tf.constant([3, -4], tf.int64)}
    model.save(tmp_path / "m")
    loaded = keras.models.load_model(tmp_path / "m")
    assert loaded(batch).numpy().tolist() == model(batch).numpy().tolist() == [b"a / 3", b"b / -4"]
    assert tf.saved_model.load(str(tmp_path / "m")).signatures["serving_default"](**batch)


def _manifest(derived: dict, raw_dtypes: dict, features: dict) -> Manifest:
    return Manifest("m.json", {"schema": {"derived": derived}, "raw_dtypes": raw_dtypes, "features": features})


def test_inputs_are_raw_fields_and_floats_cannot_be_joined():
    features = {"media": {"dtype": "string"}, "scenario": {"dtype": "string"}, "price": {"dtype": "float32"}}
    raw = {"media": "string", "slot": "string", "hour": "int64", "price": "float32"}
    manifest = _manifest({"scenario": {"concat": ["media", "slot", "hour"], "separator": "/"}}, raw, features)
    assert manifest.input_dtypes == {"media": "string", "price": "float32", "slot": "string", "hour": "int64"}
    assert manifest.derived["scenario"].separator == "/"
    broken = _manifest({"scenario": {"concat": ["media", "price"]}}, raw, features)
    with pytest.raises(ConfigError, match=r"derived.scenario.concat joins float field\(s\) \['price'\]"):
        _ = broken.input_dtypes


def test_session_data_derived_in_graph_equals_the_beam_column(manifest_path):
    manifest = load_manifest(manifest_path)
    assert "scenario" not in manifest.input_dtypes and {"media", "slot"} <= set(manifest.input_dtypes)
    assert "scenario" not in feature_spec(manifest)  # nothing reads the Beam column any more...
    beam = {"scenario": tf.io.FixedLenFeature([], tf.string)}  # ... except this check
    files = [f for split in ("train", "valid", "calib", "test") for f in manifest.split_files(split)]
    rows = 0
    for records in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096):
        parsed = tf.io.parse_example(records, {**feature_spec(manifest, with_labels=False), **beam})
        written = parsed.pop("scenario")
        assert with_derived(parsed, manifest)["scenario"].numpy().tolist() == written.numpy().tolist()
        rows += len(written)
    assert rows == sum(manifest.split_count(s) for s in ("train", "valid", "calib", "test"))
    batch = next(iter(make_dataset(manifest.split_files("test"), manifest, 64, for_training=False)))
    assert batch["scenario"].dtype == tf.string  # the input pipeline adds the derived columns
    features, _, _ = next(iter(make_dataset(manifest.split_files("test"), manifest, 64)))
    assert set(features) == set(manifest.input_dtypes)  # training batches carry the model's inputs only


def test_weights_of_a_model_built_before_derived_inputs_load_into_the_raw_input_model(manifest_path, tmp_path,
                                                                                       monkeypatch):
    """A model dir trained when scenario was an input re-exports without retraining: its checkpoint loads
    into the rebuilt model (weightless JoinFields in place of the Input) with the same scores."""
    import dataclasses

    import tfads.models.esmm as esmm
    from tfads.core.experiment import load_experiment
    from tfads.data import DTYPES

    manifest = load_manifest(manifest_path)
    cfg = dataclasses.replace(load_experiment().model, embedding_dim=4, deep_units=[8], tower_units=[4])
    with monkeypatch.context() as patch:  # the feature layer as it was: every manifest feature an input
        patch.setattr(esmm, "feature_inputs", lambda m: {
            n: keras.Input(shape=(), dtype=DTYPES[f["dtype"]], name=n) for n, f in m.features.items()})
        patch.setattr(esmm, "derive_features", lambda inputs, m: inputs)
        old = esmm.build_model(manifest, cfg)
    assert "scenario" in old.input
    rng = np.random.default_rng(0)
    for w in old.weights:
        if w.dtype.is_floating:
            w.assign(w + rng.normal(0, 0.1, w.shape).astype(w.dtype.as_numpy_dtype))
    old.save_weights(str(tmp_path / "final"))
    new = esmm.build_model(manifest, cfg)
    assert "scenario" not in new.input
    new.load_weights(str(tmp_path / "final")).expect_partial()
    batch = next(iter(make_dataset(manifest.split_files("test"), manifest, 256, for_training=False)))
    want = old({k: batch[k] for k in manifest.features}, training=False)
    got = new({k: batch[k] for k in manifest.input_dtypes}, training=False)
    for head in manifest.heads:
        np.testing.assert_array_equal(got[head].numpy(), want[head].numpy())
