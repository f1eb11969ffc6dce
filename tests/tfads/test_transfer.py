"""Knowledge transfer: fine-tune modes (what a fine-tune may change) and MAML over user segments."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfads.cli import main
from tfads.finetune import apply_finetune_mode, embedding_layers, head_layers
from tfads.layers import find_pruners
from tfads.maml import NEW_SEGMENT, InnerLoop, MamlConfig, Rows, _mean_gradients, as_new_segment
from tfads.train import load_trained_model, train


def _trainable(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [w.numpy() for w in layer.trainable_weights] for layer in model.layers if layer.weights}


@pytest.mark.parametrize("mode", ["heads", "frozen_embeddings"])
def test_a_fine_tune_changes_only_what_its_mode_allows(mode, tmp_path, manifest_path, trained_model_dir,
                                                       small_experiment):
    config = dataclasses.replace(
        small_experiment,
        train=dataclasses.replace(small_experiment.train, epochs=1, steps_per_epoch=6, validation_steps=2,
                                  learning_rate=1e-2),
    )
    out = str(tmp_path / mode)
    train(config, manifest_path, out, init_from=trained_model_dir, finetune=mode, verbose=0)
    base, tuned = load_trained_model(trained_model_dir), load_trained_model(out)
    allowed = {layer.name for layer in (head_layers(base) if mode == "heads" else [
        layer for layer in base.layers if layer.weights and layer not in embedding_layers(base)])}
    changed = {name for name, weights in _trainable(base).items()
               if any(not np.array_equal(a, b) for a, b in zip(weights, _trainable(tuned)[name], strict=True))}
    assert changed and changed <= allowed, (mode, sorted(changed - allowed))
    # the AdaSparse slope stays where training left it (no schedule restarts on a warm start)
    assert [p.alpha.numpy() for p in find_pruners(tuned)] == [p.alpha.numpy() for p in find_pruners(base)]
    record = json.load(open(os.path.join(out, "history.json")))
    assert record["finetune"] == mode and record["init_from"] == trained_model_dir


def test_a_fine_tune_mode_needs_a_model_to_start_from(tmp_path, manifest_path, capsys):
    rc = main(["train", "--data", manifest_path, "--model-dir", str(tmp_path / "m"), "--finetune", "heads"])
    assert rc == 2 and "--finetune needs --init-from" in capsys.readouterr().err


def test_apply_finetune_mode_rejects_what_it_cannot_do():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1, name="plain")(inputs))
    with pytest.raises(ValueError, match="one of full, heads, frozen_embeddings"):
        apply_finetune_mode(model, "towers")
    with pytest.raises(ValueError, match="no layer it could train"):
        apply_finetune_mode(model, "heads")


def _tiny_model() -> keras.Model:
    """Logistic regression over one embedded id: ``p = sigmoid(<e_id, w> + b)``."""
    ids = keras.Input((), dtype=tf.int64, name="id")
    emb = keras.layers.Embedding(5, 2, name="id_embedding")(ids)
    logit = keras.layers.Dense(1, name="ctr_logit")(emb)
    model = keras.Model({"id": ids}, {"ctr": keras.layers.Activation("sigmoid", name="ctr")(logit)})
    model.compile(loss={"ctr": keras.losses.BinaryCrossentropy()})
    return model


def test_the_inner_step_is_a_hand_computed_sgd_step():
    keras.utils.set_random_seed(1)
    model = _tiny_model()
    table, kernel, bias = (w.numpy().astype(np.float64) for w in model.weights)
    ids, y = np.array([0, 3, 3]), np.array([1.0, 0.0, 1.0])
    lr = 0.5
    loop = InnerLoop(model, lr)
    loop.step({"id": tf.constant(ids)}, {"ctr": tf.constant(y[:, None], tf.float32)},
              {"ctr": tf.ones(3)})
    # d mean BCE / d logit = (p - y) / n
    e = table[ids]
    p = 1 / (1 + np.exp(-(e @ kernel[:, 0] + bias[0])))
    g = (p - y) / len(y)
    want_table = table.copy()
    np.add.at(want_table, ids, -lr * g[:, None] * kernel[:, 0][None, :])
    want_kernel = kernel - lr * (e * g[:, None]).sum(0)[:, None]
    want_bias = bias - lr * g.sum()
    for got, want in zip(model.weights, (want_table, want_kernel, want_bias), strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_the_inner_loop_restores_the_initialisation_and_averages_sparse_rows_per_row():
    model = _tiny_model()
    loop = InnerLoop(model, 1.0)
    before = [w.numpy().copy() for w in model.weights]
    loop.save()
    batch = ({"id": tf.constant([1, 2])}, {"ctr": tf.constant([[1.0], [0.0]])}, {"ctr": tf.ones(2)})
    loop.step(*batch)
    assert not np.array_equal(before[0], model.weights[0].numpy())
    loop.restore()
    for a, b in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(a, b.numpy())
    shape = tf.constant([5, 2], tf.int64)
    sparse = [[tf.IndexedSlices(tf.ones((2, 2)), tf.constant([1, 3]), shape)],
              [tf.IndexedSlices(2 * tf.ones((1, 2)), tf.constant([3]), shape)]]
    (mean,) = _mean_gradients(sparse, 2)
    np.testing.assert_allclose(tf.convert_to_tensor(mean).numpy(),
                               [[0, 0], [0.5, 0.5], [0, 0], [1.5, 1.5], [0, 0]])


def test_rows_of_a_segment_are_in_time_order_and_can_pose_as_a_new_segment():
    rows = Rows({"x": np.arange(5), "city": np.array([b"a", b"b", b"a", b"a", b"b"], dtype=object)},
                {"ctr": np.zeros(5)}, {"ctr": np.ones(5)}, np.array(["a", "b", "a", "a", "b"]),
                np.array([9, 1, 3, 5, 0]))
    mine = rows.of_segment("a")
    assert mine.time.tolist() == [3, 5, 9] and mine.features["x"].tolist() == [2, 3, 0]
    new = as_new_segment(mine, "city")
    assert set(new.features["city"]) == {NEW_SEGMENT.encode()} and new.features["x"].tolist() == [2, 3, 0]
    assert as_new_segment(mine, "not_an_input") is mine
    assert as_new_segment(Rows({"g": np.array([3, 4])}, {}, {}, np.array(["3", "4"]), np.zeros(2)),
                          "g").features["g"].tolist() == [-1, -1]


@pytest.fixture(scope="module")
def meta_dir(manifest_path, trained_model_dir, tmp_path_factory) -> str:
    """Reptile meta-trained for a few steps over the session data's cities, one left out."""
    out = str(tmp_path_factory.mktemp("meta"))
    rc = main(["meta-train", "--model-dir", trained_model_dir, "--data", manifest_path, "--out", out,
               "--segment-field", "city", "--algorithm", "reptile", "--meta-steps", "4", "--tasks-per-step", "3",
               "--support", "16", "--query", "16", "--exclude", "c000", "--no-progress"])
    assert rc == 0
    return out


