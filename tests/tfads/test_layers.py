"""Tests of tfads.layers: AdaSparse pruners and schedules, DCN-Mix, STAR, serialisation."""

from __future__ import annotations

import numpy as np
import pytest

import tfads  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from tfads.layers import (
    AdaSparseMLP,
    AdaSparsePruner,
    AlphaAnnealer,
    CrossMix,
    LowPrecisionCross,
    PartitionedNormalization,
    SparsityLambdaScheduler,
    StarDense,
    StarTower,
    find_pruners,
    sparsity_report,
)

RNG = np.random.default_rng(7)


def _pruner_output(form: str, alpha: float = 5.0, **kwargs) -> tuple[np.ndarray, np.ndarray, AdaSparsePruner]:
    """Output of a pruner on h = ones (so the output is pi itself) with a spread of v values."""
    h = np.ones((64, 16), np.float32)
    e = RNG.normal(size=(64, 4)).astype(np.float32) * 3.0
    pruner = AdaSparsePruner(form=form, **kwargs)
    pruner([h, e])
    pruner.alpha.assign(alpha)
    v = np.concatenate([e, h], axis=1) @ pruner.dense.kernel.numpy() + pruner.dense.bias.numpy()
    return pruner([h, e]).numpy(), v, pruner


# ---- DCN: pin the tfrs Cross dependency ----


@pytest.mark.parametrize(("bias", "expected"), [("zeros", [0.55, 0.8, 1.05]), ("ones", [0.65, 1.0, 1.35])])
def test_tfrs_cross_golden_vector(bias: str, expected: list[float]) -> None:
    cross = tfrs.layers.dcn.Cross(kernel_initializer="ones", bias_initializer=bias)
    out = cross(tf.constant([[0.1, 0.2, 0.3]]), tf.constant([[0.4, 0.5, 0.6]]))
    np.testing.assert_allclose(out.numpy()[0], expected, rtol=1e-6)


@pytest.mark.parametrize("projection_dim", [None, 4])
def test_low_precision_cross_matmuls_in_bfloat16_and_stays_close_to_tfrs_cross(projection_dim) -> None:
    x0 = tf.constant(RNG.normal(size=(16, 12)), tf.float32)
    x = tf.constant(RNG.normal(size=(16, 12)), tf.float32)
    exact = tfrs.layers.dcn.Cross(projection_dim=projection_dim, bias_initializer="random_normal")
    expected = exact(x0, x).numpy()
    for matmul_dtype, tolerance in (("float32", 1e-6), ("bfloat16", 3e-2)):
        layer = LowPrecisionCross(matmul_dtype=matmul_dtype, projection_dim=projection_dim)
        layer(x0, x)
        layer.set_weights(exact.get_weights())
        assert all(w.dtype == tf.float32 for w in layer.weights)
        out = layer(x0, x)
        assert out.dtype == tf.float32
        np.testing.assert_allclose(out.numpy(), expected, rtol=tolerance, atol=tolerance * np.abs(expected).max())
        graph = tf.function(lambda a, b, layer=layer: layer(a, b)).get_concrete_function(x0, x).graph
        matmuls = {op.get_attr("T") for op in graph.get_operations() if op.type == "MatMul"}
        assert matmuls == {tf.as_dtype(matmul_dtype)}
    with pytest.raises(ValueError, match="matmul_dtype must be 'float32' or 'bfloat16', got 'float16'"):
        LowPrecisionCross(matmul_dtype="float16")


# ---- AdaSparse pruner forms ----


def test_binarization_is_exactly_zero_or_one() -> None:
    out, v, _ = _pruner_output("binarization", eps=0.25)
    assert set(np.unique(out)) == {0.0, 1.0}
    expected = (1.0 / (1.0 + np.exp(-5.0 * v)) > 0.25).astype(np.float32)
    np.testing.assert_array_equal(out, expected)


def test_fusion_values_are_zero_or_between_eps_and_beta() -> None:
    out, v, _ = _pruner_output("fusion", eps=0.25, beta=2.0)
    zero = out == 0.0
    assert 0 < zero.mean() < 1
    assert np.all((out[~zero] > 0.25) & (out[~zero] <= 2.0))
    soft = 2.0 / (1.0 + np.exp(-5.0 * v))
    np.testing.assert_allclose(out, soft * (soft > 0.25), rtol=1e-5)


