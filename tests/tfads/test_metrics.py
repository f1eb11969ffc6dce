"""Metrics against hand-computed examples and against straightforward loop implementations."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from tfads import metrics as m

# ----------------------------------------------------------------------------- loop references


def loop_auc(y, p):
    pos, neg = p[y == 1], p[y == 0]
    wins = sum(float(np.sum(q > neg) + 0.5 * np.sum(q == neg)) for q in pos)
    return wins / (len(pos) * len(neg))


def loop_logloss(y, p):
    total = 0.0
    for yi, pi in zip(y, p, strict=True):
        pi = min(max(pi, m.EPS), 1 - m.EPS)
        total -= math.log(pi) if yi == 1 else math.log(1 - pi)
    return total / len(y)


def loop_gauc(y, p, users):
    num = den = 0.0
    for u in set(users.tolist()):
        rows = users == u
        if 0 < y[rows].sum() < rows.sum():
            num += rows.sum() * loop_auc(y[rows], p[rows])
            den += rows.sum()
    return num / den


def loop_ece_parts(y, p, bins):
    order = np.argsort(p, kind="stable")
    return sum(len(c) * abs(p[c].mean() - y[c].mean()) for c in np.array_split(order, bins) if len(c))


def loop_field_ece(y, p, field, bins):
    return sum(loop_ece_parts(y[field == z], p[field == z], bins) for z in set(field.tolist())) / len(y)


def loop_field_rce(y, p, field):
    num = den = 0.0
    for z in set(field.tolist()):
        rows = field == z
        if y[rows].sum() > 0:
            num += rows.sum() * abs((y[rows] - p[rows]).sum()) / y[rows].sum()
            den += rows.sum()
    return num / den


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    n = 5000
    true_p = rng.beta(2, 8, n)
    y = (rng.random(n) < true_p).astype(int)
    # Rounded predictions so ties exist and tie handling is exercised.
    p = np.round(np.clip(true_p * rng.lognormal(0, 0.4, n), 0, 1), 2)
    users = rng.integers(0, 300, n)
    field = np.array([f"s{i}" for i in rng.zipf(1.6, n) % 40])
    return y, p, users, field, true_p


# ----------------------------------------------------------------------------- hand-computed


def test_hand_computed_values():
    assert m.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert m.auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert m.logloss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert m.pcoc([1, 0, 0, 0], [0.5] * 4) == pytest.approx(2.0)
    # bins {0.1, 0.2} (y 0, 1) and {0.3, 0.4} (y 0, 1): (2*0.35 + 2*0.15) / 4
    assert m.ece([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], bins=2) == pytest.approx(0.25)


def test_gauc_skips_single_class_users():
    users = ["u1", "u1", "u2", "u2", "u2", "u3"]
    y = [0, 1, 1, 0, 0, 1]
    p = [0.2, 0.6, 0.3, 0.5, 0.1, 0.9]
    # u1: AUC 1 over 2 rows, u2: AUC 0.5 over 3 rows, u3 has one class and is skipped.
    assert m.gauc(y, p, users) == pytest.approx((2 * 1.0 + 3 * 0.5) / 5)
    assert math.isnan(m.gauc([1, 1, 0], [0.2, 0.3, 0.4], ["a", "a", "b"]))


def test_field_rce_skips_values_without_positives():
    field = ["a", "a", "b", "b", "b", "c"]
    y = [1, 0, 1, 1, 0, 0]
    p = [0.5, 0.3, 0.5, 0.5, 0.5, 0.2]
    # a: |1 - 0.8| / 1 over 2 rows; b: |2 - 1.5| / 2 over 3 rows; c has no positives.
    assert m.field_rce(y, p, field) == pytest.approx((2 * 0.2 + 3 * 0.25) / 5)


def test_field_ece_hand_computed():
    field = ["a"] * 4 + ["b"] * 2
    y = [0, 1, 0, 1, 1, 1]
    p = [0.1, 0.2, 0.3, 0.4, 0.9, 0.5]
    # a as in the ECE example contributes 1.0; b: bins {0.5} and {0.9} contribute 0.5 + 0.1.
    assert m.field_ece(y, p, field, bins=2) == pytest.approx((1.0 + 0.6) / 6)


def test_per_field_auc_frame():
    df = m.per_field_auc([0, 1, 1, 0, 0, 1], [0.2, 0.6, 0.3, 0.5, 0.1, 0.9], ["x", "x", "y", "y", "y", "z"])
    assert list(df.columns) == ["value", "impressions", "positives", "auc"]
    assert df["value"].tolist() == ["y", "x", "z"]
    assert df["impressions"].tolist() == [3, 2, 1]
    assert df["positives"].tolist() == [1, 1, 1]
    assert df["auc"].iloc[:2].tolist() == pytest.approx([0.5, 1.0])
    assert math.isnan(df["auc"].iloc[2])


# ----------------------------------------------------------------------------- against loops


def test_auc_and_logloss_match_loops(data):
    y, p, *_ = data
    assert m.auc(y, p) == pytest.approx(loop_auc(y, p), abs=1e-12)
    assert m.logloss(y, p) == pytest.approx(loop_logloss(y, p), rel=1e-10)
    w = np.where(np.arange(len(y)) % 2 == 0, 1.0, 0.5)
    ref = np.sum(w * [loop_logloss([a], [b]) for a, b in zip(y, p, strict=True)]) / w.sum()
    assert m.logloss(y, p, w) == pytest.approx(ref, rel=1e-10)


def test_grouped_metrics_match_loops(data):
    y, p, users, field, _ = data
    assert m.gauc(y, p, users) == pytest.approx(loop_gauc(y, p, users), abs=1e-12)
    assert m.field_rce(y, p, field) == pytest.approx(loop_field_rce(y, p, field), rel=1e-10)
    for bins in (3, 10):
        assert m.ece(y, p, bins) == pytest.approx(loop_ece_parts(y, p, bins) / len(y), rel=1e-10)
        assert m.field_ece(y, p, field, bins) == pytest.approx(loop_field_ece(y, p, field, bins), rel=1e-10)
    df = m.per_field_auc(y, p, field)
    for row in df.itertuples():
        rows = field == row.value
        assert row.impressions == rows.sum() and row.positives == y[rows].sum()
        if 0 < row.positives < row.impressions:
            assert row.auc == pytest.approx(loop_auc(y[rows], p[rows]), abs=1e-12)
        else:
            assert math.isnan(row.auc)


# ----------------------------------------------------------------------------- calibration behaviour


def test_ece_and_pcoc_on_synthetic_calibration():
    rng = np.random.default_rng(3)
    p = rng.beta(1, 15, 200_000)
    y = (rng.random(p.size) < p).astype(int)
    assert m.ece(y, p) < 0.003
    assert m.ece(y, p * 1.5) > 0.02
    assert m.pcoc(y, p) == pytest.approx(1.0, abs=0.02)
    assert m.pcoc(y, np.clip(p * 2, 0, 1)) == pytest.approx(2.0, abs=0.04)


def test_summarize_keys_and_oracle(data):
    y, p, users, field, true_p = data
    out = m.summarize(y, p, field={"scenario": field}, users=users, true_p=true_p)
    assert list(out) == [
        "AUC", "LogLoss", "GAUC", "PCOC", "ECE", "Field-RCE[scenario]", "Field-ECE[scenario]",
        "Oracle AUC", "Oracle LogLoss", "MAE to truth", "RMSE to truth",
    ]  # fmt: skip
    assert out["Oracle AUC"] > out["AUC"] and out["Oracle LogLoss"] < out["LogLoss"]
    assert out["MAE to truth"] == pytest.approx(np.mean(np.abs(p - true_p)))
    assert out["RMSE to truth"] == pytest.approx(np.sqrt(np.mean((p - true_p) ** 2)))
    plain = m.summarize(y, p, field=field)
    assert list(plain) == ["AUC", "LogLoss", "PCOC", "ECE", "Field-RCE", "Field-ECE"]
    assert plain["Field-RCE"] == out["Field-RCE[scenario]"]


def test_edge_cases_raise_clear_errors():
    with pytest.raises(ValueError, match="auc: got empty input"):
        m.auc([], [])
    with pytest.raises(ValueError, match="same length"):
        m.logloss([0, 1], [0.5])
    with pytest.raises(ValueError, match="binary labels"):
        m.pcoc([0, 2], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        m.ece([0, 1], [0.5, np.nan])
    with pytest.raises(ValueError, match="`groups` must have the length"):
        m.gauc([0, 1], [0.5, 0.5], ["a"])
    with pytest.raises(ValueError, match="`bins` must be a positive integer"):
        m.ece([0, 1], [0.5, 0.5], bins=0)
    assert math.isnan(m.auc([1, 1], [0.2, 0.3]))
    assert math.isnan(m.pcoc([0, 0], [0.2, 0.3]))
    assert m.auc(np.array([[0], [1]]), np.array([[0.1], [0.9]])) == 1.0  # Keras-style (n, 1) columns


def test_metrics_table_text_and_markdown():
    rows = {"dcn": {"AUC": 0.71234, "N": 10}, "oracle-model": {"AUC": 0.8, "LogLoss": float("nan")}}
    text = m.metrics_table(rows).splitlines()
    assert text[0].split() == ["model", "AUC", "N", "LogLoss"]
    assert text[2].split() == ["dcn", "0.7123", "10", "-"]
    assert text[3].split() == ["oracle-model", "0.8000", "-", "nan"]
    assert len({len(line) for line in text}) == 1  # fixed width
    md = m.metrics_table(rows, markdown=True).splitlines()
    assert md[0] == "| model | AUC | N | LogLoss |" and md[1].startswith("| --- | ---:")
    with pytest.raises(ValueError, match="rows"):
        m.metrics_table({})


def test_bootstrap_ci_covers_mean_and_chunks():
    rng = np.random.default_rng(0)
    clicks = (rng.random(20_000) < 0.05).astype(float)
    ci = m.bootstrap_ci(lambda idx: clicks[idx].mean(axis=1), clicks.size, np.random.default_rng(1))
    se = clicks.std() / np.sqrt(clicks.size)
    assert ci.estimate == pytest.approx(clicks.mean())
    assert ci.low < ci.estimate < ci.high
    assert ci.high - ci.low == pytest.approx(2 * 1.96 * se, rel=0.25)
    # Small chunks give the same draws as one big chunk.
    chunked = m.bootstrap_ci(
        lambda idx: clicks[idx].mean(axis=1), clicks.size, np.random.default_rng(1), max_cells=30_000
    )
    assert chunked == pytest.approx(ci)
    with pytest.raises(ValueError, match="one value per resample"):
        m.bootstrap_ci(lambda idx: clicks[idx].mean(), clicks.size, rng)


def test_module_does_not_import_tensorflow():
    code = "import tfads.metrics, tfads.plots, sys; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
