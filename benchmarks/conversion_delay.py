"""Conversion delay at the split boundaries: the labels a model trained (or evaluated) at a cut would not have yet.

Conversions arrive hours to days after the click (the generator: lognormal, median 3 h); the Beam job attributes
a conversion to its click within ``attribution.conversion_window_s`` (3 days) whatever the split, reading every
log day, so the train split's last days carry conversions that were logged during the valid, calib or test
days. A model trained at the end of the train split in production would see those impressions as
non-converting. This benchmark measures that share at each cut, and at the end of the logs (the generator logs
no event after its last day, so the test day's own labels are cut short the same way).

It generates ``--days`` days plus ``--tail-days`` (default: the window in days) so every one of the ``--days``
days has its complete labels, builds them with the Beam job (the labels are the job's own), reads each example's
click and conversion time from the raw logs and splits the first ``--days`` days as the schema's ``splits``
would. Per cut: for each of the days before it, the conversions (complete, as the Beam job labels them), those
logged at or after the cut (pending) and their share, the CVR as seen at the cut vs complete, and the clicks
pending (click window 1 h). Then the pending share by the impression's age at the train cut, and the conversions
the window itself drops (``late_conversion`` dead letters). Writes ``conversion_delay.{json,md}``.

    python -m benchmarks.conversion_delay                      # 10 days x 100k (+ 4 tail days): ~2 min
    python -m benchmarks.conversion_delay --days 6 --impressions-per-day 10000 --results-dir /tmp/cd
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import math
import os
from typing import Any

import numpy as np
import pandas as pd

import tfads  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from benchmarks.model_quality import prepare_data
from benchmarks.results import add_results_argument, publish
from tfads.metrics import metrics_table

DAY_S = 86400
AGE_BINS_H = (0, 1, 3, 6, 12, 24, 48, 72)  # impression age at the cut, hours
LABEL_KEYS = ("day", "split", "days before cut")  # a row's label in the table, not a column


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--days", type=int, default=10, help="days of data (valid, calib and test take the last 3)")
    p.add_argument("--impressions-per-day", type=int, default=100_000)
    p.add_argument("--tail-days", type=int, default=None,
                   help="extra days generated after the data so its labels are complete (default: the window)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_out/conversion_delay", help="logs and Beam output (cached)")
    add_results_argument(p)
    args = p.parse_args(argv)
    if args.days < 4:
        p.error(f"--days {args.days}: need at least 4 (valid, calib and test take one day each)")
    if args.tail_days is not None and args.tail_days < 0:
        p.error(f"--tail-days {args.tail_days}: must be >= 0")
    return args


def first_event_ts(logs: str, log: str, key: str, ts: str) -> pd.Series:
    """Earliest event time per trace_id in one raw event log (``clicks``/``conversions``; clean generator logs)."""
    files = sorted(glob.glob(os.path.join(logs, log, "*", "*.jsonl.gz")))
    frames = [pd.read_json(f, lines=True, dtype={key: str}) for f in files]
    events = pd.concat([f for f in frames if len(f)], ignore_index=True)
    return events.groupby(key)[ts].min()


def labelled_examples(manifest: Any, days: list[str]) -> pd.DataFrame:
    """(key, ts, click, conversion, day) of the Beam job's ad examples of ``days``: the labels as attributed."""
    import tensorflow as tf

    key, ts, roles = manifest.data["key"], manifest.data["timestamp"], manifest.data["label_roles"]
    scalar = tf.io.FixedLenFeature([], tf.int64)
    spec = {key: tf.io.FixedLenFeature([], tf.string), ts: scalar, roles["click"]: scalar, roles["conversion"]: scalar}
    frames = []
    for day in days:
        files = [manifest.resolve(f) for f in manifest.data["days"][day]["files"]]
        records = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(8192)
        parts = [{k: v.numpy() for k, v in tf.io.parse_example(batch, spec).items()} for batch in records]
        frame = pd.DataFrame({k: np.concatenate([p[k] for p in parts]) for k in spec})
        frames.append(frame.assign(day=day))
    frame = pd.concat(frames, ignore_index=True)
    frame[key] = frame[key].str.decode("utf-8")
    return frame.rename(columns={roles["click"]: "click", roles["conversion"]: "conversion", key: "key", ts: "ts"})


