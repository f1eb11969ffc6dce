"""The AdaCalib layer: field-value-adaptive, posterior-guided, monotone calibration (Wei et al., 2022).

Method as built and the choices the paper leaves open: docs/methods/calibration.md "AdaCalib".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np

import tfads  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf
import tf_keras as keras

from tfads.calibration.shrinkage import logit as _logit
from tfads.calibration.shrinkage import pav, shrink, sigmoid
from tfads.calibration.stats import CalibStats, ValueStats

PREDICTION = "prediction"  # input key of the uncalibrated probability (or logit)
_P_EPS = 1e-6  # probabilities are clipped to [eps, 1 - eps] before the logit
_MIN_WIDTH = 1e-3  # keypoints closer than this (tied quantiles) are pushed apart, in logit units
MAX_LOGIT = 15.0  # the output logit is clipped so float32 sigmoid stays strictly inside (0, 1)


def _softplus_inv(y: np.ndarray) -> np.ndarray:
    return np.where(y > 20, y, np.log(np.expm1(np.minimum(y, 20))))


def _segment_tables(vs: ValueStats, k: int, min_slope: float, posterior: np.ndarray) -> dict[str, np.ndarray]:
    """Keypoints, per-segment posterior features and the posterior anchor of one value for ``k`` bins.

    ``posterior`` are the bins' empirical-Bayes posterior rates (``shrinkage.shrink``). The anchor is the
    piecewise-linear function through their isotonic (PAV) fit placed at the bins' mean predictions, in
    logit space: the network outputs corrections to it (zero at initialisation).
    """
    t = vs.tables[k]
    x = _logit(np.asarray(t.boundaries))
    for j in range(1, k + 1):  # strictly increasing keypoints even when quantiles tie
        x[j] = max(x[j], x[j - 1] + _MIN_WIDTH)
    width = np.diff(x)
    mid = (x[:-1] + x[1:]) / 2
    imps, hits = np.asarray(t.impressions, float), np.asarray(t.positives, float)
    post = _logit(posterior)
    iso = _logit(pav(posterior, np.maximum(imps, 1e-3)))
    a = _through_centres(x, _logit(np.asarray(t.mean_pred)), iso)
    slope = np.clip(np.diff(a) / width, 0.0, 50.0)
    rate = float(_logit(np.asarray(vs.rate)))
    gap = post - _logit(np.asarray(t.mean_pred))  # the bin's miscalibration, in logit units
    feats = np.stack([gap, post - rate, np.log1p(imps) / 5, np.log1p(hits) / 3, mid / 5, width,
                      np.minimum(slope, 5.0)], axis=1)
    return {"x": x, "width": width, "feats": feats, "y0": np.asarray(a[0]),
            "pre": _softplus_inv(np.maximum(slope - min_slope, 1e-4))}


def _through_centres(x: np.ndarray, centre: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Values at the keypoints ``x`` ``[K + 1]`` of the line through (bin centre, bin level) ``[K]``, extended
    linearly beyond the first and last centres: each bin's posterior is reached at its mean prediction.

    Centres are clipped into their bins (so they increase with the bins); a bin's rows crowd toward one end
    in the end bins, where putting the level at the middle of the segment instead biased the calibrated
    rate of the whole value (PCOC 0.93 on the demo's held-out calib rows).
    """
    c = np.clip(centre, x[:-1], x[1:]) + 1e-6 * np.arange(centre.size)  # strictly increasing
    a = np.interp(x, c, level)
    first, last = (np.clip((level[j + 1] - level[j]) / (c[j + 1] - c[j]), 0.0, 50.0) for j in (0, -2))
    a[0], a[-1] = level[0] - first * (c[0] - x[0]), level[-1] + last * (x[-1] - c[-1])
    return a


def _value_features(vs: ValueStats, own_tables: bool) -> list[float]:
    rate, pred = (float(_logit(np.asarray(r))) for r in (vs.rate, vs.mean_pred))
    return [rate / 5, rate - pred, np.log1p(vs.impressions) / 10, np.log1p(vs.positives) / 5, float(own_tables)]


