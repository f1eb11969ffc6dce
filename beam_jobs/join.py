"""Join one trace_id bucket: dedupe events, attribute clicks and conversions, label the impressions.

Rules (all events of a trace_id share a bucket, so each bucket is joined on its own):
- impressions: the first occurrence of a trace_id (file order) is kept, repeats -> ``duplicate_impression``;
- clicks: no impression -> ``orphan_click``; ``click.ts - impression.ts`` outside [0, click_window_s] ->
  ``late_click``; of the attributed clicks the earliest (ts, file order) counts, the rest -> ``duplicate_click``;
- conversions: no impression -> ``orphan_conversion``; no attributed click -> ``conversion_without_click``;
  ``conversion.ts - click.ts`` outside [0, conversion_window_s] -> ``late_conversion``; repeats ->
  ``duplicate_conversion``.
Labels: ``click`` = an attributed click exists, ``conversion`` = an attributed conversion exists (so
conversion implies click). Feed samples (cold start) become extra examples, see ``feed_examples``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd

from beam_jobs.parse import DTYPES, LINE, RAW, dead_letter, empty_rows, log_columns
from tfads.schema import Schema

FILE = "_file"  # index of the event's source file in the job's input list
DAY = "_day"  # YYYY-MM-DD of the example's ts (UTC)
ORDER = [FILE, LINE]
# Values given to impression features a feed sample does not carry (documented in BUILD.md).
FEED_DEFAULTS = {"string": "", "int": -1, "float": 0.0}


@dataclass
class Joined:
    """Labelled examples of one bucket (ad and feed samples) and the events dead-lettered by the join."""

    examples: pd.DataFrame
    dead: list[dict]


def join_bucket(frames: dict[str, pd.DataFrame], schema: Schema, files: list[str], *, cold_start: bool) -> Joined:
    """Dedupe, attribute and label one bucket's events (``frames`` maps log name -> parsed rows)."""
    key, ts = schema.key, schema.timestamp
    empty = {log: _empty_like(schema, log) for log in ("impressions", "clicks", "conversions", "feed")}
    imps = frames.get("impressions", empty["impressions"]).sort_values(ORDER, kind="stable")
    clicks = frames.get("clicks", empty["clicks"])
    convs = frames.get("conversions", empty["conversions"])
    dead: list[dict] = []

    dup = imps.duplicated(key, keep="first").to_numpy()
    dead += _dead_reserialised(imps[dup], "duplicate_impression", "impressions", files, schema, "repeated trace_id")
    imps = imps[~dup]
    imp_ts = pd.Series(imps[ts].to_numpy(), index=imps[key].to_numpy())

    win = schema.attribution
    kept_clicks, click_dead = _attribute(
        clicks, imp_ts, key, ts, win.click_window_s, files, log="clicks",
        orphan=("orphan_click", "no impression with this trace_id"),
        late="late_click", duplicate="duplicate_click", anchor="impression",
    )
    dead += click_dead
    click_ts = pd.Series(kept_clicks[ts].to_numpy(), index=kept_clicks[key].to_numpy())
    convs = convs.assign(_has_imp=convs[key].isin(imp_ts.index))
    orphan = ~convs["_has_imp"].to_numpy()
    dead += _dead_rows(convs[orphan], "orphan_conversion", "no impression with this trace_id", "conversions", files)
    convs = convs[~orphan].drop(columns="_has_imp")
    kept_convs, conv_dead = _attribute(
        convs, click_ts, key, ts, win.conversion_window_s, files, log="conversions",
        orphan=("conversion_without_click", "the impression has no attributed click"),
        late="late_conversion", duplicate="duplicate_conversion", anchor="click",
    )
    dead += conv_dead

    ads = imps.drop(columns=[c for c in (RAW,) if c in imps])
    ads = ads.assign(
        click=ads[key].isin(kept_clicks[key]).astype(np.int64),
        conversion=ads[key].isin(kept_convs[key]).astype(np.int64),
        **{schema.weight_feature: 1.0, schema.source_feature: "ad"},
    )
    parts = [ads]
    if cold_start:
        feed = frames.get("feed", empty["feed"]).sort_values(ORDER, kind="stable")
        fdup = feed.duplicated(key, keep="first").to_numpy()
        dead += _dead_reserialised(feed[fdup], "duplicate_impression", "feed", files, schema, "repeated trace_id")
        parts.append(feed_examples(feed[~fdup], schema))
    examples = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
    for name, d in schema.derived.items():
        joined = examples[d.concat[0]].astype(str)
        for col in d.concat[1:]:
            joined = joined + d.separator + examples[col].astype(str)
        examples[name] = joined
    examples[DAY] = day_strings(examples[ts].to_numpy())
    return Joined(examples, dead)