def with_event_times(examples: pd.DataFrame, logs: str, key: str, ts: str) -> pd.DataFrame:
    """``examples`` plus ``click_ts`` / ``conversion_ts`` of their attributed click and conversion (NaN without).

    Raises:
        RuntimeError: a labelled click or conversion has no event line, or one before its impression.
    """
    out = examples.copy()
    for role, log in (("click", "clicks"), ("conversion", "conversions")):
        first = first_event_ts(logs, log, key, ts)
        when = out["key"].map(first).where(out[role] == 1)
        bad = (out[role] == 1) & ~(when >= out["ts"])
        if bad.any():
            raise RuntimeError(f"{int(bad.sum())} labelled {role}s without an event line at or after the impression")
        out[f"{role}_ts"] = when
    return out


def expected_share(click_ts: np.ndarray, cut: int, window_s: int) -> float:
    """The pending share the generator's delay law predicts for conversions of clicks at ``click_ts``: the mean over
    the clicks of P(delay >= cut - click | delay <= window), delay lognormal (``tfads.datagen.logs``)."""
    from scipy.stats import norm

    from tfads.datagen.logs import CONVERSION_DELAY_MEDIAN_S as MEDIAN, CONVERSION_DELAY_SIGMA as SIGMA

    def beyond(seconds: np.ndarray) -> np.ndarray:
        return norm.sf((np.log(np.maximum(seconds, 1e-9)) - np.log(MEDIAN)) / SIGMA)

    age = cut - np.asarray(click_ts, dtype=np.float64)
    lost = beyond(np.array([float(window_s)]))[0]
    share = np.where(age <= 0, 1.0, np.clip((beyond(age) - lost) / (1 - lost), 0, 1))
    return float(share.mean()) if share.size else float("nan")


def pending_at(examples: pd.DataFrame, cut: int, window_s: int) -> dict[str, float]:
    """Of the impressions in ``examples`` (all before ``cut``): clicks, conversions, those logged at or after the
    cut (pending), the pending share beside the generator's expectation (:func:`expected_share`), and the CVR
    (conversions per click) as seen at the cut vs complete."""
    clicks, conversions = int(examples["click"].sum()), int(examples["conversion"].sum())
    late_clicks = int((examples["click_ts"] >= cut).sum())
    pending = int((examples["conversion_ts"] >= cut).sum())
    seen_clicks = clicks - late_clicks
    return {
        "clicks": clicks,
        "clicks pending": late_clicks,
        "conversions": conversions,
        "pending": pending,
        "share pending": pending / conversions if conversions else float("nan"),
        "expected share": expected_share(examples["click_ts"].dropna().to_numpy(), cut, window_s),
        "CVR at cut": (conversions - pending) / seen_clicks if seen_clicks else float("nan"),
        "CVR complete": conversions / clicks if clicks else float("nan"),
    }


def pending_by_age(examples: pd.DataFrame, cut: int) -> dict[str, dict[str, float]]:
    """Pending share of conversions by the impression's age at ``cut`` (``AGE_BINS_H``; older: none pending)."""
    age_h = (cut - examples["ts"]) / 3600.0
    bins = pd.cut(age_h, [*AGE_BINS_H, np.inf], right=False, labels=[
        *(f"{a}-{b} h" for a, b in zip(AGE_BINS_H[:-1], AGE_BINS_H[1:], strict=True)), f">= {AGE_BINS_H[-1]} h"])
    out = {}
    for label, rows in examples.groupby(bins, observed=False):
        conversions = int(rows["conversion"].sum())
        pending = int((rows["conversion_ts"] >= cut).sum())
        out[str(label)] = {"conversions": conversions, "pending": pending,
                           "share pending": pending / conversions if conversions else float("nan")}
    return out


def day_start(day: str) -> int:
    """Unix seconds of a UTC day's first second."""
    return int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp())


