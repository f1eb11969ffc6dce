"""UKD's pseudo labels: the frozen teacher labels the unclicked rows in the input pipeline, each row weighted
down by the disagreement of the teacher's two pCVR heads (docs/methods/conversion.md "UKD")."""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from tfads.core.names import CTR, CVR
from tfads.ukd.config import UkdConfig

EPS = 1e-6


def symmetric_kl(p: tf.Tensor, q: tf.Tensor) -> tf.Tensor:
    """Symmetric KL divergence of Bernoulli(p) and Bernoulli(q), element-wise: ``(p - q) * (logit p - logit q)``
    (``KL(p||q) + KL(q||p)``); >= 0, 0 exactly where ``p == q``."""
    p = tf.clip_by_value(p, EPS, 1 - EPS)
    q = tf.clip_by_value(q, EPS, 1 - EPS)
    return (p - q) * (tf.math.log(p) - tf.math.log1p(-p) - tf.math.log(q) + tf.math.log1p(-q))


def uncertainty_weight(p_a: tf.Tensor, p_b: tf.Tensor, reference: float, scale: float) -> tf.Tensor:
    """``exp(-scale * U / reference)`` with ``U`` the heads' :func:`symmetric_kl`: in (0, 1], 1 where the heads
    agree, ``exp(-scale)`` at the reference (mean) uncertainty."""
    u = symmetric_kl(p_a, p_b)
    return tf.exp(-scale * u / max(float(reference), 1e-12))


def reference_uncertainty(heads: keras.Model, dataset: tf.data.Dataset, batches: int) -> float:
    """Mean :func:`symmetric_kl` of the teacher's heads over the unclicked rows of the first ``batches``
    batches of ``dataset`` (``(features, labels, sample_weights)``, as ``tfads.data.make_dataset`` yields).

    Raises:
      ValueError: the batches hold no unclicked row.
    """
    total, rows = 0.0, 0.0
    for features, labels, _ in dataset.take(batches):
        p_a, p_b = heads(features, training=False)
        unclicked = 1.0 - labels[CTR]
        total += float(tf.reduce_sum(symmetric_kl(p_a, p_b) * unclicked))
        rows += float(tf.reduce_sum(unclicked))
    if not rows:
        raise ValueError(f"reference_uncertainty: no unclicked row in {batches} batch(es)")
    return total / rows


def pseudo_label_targets(heads: keras.Model, reference: float, ukd: UkdConfig):
    """A map over the input pipeline's ``(features, labels, sample_weights)`` batches (``tfads.data.to_targets``)
    for the student's ``cvr`` head: clicked rows keep their conversion label and weight; an unclicked row gets
    the teacher's mean pCVR as a soft label, weighted by its row weight times ``ukd.pseudo_weight`` times
    :func:`uncertainty_weight`. Other heads pass unchanged.

    ``heads`` is the frozen teacher's pCVR heads (``tfads.ukd.teacher.teacher_heads``), called in the map."""

    def add_pseudo_labels(features, labels, weights):
        p_a, p_b = heads(features, training=False)
        click = labels[CTR]  # (batch, 1)
        pseudo = tf.stop_gradient((p_a + p_b) / 2)
        certainty = ukd.pseudo_weight * uncertainty_weight(p_a, p_b, reference, ukd.uncertainty_scale)
        labels = {**labels, CVR: click * labels[CVR] + (1 - click) * pseudo}
        weights = {**weights, CVR: weights[CTR] * (click + (1 - click) * certainty)[:, 0]}
        return features, labels, weights

    return add_pseudo_labels
