"""Tests of tfads.layers.moe: MMoE, CGC and PLE formulas, gates, gradients, errors and serialisation."""

from __future__ import annotations

import numpy as np
import pytest

import tfads  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf
import tf_keras as keras

from tfads.layers import CGC, PLE, ExpertBank, MMoE, SoftmaxGate

RNG = np.random.default_rng(11)
X = tf.constant(RNG.normal(size=(12, 6)), tf.float32)
CONTEXT = tf.constant(RNG.normal(size=(12, 3)), tf.float32)
DOMAIN = tf.constant([0, 1, 2] * 4, tf.int64)


def _relu_mlp(x: np.ndarray, bank: ExpertBank, expert: int) -> np.ndarray:
    """Expert ``expert`` of ``bank`` in numpy."""
    for kernel, bias in zip(bank.kernels, bank.biases, strict=True):
        x = np.maximum(x @ kernel.numpy()[expert] + bias.numpy()[expert], 0.0)
    return x


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_mmoe_matches_the_formula_with_gates_reading_input_and_context() -> None:
    layer = MMoE(3, [5, 4], num_gates=2, gate_input="both")
    outputs = layer([X, CONTEXT])
    x = X.numpy()
    experts = np.stack([_relu_mlp(x, layer.experts, i) for i in range(3)], axis=1)
    g_in = np.concatenate([x, CONTEXT.numpy()], axis=1)
    for gate, y in zip(layer.gate_layers, outputs, strict=True):
        g = _softmax(g_in @ gate.kernel.numpy() + gate.bias.numpy())
        np.testing.assert_allclose(y.numpy(), np.einsum("be,beu->bu", g, experts), rtol=1e-5, atol=1e-6)


def test_mmoe_with_one_expert_is_that_expert() -> None:
    layer = MMoE(1, [7, 3], num_gates=2)
    for y in layer(X):
        np.testing.assert_allclose(y.numpy(), _relu_mlp(X.numpy(), layer.experts, 0), rtol=1e-6)


@pytest.mark.parametrize(
    "layer, inputs",
    [
        (MMoE(4, [8], num_gates=2), X),
        (MMoE(4, [8], gate_input="context", num_domains=3), [X, CONTEXT, DOMAIN]),
        (CGC(2, 2, 1, [8], shared_output=True, gate_input="both"), [X, CONTEXT]),
        (PLE(3, 1, 2, [8, 4], num_levels=3, num_domains=3), [X, DOMAIN]),
    ],
    ids=["mmoe", "mmoe-context-per-domain", "cgc-shared-output", "ple-3-levels-per-domain"],
)
def test_gates_sum_to_one_per_row_and_differ_between_rows(layer, inputs) -> None:
    gates = layer.gates(inputs)
    flat = [g for level in gates for g in level] if isinstance(layer, PLE) else gates
    for g in flat:
        g = g.numpy()
        assert g.shape[0] == 12 and np.all(g >= 0)
        np.testing.assert_allclose(g.sum(axis=1), 1.0, rtol=1e-5)
        assert np.ptp(g, axis=0).max() > 1e-3  # per row, not one mixture for the batch


def test_per_domain_gates_use_the_rows_own_domain_weights() -> None:
    layer = MMoE(3, [4], gate_input="input", num_domains=3)
    same_x = tf.repeat(X[:1], 3, axis=0)
    (gate,) = layer.gates([same_x, tf.constant([0, 1, 2])])
    assert np.ptp(gate.numpy(), axis=0).max() > 1e-3  # one row, three domains: three gates
    (weights,) = layer.gate_layers
    expected = _softmax(X.numpy()[:1] @ weights.kernel.numpy()[2] + weights.bias.numpy()[2])
    np.testing.assert_allclose(gate.numpy()[2:], expected, rtol=1e-5)


def test_cgc_group_reads_only_its_own_and_the_shared_experts() -> None:
    layer = CGC(2, specific_experts=2, shared_experts=1, expert_units=[4], shared_output=True)
    before = [y.numpy() for y in layer(X)]
    kernel = layer.specific_banks[1].kernels[0]
    kernel.assign(kernel + 1.0)  # group 1's own experts change
    after = [y.numpy() for y in layer(X)]
    np.testing.assert_array_equal(after[0], before[0])  # group 0 never reads them
    assert np.abs(after[1] - before[1]).max() > 1e-4 and np.abs(after[2] - before[2]).max() > 1e-4  # group 1, shared
    assert [g.shape[1] for g in layer.gates(X)] == [3, 3, 5]  # own + shared; all experts for the shared gate