@dataclass(frozen=True)
class ValueFunctions:
    """One field's calibration functions evaluated for every table row (row 0 = the global function).

    ``knots_x[c]`` / ``knots_y[c]`` ``[rows, K_c + 1]`` are the keypoints of candidate bin count
    ``bin_counts[c]`` (input logit -> calibrated logit, linear in between and beyond the ends);
    ``selection`` ``[rows, len(bin_counts)]`` are the rows' weights over the candidates.
    """

    values: list[str]
    bin_counts: list[int]
    knots_x: list[np.ndarray]
    knots_y: list[np.ndarray]
    selection: np.ndarray


@keras.utils.register_keras_serializable(package="tfads")
class AdaCalib(keras.layers.Layer):
    """Calibrates a probability with a monotone piecewise-linear function per calibration-field value.

    For each field and candidate bin count ``K`` the value's keypoints are its ``K + 1`` equal-frequency
    bin boundaries (logit space); keypoint outputs are built from cumulative positive increments whose
    slopes a shared network predicts from the bins' posterior statistics and the value's embedding. A
    per-value selector mixes (``soft``) or picks (``hard``, straight-through) the supported bin counts;
    per-field calibrated logits are averaged with learned weights. Values unseen in the statistics use
    the global function; values too small for any bin count use the global bins with their own
    value-level posterior statistics and embedding. The networks' corrections of a value's anchor (the
    piecewise-linear curve through its empirical-Bayes bin posteriors) are scaled by the value's
    credibility ``E_v / (E_v + alpha)`` (``shrinkage.shrink``): a value with few rows keeps its posterior,
    which is itself shrunk toward the global function.

    Example:
      >>> layer = AdaCalib(stats, fields=["slot"])
      >>> p_cal = layer({"prediction": p, "slot": slot})

    Input: dict with ``"prediction"`` (float ``[B]`` or ``[B, 1]``) and one string (or int) tensor of the
    same shape per field. Output: calibrated probabilities in (0, 1), same shape as ``"prediction"`` (the
    calibrated logit is clipped to [-15, 15]; ``calibrated_logit`` gives it unclipped).

    Args:
      stats: ``CalibStats`` (or its ``to_dict()``) computed on the calibration split.
      fields: calibration fields to use, each present in ``stats`` (default: every field of ``stats``).
      input_space: ``probability`` or ``logit`` (of the ``"prediction"`` input).
      selection: ``soft`` (softmax mixture of bin counts) or ``hard`` (one bin count per value,
        straight-through; Gumbel noise while training when ``gumbel`` is set).
      temperature: softmax temperature of the selector.
      gumbel: add Gumbel noise to the hard selector's logits in training.
      embedding_dim / hidden_units: size of the value embedding and of the keypoint network.
      min_slope: smallest slope of every segment (keeps the function strictly increasing).
      global_rate: fraction of training rows routed to the global function (row 0) so the function for
        unseen values is trained on pooled data too.
    """

    def __init__(
        self,
        stats: CalibStats | Mapping[str, Any],
        fields: Sequence[str] | None = None,
        *,
        input_space: Literal["probability", "logit"] = "probability",
        selection: Literal["soft", "hard"] = "soft",
        temperature: float = 1.0,
        gumbel: bool = False,
        embedding_dim: int = 8,
        hidden_units: int = 32,
        min_slope: float = 0.01,
        global_rate: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.stats = stats if isinstance(stats, CalibStats) else CalibStats.from_dict(stats)
        self.fields = list(self.stats.fields) if fields is None else list(fields)
        missing = [f for f in self.fields if f not in self.stats.fields]
        if not self.fields or missing:
            raise ValueError(f"AdaCalib: `fields` must be non-empty fields of the stats "
                             f"{sorted(self.stats.fields)}. Got {self.fields}.")
        if input_space not in ("probability", "logit"):
            raise ValueError(f"AdaCalib: `input_space` must be 'probability' or 'logit'. Got {input_space!r}.")
        if selection not in ("soft", "hard"):
            raise ValueError(f"AdaCalib: `selection` must be 'soft' or 'hard'. Got {selection!r}.")
        if not 0 <= global_rate < 1:
            raise ValueError(f"AdaCalib: `global_rate` must be in [0, 1). Got {global_rate}.")
        if temperature <= 0 or min_slope <= 0:
            raise ValueError(f"AdaCalib: `temperature` and `min_slope` must be > 0. "
                             f"Got {temperature}, {min_slope}.")
        self.input_space, self.selection, self.gumbel = input_space, selection, gumbel
        self.temperature, self.embedding_dim, self.hidden_units = temperature, embedding_dim, hidden_units
        self.min_slope, self.global_rate = min_slope, global_rate
        self.bin_counts = self.stats.bin_counts
        self.vocab: dict[str, list[str]] = {}
        self.lookups, self.embeddings, self.selectors, self.tables = {}, {}, {}, {}
        for f in self.fields:
            self._build_field(f)
        self.keypoint_net = keras.Sequential(
            [keras.layers.Dense(hidden_units, activation="relu"),
             keras.layers.Dense(1, kernel_initializer="zeros")], name="keypoint_net")
        self.offset_net = keras.Sequential(
            [keras.layers.Dense(hidden_units, activation="relu"),
             keras.layers.Dense(1, kernel_initializer="zeros")], name="offset_net")
        self.field_logits = self.add_weight(name="field_logits", shape=(len(self.fields),),
                                            initializer="zeros", trainable=True)

    def _const(self, name: str, value: np.ndarray) -> tf.Variable:
        value = np.asarray(value, np.float32)
        return self.add_weight(name=name, shape=value.shape, dtype=tf.float32, trainable=False,
                               initializer=keras.initializers.Constant(value))

    def _build_field(self, f: str) -> None:
        """Per-value tables (row 0 = global function) as non-trainable weights, plus lookup/embedding.

        A value too small for any bin count keeps its own value-level statistics and embedding but the
        global bins (``own_tables`` = 0) with the global posteriors shifted by its shrunken value shift.
        """
        glob = self.stats.global_stats
        values = sorted(self.stats.fields[f])
        rows = [glob] + [self.stats.fields[f][v] for v in values]
        binned = [s if s.max_bins > 0 else glob for s in rows]
        shrunk = shrink(glob, rows[1:], self.bin_counts)
        own = np.array([b is s for s, b in zip(rows, binned, strict=True)])
        self.vocab[f] = values
        self.lookups[f] = keras.layers.StringLookup(vocabulary=values, num_oov_indices=1,
                                                    name=f"{f}_lookup")
        self.embeddings[f] = keras.layers.Embedding(len(rows), self.embedding_dim, name=f"{f}_embedding")
        self.selectors[f] = keras.layers.Dense(len(self.bin_counts), kernel_initializer="zeros",
                                               name=f"{f}_selector")
        mask = [[0.0 if k <= s.max_bins else -1e9 for k in self.bin_counts] for s in binned]
        value_feats = [_value_features(s, o) for s, o in zip(rows, own, strict=True)]
        tabs: dict[str, tf.Variable] = {"value_feats": self._const(f"{f}_value_feats", value_feats),
                                        "mask": self._const(f"{f}_mask", mask),
                                        "credibility": self._const(f"{f}_credibility", shrunk.credibility)}
        for k in self.bin_counts:
            post = shrunk.posterior[k]
            post = np.where(own[:, None], post, sigmoid(_logit(post[:1]) + shrunk.shift[:, None]))
            seg = [_segment_tables(s, k, self.min_slope, q) for s, q in zip(binned, post, strict=True)]
            for key in ("x", "width", "feats", "y0", "pre"):
                tabs[f"{key}{k}"] = self._const(f"{f}_{key}{k}", np.stack([t[key] for t in seg]))
        self.tables[f] = tabs

    def _value_index(self, f: str, value: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """Row of each value in the tables (0 = global); in training ``global_rate`` of rows go to 0."""
        value = tf.reshape(value, [-1])
        if value.dtype != tf.string:
            value = tf.strings.as_string(value)
        idx = tf.cast(self.lookups[f](value), tf.int32)
        if training and self.global_rate > 0:
            idx = tf.where(tf.random.uniform(tf.shape(idx)) < self.global_rate, 0, idx)
        return idx

    def _value_context(self, f: str, rows: tf.Tensor) -> tf.Tensor:
        """Statistics and embedding of the table rows ``rows`` ``[U]``, ``[U, G]`` (row 0 = global)."""
        return tf.concat([tf.gather(self.tables[f]["value_feats"], rows), self.embeddings[f](rows)], axis=1)

    def _candidates(self, f: str, x: tf.Tensor, rows: tf.Tensor, pos: tf.Tensor, vfeat: tf.Tensor) -> tf.Tensor:
        """Calibrated logits ``[B, n_candidates]``, one monotone function per candidate bin count.

        The functions are built only for the distinct table rows ``rows`` ``[U]`` present in the batch
        (a bid request's candidates usually share one scenario); ``pos`` ``[B]`` maps inputs to them.
        """
        tabs = self.tables[f]
        n_rows = tf.shape(rows)[0]
        gate = tf.gather(tabs["credibility"], rows)  # [U]: the networks' corrections count as much as the rows do
        outs = []
        for k in self.bin_counts:
            ctx = tf.concat([vfeat, tf.fill([n_rows, 1], float(np.log2(k)) / 5)], axis=1)
            feats = tf.gather(tabs[f"feats{k}"], rows)
            seg_in = tf.concat([feats, tf.repeat(ctx[:, None, :], k, axis=1)], axis=2)
            r = gate[:, None] * tf.squeeze(self.keypoint_net(seg_in), -1)  # [U, K]
            slope = self.min_slope + tf.nn.softplus(tf.gather(tabs[f"pre{k}"], rows) + r)
            y0 = tf.gather(tabs[f"y0{k}"], rows) + gate * tf.squeeze(self.offset_net(ctx), -1)
            width = tf.gather(tabs[f"width{k}"], rows)
            ys = tf.concat([y0[:, None], y0[:, None] + tf.cumsum(slope * width, axis=1)], axis=1)
            xk = tf.gather(tabs[f"x{k}"], tf.gather(rows, pos))
            yk, sk = tf.gather(ys, pos), tf.gather(slope, pos)  # per input row
            seg = tf.clip_by_value(tf.searchsorted(xk, x[:, None], side="right")[:, 0] - 1, 0, k - 1)
            x_left = tf.gather(xk, seg, batch_dims=1)
            outs.append(tf.gather(yk, seg, batch_dims=1) + tf.gather(sk, seg, batch_dims=1) * (x - x_left))
        return tf.stack(outs, axis=1)

    def _distinct_rows(self, f: str, value: tf.Tensor, training: bool | None) -> tuple[tf.Tensor, tf.Tensor]:
        """Distinct table rows of the batch ``[U]`` and each input's position among them ``[B]``."""
        rows, pos = tf.unique(self._value_index(f, value, training))
        return rows, pos

    def candidate_logits(self, inputs: Mapping[str, tf.Tensor], field: str) -> tf.Tensor:
        """The per-bin-count calibrated logits of ``field``, ``[B, len(bin_counts)]`` (before selection)."""
        rows, pos = self._distinct_rows(field, inputs[field], None)
        return self._candidates(field, self.input_logit(inputs), rows, pos, self._value_context(field, rows))

    def _field_logit(self, f: str, x: tf.Tensor, value: tf.Tensor, training: bool | None) -> tf.Tensor:
        """Calibrated logit ``[B]`` of field ``f`` for input logits ``x`` ``[B]``."""
        rows, pos = self._distinct_rows(f, value, training)
        vfeat = self._value_context(f, rows)
        weights = tf.gather(self._selection(f, rows, vfeat, training), pos)
        return tf.reduce_sum(weights * self._candidates(f, x, rows, pos, vfeat), axis=1)

    def _selection(self, f: str, rows: tf.Tensor, vfeat: tf.Tensor, training: bool | None) -> tf.Tensor:
        """Weights ``[U, n_candidates]`` of the rows ``rows`` over the bin counts (unsupported counts get 0)."""
        logits = self.selectors[f](vfeat) + tf.gather(self.tables[f]["mask"], rows)
        if self.selection == "hard" and self.gumbel and training:
            u = tf.random.uniform(tf.shape(logits), 1e-9, 1.0)
            logits = logits - tf.math.log(-tf.math.log(u))
        soft = tf.nn.softmax(logits / self.temperature, axis=1)
        if self.selection == "soft":
            return soft
        hard = tf.one_hot(tf.argmax(logits, axis=1), len(self.bin_counts))
        return soft + tf.stop_gradient(hard - soft)

    def input_logit(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """The ``"prediction"`` input as a logit ``[B]`` (clipped probabilities, or as given in logit space)."""
        pred = tf.reshape(tf.cast(inputs[PREDICTION], tf.float32), [-1])
        if self.input_space == "logit":
            return pred
        p = tf.clip_by_value(pred, _P_EPS, 1 - _P_EPS)
        return tf.math.log(p) - tf.math.log1p(-p)

    def value_functions(self, field: str) -> ValueFunctions:
        """Every value's calibration functions for ``field`` at their keypoints (inference mode).

        They do not depend on the input, so a server can evaluate them once and look them up per
        request (:mod:`tfads.calibration.compiled`).
        """
        n_rows = len(self.vocab[field]) + 1
        rows = tf.range(n_rows)
        vfeat = self._value_context(field, rows)
        xs, ys = [], []
        for c, k in enumerate(self.bin_counts):
            knots = self.tables[field][f"x{k}"].numpy()  # [rows, k + 1]
            at_knots = self._candidates(field, tf.constant(knots.reshape(-1)), rows, tf.repeat(rows, k + 1), vfeat)
            xs.append(knots)
            ys.append(at_knots[:, c].numpy().reshape(n_rows, k + 1))
        selection = self._selection(field, rows, vfeat, False).numpy()
        return ValueFunctions(list(self.vocab[field]), list(self.bin_counts), xs, ys, selection)

    def field_weights(self) -> np.ndarray:
        """The learned mixing weights of the fields' calibrated logits ``[len(fields)]`` (sum to 1)."""
        return tf.nn.softmax(self.field_logits).numpy()

    def calibrated_logit(self, inputs: Mapping[str, tf.Tensor], training: bool | None = None) -> tf.Tensor:
        """The calibrated logit, shape ``[B]``."""
        x = self.input_logit(inputs)
        per_field = tf.stack([self._field_logit(f, x, inputs[f], training) for f in self.fields], axis=1)
        return tf.reduce_sum(tf.nn.softmax(self.field_logits)[None, :] * per_field, axis=1)

    def call(self, inputs: Mapping[str, tf.Tensor], training: bool | None = None) -> tf.Tensor:
        missing = [k for k in [PREDICTION, *self.fields] if k not in inputs]
        if missing:
            raise ValueError(f"AdaCalib: inputs lack {missing}; expected keys {[PREDICTION, *self.fields]}.")
        z = tf.clip_by_value(self.calibrated_logit(inputs, training=training), -MAX_LOGIT, MAX_LOGIT)
        return tf.reshape(tf.sigmoid(z), tf.shape(inputs[PREDICTION]))

    @cached_property
    def _stats_document(self) -> dict[str, Any]:
        """``stats.to_dict()`` once: a SavedModel save asks for the config a dozen times, ~1 s each for large
        vocabularies (a cached_property, which Keras does not track)."""
        return self.stats.to_dict()

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "stats": self._stats_document, "fields": self.fields,
                "input_space": self.input_space, "selection": self.selection,
                "temperature": self.temperature, "gumbel": self.gumbel,
                "embedding_dim": self.embedding_dim, "hidden_units": self.hidden_units,
                "min_slope": self.min_slope, "global_rate": self.global_rate}
