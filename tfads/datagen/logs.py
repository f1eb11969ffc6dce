"""Click and conversion events of ``tfads datagen``: sampling, delays, late events and duplicate clicks.

Every event row carries ``reason``: empty for a valid event, else the dead-letter code the Beam job
must give it (``late_click``, ``duplicate_click``, ``late_conversion``, ``conversion_without_click``),
and ``corruptible``: whether the corrupter may break that line without side effects on other lines
(a click whose impression has no conversion and no duplicate, a conversion that is not late).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

LATE_CLICK_SHARE = 0.01  # clicks arriving after the click window
DUPLICATE_CLICK_SHARE = 0.015  # valid clicks logged twice
MISSING_VALUE_SHARE = 0.05  # conversions logged without a value
VIEW_THROUGH_SHARE = 0.0005  # impressions without a click that still log a conversion
CLICK_DELAY_MEDIAN_S, CLICK_DELAY_SIGMA = 20.0, 1.2
CONVERSION_DELAY_MEDIAN_S, CONVERSION_DELAY_SIGMA = 3 * 3600.0, 1.6
DUPLICATE_MAX_GAP_S = 30
MARGIN_S = 120  # no event lands within this many seconds of a window's edge: late or not is unambiguous


@dataclass
class Events:
    """One day's impressions' events: which impressions any event line refers to, and the event tables
    (columns: key, timestamp, [value,] reason, corruptible; value NaN = not logged)."""

    referenced: np.ndarray  # bool per impression: some click or conversion line carries its trace_id
    clicks: pd.DataFrame
    conversions: pd.DataFrame


def _lognormal_s(rng: np.random.Generator, median: float, sigma: float, n: int) -> np.ndarray:
    return np.round(np.exp(rng.normal(np.log(median), sigma, n))).astype(np.int64)


def _order_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """Conversion values (lognormal, median 30, cents); a share is NaN: logged without a value."""
    value = np.round(np.exp(rng.normal(np.log(30.0), 1.0, n)), 2)
    value[rng.random(n) < MISSING_VALUE_SHARE] = np.nan
    return value


def make_events(
    rng: np.random.Generator,
    trace_id: np.ndarray,
    ts: np.ndarray,
    p_ctr: np.ndarray,
    p_cvr: np.ndarray,
    click_window_s: int,
    conversion_window_s: int,
    key: str = "trace_id",
    timestamp: str = "ts",
) -> Events:
    """Sample clicks from ``p_ctr`` and post-click conversions from ``p_cvr`` with realistic delays.

    Clicks follow their impression by seconds to minutes (a share arrive after ``click_window_s``);
    a share of valid clicks is logged twice a few seconds apart; conversions follow the click with a
    lognormal delay (median hours), some beyond ``conversion_window_s``. Late clicks get no conversion;
    a few impressions without a click log a (view-through) conversion anyway.
    """
    rows = np.flatnonzero(rng.random(len(ts)) < p_ctr)
    k = len(rows)
    late = rng.random(k) < LATE_CLICK_SHARE
    delay = np.clip(
        _lognormal_s(rng, CLICK_DELAY_MEDIAN_S, CLICK_DELAY_SIGMA, k),
        1,
        click_window_s - MARGIN_S - DUPLICATE_MAX_GAP_S,
    )
    late_delay = rng.integers(click_window_s + MARGIN_S, click_window_s + 6 * 3600, k)
    click_ts = ts[rows] + np.where(late, late_delay, delay)
    dup = ~late & (rng.random(k) < DUPLICATE_CLICK_SHARE)
    converts = ~late & (rng.random(k) < p_cvr[rows])

    conv_delay = np.maximum(_lognormal_s(rng, CONVERSION_DELAY_MEDIAN_S, CONVERSION_DELAY_SIGMA, k), 5)
    near_edge = np.abs(conv_delay - conversion_window_s) < MARGIN_S
    conv_delay = np.where(near_edge, conversion_window_s + 2 * MARGIN_S, conv_delay)
    conv_late = conv_delay > conversion_window_s
    referenced = np.zeros(len(ts), bool)
    referenced[rows] = True
    view = np.flatnonzero(~referenced & (rng.random(len(ts)) < VIEW_THROUGH_SHARE))
    referenced[view] = True
    view_delay = np.clip(_lognormal_s(rng, CONVERSION_DELAY_MEDIAN_S, 1.0, len(view)), 5, conversion_window_s)

    clicks = pd.concat(
        [
            pd.DataFrame(
                {
                    key: trace_id[rows],
                    timestamp: click_ts,
                    "reason": np.where(late, "late_click", ""),
                    "corruptible": ~late & ~dup & ~converts,
                }
            ),
            pd.DataFrame(
                {
                    key: trace_id[rows][dup],
                    timestamp: click_ts[dup] + rng.integers(1, DUPLICATE_MAX_GAP_S + 1, int(dup.sum())),
                    "reason": "duplicate_click",
                    "corruptible": False,
                }
            ),
        ],
        ignore_index=True,
    )
    conversions = pd.DataFrame(
        {
            key: np.concatenate([trace_id[rows][converts], trace_id[view]]),
            timestamp: np.concatenate([click_ts[converts] + conv_delay[converts], ts[view] + view_delay]),
            "value": _order_values(rng, int(converts.sum()) + len(view)),
            "reason": np.concatenate(
                [np.where(conv_late[converts], "late_conversion", ""), np.full(len(view), "conversion_without_click")]
            ),
            "corruptible": np.concatenate([~conv_late[converts], np.zeros(len(view), bool)]),
        }
    )
    return Events(referenced, clicks, conversions)