def test_ple_with_one_level_is_a_cgc() -> None:
    kwargs = {"gate_input": "both", "num_domains": 3}
    cgc, ple = CGC(2, 1, 2, [6, 4], **kwargs), PLE(2, 1, 2, [6, 4], num_levels=1, **kwargs)
    cgc([X, CONTEXT, DOMAIN]), ple([X, CONTEXT, DOMAIN])
    ple.set_weights(cgc.get_weights())
    for a, b in zip(cgc([X, CONTEXT, DOMAIN]), ple([X, CONTEXT, DOMAIN]), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(cgc.gates([X, CONTEXT, DOMAIN]), ple.gates([X, CONTEXT, DOMAIN])[0], strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_ple_levels_feed_group_and_shared_outputs_forward() -> None:
    ple = PLE(2, 1, 1, [4], num_levels=2)
    outputs = ple(X)
    first, last = ple.cgc_levels
    h = first(X)  # two groups + the shared gate's output
    assert len(h) == 3 and len(outputs) == 2 and last.shared_gate is None
    for a, b in zip(outputs, last(h), strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


@pytest.mark.parametrize(
    "layer, inputs",
    [(MMoE(3, [8, 4], num_gates=2, gate_input="both"), [X, CONTEXT]), (PLE(2, 2, 2, [8], num_levels=3), X)],
    ids=["mmoe", "ple"],
)
def test_gradients_reach_every_expert_and_gate(layer, inputs) -> None:
    with tf.GradientTape() as tape:
        loss = sum(tf.reduce_sum(tf.square(y - 0.3)) for y in layer(inputs))
    grads = tape.gradient(loss, layer.trainable_variables)
    assert len(grads) == len(layer.trainable_variables) > 0
    for variable, grad in zip(layer.trainable_variables, grads, strict=True):
        assert grad is not None and float(tf.reduce_max(tf.abs(tf.convert_to_tensor(grad)))) > 0, variable.name
        if len(variable.shape) == 3 and "expert" in variable.name:  # every expert of a bank, not just some
            per_expert = tf.reduce_max(tf.abs(tf.reshape(grad, [variable.shape[0], -1])), axis=1).numpy()
            assert np.all(per_expert > 0), variable.name


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: MMoE(0, [8]), r"MMoE: `num_experts` must be >= 1\. Received: num_experts=0\."),
        (lambda: MMoE(2, [8], num_gates=0), "`num_gates` must be >= 1. Received: num_gates=0"),
        (lambda: MMoE(2, []), r"MMoE: `expert_units` must be a non-empty list .* Received: expert_units=\[\]"),
        (lambda: MMoE(2, [8], gate_input="domain"), "`gate_input` must be one of .* Received: gate_input='domain'"),
        (lambda: MMoE(2, [8], num_domains=-1), "`num_domains` must be >= 0. Received: num_domains=-1"),
        (lambda: CGC(0, 1, 1, [8]), "CGC: `num_groups` must be >= 1. Received: num_groups=0"),
        (lambda: CGC(2, 0, 0, [8]), r"CGC: `specific_experts \+ shared_experts` must be >= 1"),
        (lambda: PLE(2, -1, 2, [8]), "PLE: `specific_experts` must be >= 0. Received: specific_experts=-1"),
        (lambda: PLE(2, 1, 1, [8], num_levels=0), "PLE: `num_levels` must be >= 1. Received: num_levels=0"),
        (lambda: ExpertBank(2, [4, 0]), r"ExpertBank: `units` must be .* Received: units=\[4, 0\]"),
        (lambda: SoftmaxGate(0), "SoftmaxGate: `num_experts` must be >= 1. Received: num_experts=0"),
        (lambda: MMoE(2, [8], gate_input="context")(X), r"expected the inputs \[x, context\]. Received: one tensor"),
        (lambda: CGC(2, 1, 1, [8])([X, X]), "a list of num_groups \\+ 1 = 3. Received 2"),
    ],
    ids=["num_experts", "num_gates", "expert_units", "gate_input", "num_domains", "num_groups", "no_expert",
         "specific_experts", "num_levels", "units", "gate_num_experts", "missing_context", "cgc_input_count"],
)
def test_bad_arguments_are_named(make, message) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def _model_with_every_moe_layer() -> keras.Model:
    x_in = keras.Input((6,), name="x")
    c_in = keras.Input((3,), name="context")
    d_in = keras.Input((), dtype=tf.int64, name="domain")
    mmoe = MMoE(3, [8, 4], num_gates=2, gate_input="both", num_domains=3, name="mmoe")([x_in, c_in, d_in])
    ple = PLE(2, 1, 2, [8], num_levels=2, gate_input="context", name="ple")([x_in, c_in])
    (cgc,) = CGC(1, 2, 0, [4], name="cgc")(x_in)
    logit = keras.layers.Dense(1)(keras.layers.Concatenate()([*mmoe, *ple, cgc]))
    return keras.Model([x_in, c_in, d_in], logit)


def test_moe_layers_survive_saved_model_and_config_round_trips(tmp_path) -> None:
    model = _model_with_every_moe_layer()
    inputs = [X, CONTEXT, DOMAIN]
    model.compile(keras.optimizers.Adam(0.01), "mse")
    model.fit(inputs, RNG.normal(size=(12, 1)), batch_size=12, epochs=2, verbose=0)
    expected = model.predict(inputs, verbose=0)

    path = str(tmp_path / "saved")
    model.save(path, save_format="tf")
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(inputs, verbose=0), expected, rtol=1e-5, atol=1e-6)
    (served,) = tf.saved_model.load(path).signatures["serving_default"](x=X, context=CONTEXT, domain=DOMAIN).values()
    np.testing.assert_allclose(served.numpy(), expected, rtol=1e-5, atol=1e-6)

    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone.predict(inputs, verbose=0), expected, rtol=1e-5, atol=1e-6)
    layers = [layer for layer in model.layers if type(layer).__module__ == "tfads.layers.moe"]
    sublayers = [m for layer in layers for m in layer.submodules if isinstance(m, keras.layers.Layer)]
    assert {type(m).__name__ for m in layers + sublayers} == {"MMoE", "PLE", "CGC", "ExpertBank", "SoftmaxGate"}
    for layer in layers + sublayers:
        config = layer.get_config()
        assert type(layer).from_config(config).get_config() == config
