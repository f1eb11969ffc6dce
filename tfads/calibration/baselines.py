"""Baseline calibrators behind one interface: ``fit(p, y, field)`` then ``predict(p, field)``.

Platt, temperature, histogram binning and isotonic regression ignore ``field``; per-field isotonic and
NeuCalib use it. Probabilities in, probabilities out (1-D numpy arrays).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize_scalar
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

_EPS = 1e-6


def _logit(p: ArrayLike) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64).reshape(-1), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _field(field: ArrayLike | None, n: int, who: str) -> np.ndarray:
    if field is None:
        raise ValueError(f"{who}: needs `field` values.")
    v = np.asarray(field).reshape(-1).astype(str)
    if v.size != n:
        raise ValueError(f"{who}: `field` has {v.size} rows, predictions {n}.")
    return v


class Calibrator(ABC):
    """A post-hoc calibrator of probabilities."""

    @abstractmethod
    def fit(self, p: ArrayLike, y: ArrayLike, field: ArrayLike | None = None) -> Calibrator:
        """Fit on uncalibrated probabilities ``p``, 0/1 labels ``y`` and optional field values."""

    @abstractmethod
    def predict(self, p: ArrayLike, field: ArrayLike | None = None) -> np.ndarray:
        """Calibrated probabilities for ``p``."""


class PlattScaling(Calibrator):
    """Logistic regression on the logit: ``sigmoid(a * logit(p) + b)``."""

    def fit(self, p: ArrayLike, y: ArrayLike, field: ArrayLike | None = None) -> PlattScaling:
        self.model = LogisticRegression(C=1e6).fit(_logit(p)[:, None], np.asarray(y).reshape(-1))
        return self

    def predict(self, p: ArrayLike, field: ArrayLike | None = None) -> np.ndarray:
        return self.model.predict_proba(_logit(p)[:, None])[:, 1]


class TemperatureScaling(Calibrator):
    """One temperature: ``sigmoid(logit(p) / T)``, T fitted by log loss."""

    def fit(self, p: ArrayLike, y: ArrayLike, field: ArrayLike | None = None) -> TemperatureScaling:
        z, t = _logit(p), np.asarray(y, dtype=np.float64).reshape(-1)

        def nll(log_t: float) -> float:
            q = np.clip(_sigmoid(z / np.exp(log_t)), _EPS, 1 - _EPS)
            return -float(np.mean(t * np.log(q) + (1 - t) * np.log1p(-q)))

        self.temperature = float(np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded").x))
        return self

    def predict(self, p: ArrayLike, field: ArrayLike | None = None) -> np.ndarray:
        return _sigmoid(_logit(p) / self.temperature)


class HistogramBinning(Calibrator):
    """Equal-frequency bins; each bin predicts its observed rate."""

    def __init__(self, bins: int = 15) -> None:
        if bins < 1:
            raise ValueError(f"HistogramBinning: `bins` must be >= 1. Got {bins}.")
        self.bins = bins

    def fit(self, p: ArrayLike, y: ArrayLike, field: ArrayLike | None = None) -> HistogramBinning:
        p, t = np.asarray(p, np.float64).reshape(-1), np.asarray(y, np.float64).reshape(-1)
        self.edges = np.quantile(p, np.linspace(0, 1, self.bins + 1))[1:-1]
        idx = np.searchsorted(self.edges, p, side="right")
        counts = np.bincount(idx, minlength=self.bins)
        self.rates = np.where(counts > 0, np.bincount(idx, t, self.bins) / np.maximum(counts, 1), t.mean())
        return self

    def predict(self, p: ArrayLike, field: ArrayLike | None = None) -> np.ndarray:
        return self.rates[np.searchsorted(self.edges, np.asarray(p).reshape(-1), side="right")]


def _isotonic(p: np.ndarray, y: np.ndarray) -> IsotonicRegression:
    return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)


class IsotonicCalibrator(Calibrator):
    """sklearn isotonic regression on the probability."""

    def fit(self, p: ArrayLike, y: ArrayLike, field: ArrayLike | None = None) -> IsotonicCalibrator:
        self.model = _isotonic(np.asarray(p, np.float64).reshape(-1), np.asarray(y, np.float64).reshape(-1))
        return self

    def predict(self, p: ArrayLike, field: ArrayLike | None = None) -> np.ndarray:
        return self.model.predict(np.asarray(p, np.float64).reshape(-1))


class PerFieldIsotonic(Calibrator):
    """Isotonic regression per field value; values with fewer than ``min_rows`` rows or ``min_positives``
    positives at fit time, and unseen values, use one global isotonic regression."""

    def __init__(self, min_rows: int = 500, min_positives: int = 20) -> None:
        self.min_rows, self.min_positives = min_rows, min_positives

    def fit(self, p: ArrayLike, y: ArrayLike, field: ArrayLike | None = None) -> PerFieldIsotonic:
        p, t = np.asarray(p, np.float64).reshape(-1), np.asarray(y, np.float64).reshape(-1)
        v = _field(field, p.size, "PerFieldIsotonic.fit")
        self.global_model = _isotonic(p, t)
        self.models = {}
        for value in np.unique(v):
            m = v == value
            if m.sum() >= self.min_rows and t[m].sum() >= self.min_positives:
                self.models[value] = _isotonic(p[m], t[m])
        return self

    def predict(self, p: ArrayLike, field: ArrayLike | None = None) -> np.ndarray:
        p = np.asarray(p, np.float64).reshape(-1)
        v = _field(field, p.size, "PerFieldIsotonic.predict")
        out = self.global_model.predict(p)
        for value, model in self.models.items():
            m = v == value
            if m.any():
                out[m] = model.predict(p[m])
        return out


class NeuCalib(Calibrator):
    """NeuCalib-style (Pan et al., 2020): a monotone piecewise-linear map of the logit with ``keypoints``
    quantile keypoints (non-negative weights on ramp features: monotone by construction, linear
    extrapolation) plus an auxiliary logit from a field-value embedding MLP; trained with log loss."""

    def __init__(self, keypoints: int = 100, *, epochs: int = 8, batch_size: int = 2048, lr: float = 0.01,
                 seed: int = 0) -> None:
        if keypoints < 2:
            raise ValueError(f"NeuCalib: `keypoints` must be >= 2. Got {keypoints}.")
        self.keypoints, self.epochs, self.batch_size, self.lr, self.seed = keypoints, epochs, batch_size, lr, seed

    def _ramps(self, p: ArrayLike) -> np.ndarray:
        z, k = _logit(p)[:, None], self.knots
        inner = np.clip((z - k[:-1]) / np.diff(k), 0.0, 1.0)
        return np.concatenate([np.minimum(z - k[0], 0.0), inner, np.maximum(z - k[-1], 0.0)], axis=1)

    def _index(self, field: ArrayLike | None, n: int) -> np.ndarray:
        v = _field(field, n, "NeuCalib")
        return np.array([self.vocab.get(x, 0) for x in v], dtype=np.int32)

    def fit(self, p: ArrayLike, y: ArrayLike, field: ArrayLike | None = None) -> NeuCalib:
        import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
        import tf_keras as keras

        z = _logit(p)
        knots = np.unique(np.quantile(z, np.linspace(0, 1, self.keypoints)))
        self.knots = knots if knots.size > 1 else np.array([knots[0] - 1, knots[0] + 1])
        self.vocab = {v: i + 1 for i, v in enumerate(np.unique(_field(field, z.size, "NeuCalib.fit")))}
        keras.utils.set_random_seed(self.seed)
        ramps = keras.Input(shape=(self.knots.size + 1,), name="ramps")
        index = keras.Input(shape=(), dtype="int32", name="field")
        pwl = keras.layers.Dense(1, kernel_constraint=keras.constraints.NonNeg(), name="pwl")
        emb = keras.layers.Embedding(len(self.vocab) + 1, 8)(index)
        aux = keras.layers.Dense(1, kernel_initializer="zeros")(keras.layers.Dense(16, activation="relu")(emb))
        out = keras.layers.Activation("sigmoid")(keras.layers.Add()([pwl(ramps), aux]))
        self.model = keras.Model([ramps, index], out)
        widths = np.concatenate([[1.0], np.diff(self.knots), [1.0]])[:, None]  # identity at start
        pwl.set_weights([widths.astype(np.float32), np.array([self.knots[0]], np.float32)])
        self.model.compile(optimizer=keras.optimizers.Adam(self.lr), loss="binary_crossentropy")
        x = [self._ramps(p).astype(np.float32), self._index(field, z.size)]
        self.model.fit(x, np.asarray(y, np.float32).reshape(-1), epochs=self.epochs,
                       batch_size=self.batch_size, verbose=0)
        return self

    def predict(self, p: ArrayLike, field: ArrayLike | None = None) -> np.ndarray:
        n = np.asarray(p).reshape(-1).size
        x = [self._ramps(p).astype(np.float32), self._index(field, n)]
        return self.model.predict(x, batch_size=8192, verbose=0).reshape(-1).astype(np.float64)
