"""Gradient reversal (Ganin & Lempitsky, ICML 2015): identity forward, ``-scale`` times the gradient backward."""

from __future__ import annotations

import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
import tf_keras as keras


def reverse_gradient(x: tf.Tensor, scale: float) -> tf.Tensor:
    """``x`` unchanged; the gradient flowing back through it is multiplied by ``-scale``."""

    @tf.custom_gradient
    def _reverse(t: tf.Tensor):
        def grad(dy: tf.Tensor) -> tf.Tensor:
            return tf.cast(-scale, dy.dtype) * dy

        return tf.identity(t), grad

    return _reverse(x)


@keras.utils.register_keras_serializable(package="tfads")
class GradientReversal(keras.layers.Layer):
    """Identity in the forward pass; multiplies the gradient by ``-scale`` in the backward pass.

    A discriminator behind this layer learns to tell two domains apart while the layers before it learn
    a representation that makes them indistinguishable (adversarial domain adaptation; UKD's
    click-adaptive teacher, :mod:`tfads.ukd.teacher`).

    Input shape: any. Output shape: the input's.

    Example:
      >>> h = keras.Input((8,))
      >>> domain = keras.layers.Dense(1)(GradientReversal(scale=0.1)(h))

    Args:
      scale: the reversed gradient's factor (DANN's lambda); 0 cuts the gradient.

    Raises:
      ValueError: ``scale`` is negative.
    """

    def __init__(self, scale: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if scale < 0:
            raise ValueError(f"GradientReversal: scale should be non-negative. Got {scale}")
        self.scale = float(scale)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return reverse_gradient(inputs, self.scale)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "scale": self.scale}