def test_meta_training_writes_a_normal_model_and_its_record(meta_dir, trained_model_dir):
    record = json.load(open(os.path.join(meta_dir, "maml.json")))
    assert len(record["query_loss"]) == 4 and record["excluded"] == ["c000"] and record["segments"] >= 2
    assert record["config"]["algorithm"] == "reptile" and record["init_from"] == trained_model_dir
    base, meta = load_trained_model(trained_model_dir), load_trained_model(meta_dir)
    changed = {name for name, w in _trainable(base).items()
               if any(not np.array_equal(a, b) for a, b in zip(w, _trainable(meta)[name], strict=True))}
    adapted = {layer.name for layer in [*embedding_layers(base), *head_layers(base)]}
    assert changed and changed <= adapted  # Reptile moves only what the inner loop adapts


def test_adapt_fits_the_first_rows_of_a_new_segment_and_exports(meta_dir, manifest_path, tmp_path, capsys):
    from serving.export import export_model
    from tfads.core.manifest import load_manifest

    out = str(tmp_path / "adapted")
    assert main(["adapt", "--model-dir", meta_dir, "--data", manifest_path, "--out", out, "--segment", "c000",
                 "--shots", "12"]) == 0
    printed = capsys.readouterr().out
    assert "adapted to 'c000' on 12 rows" in printed
    done = json.load(open(os.path.join(out, "adaptation.json")))
    assert done["rows"] == 12 and done["config"]["segment_field"] == "city"
    model = load_trained_model(out)
    assert not all(np.array_equal(a.numpy(), b.numpy())
                   for a, b in zip(model.weights, load_trained_model(meta_dir).weights, strict=True))
    export_model(model, load_manifest(manifest_path), str(tmp_path / "export"), version=1, warmup_examples=2)
    assert os.path.exists(tmp_path / "export" / "1" / "saved_model.pb")


def test_bad_segments_and_settings_are_named(meta_dir, trained_model_dir, manifest_path, tmp_path, capsys):
    common = ["--data", manifest_path, "--out", str(tmp_path / "x")]
    assert main(["adapt", "--model-dir", meta_dir, *common, "--segment", "nowhere", "--shots", "4"]) == 2
    assert "segment 'nowhere' has no rows" in capsys.readouterr().err
    assert main(["adapt", "--model-dir", trained_model_dir, *common, "--segment", "c000", "--shots", "4"]) == 2
    assert "give --segment-field" in capsys.readouterr().err
    assert main(["meta-train", "--model-dir", trained_model_dir, *common, "--segment-field", "planet"]) == 2
    assert "segment field 'planet' is not a feature" in capsys.readouterr().err
    with pytest.raises(ValueError, match="inner_lr must be > 0"):
        MamlConfig("city", inner_lr=0)
