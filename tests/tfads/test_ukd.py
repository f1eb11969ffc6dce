"""UKD: gradient reversal, the click-adaptive teacher, pseudo labels and their weights, the student end to end."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

import tfads  # noqa: F401
import tensorflow as tf
import tf_keras as keras

from tfads.core.manifest import load_manifest
from tfads.core.names import CTCVR, CTR, CVR
from tfads.data import make_dataset
from tfads.layers import GradientReversal
from tfads.ukd import (
    UkdConfig,
    build_teacher,
    pseudo_label_targets,
    reference_uncertainty,
    symmetric_kl,
    teacher_heads,
    uncertainty_weight,
)
from tfads.ukd.teacher import DISCRIMINATOR


def test_gradient_reversal_is_identity_forward_and_negates_the_gradient():
    x = tf.random.stateless_normal((4, 3), seed=(1, 2))
    upstream = tf.random.stateless_normal((4, 3), seed=(3, 4))
    layer = GradientReversal(scale=0.3)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * upstream)
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), -0.3 * upstream.numpy(), rtol=1e-6)


def test_gradient_reversal_serialises_and_validates(tmp_path):
    layer = GradientReversal(scale=0.25, name="grl")
    assert GradientReversal.from_config(layer.get_config()).get_config() == layer.get_config()
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(GradientReversal(0.25)(inputs)))
    model.save(str(tmp_path / "m"))
    loaded = keras.models.load_model(str(tmp_path / "m"), compile=False)
    x = np.arange(6, dtype="float32").reshape(2, 3)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="scale should be non-negative. Got -1"):
        GradientReversal(scale=-1)


@pytest.fixture(scope="module")
def teacher_batch(manifest_path, small_experiment):
    """An untrained teacher (its two heads differ by their random initialisation) and a train batch."""
    manifest = load_manifest(manifest_path)
    keras.utils.set_random_seed(0)
    teacher = build_teacher(manifest, small_experiment.model, UkdConfig(adversarial_scale=0.5))
    batch = next(iter(make_dataset(manifest.split_files("train"), manifest, 1024)))
    return manifest, teacher, batch


def test_discriminator_gradient_reaches_the_representation_reversed(teacher_batch):
    _, teacher, (features, _, _) = teacher_batch
    reversal = teacher.get_layer("gradient_reversal")
    probe = keras.Model(teacher.input, [reversal.input, reversal.output, teacher.output[DISCRIMINATOR]])
    with tf.GradientTape() as tape:
        h, reversed_h, clicked = probe(features, training=False)
        loss = tf.reduce_sum(clicked)
    to_h, to_reversed = tape.gradient(loss, [h, reversed_h])
    assert float(tf.reduce_max(tf.abs(to_h))) > 0
    np.testing.assert_allclose(to_h.numpy(), -0.5 * to_reversed.numpy(), rtol=1e-5, atol=1e-9)


def test_pseudo_labels_only_for_unclicked_rows_and_weights_in_unit_interval(teacher_batch):
    manifest, teacher, (features, labels, weights) = teacher_batch
    heads = teacher_heads(teacher)
    train_rows = make_dataset(manifest.split_files("train"), manifest, 256)
    reference = reference_uncertainty(heads, train_rows, 2)
    assert reference > 0
    _, out_labels, out_weights = pseudo_label_targets(heads, reference, UkdConfig())(features, labels, weights)

    click = labels[CTR].numpy()[:, 0] == 1
    assert 0 < click.sum() < len(click)
    p_a, p_b = (p.numpy()[:, 0] for p in heads(features, training=False))
    cvr, w_cvr, w_row = out_labels[CVR].numpy()[:, 0], out_weights[CVR].numpy(), weights[CTR].numpy()
    np.testing.assert_array_equal(cvr[click], labels[CVR].numpy()[click, 0])
    np.testing.assert_array_equal(w_cvr[click], w_row[click])
    np.testing.assert_allclose(cvr[~click], (p_a[~click] + p_b[~click]) / 2, rtol=1e-6)
    ratio = w_cvr[~click] / w_row[~click]
    assert np.all(ratio > 0) and np.all(ratio <= 1) and ratio.min() < 1
    for head in (CTR, CTCVR):
        assert out_labels[head] is labels[head] and out_weights[head] is weights[head]


def test_uncertainty_weight_formula():
    p = tf.constant([0.01, 0.2, 0.7])
    np.testing.assert_allclose(symmetric_kl(p, p).numpy(), 0.0, atol=1e-7)
    np.testing.assert_allclose(uncertainty_weight(p, p, 0.1, 1.0).numpy(), 1.0)
    q = tf.constant([0.02, 0.3, 0.5])
    kl = lambda a, b: a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b))  # noqa: E731
    u = kl(p.numpy(), q.numpy()) + kl(q.numpy(), p.numpy())
    np.testing.assert_allclose(symmetric_kl(p, q).numpy(), u, rtol=1e-4)
    np.testing.assert_allclose(uncertainty_weight(p, q, u[1], 2.0).numpy(), np.exp(-2.0 * u / u[1]), rtol=1e-4)
    with pytest.raises(ValueError, match="pseudo_weight should be in"):
        UkdConfig(pseudo_weight=0)


def test_student_trains_end_to_end_and_exports(manifest_path, small_experiment, tmp_path):
    from serving.export import check_export, export_model
    from tfads.jobs.ukd import run_ukd
    from tfads.model_io import load_trained_model
    from tfads.ukd import load_teacher

    train_cfg = dataclasses.replace(small_experiment.train, epochs=1, steps_per_epoch=4, validation_steps=2,
                                    steps_per_execution=2)
    config = dataclasses.replace(small_experiment, train=train_cfg)
    result = run_ukd(config, manifest_path, str(tmp_path / "ukd"), UkdConfig(reference_batches=2), verbose=0)

    history = json.load(open(os.path.join(result.student_dir, "history.json")))["history"]
    assert history["cvr_loss"][0] > 0  # the direct pCVR loss, over true and pseudo labels
    record = json.load(open(os.path.join(result.student_dir, "ukd.json")))
    assert record["reference_uncertainty"] == result.reference_uncertainty > 0
    teacher, teacher_record = load_teacher(result.teacher_dir)
    manifest = load_manifest(manifest_path)
    rows = make_dataset(manifest.split_files("train"), manifest, config.train.batch_size)
    assert reference_uncertainty(teacher_heads(teacher), rows, 2) == pytest.approx(
        teacher_record["reference_uncertainty"], rel=1e-5)  # the saved teacher is the one that labelled

    student = load_trained_model(result.student_dir, float32_matmuls=True)
    version = export_model(student, manifest, str(tmp_path / "models"), version=1, warmup_examples=2)
    assert check_export(student, manifest, version) <= 1e-5


def test_cli_refuses_click_only_data_and_missing_files(manifest_path, tmp_path, capsys):
    from tfads import cli

    data = json.load(open(manifest_path))
    data["labels"], data["label_roles"] = ["click"], {"click": "click", "conversion": None}
    click_only = tmp_path / "manifest.json"
    click_only.write_text(json.dumps(data))
    for path, message in ((click_only, "click-only"), (tmp_path / "missing.json", "manifest not found")):
        assert cli.main(["ukd", "--data", str(path), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("tfads ukd: error:") and message in err
    assert not (tmp_path / "out").exists()
