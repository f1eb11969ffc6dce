"""Optimizers for sparse CTR models.

Keras' Adam decays the first and second moments of *every* row of an embedding table on every step,
even though a batch touches a few thousand rows of tables with millions: on the Criteo-shaped
benchmark that dense work dominated the step. ``LazyAdam`` updates only the rows a batch touched
(the approach of TF Addons' LazyAdam, which is no longer maintained). Dense weights take Keras'
Adam update, done by TensorFlow's fused ``ResourceApplyAdam`` kernel (one in-place pass instead of
about ten element-wise ops over the cross and MLP kernels).
"""

from __future__ import annotations

import functools

import tensorflow as tf
import tf_keras as keras


@keras.utils.register_keras_serializable(package="tfads")
class LazyAdam(keras.optimizers.Adam):
    """Adam whose sparse (embedding) updates touch only the looked-up rows.

    For an ``IndexedSlices`` gradient, duplicate indices are summed, then for those rows only:
    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``, ``w -= alpha m / (sqrt(v) + eps)``.
    Rows not in the batch keep their moments (they are not decayed), which is the usual choice for
    recommendation embeddings. Dense gradients follow Keras' Adam (same formula, same epsilon
    placement), in one fused kernel.
    """

    def add_variable_from_reference(self, model_variable, variable_name, shape=None, initial_value=None):
        """A moment variable as Keras makes it, but with its zeros made where the variable lives. Keras makes them in
        the process that builds the optimizer, under parameter servers the chief, and sends them to the ps: a
        transient copy of every table shard on the chief (measured: +0.9 GB for a 1e7 x 16 table over 2 ps), and
        a value that the 2 GB protobuf limit TensorFlow's strategy warns of may stop."""
        if initial_value is None and model_variable.shape.is_fully_defined():
            dtype = getattr(model_variable, "true_dtype", model_variable.dtype)
            initial_value = functools.partial(tf.zeros, model_variable.shape if shape is None else shape, dtype)
        return super().add_variable_from_reference(model_variable, variable_name, shape, initial_value)

    def update_step(self, gradient, variable):
        if self.amsgrad:
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        key = self._var_key(variable)
        m = self._momentums[self._index_dict[key]]
        v = self._velocities[self._index_dict[key]]
        if not isinstance(gradient, tf.IndexedSlices):
            return tf.raw_ops.ResourceApplyAdam(
                var=variable.handle,
                m=m.handle,
                v=v.handle,
                beta1_power=tf.pow(beta_1, step),
                beta2_power=tf.pow(beta_2, step),
                lr=tf.cast(self.learning_rate, dtype),
                beta1=beta_1,
                beta2=beta_2,
                epsilon=tf.cast(self.epsilon, dtype),
                grad=gradient,
            )
        alpha = tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
        rows, position = tf.unique(gradient.indices)
        grad = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * grad
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(grad)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """``lazy_adam`` (default), ``adam`` or ``adagrad``."""
    if name == "lazy_adam":
        return LazyAdam(learning_rate)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "adagrad":
        return keras.optimizers.Adagrad(learning_rate)
    raise ValueError(f"unknown optimizer {name!r} (lazy_adam | adam | adagrad)")
