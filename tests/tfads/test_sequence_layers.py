"""Tests of tfads.layers.sequence: masked pooling, DIN attention and Dice, BroadcastRows, serialisation."""

from __future__ import annotations

import numpy as np
import pytest

import tfads  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf
import tf_keras as keras

from tfads.layers import BroadcastRows, Dice, DinAttention, MaskedPooling

RNG = np.random.default_rng(11)

# Three histories of length 4: three real elements (one padded in the middle), two, none.
VALUES = np.array(
    [
        [[1, 2], [3, -4], [50, 60], [7, 8]],
        [[-1, -2], [-3, -5], [9, 9], [9, 9]],
        [[4, 4], [4, 4], [4, 4], [4, 4]],
    ],
    np.float32,
)
MASK = np.array([[True, True, False, True], [True, True, False, False], [False] * 4])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _with_padding(values: np.ndarray, mask: np.ndarray, fill: float) -> np.ndarray:
    out = values.copy()
    out[~mask] = fill
    return out


# ---- MaskedPooling ----


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("sum", [[11, 6], [-4, -7], [0, 0]]),
        ("mean", [[11 / 3, 2], [-2, -3.5], [0, 0]]),
        ("max", [[7, 8], [-1, -2], [0, 0]]),  # row 2: negative maxima, not the padding's
    ],
)
def test_masked_pooling_matches_hand_computed_values(mode: str, expected: list) -> None:
    out = MaskedPooling(mode)(tf.constant(VALUES), mask=tf.constant(MASK))
    np.testing.assert_allclose(out.numpy(), np.array(expected, np.float32), rtol=1e-6)


@pytest.mark.parametrize("mode", ["mean", "sum", "max"])
@pytest.mark.parametrize("fill", [1e30, -1e30, np.inf, -np.inf, np.nan])
def test_padded_values_never_reach_pooling_outputs_or_gradients(mode: str, fill: float) -> None:
    layer = MaskedPooling(mode)
    expected = layer(tf.constant(VALUES), mask=tf.constant(MASK)).numpy()
    values = tf.constant(_with_padding(VALUES, MASK, fill))
    with tf.GradientTape() as tape:
        tape.watch(values)
        out = layer(values, mask=tf.constant(MASK))
        loss = tf.reduce_sum(out * tf.constant([[1.0, -2.0]]))
    np.testing.assert_array_equal(out.numpy(), expected)
    grad = tape.gradient(loss, values).numpy()
    assert np.isfinite(grad).all()
    np.testing.assert_array_equal(grad[~MASK], 0.0)
    assert (grad[0, 3 if mode == "max" else 0] != 0).all()  # a real position's gradient flows


@pytest.mark.parametrize("mode", ["mean", "sum", "max"])
def test_empty_history_pools_to_zeros_with_finite_gradients(mode: str) -> None:
    values = tf.constant(RNG.normal(size=(2, 3, 4)), tf.float32)
    mask = tf.zeros((2, 3), tf.bool)
    with tf.GradientTape() as tape:
        tape.watch(values)
        out = MaskedPooling(mode)(values, mask=mask)
        loss = tf.reduce_sum(tf.square(out + 1.0))
    np.testing.assert_array_equal(out.numpy(), np.zeros((2, 4)))
    np.testing.assert_array_equal(tape.gradient(loss, values).numpy(), np.zeros((2, 3, 4)))


def test_masked_pooling_uses_a_keras_mask_and_validates_mode() -> None:
    ids = keras.Input((4,), dtype="int32")
    embedding = keras.layers.Embedding(10, 3, mask_zero=True)
    model = keras.Model(ids, MaskedPooling("mean")(embedding(ids)))
    out = model(tf.constant([[3, 5, 0, 0], [0, 0, 0, 0]])).numpy()
    table = embedding.embeddings.numpy()
    np.testing.assert_allclose(out, [(table[3] + table[5]) / 2, np.zeros(3)], rtol=1e-6)
    with pytest.raises(ValueError, match="Received: mode='median'"):
        MaskedPooling("median")


# ---- DinAttention and Dice ----


def _randomise(layer: keras.layers.Layer) -> None:
    for w in layer.weights:
        value = RNG.normal(size=w.shape)
        w.assign(np.abs(value) + 0.5 if "moving_variance" in w.name else value)