def test_scaling_never_prunes() -> None:
    out, v, _ = _pruner_output("scaling", beta=2.0)
    assert np.all((out > 0.0) & (out < 2.0))
    np.testing.assert_allclose(out, 2.0 / (1.0 + np.exp(-v)), rtol=1e-5)


def test_pruned_units_are_exact_zeros_of_h() -> None:
    pruner = AdaSparsePruner(form="fusion", eps=0.5)
    h = RNG.normal(size=(32, 8)).astype(np.float32)
    e = RNG.normal(size=(32, 3)).astype(np.float32) * 4
    pruner([h, e])
    pruner.alpha.assign(5.0)
    pruner.record_masks = True
    out = pruner([h, e]).numpy()
    keep = pruner.last_keep.numpy()
    assert 0 < keep.mean() < 1
    assert np.all(out[keep == 0] == 0.0) and np.all(out[keep == 1] != 0.0)


def test_inference_is_deterministic_and_keeps_alpha() -> None:
    mlp = AdaSparseMLP([16, 8], pruner={"form": "fusion"})
    x, e = RNG.normal(size=(10, 6)).astype(np.float32), RNG.normal(size=(10, 2)).astype(np.float32)
    first = mlp([x, e], training=False).numpy()
    alphas = [p.alpha.numpy() for p in mlp.pruners]
    np.testing.assert_array_equal(first, mlp([x, e], training=False).numpy())
    np.testing.assert_array_equal(first, mlp([x, e], training=True).numpy())
    assert alphas == [p.alpha.numpy() for p in mlp.pruners] == [np.float32(0.1)] * 2


@pytest.mark.parametrize("form", ["binarization", "fusion"])
def test_straight_through_gradient_reaches_the_pruner(form: str) -> None:
    pruner = AdaSparsePruner(form=form, eps=0.4)
    h = tf.constant(RNG.normal(size=(32, 8)), tf.float32)
    e = tf.constant(RNG.normal(size=(32, 3)) * 4, tf.float32)
    pruner([h, e])
    pruner.alpha.assign(5.0)
    with tf.GradientTape() as tape:
        out = pruner([h, e])
        loss = tf.reduce_sum(out * tf.constant(RNG.normal(size=(32, 8)), tf.float32))
    grad = tape.gradient(loss, pruner.dense.kernel)
    assert grad is not None and np.abs(grad.numpy()).min(axis=0).max() > 0
    assert np.all(np.abs(grad.numpy()).sum(axis=0) > 0), "every unit, pruned or not, gets a gradient"


def test_domain_only_pruner_gives_one_mask_per_domain_and_mlp_pruner_has_a_hidden_layer() -> None:
    h = RNG.normal(size=(6, 16)).astype(np.float32)
    e = np.repeat(RNG.normal(size=(2, 4)).astype(np.float32) * 3.0, 3, axis=0)  # rows 0-2 domain A, 3-5 B
    pruner = AdaSparsePruner(form="binarization", pruner_input="domain", hidden_units=8)
    pruner([h, e])
    pruner.alpha.assign(5.0)
    pruner.record_masks = True
    pruner([h, e])
    keep = pruner.last_keep.numpy()
    np.testing.assert_array_equal(keep[0], keep[1])
    np.testing.assert_array_equal(keep[3], keep[5])
    assert pruner.hidden.kernel.shape == (4, 8) and pruner.dense.kernel.shape == (8, 16)
    assert AdaSparsePruner.from_config(pruner.get_config()).get_config() == pruner.get_config()


def test_sparsity_regulariser_is_zero_inside_range_and_has_gradient_outside() -> None:
    pruner = AdaSparsePruner(form="fusion", eps=0.25, r_min=0.15, r_max=0.25, lambda_init=1.0)
    h = tf.ones((64, 16))
    e = tf.constant(RNG.normal(size=(64, 4)), tf.float32)
    with tf.GradientTape() as tape:
        pruner([h, e])  # alpha = 0.1: nothing is pruned, r_l = 0 is outside the range
        (loss,) = pruner.losses
    assert loss.numpy() == pytest.approx((0.0 - 0.2) ** 2, rel=1e-5)
    grad = tape.gradient(loss, pruner.dense.kernel).numpy()
    assert np.abs(grad).sum() > 0
    pruner.alpha.assign(5.0)
    pruner.dense.kernel.assign(np.zeros((20, 16), np.float32))
    pruner.dense.bias.assign(np.r_[np.full(3, -5.0), np.full(13, 5.0)].astype(np.float32))  # r_l = 3/16
    pruner([h, e])
    assert pruner.losses[0].numpy() == 0.0


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="form"):
        AdaSparsePruner(form="sign")
    with pytest.raises(ValueError, match="eps"):
        AdaSparsePruner(form="binarization", eps=1.5)
    with pytest.raises(ValueError, match="r_min"):
        AdaSparsePruner(r_min=0.3, r_max=0.2)


