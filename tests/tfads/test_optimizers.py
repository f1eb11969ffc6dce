"""LazyAdam equals Adam on rows a batch touches and leaves the other rows alone."""

import numpy as np

import tfads  # noqa: F401
import tensorflow as tf

from tfads.optimizers import LazyAdam, make_optimizer


def _train(optimizer, ids_per_step, steps=5):
    table = tf.Variable(np.arange(24, dtype=np.float32).reshape(6, 4) / 10.0)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(tf.gather(table, ids_per_step)))
        optimizer.apply_gradients([(tape.gradient(loss, table), table)])
    return table.numpy()


def test_lazy_adam_matches_adam_when_every_row_is_touched():
    ids = tf.constant([0, 1, 2, 3, 4, 5, 2, 2])  # duplicates are summed like Adam's scatter_add does
    lazy = _train(LazyAdam(0.01), ids)
    dense = _train(tf.keras.optimizers.Adam(0.01), ids)
    np.testing.assert_allclose(lazy, dense, rtol=1e-5, atol=1e-6)


def test_lazy_adam_leaves_untouched_rows_unchanged():
    start = np.arange(24, dtype=np.float32).reshape(6, 4) / 10.0
    out = _train(LazyAdam(0.01), tf.constant([1, 3]))
    np.testing.assert_array_equal(out[[0, 2, 4, 5]], start[[0, 2, 4, 5]])
    assert not np.allclose(out[[1, 3]], start[[1, 3]])


def test_unknown_optimizer_name_is_rejected():
    try:
        make_optimizer("sgdd", 0.1)
    except ValueError as e:
        assert "sgdd" in str(e)
    else:
        raise AssertionError("expected ValueError")


def test_lazy_adam_dense_update_matches_adam():
    """Dense gradients go through the fused ResourceApplyAdam kernel: same result as Keras' Adam."""

    def train(optimizer):
        kernel = tf.Variable(np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4))
        x = tf.constant(np.arange(6, dtype=np.float32).reshape(2, 3) / 5.0)
        for _ in range(5):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(x @ kernel - 0.5))
            optimizer.apply_gradients([(tape.gradient(loss, kernel), kernel)])
        return kernel.numpy()

    np.testing.assert_allclose(train(LazyAdam(0.01)), train(tf.keras.optimizers.Adam(0.01)), rtol=1e-5, atol=1e-6)
