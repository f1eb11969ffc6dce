"""Bid arithmetic: eCPM from predicted CTR/CVR and the ad's bid terms, with shading and caps.

oCPC/oCPA ``eCPM = 1000 * pCTR * pCVR * target_CPA``, CPC ``eCPM = 1000 * pCTR * bid``, CPM
``eCPM = bid``. Every result is finite and in ``[0, max_bid_cpm]``: a NaN/infinite/negative
probability or price gives no bid (0), probabilities are clipped to [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

BID_TYPES = ("CPC", "OCPC", "OCPA", "CPM")


@dataclass(frozen=True)
class BiddingParams:
    """How an arm turns predictions into bids.

    Attributes:
      shading: multiplier on the eCPM (1.0 bids the full value, as suits a second-price auction).
      max_bid_cpm: cap on a bid (currency per thousand impressions).
      min_bid_cpm: bids below this are dropped (0, no bid).
      outputs: which model outputs to bid on: ``calibrated`` (ctr, cvr) or ``raw`` (ctr_raw, cvr_raw).
    """

    shading: float = 1.0
    max_bid_cpm: float = 1000.0
    min_bid_cpm: float = 0.0
    outputs: Literal["calibrated", "raw"] = "calibrated"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.shading) and 0.0 < self.shading <= 10.0):
            raise ValueError(f"shading must be in (0, 10], got {self.shading}")
        if not (math.isfinite(self.max_bid_cpm) and self.max_bid_cpm > 0.0):
            raise ValueError(f"max_bid_cpm must be a positive number, got {self.max_bid_cpm}")
        if not (math.isfinite(self.min_bid_cpm) and 0.0 <= self.min_bid_cpm <= self.max_bid_cpm):
            raise ValueError(f"min_bid_cpm must be in [0, max_bid_cpm], got {self.min_bid_cpm}")
        if self.outputs not in ("calibrated", "raw"):
            raise ValueError(f"outputs must be 'calibrated' or 'raw', got {self.outputs!r}")

    @property
    def output_names(self) -> tuple[str, str]:
        """The (pCTR, pCVR) output names of the serving signature this arm reads."""
        return ("ctr", "cvr") if self.outputs == "calibrated" else ("ctr_raw", "cvr_raw")


def _clean(x: ArrayLike, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """(values clipped to [0, hi] with bad entries zeroed, mask of bad entries)."""
    a = np.asarray(x, dtype=np.float64)
    bad = ~np.isfinite(a) | (a < 0)
    return np.where(bad, 0.0, np.minimum(a, hi)), bad


def ecpm(p_ctr: ArrayLike, p_cvr: ArrayLike, bid_type: ArrayLike, price: ArrayLike) -> np.ndarray:
    """Unshaded, uncapped eCPM per candidate; 0 where an input is NaN, infinite or negative (+inf only
    when finite inputs overflow, which ``compute_bids`` caps).

    Raises:
      ValueError: a bid type other than CPC, OCPC, OCPA or CPM (names the value).
    """
    ctr, bad_ctr = _clean(p_ctr, 1.0)
    cvr, bad_cvr = _clean(p_cvr, 1.0)
    amount, bad_price = _clean(price, np.inf)
    kind = np.asarray(bid_type, dtype=object).astype(str)
    unknown = sorted(set(kind.ravel().tolist()) - set(BID_TYPES))
    if unknown:
        raise ValueError(f"unknown bid_type {unknown[0]!r} (expected one of {', '.join(BID_TYPES)})")
    conv = (kind == "OCPC") | (kind == "OCPA")
    with np.errstate(over="ignore", invalid="ignore"):
        value = np.select(
            [kind == "CPC", conv, kind == "CPM"],
            [1000.0 * ctr * amount, 1000.0 * ctr * cvr * amount, amount],
        )
    bad = bad_price | ((kind != "CPM") & bad_ctr) | (conv & bad_cvr)
    return np.where(bad | np.isnan(value), 0.0, value)


def compute_bids(
    p_ctr: ArrayLike, p_cvr: ArrayLike, bid_type: ArrayLike, price: ArrayLike, params: BiddingParams
) -> np.ndarray:
    """Shaded, capped bids (CPM) per candidate: always finite, in [0, max_bid_cpm]; 0 means no bid."""
    with np.errstate(over="ignore"):
        bids = np.minimum(ecpm(p_ctr, p_cvr, bid_type, price) * params.shading, params.max_bid_cpm)
    return np.where(bids < params.min_bid_cpm, 0.0, bids)