# ---- schedules and training ----


def _adasparse_model(form: str, num_domains: int) -> keras.Model:
    x_in = keras.Input((16,), name="x")
    d_in = keras.Input((), dtype="int32", name="domain")
    e = keras.layers.Embedding(num_domains, 4)(d_in)
    h = AdaSparseMLP([32, 16], pruner={"form": form}, name="deep")([x_in, e])
    return keras.Model([x_in, d_in], keras.layers.Dense(1, activation="sigmoid")(h))


def _domain_problem(n: int, num_domains: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    d = rng.integers(0, num_domains, n).astype(np.int32)
    y = ((x[:, 0] * (d - 1.5) + x[:, 1]) > 0).astype(np.float32)
    return x, d, y


@pytest.mark.parametrize("steps_per_execution", [1, 3])
def test_alpha_annealer_and_lambda_scheduler_follow_their_schedules(steps_per_execution: int) -> None:
    x, d, y = _domain_problem(256, 4)
    model = _adasparse_model("fusion", 4)
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy", steps_per_execution=steps_per_execution)
    pruner = find_pruners(model)[0]
    seen: list[tuple[float, float]] = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda *_: seen.append((pruner.alpha.numpy(), pruner.lambda_hat.numpy()))
    )
    annealer = AlphaAnnealer(0.1, 5.0)
    scheduler = SparsityLambdaScheduler(growth=2.0, growth_steps=8)
    # Each batch runs with the values of the optimizer step it starts at.
    mismatches: list[int] = []
    check = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda *_: mismatches.extend(
            [int(model.optimizer.iterations.numpy())]
            if pruner.alpha.numpy() != pytest.approx(annealer.alpha_at(int(model.optimizer.iterations.numpy())))
            or pruner.lambda_hat.numpy()
            != pytest.approx(scheduler.lambda_at(0.01, int(model.optimizer.iterations.numpy())))
            else []
        )
    )
    model.fit([x, d], y, batch_size=32, epochs=3, verbose=0, callbacks=[annealer, scheduler, record, check])
    assert mismatches == []
    alphas, lambdas = zip(*seen, strict=True)
    assert alphas[0] < alphas[1] < alphas[2] <= 5.0
    assert alphas[0] > 0.1
    assert lambdas[0] < lambdas[1] < lambdas[2]
    assert annealer.alpha_at(24) == pytest.approx(5.0)
    assert scheduler.lambda_at(0.01, 16) == pytest.approx(0.04)
    # Inference does not move alpha.
    model.predict([x, d], verbose=0)
    assert pruner.alpha.numpy() == alphas[2]


@pytest.mark.parametrize("form", ["fusion", "binarization"])
def test_trained_sparsity_lands_inside_the_range_and_report_covers_layers_and_domains(form: str) -> None:
    tf.keras.utils.set_random_seed(1)
    num_domains = 4
    x, d, y = _domain_problem(2048, num_domains)
    model = _adasparse_model(form, num_domains)
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    steps = 64 * 8  # batch 32 over 2048 rows, 8 epochs
    callbacks = [AlphaAnnealer(total_steps=int(steps * 0.6)), SparsityLambdaScheduler(growth=2.0, growth_steps=40)]
    history = model.fit([x, d], y, batch_size=32, epochs=8, verbose=0, callbacks=callbacks)
    assert history.history["loss"][-1] < history.history["loss"][0]
    report = sparsity_report(model, [((x[:1024], d[:1024]), d[:1024]), ((x[1024:], d[1024:]), d[1024:])])
    assert report.layers == ["deep/pruner_0", "deep/pruner_1"]
    assert report.domains == [0, 1, 2, 3] and sum(report.rows.values()) == 2048
    assert report.matrix.shape == (2, num_domains)
    for i, name in enumerate(report.layers):
        weights = np.array([report.rows[k] for k in report.domains]) / 2048
        assert report.per_layer[name] == pytest.approx(float(report.matrix[i] @ weights))
        assert 0.15 <= report.per_layer[name] <= 0.25, report.per_layer
        assert report.unit_keep[i].shape == (num_domains, 32 if i == 0 else 16)
        np.testing.assert_allclose(1.0 - report.unit_keep[i].mean(axis=1), report.matrix[i])


