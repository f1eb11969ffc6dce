"""Clipping, Gaussian noise and their accounting for what crosses the channel.

Each sent embedding row is clipped to L2 norm C and gets N(0, (sigma C)^2) per coordinate: a Gaussian
mechanism with L2 sensitivity 2C for a change of that row's media features (replace one), which is
rho = (2C)^2 / (2 (sigma C)^2) = 2 / sigma^2 zero-concentrated DP (Bun & Steinke 2016) per release. A
user's releases compose: rho adds up over every row of theirs sent in every epoch, and
epsilon = rho + 2 sqrt(rho ln(1/delta)) bounds (epsilon, delta)-DP. The same holds for each example's
clipped loss gradient and its label (label DP). What the noise does not cover is in docs/methods/federated.md.
"""

from __future__ import annotations

import math

import numpy as np


def clip_rows(x: np.ndarray, bound: float) -> np.ndarray:
    """Each row scaled down to L2 norm at most ``bound``."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x * np.minimum(1.0, bound / np.maximum(norms, 1e-12))


def add_noise(x: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """``x`` plus N(0, std^2) per coordinate (``x`` itself when ``std`` is 0)."""
    if std == 0:
        return x
    return (x + rng.normal(0.0, std, x.shape)).astype(x.dtype)


def zcdp_per_release(noise_multiplier: float) -> float:
    """rho of one clipped row (bound C) released with noise std ``noise_multiplier * C`` (replace-one)."""
    return math.inf if noise_multiplier == 0 else 2.0 / noise_multiplier**2


def epsilon(rho: float, delta: float = 1e-6) -> float:
    """The (epsilon, delta)-DP bound of rho-zCDP."""
    if math.isinf(rho):
        return math.inf
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


def account(noise_multiplier: float, releases: int, delta: float = 1e-6) -> dict[str, float]:
    """rho and epsilon at ``delta`` for ``releases`` compositions (e.g. a user's rows x epochs)."""
    rho = zcdp_per_release(noise_multiplier) * releases
    return {"releases": releases, "rho": rho, "epsilon": epsilon(rho, delta), "delta": delta}


def max_releases(keys: np.ndarray, epochs: int) -> int:
    """The most releases of one key: its row count times the epochs (0 without rows)."""
    if not len(keys):
        return 0
    return int(np.unique(keys, return_counts=True)[1].max()) * epochs
