"""The generating model behind ``tfads datagen``: entities (scenarios, users, ads) and true pCTR / pCVR.

Both probabilities are logistic in a logit built from
  * shared global effects: a bias per value of every feature (category, device, hour, ...),
  * feature crosses through low-rank dot products: user group (age bucket x gender) x category,
    device x creative type, hour x media,
  * ``N_CLUSTERS`` clusters of similar scenarios (media group x slot group, e.g. "video apps x
    interstitial slots"), each with its own weight vector over user/ad embeddings and its own rank-4
    matrix for the user-group x category cross (which taste dimensions matter, and how much, in that
    kind of placement), so the interaction itself depends on the domain,
  * a per-scenario deviation of the cluster weights (no two placements behave exactly alike; head
    scenarios have the data to learn theirs, tail scenarios have to borrow from their cluster),
  * a bias per scenario (so per-scenario calibration matters),
  * drift: the category embeddings of the cross rotate slowly with time and scenario traffic shifts,
  * optionally, the media party's private user preferences (:mod:`tfads.datagen.media`),
  * user interests: ``interest_scale * <u_user(t), c_ad>`` with a persistent, slowly drifting latent
    interest vector per user, ``u(t) = a_u cos(w_u t) + b_u sin(w_u t)`` (rank ``INTEREST_RANK``,
    ``w_u`` in rad/day drawn per user from ``INTEREST_DRIFT``), and an interest embedding per ad: its
    category's plus a smaller own part (``AD_INTEREST``); std of the term ``interest_scale``. Users click
    more on ads that match their current interests, so their recent clicks reveal ``u(t)`` (what a
    behaviour-history model can learn); the CVR logit gets ``CVR_INTEREST`` times the same term, the
    organic feed the term with the category's embedding.
The intercepts are solved so that the mean CTR is ``TARGET_CTR`` and the click-weighted mean CVR is
``TARGET_CVR`` on day 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tfads.datagen.launches import NO_LAUNCHES, LaunchPlan, Launches
from tfads.datagen.media import NO_MEDIA, MediaPlan, MediaWorld

N_MEDIA, N_SLOTS = 20, 15
N_SCENARIOS = N_MEDIA * N_SLOTS
N_USERS, N_ADS, N_CAMPAIGNS, N_ADVERTISERS = 1_000_000, 100_000, 10_000, 2_000
N_CATEGORIES, N_CITIES = 100, 300
N_MEDIA_GROUPS, N_SLOT_GROUPS = 6, 5  # scenario clusters = media group x slot group
N_CLUSTERS = N_MEDIA_GROUPS * N_SLOT_GROUPS
CROSS_RANK = 4  # rank of the user-group x category cross
AGE_EDGES = np.array([18, 25, 30, 35, 40, 50, 60])
N_USER_GROUPS = (len(AGE_EDGES) + 1) * 3

# Enum values the model gives meaning to (the schema's `values` must equal these).
ENUMS: dict[str, list[str]] = {
    "gender": ["M", "F", "U"],
    "device": ["phone", "tablet", "pc"],
    "os": ["android", "ios", "windows", "macos", "other"],
    "creative_type": ["image", "video", "text", "carousel"],
    "bid_type": ["CPC", "OCPC", "CPM"],
}
MEDIA = np.array([f"m{i:02d}" for i in range(N_MEDIA)])
SLOTS = np.array([f"s{i:02d}" for i in range(N_SLOTS)])
CITIES = np.array([f"c{i:03d}" for i in range(N_CITIES)])
CATEGORIES = np.array([f"cat{i:03d}" for i in range(N_CATEGORIES)])

TARGET_CTR, TARGET_CVR, TARGET_FEED_CTR = 0.03, 0.10, 0.08
ROTATION_PER_DAY = 0.15  # radians per day of the drifting category embeddings
TRAFFIC_DRIFT = 0.08  # std of the per-day log-traffic slope of each scenario
INTEREST_RANK = 6  # dimensions of the users' latent interests
INTEREST_SCALE = 0.75  # default std of the interest term in the CTR logit
INTEREST_DRIFT = (0.02, 0.2)  # range of the per-user drift rates of the interests, rad/day (uniform)
AD_INTEREST = 0.5  # std of an ad's own interest part relative to its category's
CVR_INTEREST = 0.3  # the CVR logit gets this times the CTR logit's interest term
# Diurnal traffic profile (relative volume per hour of day).
HOUR_PROFILE = np.array([3, 2, 1.5, 1, 1, 1.5, 3, 5, 6, 6, 6, 7, 8, 7, 6, 6, 6, 7, 8, 9, 10, 10, 8, 5.0])


def zipf_weights(n: int, exponent: float, offset: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf-like probabilities over ``n`` items, assigned to the items in a random order."""
    w = (np.arange(n) + offset) ** -exponent
    return (w / w.sum())[rng.permutation(n)]