def test_mask_sharing_separates_groups_of_domains() -> None:
    from tfads.layers.adasparse import SparsityReport
    from tfads.sparsity import mask_sharing

    pattern = np.array([[1, 1, 0, 0, 1, 0], [0, 0, 1, 1, 0, 1]], float)  # two groups keep disjoint units
    keep = np.stack([pattern[0], pattern[0] * 0.9, pattern[1], pattern[1] * 0.8])
    report = SparsityReport(
        ["b/pruner_0"], [0, 1, 2, 3], 1 - keep.mean(1, keepdims=True).T, {}, {d: 600 for d in range(4)}, [keep]
    )
    stats = mask_sharing(report, np.array([0, 0, 1, 1]), min_rows=500)["b/pruner_0"]
    assert stats["same_group"] > 0.9 and stats["other_group"] < -0.5 and stats["domains"] == 4
    assert 0.5 < stats["between_share"] <= 1.0


# ---- DCN-Mix ----


def test_cross_mix_shapes_and_mixture() -> None:
    x0 = tf.constant(RNG.normal(size=(5, 12)), tf.float32)
    layer = CrossMix(num_experts=3, low_rank=4)
    out = layer(x0, layer(x0))
    assert out.shape == (5, 12)
    assert layer.u_kernel.shape == (3, 4, 12) and layer.gate_kernel.shape == (12, 3)


