"""Cold start in the synthetic world: scenes (placements) that launch mid-period and user segments (cities)
whose users appear late, each related to but different from the established ones (issue 16's transfer study).

* A **launched scene** has no traffic before ``launch_day`` and then the traffic of an established
  mid-ranked scene. Its CTR/CVR weights are its cluster's (what transfer can borrow) plus an own
  deviation ``scene_shift`` times the cluster weights' scale (what fine-tuning must find).
* **Segments**: every city gets an own CTR term ``segment_scale * (b_c + <s_c, k_category>)``, with
  ``s_c = s_shared + own_c``: cities share a taste direction and differ by an own part, so a new city's
  few rows are enough to adapt a model that has learned how cities differ (MAML's premise). The
  ``segments`` late cities have no users active before ``launch_day``.

``LaunchPlan()`` (all zero) changes nothing: the world is the same as without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEGMENT_RANK = 4  # dimensions of the cities' category tastes
SCENE_RANKS = (3, 8)  # launched scenes take the traffic level of a scene ranked in this range (2-4 % each)
SEGMENT_RANKS = (10, 80)  # late cities are drawn among the cities of these user-count ranks


@dataclass(frozen=True)
class LaunchPlan:
    """What launches late, and how different it is.

    Args:
      scenes: number of scenes (media x slot placements) that launch at ``launch_day``.
      segments: number of cities whose users appear only from ``launch_day``.
      launch_day: 0-based day the scenes launch.
      segment_launch_day: 0-based day the segments' users appear (default: ``launch_day``).
      scene_shift: std of a launched scene's own weight and bias deviation, relative to the clusters'.
      segment_scale: std of the cities' own CTR term (applies to every city once ``segments`` > 0).
    """

    scenes: int = 0
    segments: int = 0
    launch_day: int = 0
    segment_launch_day: int | None = None
    scene_shift: float = 1.0
    segment_scale: float = 0.5

    def __post_init__(self) -> None:
        for name in ("scenes", "segments", "launch_day", "segments_day"):
            if getattr(self, name) < 0:
                raise ValueError(f"cold start: {name} must be >= 0, got {getattr(self, name)}")
        if self.scene_shift < 0 or self.segment_scale < 0:
            raise ValueError(
                f"cold start: scene_shift and segment_scale must be >= 0, got {self.scene_shift}, {self.segment_scale}"
            )
        if self.scenes and self.launch_day < 1:
            raise ValueError(f"cold start: launch_day must be >= 1 when scenes launch, got {self.launch_day}")
        if self.segments and self.segments_day < 1:
            raise ValueError(f"cold start: the segments' launch day must be >= 1, got {self.segments_day}")

    @property
    def segments_day(self) -> int:
        return self.launch_day if self.segment_launch_day is None else self.segment_launch_day

    @property
    def last_day(self) -> int:
        """The latest launch day."""
        return max(self.launch_day if self.scenes else 0, self.segments_day if self.segments else 0)

    @property
    def active(self) -> bool:
        return bool(self.scenes or self.segments)


class Launches:
    """The drawn cold-start entities of one world: which scenes and cities launch, and their effects."""

    def __init__(self, spec: LaunchPlan, rng: np.random.Generator, scenario_logw: np.ndarray, user_city: np.ndarray,
                 n_categories: int) -> None:
        self.spec = spec
        n_cities = int(user_city.max()) + 1
        by_traffic = np.argsort(-scenario_logw, kind="stable")
        lo, hi = SCENE_RANKS
        self.scenes = np.sort(rng.choice(by_traffic[lo:hi], spec.scenes, replace=False))
        level = scenario_logw[by_traffic[lo:hi]]
        self.scene_level = rng.choice(level, spec.scenes) if spec.scenes else np.zeros(0)
        by_users = np.argsort(-np.bincount(user_city, minlength=n_cities), kind="stable")
        lo, hi = SEGMENT_RANKS
        self.segments = np.sort(rng.choice(by_users[lo:hi], spec.segments, replace=False))
        self.late_user = np.isin(user_city, self.segments)
        scale = spec.segment_scale if spec.segments else 0.0
        shared = rng.normal(0.0, 1.0, SEGMENT_RANK)
        taste = (shared + rng.normal(0.0, 1.0, (n_cities, SEGMENT_RANK))) / np.sqrt(2.0 * SEGMENT_RANK)
        self.segment_bias = scale * rng.normal(0.0, 0.5, n_cities)
        self.segment_taste = scale * taste
        self.category_taste = rng.normal(0.0, 1.0, (n_categories, SEGMENT_RANK))
        self._deviation_rng = rng

    def scene_logw(self, logw: np.ndarray, day: float) -> np.ndarray:
        """Scenario log-weights at ``day``: launched scenes at their level from the launch day, absent before."""
        if not len(self.scenes):
            return logw
        logw = logw.copy()
        logw[self.scenes] = self.scene_level if day >= self.spec.launch_day else -np.inf
        return logw

    def user_weights(self, weights: np.ndarray, day: float) -> np.ndarray:
        """Users' sampling weights at ``day``: late cities' users have none before the launch day."""
        if day >= self.spec.segments_day or not self.late_user.any():
            return weights
        return np.where(self.late_user, 0.0, weights)

    def shift_scenes(self, scenario_w: np.ndarray, scenario_bias: np.ndarray, scale: float) -> None:
        """Give the launched scenes their own deviation from the cluster (in place); ``scale`` is the clusters'."""
        k = len(self.scenes)
        if not k:
            return
        rng = self._deviation_rng
        scenario_w[self.scenes] += rng.normal(0.0, 0.2 * scale * self.spec.scene_shift, (k, scenario_w.shape[1]))
        scenario_bias[self.scenes] += rng.normal(0.0, 0.4 * scale * self.spec.scene_shift, k)

    def segment_logit(self, city: np.ndarray, category: np.ndarray) -> np.ndarray:
        """Every city's own CTR term (zeros without segments)."""
        if not self.spec.segments:
            return np.zeros(len(city))
        return self.segment_bias[city] + np.einsum("nr,nr->n", self.segment_taste[city], self.category_taste[category])


NO_LAUNCHES = LaunchPlan()
