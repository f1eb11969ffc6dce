"""Join one (day, bucket) unit: dedupe impressions, attribute clicks and conversions, label the impressions.

Rules:
- impressions: the first occurrence of a trace_id (file order) within its day is kept, repeats ->
  ``duplicate_impression``;
- clicks: ``click.ts - impression.ts`` outside [0, click_window_s] -> ``late_click``; of the attributed
  clicks the earliest (ts, file order) counts, the rest -> ``duplicate_click``;
- conversions: no attributed click -> ``conversion_without_click``; ``conversion.ts - click.ts`` outside
  [0, conversion_window_s] -> ``late_conversion``; repeats -> ``duplicate_conversion``;
- clicks and conversions no unit claims (no impression with their trace_id) -> ``orphan_click`` /
  ``orphan_conversion`` (``orphans``).
Labels (columns named by the schema's ``labels``): click = an attributed click exists, conversion = an
attributed conversion exists (so conversion implies click; absent for click-only data). Feed samples
(cold start) become extra examples, see ``feed_examples``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd

from beam_jobs.parse import DTYPES, LINE, RAW, TABLE, dead_letter, empty_rows, log_columns
from tfads.core.names import CLICK, CONVERSION
from tfads.core.schema import Schema

FILE = "_file"  # index of the event's source file in the job's input list
DAY = "_day"  # YYYY-MM-DD of the example (the day directory of its impression file)
ORDER = [FILE, LINE]
# With a history in the schema: the attributed click's / conversion's time of each ad example (-1: none).
EVENT_TS = {CLICK: "_click_ts", CONVERSION: "_conversion_ts"}
# Values given to impression features a feed sample does not carry (documented in docs/architecture.md "Data contract").
FEED_DEFAULTS = {"string": "", "int": -1, "float": 0.0}


@dataclass
class Joined:
    """Labelled ad examples of one unit, the events dead-lettered by the join, and the ids
    (``event_ids``) of the click and conversion lines the unit attributed or dead-lettered."""

    examples: pd.DataFrame
    dead: list[dict]
    claimed: np.ndarray


def event_ids(rows: pd.DataFrame) -> np.ndarray:
    """A unique int64 id per event line: file index and line number."""
    return (rows[FILE].to_numpy(np.int64) << 32) | rows[LINE].to_numpy(np.int64)


def join_impressions(
    imps: pd.DataFrame, clicks: pd.DataFrame, convs: pd.DataFrame | None, schema: Schema, files: list[str]
) -> Joined:
    """Dedupe and label ``imps``; ``clicks``/``convs`` may hold events of other units (they are ignored).

    ``convs`` is None for click-only data (the schema has no conversion label)."""
    key, ts = schema.key, schema.timestamp
    imps = imps.sort_values(ORDER, kind="stable")
    dup = imps.duplicated(key, keep="first").to_numpy()
    dead = _dead_reserialised(imps[dup], "duplicate_impression", "impressions", files, f"repeated {key}")
    imps = imps[~dup]
    imp_ts = pd.Series(imps[ts].to_numpy(), index=imps[key].to_numpy())
    clicks = clicks[clicks[key].isin(imp_ts.index).to_numpy()]

    win = schema.attribution
    kept_clicks, click_dead = _attribute(
        clicks, imp_ts, key, ts, win.click_window_s, files, log="clicks",
        no_anchor=("orphan_click", "no impression with this trace_id"),
        late="late_click", duplicate="duplicate_click", anchor="impression",
    )
    ads = imps.drop(columns=[c for c in (RAW,) if c in imps])
    labels = {schema.labels.click: ads[key].isin(kept_clicks[key]).to_numpy().astype(np.int64)}
    dead += click_dead
    claimed = [event_ids(clicks)]
    if convs is not None:
        convs = convs[convs[key].isin(imp_ts.index).to_numpy()]
        click_ts = pd.Series(kept_clicks[ts].to_numpy(), index=kept_clicks[key].to_numpy())
        kept_convs, conv_dead = _attribute(
            convs, click_ts, key, ts, win.conversion_window_s, files, log="conversions",
            no_anchor=("conversion_without_click", "the impression has no attributed click"),
            late="late_conversion", duplicate="duplicate_conversion", anchor="click",
        )
        labels[schema.labels.conversion] = ads[key].isin(kept_convs[key]).to_numpy().astype(np.int64)
        dead += conv_dead
        claimed.append(event_ids(convs))
    if schema.history:  # the event times a history orders by (-1: no event)
        kept = {CLICK: kept_clicks} | ({CONVERSION: kept_convs} if convs is not None else {})
        for role, rows in kept.items():
            when = ads[key].map(pd.Series(rows[ts].to_numpy(), index=rows[key].to_numpy()))
            labels[EVENT_TS[role]] = when.fillna(-1).to_numpy(np.int64)
    ads = ads.assign(**labels, **{schema.weight_feature: 1.0, schema.source_feature: "ad"})
    return Joined(ads.reset_index(drop=True), dead, np.concatenate(claimed))


def orphans(events: dict[str, pd.DataFrame], claimed: np.ndarray, files: list[str]) -> list[dict]:
    """Dead letters for the click and conversion lines no unit claimed."""
    dead: list[dict] = []
    for log, reason in (("clicks", "orphan_click"), ("conversions", "orphan_conversion")):
        if log not in events:
            continue
        rows = events[log]
        lost = rows[~np.isin(event_ids(rows), claimed)]
        dead += _dead_rows(lost, reason, "no impression with this trace_id", log, files)
    return dead


def add_derived(examples: pd.DataFrame, schema: Schema, day: str) -> pd.DataFrame:
    """Add the derived features (e.g. scenario = media|slot) and the day column."""
    for name, d in schema.derived.items():
        joined = examples[d.concat[0]].astype(str)
        for col in d.concat[1:]:
            joined = joined + d.separator + examples[col].astype(str)
        examples[name] = joined.to_numpy(dtype=object)
    examples[DAY] = day
    return examples


def table_examples(rows: pd.DataFrame, schema: Schema, files: list[str]) -> tuple[pd.DataFrame, list[dict]]:
    """Rows of an ``input: table`` as examples (their labels are columns already): ad weight and source; with a
    ``key``, repeated keys after the first (file order) are dead-lettered as ``duplicate_row``."""
    rows = rows.sort_values(ORDER, kind="stable")
    dead: list[dict] = []
    if schema.key is not None:
        dup = rows.duplicated(schema.key, keep="first").to_numpy()
        dead = _dead_reserialised(rows[dup], "duplicate_row", TABLE, files, f"repeated {schema.key}")
        rows = rows[~dup]
    return rows.assign(**{schema.weight_feature: 1.0, schema.source_feature: "ad"}).reset_index(drop=True), dead


def feed_examples(feed: pd.DataFrame, schema: Schema, files: list[str]) -> tuple[pd.DataFrame, list[dict]]:
    """Organic-feed impressions as examples: label ``click`` = the feed's ``cold_start.feed_label``, no
    conversion, feed weight and source; impression fields the feed does not carry get ``FEED_DEFAULTS`` by
    type. Repeated keys are dead-lettered as ``duplicate_impression``."""
    feed = feed.sort_values(ORDER, kind="stable")
    dup = feed.duplicated(schema.key, keep="first").to_numpy()
    dead = _dead_reserialised(feed[dup], "duplicate_impression", "feed", files, f"repeated {schema.key}")
    feed = feed[~dup]
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
    frame[schema.labels.click] = feed[schema.cold_start.feed_label].to_numpy().astype(np.int64)
    if schema.labels.conversion:
        frame[schema.labels.conversion] = np.zeros(n, dtype=np.int64)
    frame[schema.weight_feature] = float(schema.cold_start.feed_weight)
    frame[schema.source_feature] = "feed"
    return frame, dead


def _attribute(
    events: pd.DataFrame, anchor_ts: pd.Series, key: str, ts: str, window: int, files: list[str], *,
    log: str, no_anchor: tuple[str, str], late: str, duplicate: str, anchor: str,
) -> tuple[pd.DataFrame, list[dict]]:
    """Split ``events`` into the attributed ones (one per trace_id) and dead letters."""
    events = events.sort_values([ts, *ORDER], kind="stable")
    base = events[key].map(anchor_ts)
    missing = base.isna().to_numpy()
    delay = (events[ts] - base).to_numpy()
    out_of_window = ~missing & ((delay < 0) | (delay > window))
    dead = _dead_rows(events[missing], no_anchor[0], no_anchor[1], log, files)
    late_rows = events[out_of_window]
    late_delay = delay[out_of_window]
    dead += [
        dead_letter(late, f"{int(d)} s after its {anchor} (window [0, {window}] s)", log, files[f], int(ln), raw)
        for d, f, ln, raw in zip(late_delay, late_rows[FILE], late_rows[LINE], late_rows[RAW], strict=True)
    ]
    attributed = events[~missing & ~out_of_window]
    dup = attributed.duplicated(key, keep="first").to_numpy()
    dead += _dead_rows(attributed[dup], duplicate, f"trace_id already has an attributed {log[:-1]}", log, files)
    return attributed[~dup], dead


def _dead_rows(rows: pd.DataFrame, reason: str, detail: str, log: str, files: list[str]) -> list[dict]:
    return [
        dead_letter(reason, detail, log, files[f], int(ln), raw)
        for f, ln, raw in zip(rows[FILE], rows[LINE], rows[RAW], strict=True)
    ]


def _dead_reserialised(rows: pd.DataFrame, reason: str, log: str, files: list[str], detail: str) -> list[dict]:
    """Dead letters for impression/feed rows, whose raw text is not kept: ``raw`` is the parsed event re-serialised."""
    fields = [c for c in rows.columns if not c.startswith("_")]
    records = rows[fields].to_dict("records")
    return [
        dead_letter(reason, detail, log, files[f], int(ln), orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY))
        for r, f, ln in zip(records, rows[FILE], rows[LINE], strict=True)
    ]


def empty_events(schema: Schema, log: str) -> pd.DataFrame:
    """Zero parsed rows of ``log`` (with file index and raw line)."""
    frame = empty_rows(log_columns(schema, log), keep_raw=True)
    frame[FILE] = pd.Series([], dtype=np.int64)
    return frame
