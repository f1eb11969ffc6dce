"""Posterior statistics per (field, value): raw and Beta-smoothed CTR and CVR.

The prior of each field and rate is fitted by the method of moments to the per-value raw rates
(values with at least one trial): with mean ``m`` and variance ``v``, ``alpha + beta = m(1-m)/v - 1``.
The smoothed rate is the posterior mean ``(successes + alpha) / (trials + alpha + beta)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MIN_STRENGTH, MAX_STRENGTH = 1e-3, 1e6


@dataclass(frozen=True)
class BetaPrior:
    """A Beta(alpha, beta) prior on a rate."""

    alpha: float
    beta: float

    def smooth(self, successes: np.ndarray, trials: np.ndarray) -> np.ndarray:
        """Posterior mean rate for each (successes, trials)."""
        return (successes + self.alpha) / (trials + self.alpha + self.beta)


def fit_beta_prior(successes: np.ndarray, trials: np.ndarray) -> BetaPrior:
    """Method-of-moments Beta prior from per-value counts (see the module docstring).

    Degenerate cases keep the prior mean and bound its strength: no spread between values
    (``v == 0``) gives strength ``MAX_STRENGTH``; spread beyond a Beta's (``v >= m(1-m)``) gives
    ``MIN_STRENGTH``; no trials at all gives Beta(1, 1)."""
    successes, trials = np.asarray(successes, dtype=np.float64), np.asarray(trials, dtype=np.float64)
    has = trials > 0
    if not has.any():
        return BetaPrior(1.0, 1.0)
    rates = successes[has] / trials[has]
    m, v = float(rates.mean()), float(rates.var())
    if m <= 0.0 or m >= 1.0:
        strength = 1.0
    elif v <= 0.0:
        strength = MAX_STRENGTH
    else:
        strength = float(np.clip(m * (1 - m) / v - 1, MIN_STRENGTH, MAX_STRENGTH))
    return BetaPrior(m * strength, (1 - m) * strength)


def posterior_table(field: str, counts: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, BetaPrior]]:
    """Rows of ``posterior/stats.jsonl`` for one field and its fitted priors.

    ``counts`` is indexed by value with columns impressions, clicks, conversions; ``cvr`` is 0 for a
    value without clicks."""
    imps = counts["impressions"].to_numpy(np.float64)
    clicks = counts["clicks"].to_numpy(np.float64)
    convs = counts["conversions"].to_numpy(np.float64)
    priors = {"ctr": fit_beta_prior(clicks, imps), "cvr": fit_beta_prior(convs, clicks)}
    table = pd.DataFrame({
        "field": field,
        "value": counts.index.to_numpy(),
        "impressions": counts["impressions"].to_numpy(np.int64),
        "clicks": counts["clicks"].to_numpy(np.int64),
        "conversions": counts["conversions"].to_numpy(np.int64),
        "ctr": np.divide(clicks, imps, out=np.zeros_like(imps), where=imps > 0),
        "cvr": np.divide(convs, clicks, out=np.zeros_like(clicks), where=clicks > 0),
        "ctr_smoothed": priors["ctr"].smooth(clicks, imps),
        "cvr_smoothed": priors["cvr"].smooth(convs, clicks),
    })
    return table.sort_values("value", kind="stable"), priors
