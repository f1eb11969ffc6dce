"""The media party's private user signal in the synthetic world (issue 17, federated media embeddings).

The media platform (where an ad is shown) knows what its users like; the ad platform does not. Each user
has a latent media-side preference ``m_u`` (rank ``MEDIA_RANK``, N(0, I / rank)); each ad category has a
CTR and a CVR direction (N(0, I)). The true logits get ``ctr_scale * <m_u, g_ctr(category)>`` and
``cvr_scale * <m_u, g_cvr(category)>``: signal about clicks *and* conversions that no ad-side field carries.

The media party observes ``m_u`` through its own taxonomy: ``MEDIA_TAGS`` tag affinities
``tags = W m_u + noise`` (``W`` a fixed random (tags, rank) map), for the ``coverage`` share of users it
knows, plus ``extra_users`` (relative) users the ad platform never sees. It writes them only to
``<logs>/media/users/part-00000.jsonl.gz`` keyed by ``user_id`` (the shared device id, the join key):
never into an ad-side log.

Everything is drawn from its own random stream (``[seed, 5]``), so without ``MediaPlan`` the world and the
files are byte-identical to a run without this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MEDIA_RANK = 8  # dimensions of the users' media-side preferences
MEDIA_TAGS = 12  # the media party's own interest tags (what it logs)
TAG_NOISE = 0.3  # std of the observation noise of a tag affinity, relative to its signal's
MEDIA_DIR = "media"  # under the logs directory
MEDIA_TABLE = "media/users/part-00000.jsonl.gz"
MEDIA_KEY = "user_id"
TAG_FIELD = "tags"


@dataclass(frozen=True)
class MediaPlan:
    """The media party's signal and coverage.

    Args:
      enabled: write the media table and add the media term to the true logits.
      ctr_scale: std of the media term in the CTR logit.
      cvr_scale: std of the media term in the CVR logit (its own category direction).
      coverage: share of the ad logs' users the media party knows (the rest get no media row).
      extra_users: media-only users (never in the ad logs), relative to the covered users.
    """

    enabled: bool = False
    ctr_scale: float = 0.8
    cvr_scale: float = 0.8
    coverage: float = 0.8
    extra_users: float = 0.25

    def __post_init__(self) -> None:
        for name in ("ctr_scale", "cvr_scale", "extra_users"):
            value = getattr(self, name)
            if not 0.0 <= value <= 10.0:
                raise ValueError(f"media: {name} must be in [0, 10], got {value}")
        if not 0.0 <= self.coverage <= 1.0:
            raise ValueError(f"media: coverage must be in [0, 1], got {self.coverage}")


NO_MEDIA = MediaPlan()


class MediaWorld:
    """The drawn media-side preferences of one world and their effect on the true logits."""

    def __init__(self, plan: MediaPlan, rng: np.random.Generator, n_users: int, n_categories: int) -> None:
        r = MEDIA_RANK
        self.plan = plan
        self.pref = rng.standard_normal((n_users, r), dtype=np.float32) / np.float32(np.sqrt(r))
        self.category_ctr = rng.standard_normal((n_categories, r), dtype=np.float32)
        self.category_cvr = rng.standard_normal((n_categories, r), dtype=np.float32)
        self.tag_map = rng.standard_normal((MEDIA_TAGS, r)).astype(np.float32)
        self.known = rng.random(n_users) < plan.coverage
        self._table_rng = rng

    def logits(self, user: np.ndarray, category: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(CTR term, CVR term) per row."""
        m = self.pref[user]
        ctr = np.einsum("nr,nr->n", m, self.category_ctr[category]).astype(np.float64)
        cvr = np.einsum("nr,nr->n", m, self.category_cvr[category]).astype(np.float64)
        return self.plan.ctr_scale * ctr, self.plan.cvr_scale * cvr

    def table(self, seen_users: np.ndarray) -> pd.DataFrame:
        """The media party's user table: the known users among ``seen_users`` (the ad logs' users) plus
        media-only users, in user-id order, with their observed tag affinities (rounded to 4 decimals)."""
        rng = self._table_rng
        seen = np.unique(seen_users)
        covered = seen[self.known[seen]]
        n_extra = int(round(self.plan.extra_users * len(covered)))
        unseen = np.setdiff1d(np.flatnonzero(self.known), seen, assume_unique=True)
        extra = rng.choice(unseen, min(n_extra, len(unseen)), replace=False) if n_extra else unseen[:0]
        users = np.sort(np.concatenate([covered, extra]))
        signal = self.pref[users] @ self.tag_map.T  # (n, tags), each of std ~1
        tags = signal + rng.normal(0.0, TAG_NOISE, signal.shape)
        return pd.DataFrame({MEDIA_KEY: users.astype(np.int64), TAG_FIELD: list(np.round(tags, 4))})