def test_cross_mix_with_one_linear_expert_is_tfrs_low_rank_cross() -> None:
    x0 = tf.constant(RNG.normal(size=(5, 8)), tf.float32)
    x = tf.constant(RNG.normal(size=(5, 8)), tf.float32)
    cross = tfrs.layers.dcn.Cross(projection_dim=3, bias_initializer="random_normal")
    expected = cross(x0, x)
    mix = CrossMix(num_experts=1, low_rank=3, activation=None)
    mix(x0, x)
    mix.v_kernel.assign(cross._dense_u.kernel[None])
    mix.c_kernel.assign(np.eye(3, dtype=np.float32)[None])
    mix.u_kernel.assign(cross._dense_v.kernel[None])
    mix.bias.assign(cross._dense_v.bias)
    np.testing.assert_allclose(mix(x0, x).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


# ---- STAR ----


def test_star_dense_matches_the_formula_per_domain() -> None:
    x = RNG.normal(size=(9, 5)).astype(np.float32)
    d = np.array([0, 1, 2, 0, 1, 2, 2, 2, 0], np.int32)
    layer = StarDense(4, num_domains=3)
    layer([x, d])
    layer.domain_kernel.assign(RNG.normal(size=(3, 5, 4)).astype(np.float32))
    layer.domain_bias.assign(RNG.normal(size=(3, 4)).astype(np.float32))
    out = layer([x, d]).numpy()
    w, b = layer.kernel.numpy(), layer.bias.numpy()
    wp, bp = layer.domain_kernel.numpy(), layer.domain_bias.numpy()
    expected = np.stack([x[i] @ (wp[d[i]] * w) + b + bp[d[i]] for i in range(9)])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert StarTower([6, 3], num_domains=3)([x, d]).shape == (9, 3)


def test_partitioned_normalization_uses_domain_stats() -> None:
    n = 64
    d = np.repeat([0, 1], n // 2).astype(np.int32)
    z = np.concatenate([RNG.normal(5.0, 2.0, (n // 2, 3)), RNG.normal(-1.0, 0.5, (n // 2, 3))]).astype(np.float32)
    pn = PartitionedNormalization(num_domains=3, momentum=0.0)
    train_out = pn([z, d], training=True).numpy()
    for k in (0, 1):  # each domain normalised with its own batch statistics
        np.testing.assert_allclose(train_out[d == k].mean(axis=0), 0.0, atol=1e-4)
        np.testing.assert_allclose(train_out[d == k].std(axis=0), 1.0, atol=1e-2)
    mm, mv = pn.moving_mean.numpy(), pn.moving_variance.numpy()
    np.testing.assert_allclose(mm[0], z[d == 0].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(mv[1], z[d == 1].var(axis=0, ddof=1), rtol=1e-4)
    assert np.all(mm[2] == 0.0) and np.all(mv[2] == 1.0), "an absent domain keeps its statistics"
    pn.domain_gamma.assign(RNG.uniform(0.5, 2.0, (3, 3)).astype(np.float32))
    pn.domain_beta.assign(RNG.normal(size=(3, 3)).astype(np.float32))
    infer_out = pn([z[:5], d[:5]], training=False).numpy()  # a batch too small for batch statistics
    g = pn.gamma.numpy() * pn.domain_gamma.numpy()[0]
    b = pn.beta.numpy() + pn.domain_beta.numpy()[0]
    expected = g * (z[:5] - mm[0]) / np.sqrt(mv[0] + pn.epsilon) + b
    np.testing.assert_allclose(infer_out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(pn.moving_mean.numpy(), mm)


# ---- serialisation ----


def _model_with_every_layer(num_domains: int = 3) -> keras.Model:
    x_in = keras.Input((8,), name="x")
    d_in = keras.Input((), dtype="int32", name="domain")
    e = keras.layers.Embedding(num_domains, 4)(d_in)
    pruned_x = AdaSparsePruner(form="binarization", eps=0.3)([x_in, e])
    deep = AdaSparseMLP([16, 8], dropout=0.1, pruner={"form": "fusion", "eps": 0.5}, matmul_dtype="bfloat16")(
        [pruned_x, e]
    )
    scaled = AdaSparsePruner(form="scaling", hidden_units=4, pruner_input="domain")([deep, e])
    cross = CrossMix(num_experts=2, low_rank=3)(x_in, CrossMix(num_experts=2, low_rank=3)(x_in))
    cross = LowPrecisionCross(projection_dim=3)(x_in, LowPrecisionCross()(x_in, cross))
    star = StarTower([8, 4], num_domains)([x_in, d_in])
    normed = PartitionedNormalization(num_domains)([StarDense(4, num_domains)([x_in, d_in]), d_in])
    logit = keras.layers.Dense(1)(keras.layers.Concatenate()([scaled, cross, star, normed]))
    return keras.Model([x_in, d_in], logit)


def test_every_layer_survives_saved_model_and_config_round_trips(tmp_path) -> None:
    model = _model_with_every_layer()
    x = RNG.normal(size=(12, 8)).astype(np.float32) * 3
    d = np.array([0, 1, 2] * 4, np.int32)
    model.compile(keras.optimizers.Adam(0.01), "mse")
    model.fit([x, d], RNG.normal(size=(12, 1)), batch_size=12, epochs=2, verbose=0)  # move the PN statistics
    for p in find_pruners(model):
        p.alpha.assign(3.0)
    expected = model.predict([x, d], verbose=0)

    path = str(tmp_path / "saved")
    model.save(path, save_format="tf")
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict([x, d], verbose=0), expected, rtol=1e-5, atol=1e-6)
    assert [p.alpha.numpy() for p in find_pruners(loaded)] == [3.0] * 4

    serving = tf.saved_model.load(path).signatures["serving_default"]
    (served,) = serving(x=tf.constant(x), domain=tf.constant(d)).values()
    np.testing.assert_allclose(served.numpy(), expected, rtol=1e-5, atol=1e-6)

    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone.predict([x, d], verbose=0), expected, rtol=1e-5, atol=1e-6)
    for layer in model.layers:
        if type(layer).__module__.startswith("tfads.layers"):
            config = layer.get_config()
            twin = type(layer).from_config(config)
            assert twin.get_config() == config


def test_auto_matmul_dtype_follows_the_cpu(monkeypatch, tmp_path) -> None:
    from tfads.layers import low_precision_cross as lpc

    assert lpc.resolve_matmul_dtype("float32") == "float32"
    assert lpc.resolve_matmul_dtype("bfloat16") == "bfloat16"
    native = "bfloat16" if any(f in open("/proc/cpuinfo").read().split() for f in lpc.BF16_CPU_FLAGS) else "float32"
    assert lpc.resolve_matmul_dtype("auto") == native
    fake = tmp_path / "cpuinfo"
    monkeypatch.setattr(lpc, "Path", lambda _: fake)
    for flags, expected in (("fpu sse avx512f", "float32"), ("fpu avx512f avx512_bf16", "bfloat16"),
                            ("fpu amx_bf16", "bfloat16")):
        fake.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        lpc.native_matmul_dtype.cache_clear()
        assert lpc.native_matmul_dtype() == expected
    lpc.native_matmul_dtype.cache_clear()
