"""benchmarks.conversion_delay: pending labels at a cut, on a frame with known event times."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.conversion_delay import DAY_S, day_start, expected_share, measure, pending_at

T0 = day_start("2026-01-01")
WINDOW = 3 * DAY_S


def _examples() -> pd.DataFrame:
    """Four days of 4 impressions each at noon: 2 clicked, 1 of them converting 13 h after the click (so the
    conversion of each day lands on the next day, after a cut at the day's end)."""
    rows = []
    for d in range(4):
        noon = T0 + d * DAY_S + 12 * 3600
        for i in range(4):
            click = noon + 60 if i < 2 else np.nan
            conversion = click + 13 * 3600 if i == 0 else np.nan
            rows.append({"key": f"{d}-{i}", "ts": noon, "day": f"2026-01-0{d + 1}", "click": int(i < 2),
                         "conversion": int(i == 0), "click_ts": click, "conversion_ts": conversion})
    return pd.DataFrame(rows)


def test_pending_at_counts_the_labels_logged_after_the_cut():
    examples = _examples()
    last = examples[examples["day"] == "2026-01-04"]
    got = pending_at(last, T0 + 4 * DAY_S, WINDOW)
    assert (got["clicks"], got["conversions"], got["pending"], got["clicks pending"]) == (2, 1, 1, 0)
    assert (got["share pending"], got["CVR at cut"], got["CVR complete"]) == (1.0, 0.0, 0.5)
    assert pending_at(last, T0 + 5 * DAY_S, WINDOW)["pending"] == 0  # a day later the label has arrived


def test_measure_reports_each_cut_and_the_split_before_it():
    splits = {"train": ["2026-01-01"], "valid": ["2026-01-02"], "calib": ["2026-01-03"], "test": ["2026-01-04"]}
    result = measure(_examples(), splits, WINDOW)
    assert list(result["cuts"]) == ["end of train", "end of valid", "end of calib", "end of test"]
    test = result["cuts"]["end of test"]
    assert test["cut"].startswith("2026-01-05T00:00")
    assert [r["day"] for r in test["rows"]] == ["2026-01-04", "2026-01-03", "2026-01-02", "all before the cut"]
    assert [r["pending"] for r in test["rows"]] == [1, 0, 0, 1]
    assert test["rows"][-1]["share pending"] == pytest.approx(1 / 4)
    assert len(result["cuts"]["end of train"]["rows"]) == 2  # one day before the first cut, then the total
    assert result["by_age_at_train_cut"]["12-24 h"] == {"conversions": 1, "pending": 1, "share pending": 1.0}


def test_expected_share_follows_the_delay_law():
    cut = T0 + DAY_S
    assert expected_share(np.array([cut + 10.0]), cut, WINDOW) == 1.0  # a click after the cut: all pending
    assert expected_share(np.array([cut - WINDOW - 10.0]), cut, WINDOW) == 0.0  # the window has closed
    ages = np.array([600.0, 3 * 3600.0, 20 * 3600.0])
    shares = [expected_share(np.array([cut - a]), cut, WINDOW) for a in ages]
    assert shares == sorted(shares, reverse=True) and shares[1] == pytest.approx(0.5, abs=0.02)  # median 3 h
