"""A/B replay (``tfads simulate-ab``): replay held-out impression opportunities through the A/B arms.

Each opportunity holds K candidate ads and goes through the real bidding client to the running
model server. Candidates are K logged test impressions of the same scenario (the primary domain) and
hour of day, each with its whole logged row, so every candidate has the generator's true pCTR/pCVR (a
candidate that was never shown would have no truth). The opportunity's user (for hash assignment) is
its first candidate's.

Auction: generalized second price over one slot: the K candidates' bids and ``competitors`` synthetic
bids (log-normal around the median true eCPM of all candidates) compete; the highest bid at or above
the reserve wins and pays max(second bid, reserve) per impression (CPM billing). Clicks and
conversions of a won impression are drawn from the winner's true probabilities. Opportunities,
competitor bids and random draws are shared by the arms (common random numbers).

Per arm: impressions won, clicks, conversions, CTR, CVR, CPC, CPM, CPA, spend (what our advertisers pay),
advertiser value (CPC: price per click, oCPC / oCPA: target CPA per conversion, CPM: price per mille),
ROI = value / spend, revenue (the exchange's income from every sale, competitors' included).

Bid terms: as logged (each candidate's ``bid_type`` and ``price``), or one bid type and / or price for every
candidate (``ReplaySettings.bid_type`` / ``price``): with ``OCPA`` every bid is ``1000 * pCTR * pCVR *
target CPA`` from the arm's model, so arms serving different CVR models compare on ROI and revenue. The
override changes only the bid arithmetic (``serving.bidding``, with the arm's shading and caps) applied to
the probabilities the server returned; the model still receives the logged fields.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from serving.bidding import BID_TYPES, compute_bids, ecpm
from serving.client import BidClient, with_derived
from serving.traffic import opportunities
from tfads.core.manifest import load_manifest
from tfads.metrics import bootstrap_ci
from tfads.truth import TRUTH_KEY, read_truth

log = logging.getLogger(__name__)

COLUMNS = ("routed", "won", "clicks", "conversions", "spend", "value", "revenue")
Sums = Mapping[str, np.ndarray]


def _ratio(num: str, den: str, scale: float = 1.0) -> Callable[[Sums], np.ndarray]:
    def metric(s: Sums) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(s[den] > 0, scale * s[num] / s[den], np.nan)

    return metric


METRICS: dict[str, Callable[[Sums], np.ndarray]] = {
    "opportunities": lambda s: s["routed"],
    "impressions": lambda s: s["won"],
    "clicks": lambda s: s["clicks"],
    "conversions": lambda s: s["conversions"],
    "ctr": _ratio("clicks", "won"),
    "cvr": _ratio("conversions", "clicks"),
    "cpc": _ratio("spend", "clicks"),
    "cpm": _ratio("spend", "won", 1000.0),
    "cpa": _ratio("spend", "conversions"),
    "spend": lambda s: s["spend"],
    "advertiser_value": lambda s: s["value"],
    "roi": _ratio("value", "spend"),
    "revenue": lambda s: s["revenue"],
}
UPLIFT_METRICS = ("ctr", "cvr", "cpc", "cpm", "cpa", "roi", "revenue")


@dataclass(frozen=True)
class AuctionParams:
    """The synthetic exchange: competitors, their bid spread and the reserve price."""

    competitors: int = 3
    competitor_scale: float = 1.0
    competitor_sigma: float = 0.8
    reserve_ratio: float = 0.3

    def __post_init__(self) -> None:
        if self.competitors < 0 or self.competitor_scale <= 0 or self.competitor_sigma < 0 or self.reserve_ratio < 0:
            raise ValueError(f"auction parameters must be non-negative (scale positive), got {self}")


@dataclass(frozen=True)
class Environment:
    """Everything the arms share: truth, bid terms, competitor bids, reserve and random draws ([n, K]).

    ``rebid``: the bid terms are not the logged ones, so the replay computes each arm's bids from the
    probabilities its model returned and these terms."""

    true_ctr: np.ndarray
    true_cvr: np.ndarray
    bid_type: np.ndarray
    price: np.ndarray
    competitor_bids: np.ndarray
    reserve: float
    u_click: np.ndarray
    u_conversion: np.ndarray
    scenario: np.ndarray
    rebid: bool = False


def make_environment(
    requests: Sequence[Mapping[str, Any]], truth: pd.DataFrame, params: AuctionParams, rng: np.random.Generator,
    *, key: str, domain: str | None, derived: Mapping[str, tuple[Sequence[str], str]] | None = None,
    bid_type: str = "", price: float | None = None,
) -> Environment:
    """Look up each candidate's truth (the generator's ``trace_id``, the candidates' ``key``) and draw
    competitor bids and click/conversion uniforms; an opportunity's scenario is its first candidate's
    ``domain`` value, joined from its parts when ``domain`` is a derived feature (``derived``: name ->
    (parts, separator)) the candidates do not carry. ``bid_type`` / ``price`` replace every candidate's
    logged bid terms ("" / None: as logged); competitor bids and the reserve follow the terms used.

    Raises:
      ValueError: a candidate without truth (names its key), or an unknown ``bid_type``.
    """
    if bid_type and bid_type not in BID_TYPES:
        raise ValueError(f"bid_type must be one of {', '.join(BID_TYPES)} (or empty: as logged). Got {bid_type!r}.")
    by_trace = truth.set_index(TRUTH_KEY)[["p_ctr", "p_cvr"]]
    traces = [[str(c[key]) for c in r["candidates"]] for r in requests]
    flat = [t for row in traces for t in row]
    missing = sorted(set(flat) - set(by_trace.index))
    if missing:
        raise ValueError(f"no truth for {key} {missing[0]!r} ({len(missing)} candidates lack truth)")
    shape = (len(traces), len(traces[0]))
    true = by_trace.loc[flat].to_numpy(np.float64)
    logged_type = np.array([[c["bid_type"] for c in r["candidates"]] for r in requests], dtype=object)
    logged_price = np.array([[float(c["price"]) for c in r["candidates"]] for r in requests])
    kinds = np.full(shape, bid_type, dtype=object) if bid_type else logged_type
    prices = np.full(shape, float(price)) if price is not None else logged_price
    true_ctr, true_cvr = true[:, 0].reshape(shape), true[:, 1].reshape(shape)
    base = float(np.median(ecpm(true_ctr, true_cvr, kinds, prices)))
    competitors = base * params.competitor_scale * np.exp(
        params.competitor_sigma * rng.standard_normal((shape[0], params.competitors))
    )
    return Environment(
        true_ctr=true_ctr, true_cvr=true_cvr, bid_type=kinds, price=prices, competitor_bids=competitors,
        reserve=base * params.reserve_ratio, u_click=rng.random(shape), u_conversion=rng.random(shape),
        scenario=np.array([str(with_derived(r["candidates"][0], derived or {}).get(domain, "all")) for r in requests],
                          dtype=object),
        rebid=bool(bid_type) or price is not None,
    )


def second_price(bids: np.ndarray, competitor_bids: np.ndarray, reserve: float) -> tuple[int | None, float, float]:
    """One-slot GSP: (index of our winning candidate or None, price paid, exchange revenue), prices in CPM.

    The highest bid at or above ``reserve`` wins and pays max(second-highest bid, reserve); a
    competitor's win is exchange revenue but not ours."""
    everything = np.concatenate([bids, competitor_bids])
    if not len(everything):
        return None, 0.0, 0.0
    top = int(np.argmax(everything))
    if everything[top] <= 0 or everything[top] < reserve:
        return None, 0.0, 0.0
    second = np.max(np.delete(everything, top)) if len(everything) > 1 else 0.0
    price = max(float(second), reserve)
    return (top if top < len(bids) else None), price, price


