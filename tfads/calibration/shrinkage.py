"""Empirical-Bayes shrinkage of the posterior statistics: value rates toward the global calibration
function, bin rates toward their value's shifted function, prior strengths estimated from the data.

Two levels of a Gamma-Poisson model on the ratio observed / expected positives:
- value ``v``: ``O_v ~ Poisson(lambda_v E_v)``, ``E_v`` = positives the global function predicts for
  the value's rows, ``lambda_v ~ Gamma(alpha, alpha)``; ``alpha`` by the method of moments across values
  (the spread of ``O_v / E_v`` beyond the Poisson noise). The value's function is the global one shifted
  in logit so that it predicts ``E[lambda_v | O_v] E_v`` positives.
- bin ``b`` of value ``v`` for bin count ``K``: the same model with ``E_vb`` from the value's shifted
  function and one ``beta_K`` per bin count, by the method of moments across all bins of all values.
A tail value with a handful of clicks thus keeps almost the global function, a head value its own bins,
and how much "a handful" is comes from how much the values really differ in this data set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import gammaln

from tfads.calibration.stats import ValueStats

_EPS = 1e-6
_MAX_STRENGTH = 1e4  # prior strength meaning "the groups do not differ": pool them


def logit(p: np.ndarray) -> np.ndarray:
    """Logit of probabilities clipped to [1e-6, 1 - 1e-6]."""
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function."""
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def pav(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted isotonic (non-decreasing) fit by pool-adjacent-violators."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for yi, wi in zip(y, w, strict=True):
        blocks.append([yi, wi, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, c2 = blocks.pop()
            m1, w1, c1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    return np.concatenate([np.full(int(c), m) for m, _, c in blocks])


def gamma_prior_strength(observed: np.ndarray, expected: np.ndarray) -> float:
    """Prior strength ``alpha`` of ``lambda ~ Gamma(alpha, alpha)`` when ``observed ~ Poisson(lambda
    expected)``, by maximising the marginal (negative-binomial) likelihood over all groups; within
    [0.1, 1e4] (1e4: no detectable differences between the groups, pool them)."""
    keep = expected > 0
    o, e = observed[keep], expected[keep]
    if o.size < 2:
        return _MAX_STRENGTH

    def neg_loglik(log_alpha: float) -> float:
        a = np.exp(log_alpha)
        return -float(np.sum(gammaln(o + a) - gammaln(a) + a * np.log(a / (a + e)) + o * np.log(e / (a + e))))

    best = minimize_scalar(neg_loglik, bounds=(np.log(0.1), np.log(_MAX_STRENGTH)), method="bounded")
    return float(np.exp(best.x))


def _shift_to(n: np.ndarray, g: np.ndarray, target: np.ndarray, iters: int = 30) -> np.ndarray:
    """Per row of ``n``/``g`` ``[V, B]``: the logit shift ``s`` with ``sum_b n sigmoid(g + s) = target``;
    0 for a row without impressions (no evidence: the global function)."""
    total = n.sum(axis=1)
    shift = np.zeros(len(n))
    seen = total > 2 * _EPS
    n, g = n[seen], g[seen]
    target = np.clip(target[seen], _EPS, total[seen] - _EPS)
    s = np.log(target) - np.log(np.maximum((n * sigmoid(g)).sum(axis=1), _EPS))
    for _ in range(iters):  # Newton on a monotone, convex-then-concave sum of sigmoids
        q = sigmoid(g + s[:, None])
        s = s - ((n * q).sum(axis=1) - target) / np.maximum((n * q * (1 - q)).sum(axis=1), _EPS)
    shift[seen] = s
    return shift


@dataclass(frozen=True)
class Shrunk:
    """Shrunken posteriors of one field's values (row 0 = the global entry).

    Attributes:
      shift: logit shift of each value's function from the global one ``[V]``.
      posterior: bin count -> shrunken bin posterior rates ``[V, K]``.
      value_strength / bin_strength: the estimated prior strengths (``alpha``, and ``beta_K`` per K).
      credibility: the weight ``E_v / (E_v + alpha)`` the value's posterior gives its own rows (the rest goes
        to the global function) ``[V]``; 1 for the global entry.
    """

    shift: np.ndarray
    posterior: dict[int, np.ndarray]
    value_strength: float
    bin_strength: dict[int, float]
    credibility: np.ndarray


def _platt(x: np.ndarray, n: np.ndarray, hits: np.ndarray, iters: int = 25) -> tuple[float, float]:
    """``(a, b)`` of ``rate = sigmoid(a x + b)`` by maximum likelihood on grouped counts (Newton)."""
    w = np.array([1.0, float(np.log(max(hits.sum(), 0.5) / max(n.sum() - hits.sum(), 0.5)) - np.average(x, weights=n))])
    design = np.stack([x, np.ones_like(x)], axis=1)
    for _ in range(iters):
        q = sigmoid(design @ w)
        hess = design.T @ (design * (n * q * (1 - q))[:, None]) + 1e-6 * np.eye(2)
        w = w + np.linalg.solve(hess, design.T @ (hits - n * q))
    return float(w[0]), float(w[1])


def global_function(glob: ValueStats) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints ``(x, y)`` in logit space of the global calibration function (``np.interp`` through them):
    at each bin's mean prediction (largest supported bin count), the isotonic fit of the bins' rates
    shrunk toward a Platt fit of all bins, with a prior strength estimated from the bins themselves."""
    t = glob.tables[glob.max_bins]
    n, hits = np.asarray(t.impressions, float), np.asarray(t.positives, float)
    x = logit(np.asarray(t.mean_pred))
    a, b = _platt(x, n, hits)
    prior = sigmoid(a * x + b)
    beta = gamma_prior_strength(hits, n * prior)
    rate = np.clip(prior * (hits + beta) / (n * prior + beta), _EPS, 1 - _EPS)
    return x, logit(pav(rate, np.maximum(n, 1e-3)))


def shrink(glob: ValueStats, values: list[ValueStats], bin_counts: tuple[int, ...]) -> Shrunk:
    """Empirical-Bayes posteriors of ``values`` (all bin counts) toward the global function."""
    gx, gy = global_function(glob)
    rows = [glob, *values]

    def table(k: int, key: str) -> np.ndarray:
        return np.array([getattr(s.tables[k], key) for s in rows], np.float64)

    finest = bin_counts[-1]
    n, g = table(finest, "impressions"), np.interp(logit(table(finest, "mean_pred")), gx, gy)
    observed = np.array([s.positives for s in rows], np.float64)
    expected = (n * sigmoid(g)).sum(axis=1)
    alpha = gamma_prior_strength(observed[1:], expected[1:])
    shift = _shift_to(n, g, expected * (observed + alpha) / (expected + alpha))
    shift[0] = 0.0
    posterior, beta = {}, {}
    for k in bin_counts:
        n, hits = table(k, "impressions"), table(k, "positives")
        prior = sigmoid(np.interp(logit(table(k, "mean_pred")), gx, gy) + shift[:, None])
        e = n * prior
        beta[k] = gamma_prior_strength(hits[1:].ravel(), e[1:].ravel())
        posterior[k] = np.clip(prior * (hits + beta[k]) / (e + beta[k]), _EPS, 1 - _EPS)
    credibility = expected / (expected + alpha)
    credibility[0] = 1.0
    return Shrunk(shift=shift, posterior=posterior, value_strength=alpha, bin_strength=beta, credibility=credibility)