def draw(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    """Draw ``size`` indices from the distribution with cumulative sums ``cdf``."""
    return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right"), len(cdf) - 1)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function."""
    return 1.0 / (1.0 + np.exp(-z))


def _solve_intercept(z: np.ndarray, target: float, weight: np.ndarray | None = None) -> float:
    """The b with weighted mean sigmoid(z + b) == target (bisection; the mean is monotone in b)."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.average(sigmoid(z + mid), weights=weight) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _normal(rng: np.random.Generator, scale: float, *shape: int) -> np.ndarray:
    return rng.normal(0.0, scale, shape)


@dataclass
class Effects:
    """Parameters of one logit (CTR or CVR): value biases, crosses, cluster weights, scenario bias."""

    bias: dict[str, np.ndarray]
    group_emb: np.ndarray  # (user groups, r) of the user-group x category cross
    cat_emb_a: np.ndarray  # (categories, r): the category side rotates from a ...
    cat_emb_b: np.ndarray  # ... towards b as time goes on
    cluster_cross: np.ndarray  # (clusters, r, r) matrix of that cross per cluster
    scenario_w: np.ndarray  # (scenarios, d) weights on the cluster features: cluster's + own deviation
    scenario_bias: np.ndarray  # (scenarios,)
    intercept: float = 0.0

    @classmethod
    def draw(
        cls, rng: np.random.Generator, sizes: dict[str, int], cluster_dim: int, scale: float, cluster_of: np.ndarray
    ) -> Effects:
        """Random effects; ``scale`` multiplies every effect size.

        The cross matrix of cluster c is ``a_c I + B_c`` (``a_c`` ~ U(0.2, 1.8): how much taste matters
        there; ``B_c``: which taste dimensions it favours); a scenario's weights are its cluster's plus a
        deviation of half their size, its bias its cluster's plus a deviation of similar size."""
        cluster_bias = _normal(rng, 0.4 * scale, N_CLUSTERS)
        strength = rng.uniform(0.2, 1.8, N_CLUSTERS)
        cluster_cross = strength[:, None, None] * np.eye(CROSS_RANK) + _normal(
            rng, 0.45, N_CLUSTERS, CROSS_RANK, CROSS_RANK
        )
        cluster_w = _normal(rng, 0.2 * scale, N_CLUSTERS, cluster_dim)
        return cls(
            bias={name: _normal(rng, 0.18 * scale, n) for name, n in sizes.items()},
            group_emb=_normal(rng, 0.55 * scale, N_USER_GROUPS, CROSS_RANK),
            cat_emb_a=_normal(rng, 0.55, N_CATEGORIES, CROSS_RANK),
            cat_emb_b=_normal(rng, 0.55, N_CATEGORIES, CROSS_RANK),
            cluster_cross=cluster_cross,
            scenario_w=cluster_w[cluster_of] + _normal(rng, 0.1 * scale, N_SCENARIOS, cluster_dim),
            scenario_bias=cluster_bias[cluster_of] + _normal(rng, 0.35 * scale, N_SCENARIOS),
        )

    def logit(
        self, x: dict[str, np.ndarray], cluster_feats: np.ndarray | None, cluster: np.ndarray, t: np.ndarray
    ) -> np.ndarray:
        """Logit for a batch: ``x`` maps feature name -> value index, ``t`` is time in days."""
        z = self.intercept + self.scenario_bias[x["scenario"]]
        for name, b in self.bias.items():
            z = z + b[x[name]]
        theta = ROTATION_PER_DAY * t[:, None]
        cat = self.cat_emb_a[x["category"]] * np.cos(theta) + self.cat_emb_b[x["category"]] * np.sin(theta)
        z = z + np.einsum("nr,nrs,ns->n", self.group_emb[x["user_group"]], self.cluster_cross[cluster], cat)
        if cluster_feats is None:  # no scenario-specific weights (the organic feed)
            return z
        return z + np.einsum("nd,nd->n", self.scenario_w[x["scenario"]], cluster_feats)


class World:
    """Every entity of the synthetic ad market and the true probability model, fixed by ``seed``."""

    def __init__(
        self,
        seed: int,
        age_range: tuple[int, int] = (12, 100),
        interest_scale: float = INTEREST_SCALE,
        launch_plan: LaunchPlan = NO_LAUNCHES,
        media_plan: MediaPlan = NO_MEDIA,
    ) -> None:
        rng = np.random.default_rng([seed, 1])
        # Users: Zipf activity, fixed attributes.
        self.user_cdf = np.cumsum(zipf_weights(N_USERS, 1.0, 50.0, rng))
        self.user_age = np.clip(np.round(rng.gamma(6.0, 6.0, N_USERS) + 10), *age_range).astype(np.int64)
        self.user_gender = draw(rng, np.cumsum([0.48, 0.47, 0.05]), N_USERS)
        self.user_city = draw(rng, np.cumsum(zipf_weights(N_CITIES, 1.0, 3.0, rng)), N_USERS)
        self.user_device = draw(rng, np.cumsum([0.7, 0.1, 0.2]), N_USERS)
        os_given_device = np.array([[0.6, 0.38, 0, 0, 0.02], [0.4, 0.58, 0, 0, 0.02], [0, 0, 0.75, 0.2, 0.05]])
        self.user_os = np.empty(N_USERS, np.int64)
        for d in range(3):
            idx = np.flatnonzero(self.user_device == d)
            self.user_os[idx] = draw(rng, np.cumsum(os_given_device[d]), len(idx))
        self.user_group = np.searchsorted(AGE_EDGES, self.user_age, side="right") * 3 + self.user_gender
        self.user_bias = rng.normal(0.0, 0.3, N_USERS)
        # Ads: ad -> campaign -> advertiser -> category; Zipf traffic over ads.
        self.advertiser_category = draw(rng, np.cumsum(zipf_weights(N_CATEGORIES, 0.8, 2.0, rng)), N_ADVERTISERS)
        self.campaign_advertiser = draw(rng, np.cumsum(zipf_weights(N_ADVERTISERS, 0.9, 5.0, rng)), N_CAMPAIGNS)
        self.campaign_bid_type = draw(rng, np.cumsum([0.4, 0.4, 0.2]), N_CAMPAIGNS)
        self.campaign_price = np.exp(rng.normal(0.3, 0.7, N_CAMPAIGNS))
        self.ad_campaign = draw(rng, np.cumsum(zipf_weights(N_CAMPAIGNS, 0.8, 5.0, rng)), N_ADS)
        self.ad_creative = draw(rng, np.cumsum([0.5, 0.2, 0.15, 0.15]), N_ADS)
        self.ad_cdf = np.cumsum(zipf_weights(N_ADS, 0.9, 20.0, rng))
        self.ad_bias = rng.normal(0.0, 0.25, N_ADS)
        # Scenarios: Zipf traffic with a per-day drift; clusters = media group x slot group.
        self.scenario_logw = np.log(zipf_weights(N_SCENARIOS, 1.1, 1.0, rng))
        self.scenario_slope = rng.normal(0.0, TRAFFIC_DRIFT, N_SCENARIOS)
        media_group = rng.permutation(N_MEDIA) % N_MEDIA_GROUPS
        slot_group = rng.permutation(N_SLOTS) % N_SLOT_GROUPS
        self.scenario_cluster = (media_group[:, None] * N_SLOT_GROUPS + slot_group[None, :]).ravel()
        self.hour_cdf = np.cumsum(HOUR_PROFILE)
        # Embeddings the cluster weights act on, and the two small crosses.
        self.emb = {
            n: rng.normal(0.0, 1.0, (k, 3))
            for n, k in [("user_group", N_USER_GROUPS), ("category", N_CATEGORIES), ("creative_type", 4), ("device", 3)]
        }
        self.device_creative = (rng.normal(0, 0.45, (3, 3)), rng.normal(0, 0.45, (4, 3)))
        self.hour_media = (rng.normal(0, 0.35, (24, 3)), rng.normal(0, 0.35, (N_MEDIA, 3)))
        sizes = {
            "gender": 3,
            "age_bucket": len(AGE_EDGES) + 1,
            "device": 3,
            "os": 5,
            "hour": 24,
            "weekday": 7,
            "media": N_MEDIA,
            "slot": N_SLOTS,
            "category": N_CATEGORIES,
            "city": N_CITIES,
            "creative_type": 4,
            "bid_type": 3,
            "advertiser_id": N_ADVERTISERS,
        }
        cluster_dim = 3 * len(self.emb)
        self.ctr = Effects.draw(rng, sizes, cluster_dim, 1.0, self.scenario_cluster)
        self.cvr = Effects.draw(rng, sizes, cluster_dim, 1.0, self.scenario_cluster)
        self.cvr.bias["bid_type"] += np.array([0.0, 0.4, -0.3])  # oCPC campaigns optimise for conversions
        self.feed = Effects.draw(
            rng, {"media": N_MEDIA, "category": N_CATEGORIES, "hour": 24}, cluster_dim, 0.8, self.scenario_cluster
        )
        self.feed.cat_emb_a, self.feed.cat_emb_b = self.ctr.cat_emb_a, self.ctr.cat_emb_b  # shared tastes
        self.feed.group_emb = self.ctr.group_emb
        self._draw_interests(np.random.default_rng([seed, 3]), interest_scale)
        self.launches: Launches | None = None
        if launch_plan.active:  # own stream: everything above is the same with and without launches
            self.launches = Launches(
                launch_plan, np.random.default_rng([seed, 4]), self.scenario_logw, self.user_city, N_CATEGORIES
            )
            for effects in (self.ctr, self.cvr):
                self.launches.shift_scenes(effects.scenario_w, effects.scenario_bias, 1.0)
        self.media: MediaWorld | None = None
        if media_plan.enabled:  # own stream too: the media party's users and their effect on the logits
            self.media = MediaWorld(media_plan, np.random.default_rng([seed, 5]), N_USERS, N_CATEGORIES)
        self._calibrate(np.random.default_rng([seed, 2]))

    def _draw_interests(self, rng: np.random.Generator, scale: float) -> None:
        """Users' drifting interests and the interest embeddings of categories and ads (own stream, so
        that everything else is the same for every ``interest_scale``; scale 0 leaves the logits as
        they were without the term). ``u(t)`` has the same N(0, I / rank) distribution at every t."""
        r = INTEREST_RANK
        self.interest_scale = float(scale)
        self.user_interest_a = rng.standard_normal((N_USERS, r), dtype=np.float32) / np.float32(np.sqrt(r))
        self.user_interest_b = rng.standard_normal((N_USERS, r), dtype=np.float32) / np.float32(np.sqrt(r))
        self.user_interest_rate = rng.uniform(*INTEREST_DRIFT, N_USERS).astype(np.float32)
        self.category_interest = rng.standard_normal((N_CATEGORIES, r), dtype=np.float32)
        own = rng.standard_normal((N_ADS, r), dtype=np.float32)
        ad_category = self.advertiser_category[self.campaign_advertiser[self.ad_campaign]]
        self.ad_interest = (self.category_interest[ad_category] + AD_INTEREST * own) / np.float32(
            np.sqrt(1 + AD_INTEREST**2)
        )

    def user_interest(self, user: np.ndarray, t: np.ndarray) -> np.ndarray:
        """(n, rank) interest vectors of users ``user`` at times ``t`` (days)."""
        theta = (self.user_interest_rate[user] * t)[:, None]
        return self.user_interest_a[user] * np.cos(theta) + self.user_interest_b[user] * np.sin(theta)

    def interest(self, x: dict[str, np.ndarray], t: np.ndarray, feed: bool = False) -> np.ndarray:
        """``<u_user(t), c>`` per row (not scaled by ``interest_scale``): ``c`` is the ad's interest
        embedding, or the category's for the organic feed (``feed``)."""
        c = self.category_interest[x["category"]] if feed else self.ad_interest[x["ad_id"]]
        return np.einsum("nr,nr->n", self.user_interest(x["user_id"], t), c).astype(np.float64)

    def scenario_cdf(self, t: float) -> np.ndarray:
        """Cumulative scenario traffic at time ``t`` (days): Zipf shape, slowly drifting."""
        logw = self.scenario_logw + self.scenario_slope * t
        if self.launches:
            logw = self.launches.scene_logw(logw, t)
        return np.cumsum(np.exp(logw - logw.max()))

    def sample(self, rng: np.random.Generator, n: int, day: int, weekday: int) -> dict[str, np.ndarray]:
        """``n`` impressions of day ``day`` (0-based): feature value indices, ``second`` of the day,
        and the true ``p_ctr`` / ``p_cvr``; rows are sorted by time."""
        x = self._context(rng, n, day, weekday)
        user = x["user_id"]
        ad = draw(rng, self.ad_cdf, n)
        campaign = self.ad_campaign[ad]
        advertiser = self.campaign_advertiser[campaign]
        x.update(
            {
                "age": self.user_age[user],
                "age_bucket": np.searchsorted(AGE_EDGES, self.user_age[user], side="right"),
                "gender": self.user_gender[user],
                "city": self.user_city[user],
                "device": self.user_device[user],
                "os": self.user_os[user],
                "ad_id": ad,
                "advertiser_id": advertiser,
                "campaign_id": campaign,
                "category": self.advertiser_category[advertiser],
                "creative_type": self.ad_creative[ad],
                "bid_type": self.campaign_bid_type[campaign],
                "price": np.round(self.campaign_price[campaign] * np.exp(rng.normal(0, 0.2, n)), 2),
            }
        )
        x["p_ctr"], x["p_cvr"] = self.probabilities(x, day + x["second"] / 86400.0)
        return x

    def probabilities(self, x: dict[str, np.ndarray], t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """True (pCTR, post-click pCVR) of a batch from :meth:`sample` at times ``t`` (days)."""
        cluster = self.scenario_cluster[x["scenario"]]
        feats = np.concatenate([e[x[name]] for name, e in self.emb.items()], axis=1)
        dev, cre = self.device_creative
        hour, media = self.hour_media
        shared = np.einsum("nr,nr->n", dev[x["device"]], cre[x["creative_type"]]) + np.einsum(
            "nr,nr->n", hour[x["hour"]], media[x["media"]]
        )
        z_ctr = self.ctr.logit(x, feats, cluster, t) + shared + self.user_bias[x["user_id"]] + self.ad_bias[x["ad_id"]]
        z_cvr = self.cvr.logit(x, feats, cluster, t) - 0.35 * np.log(x["price"] + 0.1)
        if self.interest_scale:
            z_interest = self.interest_scale * self.interest(x, t)
            z_ctr, z_cvr = z_ctr + z_interest, z_cvr + CVR_INTEREST * z_interest
        if self.launches:
            z_ctr = z_ctr + self.launches.segment_logit(x["city"], x["category"])
        if self.media:
            media_ctr, media_cvr = self.media.logits(x["user_id"], x["category"])
            z_ctr, z_cvr = z_ctr + media_ctr, z_cvr + media_cvr
        return sigmoid(z_ctr), sigmoid(z_cvr)

    def sample_feed(self, rng: np.random.Generator, n: int, day: int, weekday: int) -> dict[str, np.ndarray]:
        """``n`` organic-feed impressions of day ``day`` for the same users: indices and ``p_click``."""
        x = self._context(rng, n, day, weekday)
        x["category"] = rng.integers(0, N_CATEGORIES, n)
        x["p_click"] = self._feed_prob(x, day + x["second"] / 86400.0)
        return x

    def _context(self, rng: np.random.Generator, n: int, day: int, weekday: int) -> dict[str, np.ndarray]:
        """What ad and feed impressions share: time of day (sorted), user and scenario (slot x media)."""
        second = np.sort(draw(rng, self.hour_cdf, n) * 3600 + rng.integers(0, 3600, n))
        user = draw(rng, self.user_cdf if self.launches is None else self._user_cdf(day), n)
        scenario = draw(rng, self.scenario_cdf(day + 0.5), n)
        return {
            "second": second,
            "user_id": user,
            "user_group": self.user_group[user],
            "hour": second // 3600,
            "weekday": np.full(n, weekday),
            "scenario": scenario,
            "media": scenario // N_SLOTS,
            "slot": scenario % N_SLOTS,
        }

    def _user_cdf(self, day: int) -> np.ndarray:
        """Users' cumulative sampling weights on ``day`` (late segments' users absent before their launch)."""
        weights = np.diff(self.user_cdf, prepend=0.0)
        return np.cumsum(self.launches.user_weights(weights, day))

    def _feed_prob(self, x: dict[str, np.ndarray], t: np.ndarray) -> np.ndarray:
        cluster = self.scenario_cluster[x["scenario"]]
        z = self.feed.logit(x, None, cluster, t) + self.user_bias[x["user_id"]]
        if self.interest_scale:
            z = z + self.interest_scale * self.interest(x, t, feed=True)
        return sigmoid(z)

    def _calibrate(self, rng: np.random.Generator) -> None:
        """Set the intercepts so day-0 rates hit the targets."""
        x = self.sample(rng, 50_000, 0, 0)
        t = x["second"] / 86400.0
        p_ctr, p_cvr = self.probabilities(x, t)
        self.ctr.intercept = _solve_intercept(np.log(p_ctr / (1 - p_ctr)), TARGET_CTR)
        p_ctr, _ = self.probabilities(x, t)
        self.cvr.intercept = _solve_intercept(np.log(p_cvr / (1 - p_cvr)), TARGET_CVR, weight=p_ctr)
        f = self.sample_feed(rng, 50_000, 0, 0)
        p = f["p_click"]
        self.feed.intercept = _solve_intercept(np.log(p / (1 - p)), TARGET_FEED_CTR)