def measure(examples: pd.DataFrame, splits: dict[str, list[str]], window_s: int) -> dict[str, Any]:
    """Per cut (the end of train, valid, calib and test): the days before it within the window one by one, then
    every day before it together; and the pending share by age at the train cut."""
    lookback = math.ceil(window_s / DAY_S)
    order = [s for s in ("train", "valid", "calib", "test") if splits.get(s)]
    days = [d for s in order for d in splits[s]]
    split_of = {d: s for s in order for d in splits[s]}
    cuts = {}
    for split in order:
        end = days.index(splits[split][-1]) + 1
        cut = day_start(days[end - 1]) + DAY_S
        rows = []
        for back in range(1, min(lookback, end) + 1):
            day = days[end - back]
            rows.append({"day": day, "split": split_of[day], "days before cut": back,
                         **pending_at(examples[examples["day"] == day], cut, window_s)})
        rows.append({"day": "all before the cut", "split": "", "days before cut": None,
                     **pending_at(examples[examples["day"].isin(days[:end])], cut, window_s)})
        cuts[f"end of {split}"] = {"cut": dt.datetime.fromtimestamp(cut, dt.UTC).isoformat(), "rows": rows}
    train_cut = day_start(splits["train"][-1]) + DAY_S
    train_rows = examples[examples["day"].isin(splits["train"])]
    return {"cuts": cuts, "by_age_at_train_cut": pending_by_age(train_rows, train_cut)}


def tables(result: dict[str, Any]) -> str:
    """The markdown summary: one row per (cut, day), then the share by age at the train cut."""
    rows = {}
    for name, cut in result["cuts"].items():
        for row in cut["rows"]:
            where = f" ({row['split']}, -{row['days before cut']} d)" if row["split"] else ""
            rows[f"{name}: {row['day']}{where}"] = {k: v for k, v in row.items() if k not in LABEL_KEYS}
    window = result["window"]
    return "\n\n".join([
        metrics_table(rows, markdown=True).replace("| model |", "| cut: day |", 1),
        "Above: conversions of the days before each cut that are logged at or after it (pending), labels a model "
        "trained or evaluated at the cut would not have; `end of test` is the end of the logs.",
        "Pending share by the impression's age at the end of train:",
        metrics_table(result["by_age_at_train_cut"], markdown=True).replace("| model |", "| age at the cut |", 1),
        f"Beyond the {window['conversion_window_s'] // 3600} h window (dead-lettered `late_conversion`, lost at any "
        f"cut): {window['late_conversion']} of {window['late_conversion'] + window['attributed']} post-click "
        f"conversions ({window['share lost']:.4f}).",
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from beam_jobs.options import split_days
    from tfads.core.manifest import load_manifest
    from tfads.core.schema import load_schema

    schema = load_schema()
    window_s = schema.attribution.conversion_window_s
    tail = args.tail_days if args.tail_days is not None else math.ceil((window_s + schema.attribution.click_window_s)
                                                                      / DAY_S)
    logs, manifest_path = prepare_data(os.path.abspath(args.out), args.days + tail, args.impressions_per_day,
                                       args.seed)
    manifest = load_manifest(manifest_path)
    all_days = sorted(manifest.data["days"])
    splits = split_days(all_days[: args.days], schema.splits)
    examples = with_event_times(labelled_examples(manifest, all_days[: args.days]), logs, schema.key, schema.timestamp)
    result = measure(examples, splits, window_s)
    by_reason = manifest.data["dead_letter"]["by_reason"]
    late, attributed = int(by_reason.get("late_conversion", 0)), int(sum(s["conversions"] for s in
                                                                         manifest.data["splits"].values()))
    result["window"] = {"conversion_window_s": window_s, "late_conversion": late, "attributed": attributed,
                        "share lost": late / (late + attributed) if late + attributed else float("nan"),
                        "note": f"over all {len(all_days)} generated days, tail included"}
    result["data"] = {"days": args.days, "tail_days": tail, "impressions_per_day": args.impressions_per_day,
                      "seed": args.seed, "splits": splits}
    table = tables(result)
    print(table)
    publish("conversion_delay", result, table, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