def replay(
    client: BidClient, requests: Sequence[Mapping[str, Any]], env: Environment, *, paired: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, Counter]]:
    """Run every opportunity through every arm (``paired``) or through its user's arm.

    Returns per arm an [n, len(COLUMNS)] outcome matrix, and per arm a Counter of answering model
    versions (``fallback``/``none`` for requests the model did not answer).
    """
    arms = [a.name for a in client.experiment.arms]
    out = {a: np.zeros((len(requests), len(COLUMNS))) for a in arms}
    versions: dict[str, Counter] = {a: Counter() for a in arms}
    col = {c: i for i, c in enumerate(COLUMNS)}
    for i, request in enumerate(requests):
        for arm in arms if paired else [None]:
            response = client.bid(request, arm=arm)
            row = out.setdefault(response.arm, np.zeros((len(requests), len(COLUMNS))))[i]
            versions.setdefault(response.arm, Counter())[response.model_version or response.source] += 1
            bids = response.bids
            if env.rebid:
                bids = compute_bids(response.p_ctr, response.p_cvr, env.bid_type[i], env.price[i],
                                    client.experiment.arm(response.arm).bidding)
            winner, price, revenue = second_price(bids, env.competitor_bids[i], env.reserve)
            row[col["routed"]] = 1
            row[col["revenue"]] = revenue / 1000.0
            if winner is None:
                continue
            click = env.u_click[i, winner] < env.true_ctr[i, winner]
            conversion = click and env.u_conversion[i, winner] < env.true_cvr[i, winner]
            amount, kind = env.price[i, winner], env.bid_type[i, winner]
            value = {"CPC": click * amount, "CPM": amount / 1000.0}.get(kind, conversion * amount)
            row[[col["won"], col["clicks"], col["conversions"], col["spend"], col["value"]]] = (
                1, click, conversion, price / 1000.0, value)
    return out, versions