def _numpy_din(layer: DinAttention, q: np.ndarray, k: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DIN's activation unit from the layer's weights, at inference."""
    k = np.where(mask[..., None], k, 0.0)
    qb = np.broadcast_to(q[:, None, :], k.shape)
    h = np.concatenate([qb, k, qb - k, qb * k], axis=-1)
    for dense, act in zip(layer.dense_layers, layer.activation_layers, strict=True):
        h = h @ dense.kernel.numpy() + dense.bias.numpy()
        if layer.activation == "sigmoid":
            h = _sigmoid(h)
        elif layer.activation == "prelu":
            h = np.where(h > 0, h, act.alpha.numpy() * h)
        else:
            p = _sigmoid((h - act.moving_mean.numpy()) / np.sqrt(act.moving_variance.numpy() + act.epsilon))
            h = p * h + (1 - p) * act.alpha.numpy() * h
    scores = (h @ layer.score_layer.kernel.numpy() + layer.score_layer.bias.numpy())[..., 0]
    if layer.weight_normalization == "none":
        w = np.where(mask, scores, 0.0)
    else:
        e = np.where(mask, np.exp(scores - np.where(mask, scores, -np.inf).max(-1, keepdims=True)), 0.0)
        w = e / np.maximum(e.sum(-1, keepdims=True), 1e-30)
    return np.einsum("bl,bld->bd", w, k), w


@pytest.mark.parametrize("normalization", ["none", "softmax"])
@pytest.mark.parametrize("activation", ["prelu", "dice", "sigmoid"])
def test_din_attention_matches_a_numpy_recomputation(activation: str, normalization: str) -> None:
    q, k = RNG.normal(size=(3, 2)).astype(np.float32), RNG.normal(size=(3, 4, 2)).astype(np.float32)
    layer = DinAttention((5, 3), activation, normalization, return_weights=True)
    layer(q, k, mask=MASK)
    _randomise(layer)
    out, weights = layer(q, k, mask=MASK, training=False)
    expected_out, expected_w = _numpy_din(layer, q, k, MASK)
    np.testing.assert_allclose(weights.numpy(), expected_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.numpy(), expected_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.attention_weights(q, k, MASK).numpy(), expected_w, rtol=1e-5, atol=1e-6)
    assert np.abs(expected_w[MASK]).min() > 1e-4  # the real positions' weights are not trivially zero


@pytest.mark.parametrize("normalization", ["none", "softmax"])
@pytest.mark.parametrize("activation", ["prelu", "dice"])
def test_padded_keys_get_zero_weight_and_do_not_change_the_output(activation: str, normalization: str) -> None:
    q, k = tf.constant(VALUES[:, 0] / 10), VALUES / 10
    layer = DinAttention((4,), activation, normalization, return_weights=True)
    layer(q, k, mask=MASK)
    _randomise(layer)
    for training in (False, True):  # training: Dice's batch statistics cover the real positions only
        out, weights = layer(q, k, mask=MASK, training=training)
        for fill in (1e6, -1e30, np.nan):
            keys = tf.constant(_with_padding(k, MASK, fill))
            with tf.GradientTape() as tape:
                tape.watch(keys)
                padded_out, padded_weights = layer(q, keys, mask=MASK, training=training)
                loss = tf.reduce_sum(padded_out)
            np.testing.assert_array_equal(padded_weights.numpy()[~MASK], 0.0)
            np.testing.assert_allclose(padded_weights.numpy(), weights.numpy(), rtol=1e-6)
            np.testing.assert_allclose(padded_out.numpy(), out.numpy(), rtol=1e-6)
            grad = tape.gradient(loss, keys).numpy()
            assert np.isfinite(grad).all() and (grad[~MASK] == 0).all() and (grad[MASK] != 0).any()


def test_softmax_weights_sum_to_one_over_real_positions_and_empty_histories_give_zeros() -> None:
    q = tf.constant(RNG.normal(size=(3, 2)), tf.float32)
    k = tf.constant(RNG.normal(size=(3, 4, 2)), tf.float32)
    for normalization in ("softmax", "none"):
        layer = DinAttention((4, 2), "dice", normalization, return_weights=True)
        with tf.GradientTape() as tape:
            tape.watch([q, k])
            out, weights = layer(q, k, mask=MASK, training=True)
            loss = tf.reduce_sum(tf.square(out - 1.0))
        grads = tape.gradient(loss, [q, k] + layer.trainable_weights)
        assert all(np.isfinite(g.numpy()).all() for g in grads)
        np.testing.assert_array_equal(out.numpy()[2], 0.0)
        np.testing.assert_array_equal(weights.numpy()[2], 0.0)
        if normalization == "softmax":
            np.testing.assert_allclose(weights.numpy().sum(-1), [1.0, 1.0, 0.0], rtol=1e-6)
            assert (weights.numpy()[MASK] > 0).all()


def test_din_attention_names_bad_arguments() -> None:
    with pytest.raises(ValueError, match="Received: activation='relu'"):
        DinAttention(activation="relu")
    with pytest.raises(ValueError, match="Received: weight_normalization='l1'"):
        DinAttention(weight_normalization="l1")
    with pytest.raises(ValueError, match=r"Received: hidden_units=\[8, 0\]"):
        DinAttention(hidden_units=[8, 0])
    with pytest.raises(ValueError, match="widths differ: 3 vs 2"):
        DinAttention((4,))(tf.ones((1, 3)), tf.ones((1, 2, 2)))
    with pytest.raises(ValueError, match=r"mask must be \(batch, L\).*shape \(3,\)"):
        DinAttention((4,))(tf.ones((3, 2)), tf.ones((3, 4, 2)), mask=tf.ones((3,), tf.bool))


def test_dice_uses_batch_statistics_in_training_and_moving_ones_at_inference() -> None:
    s = RNG.normal(size=(2, 4, 3)).astype(np.float32) * 2 + 1
    dice = Dice(momentum=0.9)
    dice(s)
    dice.alpha.assign([0.5, -0.25, 0.1])

    def formula(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
        p = _sigmoid((s - mean) / np.sqrt(var + dice.epsilon))
        return p * s + (1 - p) * dice.alpha.numpy() * s

    real = s[MASK[:2]]  # statistics over the real positions only
    trained = dice(s, mask=MASK[:2], training=True).numpy()
    np.testing.assert_allclose(trained, formula(real.mean(0), real.var(0)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dice.moving_mean.numpy(), 0.1 * real.mean(0), rtol=1e-5)
    np.testing.assert_allclose(dice.moving_variance.numpy(), 0.9 + 0.1 * real.var(0), rtol=1e-5)

    mean, var = dice.moving_mean.numpy(), dice.moving_variance.numpy()
    inferred = dice(s, mask=MASK[:2], training=False).numpy()
    np.testing.assert_allclose(inferred, formula(mean, var), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dice(s[:1], training=False).numpy(), inferred[:1], rtol=1e-6)  # rows independent
    assert not np.allclose(dice(s[:1], training=True).numpy(), trained[:1], atol=1e-3)  # batch statistics

    dice.moving_mean.assign(mean)
    dice.moving_variance.assign(var)
    empty = dice(s, mask=np.zeros((2, 4), bool), training=True).numpy()  # no real position: moving statistics
    np.testing.assert_allclose(empty, formula(mean, var), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dice.moving_mean.numpy(), mean, rtol=1e-6)
    with pytest.raises(ValueError, match="Received: momentum=1.0"):
        Dice(momentum=1.0)


# ---- BroadcastRows ----


def test_broadcast_rows_tiles_one_row_and_keeps_a_full_batch_at_any_dtype() -> None:
    layer = BroadcastRows()
    ref = tf.zeros((3, 5))
    one = VALUES[:1].astype(np.float64)
    tiled = layer([one, ref])
    assert tiled.dtype == tf.float64
    np.testing.assert_array_equal(tiled.numpy(), np.tile(one, (3, 1, 1)))
    np.testing.assert_array_equal(layer([MASK[:1], ref]).numpy(), np.tile(MASK[:1], (3, 1)))
    np.testing.assert_array_equal(layer([tf.constant([[b"a", b"b"]]), ref]).numpy(), [[b"a", b"b"]] * 3)
    np.testing.assert_array_equal(layer([VALUES, ref]).numpy(), VALUES)


def test_broadcast_rows_follows_dynamic_batch_sizes_in_one_traced_function() -> None:
    layer = BroadcastRows()
    spec = (tf.TensorSpec((None, 4, 2), tf.float32), tf.TensorSpec((None,), tf.int64))
    fn = tf.function(lambda x, ref: layer([x, ref]), input_signature=spec)
    for x, rows in ((VALUES[:1], 5), (VALUES[:1], 1), (VALUES, 3)):
        out = fn(tf.constant(x), tf.range(rows, dtype=tf.int64)).numpy()
        np.testing.assert_array_equal(out, np.broadcast_to(x, (rows, 4, 2)))
    assert fn.experimental_get_tracing_count() == 1


# ---- serialisation ----


SEQUENCE = ((VALUES,), {"mask": MASK})
QUERY_KEYS = ((VALUES[:, 0], VALUES), {"mask": MASK})
ROUND_TRIPS = {
    "pooling": (lambda: MaskedPooling("max", name="pool"), SEQUENCE),
    "dice": (lambda: Dice(momentum=0.9, epsilon=1e-5), SEQUENCE),
    "din-dice-softmax": (lambda: DinAttention([6, 3], "dice", "softmax", return_weights=True), QUERY_KEYS),
    "din-sigmoid": (lambda: DinAttention([4], "sigmoid"), QUERY_KEYS),
    "broadcast": (lambda: BroadcastRows(name="rows"), (([VALUES[:1], VALUES],), {})),
}


@pytest.mark.parametrize("case", ROUND_TRIPS)
def test_config_round_trip_gives_the_same_outputs(case: str) -> None:
    make, (args, kwargs) = ROUND_TRIPS[case]
    layer = make()
    layer(*args, **kwargs)
    _randomise(layer)
    config = layer.get_config()
    twin = keras.layers.deserialize(keras.layers.serialize(layer))  # registered name -> from_config
    assert type(twin) is type(layer) and twin.get_config() == config
    twin(*args, **kwargs)
    twin.set_weights(layer.get_weights())
    for a, b in zip(tf.nest.flatten(layer(*args, **kwargs)), tf.nest.flatten(twin(*args, **kwargs)), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def _model_with_every_sequence_layer() -> keras.Model:
    history = keras.Input((4, 2), name="history")
    history_mask = keras.Input((4,), dtype="bool", name="history_mask")
    ad = keras.Input((2,), name="ad")
    hist = BroadcastRows(name="history_rows")([history, ad])
    mask = BroadcastRows(name="mask_rows")([history_mask, ad])
    pooled = [MaskedPooling(mode)(hist, mask=mask) for mode in ("mean", "max")]
    # Keras 2 keys a SavedModel's outputs by layer name: the weights' key is the attention layer's name.
    interest, weights = DinAttention((6, 3), "dice", return_weights=True, name="attention")(ad, hist, mask=mask)
    soft = DinAttention((4,), "prelu", "softmax")(ad, hist, mask=mask)
    logit = keras.layers.Dense(1, name="logit")(keras.layers.Concatenate()([*pooled, interest, soft, ad]))
    return keras.Model(
        {"history": history, "history_mask": history_mask, "ad": ad}, {"logit": logit, "attention": weights}
    )


def test_functional_model_survives_saved_model_and_serves_one_history_to_many_ads(tmp_path) -> None:
    model = _model_with_every_sequence_layer()
    ads = RNG.normal(size=(5, 2)).astype(np.float32)
    batch = {"history": np.tile(VALUES[:1], (5, 1, 1)), "history_mask": np.tile(MASK[:1], (5, 1)), "ad": ads}
    model(batch, training=True)  # moves Dice's statistics away from (0, 1)
    assert np.abs(model.get_layer("attention").activation_layers[0].moving_mean.numpy()).max() > 0
    _randomise(model.get_layer("attention"))
    cases = {  # name -> (inputs, the batch the outputs should equal)
        "one history, 5 ads": ({**batch, "history": VALUES[:1], "history_mask": MASK[:1]}, batch),
        "3 histories, 3 ads": ({"history": VALUES, "history_mask": MASK, "ad": ads[:3]}, None),
    }
    expected = {name: model(x if same is None else same) for name, (x, same) in cases.items()}
    np.testing.assert_allclose(model(cases["one history, 5 ads"][0])["logit"], expected["one history, 5 ads"]["logit"])
    np.testing.assert_array_equal(expected["3 histories, 3 ads"]["attention"].numpy()[~MASK], 0.0)

    path = str(tmp_path / "saved")
    model.save(path, save_format="tf")
    loaded = keras.models.load_model(path)
    serving = tf.saved_model.load(path).signatures["serving_default"]
    for name, (x, _) in cases.items():
        tensors = {key: tf.constant(value) for key, value in x.items()}
        for out in (loaded(tensors), serving(**tensors)):
            for key in ("logit", "attention"):
                np.testing.assert_allclose(out[key].numpy(), expected[name][key].numpy(), rtol=1e-5, atol=1e-6)