def feed_examples(feed: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """Organic-feed impressions as examples: label ``click`` = ``clicked``, no conversion, feed weight and
    source; impression fields the feed does not carry get ``FEED_DEFAULTS`` by type."""
    n = len(feed)
    out = {}
    for name, f in schema.fields.items():
        if name in feed:
            out[name] = feed[name].to_numpy()
        else:
            out[name] = np.full(n, FEED_DEFAULTS[f.type], dtype=DTYPES[f.type])
    frame = pd.DataFrame(out)
    frame[FILE] = feed[FILE].to_numpy()
    frame[LINE] = feed[LINE].to_numpy()
    frame["click"] = feed["clicked"].to_numpy().astype(np.int64)
    frame["conversion"] = np.zeros(n, dtype=np.int64)
    frame[schema.weight_feature] = float(schema.cold_start.feed_weight)
    frame[schema.source_feature] = "feed"
    return frame


def _attribute(
    events: pd.DataFrame, anchor_ts: pd.Series, key: str, ts: str, window: int, files: list[str], *,
    log: str, orphan: tuple[str, str], late: str, duplicate: str, anchor: str,
) -> tuple[pd.DataFrame, list[dict]]:
    """Split ``events`` into the attributed ones (one per trace_id) and dead letters."""
    events = events.sort_values([ts, *ORDER], kind="stable")
    base = events[key].map(anchor_ts)
    no_anchor = base.isna().to_numpy()
    delay = (events[ts] - base).to_numpy()
    out_of_window = ~no_anchor & ((delay < 0) | (delay > window))
    dead = _dead_rows(events[no_anchor], orphan[0], orphan[1], log, files)
    late_rows = events[out_of_window]
    late_delay = delay[out_of_window]
    dead += [
        dead_letter(late, f"{int(d)} s after its {anchor} (window [0, {window}] s)", log, files[f], int(ln), raw)
        for d, f, ln, raw in zip(late_delay, late_rows[FILE], late_rows[LINE], late_rows[RAW], strict=True)
    ]
    attributed = events[~no_anchor & ~out_of_window]
    dup = attributed.duplicated(key, keep="first").to_numpy()
    dead += _dead_rows(attributed[dup], duplicate, f"trace_id already has an attributed {log[:-1]}", log, files)
    return attributed[~dup], dead


def _dead_rows(rows: pd.DataFrame, reason: str, detail: str, log: str, files: list[str]) -> list[dict]:
    return [
        dead_letter(reason, detail, log, files[f], int(ln), raw)
        for f, ln, raw in zip(rows[FILE], rows[LINE], rows[RAW], strict=True)
    ]


def _dead_reserialised(
    rows: pd.DataFrame, reason: str, log: str, files: list[str], schema: Schema, detail: str
) -> list[dict]:
    """Dead letters for impression/feed rows, whose raw text is not kept: ``raw`` is the parsed event re-serialised."""
    fields = [c for c in rows.columns if not c.startswith("_")]
    records = rows[fields].to_dict("records")
    return [
        dead_letter(reason, detail, log, files[f], int(ln), orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY))
        for r, f, ln in zip(records, rows[FILE], rows[LINE], strict=True)
    ]


def day_strings(ts: np.ndarray) -> np.ndarray:
    """UTC day (YYYY-MM-DD) of each Unix timestamp, computed once per distinct day."""
    days = np.asarray(ts, dtype=np.int64) // 86400
    uniq, inverse = np.unique(days, return_inverse=True)
    labels = np.array([str(np.datetime64(int(d), "D")) for d in uniq], dtype=object)
    return labels[inverse]


def _empty_like(schema: Schema, log: str) -> pd.DataFrame:
    frame = empty_rows(log_columns(schema, log), keep_raw=True)
    frame[FILE] = pd.Series([], dtype=np.int64)
    return frame