def _sums(x: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    return {c: x[:, j][idx].sum(axis=1) for j, c in enumerate(COLUMNS)}


def summarize(
    outcomes: Mapping[str, np.ndarray],
    scenario: np.ndarray,
    *,
    control: str,
    treatment: str,
    rng: np.random.Generator,
    reps: int = 200,
    uplift_metric: str = "ctr",
    min_impressions: int = 20,
) -> dict[str, Any]:
    """Per-arm metrics and treatment-vs-control uplift with bootstrap CIs (resampling opportunities),
    and per-scenario uplift of ``uplift_metric`` with UPR (share of scenarios with positive uplift
    among those where both arms won at least ``min_impressions``)."""
    n = len(scenario)
    t, c = outcomes[treatment], outcomes[control]

    def ci(values: Callable[[np.ndarray], np.ndarray]) -> dict[str, float]:
        with warnings.catch_warnings():  # a metric undefined in every resample (no clicks: CVR) is NaN
            warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
            return bootstrap_ci(values, n, rng, reps, max_cells=2_000_000)._asdict()

    def lift(f: Callable[[Sums], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        def values(idx: np.ndarray) -> np.ndarray:
            base = f(_sums(c, idx))
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(base > 0, f(_sums(t, idx)) / base - 1.0, np.nan)

        return values

    arms = {
        arm: {name: ci(lambda idx, x=x, f=f: f(_sums(x, idx))) for name, f in METRICS.items()}
        for arm, x in outcomes.items()
    }
    uplift = {name: ci(lift(METRICS[name])) for name in UPLIFT_METRICS}
    scenarios = []
    every = np.arange(n)
    for value in sorted(set(scenario.tolist())):
        rows = every[scenario == value][None, :]
        ts, cs = _sums(t, rows), _sums(c, rows)
        mt, mc = float(METRICS[uplift_metric](ts)[0]), float(METRICS[uplift_metric](cs)[0])
        counted = min(ts["won"][0], cs["won"][0]) >= min_impressions and mc > 0 and np.isfinite(mt)
        scenarios.append({
            "scenario": value, "control_impressions": int(cs["won"][0]), "treatment_impressions": int(ts["won"][0]),
            f"control_{uplift_metric}": mc, f"treatment_{uplift_metric}": mt,
            "uplift": (mt / mc - 1.0) if counted else None,
        })
    counted = [s["uplift"] for s in scenarios if s["uplift"] is not None]
    totals = {arm: {c: float(x[:, j].sum()) for j, c in enumerate(COLUMNS)} for arm, x in outcomes.items()}
    return {
        "opportunities": n, "control": control, "treatment": treatment, "arms": arms, "totals": totals,
        "uplift": uplift, "uplift_metric": uplift_metric, "scenarios": scenarios,
        "upr": {"positive": sum(u > 0 for u in counted), "scenarios": len(counted),
                "upr": (sum(u > 0 for u in counted) / len(counted)) if counted else None},
    }


# ------------------------------------------------------------------------- report


def _fmt(ci: Mapping[str, float], percent: bool = False) -> str:
    est, low, high = ci["estimate"], ci["low"], ci["high"]
    if not np.isfinite(est):
        return "n/a"
    if percent:
        return f"{est:+.2%} [{low:+.2%}, {high:+.2%}]"
    digits = 0 if float(est).is_integer() and abs(est) >= 1 else 4
    return f"{est:,.{digits}f} [{low:,.{digits}f}, {high:,.{digits}f}]"


def render_markdown(
    summary: Mapping[str, Any], settings: Mapping[str, Any], *, max_scenarios: int | None = None
) -> str:
    """The A/B report as Markdown; ``max_scenarios`` keeps only the busiest scenarios' rows."""
    control, treatment = summary["control"], summary["treatment"]
    arms = summary["arms"]
    lines = [
        "# A/B replay",
        "",
        ", ".join(f"{k}: {v}" for k, v in settings.items()),
        "",
        "## Per arm (95% bootstrap CI over opportunities)",
        "",
        f"| metric | {' | '.join(arms)} | uplift {treatment} vs {control} |",
        "|---|" + "---:|" * (len(arms) + 1),
    ]
    for name in METRICS:
        cells = [_fmt(arms[a][name]) for a in arms]
        up = _fmt(summary["uplift"][name], percent=True) if name in summary["uplift"] else ""
        lines.append(f"| {name} | {' | '.join(cells)} | {up} |")
    metric = summary["uplift_metric"]
    upr = summary["upr"]
    upr_text = f"{upr['upr']:.0%}" if upr["upr"] is not None else "n/a"
    lines += [
        "",
        f"## Per scenario ({metric} uplift; UPR = {upr['positive']}/{upr['scenarios']} = {upr_text})",
        "",
        f"| scenario | {control} imps | {treatment} imps | {control} {metric} | {treatment} {metric} | uplift |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    scenarios = list(summary["scenarios"])
    if max_scenarios is not None and len(scenarios) > max_scenarios:
        scenarios = sorted(scenarios, key=lambda s: -(s["control_impressions"] + s["treatment_impressions"]))
        hidden, scenarios = len(scenarios) - max_scenarios, scenarios[:max_scenarios]
    else:
        hidden = 0
    for s in scenarios:
        up = f"{s['uplift']:+.2%}" if s["uplift"] is not None else "(too few)"
        lines.append(f"| {s['scenario']} | {s['control_impressions']} | {s['treatment_impressions']} | "
                     f"{s[f'control_{metric}']:.4f} | {s[f'treatment_{metric}']:.4f} | {up} |")
    if hidden:
        lines.append(f"| (+{hidden} smaller scenarios in the report file) | | | | | |")
    lines += ["", "## Model versions that answered", ""]
    for arm, versions in summary.get("versions", {}).items():
        lines.append(f"- {arm}: " + ", ".join(f"{k}: {v}" for k, v in versions.items()))
    return "\n".join(lines) + "\n"


def _bar_arms(summary: Mapping[str, Any], metric: str) -> dict[str, tuple[float, float, float]]:
    bars = {}
    for arm, metrics in summary["arms"].items():
        est, low, high = (metrics[metric][k] for k in ("estimate", "low", "high"))
        if np.isfinite(est):
            bars[arm] = (est, min(low, est), max(high, est))
    return bars


def write_report(summary: Mapping[str, Any], settings: Mapping[str, Any], out_dir: str) -> dict[str, str]:
    """Write ``ab_report.md``, ``ab_summary.json`` and PNGs (CTR, CPC, ROI per arm; uplift per metric)."""
    from tfads.plots import bar_with_ci

    os.makedirs(out_dir, exist_ok=True)
    paths = {"markdown": os.path.join(out_dir, "ab_report.md"), "json": os.path.join(out_dir, "ab_summary.json")}
    with open(paths["markdown"], "w") as f:
        f.write(render_markdown(summary, settings))
    with open(paths["json"], "w") as f:
        json.dump({"settings": dict(settings), **summary}, f, indent=2, default=float)
    for metric in ("ctr", "cpc", "roi"):
        bars = _bar_arms(summary, metric)
        if bars:
            paths[metric] = str(bar_with_ci(bars, os.path.join(out_dir, f"ab_{metric}.png"), metric.upper(),
                                            title=f"{metric.upper()} per arm (95% CI)"))
    uplift = {k: tuple(100 * v[x] for x in ("estimate", "low", "high")) for k, v in summary["uplift"].items()
              if np.isfinite(v["estimate"])}
    if uplift:
        uplift = {k: (e, min(lo, e), max(hi, e)) for k, (e, lo, hi) in uplift.items()}
        paths["uplift"] = str(bar_with_ci(uplift, os.path.join(out_dir, "ab_uplift.png"), "uplift (%)",
                                          title=f"{summary['treatment']} vs {summary['control']}"))
    return paths


# ------------------------------------------------------------------------- command


def read_truth_file(path: str) -> pd.DataFrame:
    """A truth JSONL (optionally .gz) or a `tfads datagen` logs directory as (trace_id, p_ctr, p_cvr)."""
    if os.path.isdir(path):
        return read_truth(path)
    return pd.read_json(path, lines=True, dtype={TRUTH_KEY: str})


@dataclass(frozen=True)
class ReplaySettings:
    """What one A/B replay does: traffic, assignment, the exchange and the statistics."""

    split: str = "test"
    opportunities: int = 2000
    candidates: int = 5
    assignment: str = "paired"  # paired: every opportunity through every arm; hash: through its user's arm
    auction: AuctionParams = AuctionParams()
    control: str = ""  # default: the experiment's first arm
    treatment: str = ""  # default: its second arm
    uplift_metric: str = "ctr"
    min_impressions: int = 20
    bootstrap: int = 200
    seed: int = 0
    bid_type: str = ""  # one bid type for every candidate (OCPA: bids from each arm's pCTR x pCVR); "": as logged
    price: float | None = None  # one price (oCPA / oCPC: the target CPA) for every candidate; None: as logged


def simulate_ab(
    manifest_path: str,
    truth: pd.DataFrame,
    experiment: Any,
    settings: ReplaySettings,
    connect: Callable[[], contextlib.AbstractContextManager[BidClient]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Replay ``settings.opportunities`` held-out opportunities through the arms of ``experiment``.

    ``connect()`` yields a BidClient on a server carrying every arm's model. Returns the summary (per
    arm, lifts with bootstrap intervals, per-scenario uplift) and the settings as reported.
    """
    if len(experiment.arms) < 2:
        raise ValueError(f"experiment {experiment.name!r}: simulate-ab needs at least two arms")
    control = experiment.arm(settings.control or experiment.arms[0].name).name
    treatment = experiment.arm(settings.treatment or experiment.arms[1].name).name
    rng = np.random.default_rng(settings.seed)
    manifest = load_manifest(manifest_path)
    if manifest.key is None:
        raise ValueError(f"{manifest_path}: simulate-ab matches candidates to the truth by key; the data has no key")
    requests = opportunities(manifest_path, settings.candidates, split=settings.split, seed=settings.seed)
    requests = requests[: settings.opportunities]
    if not requests:
        raise ValueError(
            f"{manifest_path}: no opportunities of {settings.candidates} candidates in split {settings.split!r}"
        )
    derived = {name: (d.concat, d.separator) for name, d in manifest.derived.items()}
    env = make_environment(requests, truth, settings.auction, rng, key=manifest.key, domain=manifest.domain,
                           derived=derived, bid_type=settings.bid_type, price=settings.price)
    with connect() as client:
        client.wait_until_available(timeout_s=60)
        outcomes, versions = replay(client, requests, env, paired=settings.assignment == "paired")
    summary = summarize(outcomes, env.scenario, control=control, treatment=treatment, rng=rng,
                        reps=settings.bootstrap, uplift_metric=settings.uplift_metric,
                        min_impressions=settings.min_impressions)
    summary["versions"] = {arm: {str(k): v for k, v in c.items()} for arm, c in versions.items()}
    reported = {
        "experiment": experiment.name, "opportunities": len(requests), "candidates": settings.candidates,
        "assignment": settings.assignment, "bid_type": settings.bid_type or "as logged",
        "price": "as logged" if settings.price is None else settings.price, "competitors": settings.auction.competitors,
        "reserve_cpm": round(env.reserve, 4), "seed": settings.seed,
    }
    return summary, reported
