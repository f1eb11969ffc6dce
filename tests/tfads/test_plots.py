"""Every plot writes a non-empty PNG of the expected pixel size."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from tfads import metrics, plots


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    n = 20_000
    field = np.array([f"s{i}" for i in rng.zipf(1.5, n) % 30])
    p = rng.beta(1, 12, n)
    y = (rng.random(n) < p).astype(int)
    return y, p, field


def read_png(path):
    assert path.exists() and path.stat().st_size > 1000
    image = mpimg.imread(path)
    assert image.std() > 0  # something was drawn
    return image.shape[:2]


def test_reliability_diagram(tmp_path, data):
    y, p, _ = data
    path = plots.reliability_diagram(
        {"model": (y, p), "over": (y, np.clip(p * 1.5, 0, 1))}, tmp_path / "sub" / "rel.png", figsize=(5, 6)
    )
    assert path == tmp_path / "sub" / "rel.png"
    assert read_png(path) == (600, 500)


def test_reliability_grid_head_and_tail(tmp_path, data):
    y, p, field = data
    values = plots.head_and_tail_values(field, k=3, min_count=50)
    counts = {v: (field == v).sum() for v in values}
    assert len(values) == 6 and len(set(values)) == 6
    assert all(c >= 50 for c in counts.values())
    assert counts[values[0]] == max((field == v).sum() for v in set(field))
    path = plots.reliability_grid(y, {"a": p, "b": p * 0.8}, field, values, tmp_path / "grid.png", ncols=3)
    assert read_png(path) == (int(round((2.6 * 2 + 0.4) * plots.DPI)), 3 * 3 * plots.DPI)
    with pytest.raises(ValueError, match="has no rows"):
        plots.reliability_grid(y, {"a": p}, field, ["missing"], tmp_path / "x.png")


def test_per_field_auc_vs_traffic(tmp_path, data):
    y, p, field = data
    frames = {"a": metrics.per_field_auc(y, p, field), "b": metrics.per_field_auc(y, p**1.2, field)}
    path = plots.per_field_auc_vs_traffic(frames, tmp_path / "auc.png", figsize=(6, 4))
    assert read_png(path) == (400, 600)


def test_sparsity_map(tmp_path):
    matrix = np.random.default_rng(0).random((3, 120))
    path = plots.sparsity_map(matrix, ["l0", "l1", "l2"], [f"s{i}" for i in range(120)], tmp_path / "sp.png")
    assert read_png(path) == (400, 1000)
    with pytest.raises(ValueError, match="does not match"):
        plots.sparsity_map(matrix, ["l0"], ["s0"], tmp_path / "bad.png")


def test_metric_over_time_and_bar_with_ci(tmp_path):
    days = np.arange(7)
    series = {"online": (days, 0.7 + 0.01 * days), "frozen": (days, np.full(7, 0.7))}
    path = plots.metric_over_time(series, tmp_path / "time.png", ylabel="AUC", title="ODL")
    assert read_png(path) == (450, 700)
    ci = metrics.ConfidenceInterval(0.05, 0.048, 0.052)
    path = plots.bar_with_ci({"control": ci, "treatment": (0.055, 0.053, 0.057)}, tmp_path / "ab.png", "CTR")
    assert read_png(path) == (450, 600)
    with pytest.raises(ValueError, match="low <= estimate <= high"):
        plots.bar_with_ci({"bad": (0.5, 0.6, 0.7)}, tmp_path / "bad.png", "CTR")
