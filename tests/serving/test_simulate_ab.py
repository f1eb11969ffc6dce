"""The A/B replay: second-price auction, and a small run through the embedded server whose report adds up."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from serving import simulate_ab
from tfads.cli import simulate_ab as simulate_ab_cli
from serving.simulate_ab import second_price


def test_second_price_with_reserve():
    assert second_price(np.array([5.0, 3.0]), np.array([4.0]), 1.0) == (0, 4.0, 4.0)
    assert second_price(np.array([5.0]), np.array([1.0]), 2.0) == (0, 2.0, 2.0)  # reserve above the second bid
    assert second_price(np.array([1.0, 0.5]), np.array([]), 2.0) == (None, 0.0, 0.0)  # nobody meets the reserve
    assert second_price(np.array([1.0]), np.array([6.0, 2.0]), 0.5) == (None, 2.0, 2.0)  # a competitor wins
    assert second_price(np.array([0.0, 0.0]), np.array([]), 0.0) == (None, 0.0, 0.0)  # no bids, no sale


def test_summary_metrics_and_upr_from_known_outcomes():
    # columns: routed, won, clicks, conversions, spend, value, revenue
    control = np.array([[1, 1, 0, 0, 0.002, 0.0, 0.002], [1, 1, 1, 0, 0.004, 1.0, 0.004], [1, 0, 0, 0, 0, 0, 0.003]])
    treatment = np.array(
        [[1, 1, 1, 1, 0.003, 2.0, 0.003], [1, 1, 1, 0, 0.004, 1.0, 0.004], [1, 1, 0, 0, 0.001, 0, 0.001]]
    )
    scenario = np.array(["a", "a", "b"], dtype=object)
    summary = simulate_ab.summarize({"control": control, "treatment": treatment}, scenario, control="control",
                                    treatment="treatment", rng=np.random.default_rng(0), reps=50, min_impressions=1)
    arm = {k: v["estimate"] for k, v in summary["arms"]["treatment"].items()}
    assert arm["impressions"] == 3 and arm["clicks"] == 2 and arm["ctr"] == pytest.approx(2 / 3)
    assert arm["cvr"] == pytest.approx(0.5) and arm["cpc"] == pytest.approx(0.004)
    assert arm["cpm"] == pytest.approx(1000 * 0.008 / 3) and arm["roi"] == pytest.approx(3.0 / 0.008)
    assert arm["cpa"] == pytest.approx(0.008)  # spend per conversion
    assert summary["uplift"]["ctr"]["estimate"] == pytest.approx((2 / 3) / (1 / 2) - 1)
    assert summary["scenarios"][0]["uplift"] == pytest.approx(1.0)  # scenario a: CTR 1/2 -> 2/2
    assert summary["scenarios"][1]["uplift"] is None  # control won nothing in b
    assert summary["upr"] == {"positive": 1, "scenarios": 1, "upr": 1.0}
    markdown = simulate_ab.render_markdown(summary, {"opportunities": 3})
    assert "UPR = 1/1 = 100%" in markdown


def test_bid_terms_override_every_candidate_and_the_exchange_follows():
    truth = pd.DataFrame({"trace_id": ["a", "b", "c", "d"], "p_ctr": [0.1, 0.2, 0.05, 0.4],
                          "p_cvr": [0.5, 0.1, 0.2, 0.25]})
    requests = [{"candidates": [{"trace_id": "a", "bid_type": "CPC", "price": 3.0},
                                {"trace_id": "b", "bid_type": "CPM", "price": 9.0}]},
                {"candidates": [{"trace_id": "c", "bid_type": "OCPC", "price": 1.0},
                                {"trace_id": "d", "bid_type": "CPC", "price": 0.5}]}]

    def env(**terms):
        return simulate_ab.make_environment(requests, truth, simulate_ab.AuctionParams(reserve_ratio=0.5),
                                            np.random.default_rng(0), key="trace_id", domain=None, **terms)

    logged, ocpa = env(), env(bid_type="OCPA", price=2.0)
    assert not logged.rebid and logged.bid_type.tolist() == [["CPC", "CPM"], ["OCPC", "CPC"]]
    assert ocpa.rebid and (ocpa.bid_type == "OCPA").all() and (ocpa.price == 2.0).all()
    true_ecpm = 1000 * np.array([0.05, 0.02, 0.01, 0.1]) * 2.0  # 1000 x pCTR x pCVR x target CPA
    assert ocpa.reserve == pytest.approx(0.5 * np.median(true_ecpm))  # the exchange is priced on the terms used
    with pytest.raises(ValueError, match="bid_type must be one of"):
        env(bid_type="CPX")


def run_simulation(tmp_path, ab_server, manifest_path, logs_dir, assignment: str, *extra: str) -> dict:  # noqa: F811
    parser = argparse.ArgumentParser()
    simulate_ab_cli.add_arguments(parser)
    out = tmp_path / assignment
    args = parser.parse_args([
        "--target", ab_server, "--data", manifest_path, "--truth", logs_dir, "--opportunities", "60",
        "--candidates", "3", "--bootstrap", "50", "--min-impressions", "1", "--assignment", assignment,
        "--out", str(out), *extra,
    ])
    assert simulate_ab_cli.run(args) == 0
    assert (out / "ab_report.md").read_text().startswith("# A/B replay")
    summary = json.loads((out / "ab_summary.json").read_text())
    assert (out / "ab_ctr.png").stat().st_size > 1000
    if any(t["clicks"] for t in summary["totals"].values()):
        assert (out / "ab_cpc.png").stat().st_size > 1000
    return summary


@pytest.mark.parametrize("assignment", ["paired", "hash"])
def test_small_replay_report_adds_up(tmp_path, ab_server, manifest_path, logs_dir, assignment):  # noqa: F811
    summary = run_simulation(tmp_path, ab_server, manifest_path, logs_dir, assignment)
    n = summary["opportunities"]
    assert n == 60
    totals = summary["totals"]
    routed = [t["routed"] for t in totals.values()]
    assert routed == [n, n] if assignment == "paired" else sum(routed) == n
    for arm, t in totals.items():
        assert t["conversions"] <= t["clicks"] <= t["won"] <= t["routed"]
        assert t["revenue"] >= t["spend"] - 1e-9  # exchange revenue includes what our advertisers paid
        metrics = {k: v["estimate"] for k, v in summary["arms"][arm].items()}
        assert metrics["impressions"] == t["won"] and metrics["spend"] == pytest.approx(t["spend"])
        if t["won"]:
            assert metrics["ctr"] == pytest.approx(t["clicks"] / t["won"])
            assert metrics["cpm"] == pytest.approx(1000 * t["spend"] / t["won"])
        per_scenario = sum(s[f"{'control' if arm == 'control' else 'treatment'}_impressions"]
                           for s in summary["scenarios"])
        assert per_scenario == t["won"]
        answered = summary["versions"][arm]
        assert sum(answered.values()) == t["routed"]
        assert set(answered) == {"1" if arm == "control" else "2"}  # every bid by the labelled version
    if assignment == "paired":
        # Both labels point at exports of the same uncalibrated model: identical bids, identical outcomes.
        assert totals["control"] == totals["treatment"]
        assert summary["uplift"]["ctr"]["estimate"] in (0.0, None) or np.isnan(summary["uplift"]["ctr"]["estimate"])
    upr = summary["upr"]
    assert upr["positive"] <= upr["scenarios"] <= len(summary["scenarios"])
    # candidates carry no scenario (the model derives it); the replay joins it from media and slot
    assert len(summary["scenarios"]) > 1 and all("|" in s["scenario"] for s in summary["scenarios"])
    for ci in summary["arms"]["treatment"].values():
        if np.isfinite(ci["estimate"]):
            assert ci["low"] <= ci["high"]


def test_ocpa_replay_reports_roi_and_revenue_per_arm_that_add_up(tmp_path, ab_server, manifest_path, logs_dir):
    summary = run_simulation(tmp_path, ab_server, manifest_path, logs_dir, "paired", "--bid-type", "OCPA",
                             "--price", "20", "--opportunities", "150")
    assert summary["settings"]["bid_type"] == "OCPA" and summary["settings"]["price"] == 20.0
    assert (tmp_path / "paired" / "ab_report.md").read_text().count("| roi |") == 1
    for arm, t in summary["totals"].items():
        metrics = {k: v["estimate"] for k, v in summary["arms"][arm].items()}
        assert t["won"] > 0 and t["revenue"] >= t["spend"] - 1e-9
        assert t["value"] == pytest.approx(20.0 * t["conversions"])  # every winner is an oCPA ad worth its CPA
        assert metrics["advertiser_value"] == pytest.approx(t["value"]) and metrics["revenue"] == pytest.approx(
            t["revenue"])
        assert metrics["roi"] == pytest.approx(t["value"] / t["spend"])
        if t["conversions"]:
            assert metrics["cpa"] == pytest.approx(t["spend"] / t["conversions"])
            assert metrics["roi"] * metrics["cpa"] == pytest.approx(20.0)  # ROI = target CPA / achieved CPA
    # the same model behind both labels: the same pCTR x pCVR bids, the same auctions
    assert summary["totals"]["control"] == summary["totals"]["treatment"]
