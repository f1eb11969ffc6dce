"""Entire-space CVR metrics: against the truth, per-field pCTCVR and the flat summary, on frames with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tfads.entire_space import (
    against_truth,
    ctcvr_by_field,
    cvr_summary,
    oracle_frame,
    rank_correlation,
    truth_bins,
    truth_rows,
)


@pytest.fixture
def scored() -> pd.DataFrame:
    """2000 impressions with true pCTR / pCVR, labels drawn from them and a noisy model."""
    rng = np.random.default_rng(0)
    n = 2000
    true_ctr, true_cvr = rng.uniform(0.05, 0.4, n), rng.uniform(0.05, 0.5, n)
    click = (rng.random(n) < true_ctr).astype(int)
    conversion = click * (rng.random(n) < true_cvr).astype(int)
    ctr = np.clip(true_ctr + rng.normal(0, 0.05, n), 0.01, 0.99)
    cvr = np.clip(true_cvr + rng.normal(0, 0.1, n), 0.01, 0.99)
    return pd.DataFrame({"click": click, "conversion": conversion, "ctr": ctr, "cvr": cvr, "ctcvr": ctr * cvr,
                         "true_ctr": true_ctr, "true_cvr": true_cvr, "true_ctcvr": true_ctr * true_cvr,
                         "scenario": rng.choice(["a|x", "b|y", "c|z"], n), "advertiser_id": rng.integers(0, 20, n)})


def test_the_truth_against_itself_is_perfect():
    q = np.linspace(0.01, 0.6, 101)
    m = against_truth(q, q)
    entropy = -np.mean(q * np.log(q) + (1 - q) * np.log(1 - q))
    assert m["KL to truth"] == pytest.approx(0, abs=1e-12)
    assert m["CE to truth"] == pytest.approx(entropy, rel=1e-12)
    assert m["p/q"] == pytest.approx(1) and m["Spearman"] == pytest.approx(1)
    assert m["ECE to truth"] == pytest.approx(0, abs=1e-15)


def test_known_distances():
    # one row, q = 0.5, p = 0.25: KL = 0.5 ln(0.5 / 0.25) + 0.5 ln(0.5 / 0.75)
    m = against_truth([0.25], [0.5])
    assert m["KL to truth"] == pytest.approx(0.5 * np.log(2) + 0.5 * np.log(2 / 3), rel=1e-12)
    assert m["CE to truth"] == pytest.approx(-0.5 * np.log(0.25) - 0.5 * np.log(0.75), rel=1e-12)
    # p = 2q everywhere: twice the truth on average, and every bin is off by its own mean q
    q = np.linspace(0.01, 0.3, 200)
    m = against_truth(2 * q, q, bins=7)
    assert m["p/q"] == pytest.approx(2)
    assert m["ECE to truth"] == pytest.approx(q.mean())
    assert m["Spearman"] == pytest.approx(1)  # a monotone transform keeps the order
    assert rank_correlation(1 - q, q) == pytest.approx(-1)


def test_a_constant_prediction_has_no_rank_correlation():
    q = np.linspace(0.01, 0.3, 50)
    m = against_truth(np.full(50, q.mean()), q)
    assert np.isnan(m["Spearman"])
    assert m["p/q"] == pytest.approx(1) and m["KL to truth"] > 0


def test_truth_bins_cut_as_array_split():
    p = np.array([0.9, 0.1, 0.5, 0.3, 0.7])
    table = truth_bins(p, p / 2, bins=2)
    assert table["count"].tolist() == [3, 2]
    assert table["mean_p"].tolist() == pytest.approx([0.3, 0.8])
    assert table["mean_q"].tolist() == pytest.approx([0.15, 0.4])
    assert len(truth_bins(p, p, bins=10)) == 5  # empty bins are dropped


@pytest.mark.parametrize(("p", "q", "message"), [
    ([0.1, 1.2], [0.1, 0.2], "`p` must hold probabilities"),
    ([0.1, 0.2], [0.1, np.nan], "`q` must hold probabilities"),
    ([0.1, 0.2], [0.1], "`q` must have the length"),
    ([], [], "non-empty"),
])
def test_bad_input_is_named(p, q, message):
    with pytest.raises(ValueError, match=message):
        against_truth(p, q)


def test_truth_rows_put_the_oracle_beside_the_model(scored):
    rows = truth_rows(scored)
    assert list(rows) == ["cvr", "cvr (oracle)", "ctcvr", "ctcvr (oracle)"]
    assert rows["cvr (oracle)"]["KL to truth"] == pytest.approx(0, abs=1e-12)
    assert rows["cvr"]["KL to truth"] > 0 and 0.5 < rows["cvr"]["Spearman"] < 1
    assert truth_rows(scored.drop(columns=["true_cvr", "true_ctcvr"])) == {}
    assert truth_rows(scored.assign(true_cvr=np.nan).drop(columns="true_ctcvr")) == {}  # rows without truth


def test_ctcvr_by_field_matches_a_direct_computation(scored):
    tables = ctcvr_by_field(scored, ["scenario", "advertiser_id"])
    table = tables["scenario"].set_index("value")
    assert list(tables["scenario"].columns) == ["value", "impressions", "positives", "auc", "pcoc", "rce",
                                                 "oracle_auc", "oracle_pcoc"]
    for value, group in scored.groupby("scenario"):
        y = group["conversion"]
        assert table.loc[value, "auc"] == pytest.approx(roc_auc_score(y, group["ctcvr"]))
        assert table.loc[value, "oracle_auc"] == pytest.approx(roc_auc_score(y, group["true_ctcvr"]))
        assert table.loc[value, "pcoc"] == pytest.approx(group["ctcvr"].sum() / y.sum())
    assert tables["advertiser_id"].iloc[-1]["value"] == "(weighted mean)"
    assert ctcvr_by_field(scored.drop(columns="ctcvr"), ["scenario"]) == {}
    with pytest.raises(ValueError, match="advertiser"):
        ctcvr_by_field(scored, ["advertiser"])


def test_cvr_summary_of_model_and_oracle(scored):
    model = cvr_summary(scored, ["scenario"])
    clicked = scored[scored["click"] == 1]
    assert model["pCVR AUC (clicks)"] == pytest.approx(roc_auc_score(clicked["conversion"], clicked["cvr"]))
    assert model["pCTCVR AUC"] == pytest.approx(roc_auc_score(scored["conversion"], scored["ctcvr"]))
    oracle = cvr_summary(oracle_frame(scored), ["scenario"])
    assert list(oracle) == list(model)
    assert oracle["pCVR KL to truth"] == pytest.approx(0, abs=1e-12) and oracle["pCVR Spearman"] == pytest.approx(1)
    assert oracle["pCVR AUC (clicks)"] > model["pCVR AUC (clicks)"]
    weighted = ctcvr_by_field(scored, ["scenario"])["scenario"].iloc[-1]
    assert model["pCTCVR AUC[scenario]"] == pytest.approx(weighted["auc"])
    assert "pCVR KL to truth" not in cvr_summary(scored.drop(columns=["true_cvr"]))
