"""Point-in-time user histories (the schema's ``history``): for every example, the values of a field on the
user's last N clicked / converted / impressed examples strictly before the example's timestamp.

The keyed graph groups the examples by (user bucket, UTC day of their timestamp). A group's histories need
the events of its own day (all of them: :func:`day_events`) and of the earlier days within the window, of
which only each user's last N per day can matter (:func:`last_events`), so what a group holds is bounded
by one user-day of rows plus N events per user and earlier day, however long a user's past is.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from beam_jobs.join import EVENT_TS, event_ids
from tfads.core.names import CLICK
from tfads.core.schema import Schema

DAY_S = 86400
_DTYPES = {"string": "string", "int": "int64"}  # the manifest's names of a history's value type
USER, TS, TIE, SOURCE = "_user", "_event_ts", "_tie", "_source"


def sources(schema: Schema) -> dict[str, int]:
    """Event kind -> the most events any history of that kind keeps."""
    out: dict[str, int] = {}
    for h in schema.history.values():
        out[h.events] = max(out.get(h.events, 0), h.max_len)
    return out


def tie_keys(examples: pd.DataFrame, schema: Schema) -> np.ndarray:
    """What orders events at the same second: the example's key, or (a table without one) its file and line."""
    if schema.key is not None:
        return examples[schema.key].astype(str).to_numpy(dtype=object)
    return np.char.zfill(event_ids(examples).astype(str), 20).astype(object)


def event_records(examples: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """The history events among ``examples`` (ad samples only): one row per (example, event kind) with the user,
    the event's time, the tie key, the kind and the values of every field a history records."""
    fields = sorted({h.field for h in schema.history.values()})
    ads = examples[(examples[schema.source_feature] == "ad").to_numpy()]
    parts = []
    for kind in sources(schema):
        if kind == "impression":
            rows, ts = ads, ads[schema.timestamp].to_numpy(np.int64)
        else:
            label = schema.labels.click if kind == CLICK else schema.labels.conversion
            rows = ads[(ads[label].to_numpy() == 1)]
            column = EVENT_TS[kind]
            ts = rows[column].to_numpy(np.int64) if column in rows else rows[schema.timestamp].to_numpy(np.int64)
        parts.append(pd.DataFrame({USER: rows[schema.user_key].to_numpy(), TS: ts, TIE: tie_keys(rows, schema),
                                   SOURCE: kind, **{f: rows[f].to_numpy() for f in fields}}))
    if not parts:
        return pd.DataFrame(columns=[USER, TS, TIE, SOURCE, *fields])
    return pd.concat(parts, ignore_index=True)


def utc_day_numbers(ts: np.ndarray) -> np.ndarray:
    """Days since the epoch (UTC) of int seconds."""
    return np.asarray(ts, dtype=np.int64) // DAY_S


def last_events(events: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """Each user's last N events of each kind (N: the longest history of that kind), the rest dropped."""
    if not len(events):
        return events
    keep = sources(schema)
    ordered = events.sort_values([USER, SOURCE, TS, TIE], kind="stable", ignore_index=True)
    rank = ordered.groupby([USER, SOURCE], sort=False).cumcount(ascending=False).to_numpy()
    limit = ordered[SOURCE].map(keep).to_numpy()
    return ordered[rank < limit].reset_index(drop=True)


def add_histories(examples: pd.DataFrame, events: pd.DataFrame, schema: Schema) -> tuple[pd.DataFrame, Counter]:
    """``examples`` with one column per history (a tuple of values, most recent first) from ``events``
    (:func:`event_records` rows of any time; only those strictly before each example count), and the number of
    examples per history whose events exceeded its ``max_len`` (truncated)."""
    out = examples.copy()
    truncated: Counter = Counter()
    user = examples[schema.user_key].to_numpy()
    t = examples[schema.timestamp].to_numpy(np.int64)
    for name, h in schema.history.items():
        if not len(events):  # no events reached this group (e.g. no clicks yet): every history is empty
            out[name] = [()] * len(examples)
            continue
        ev = events[(events[SOURCE] == h.events).to_numpy()]
        ev = ev.sort_values([TS, TIE], kind="stable", ignore_index=True)
        codes, _ = pd.factorize(np.concatenate([ev[USER].to_numpy(), user]))
        ev_user, ex_user = codes[: len(ev)], codes[len(ev):]
        ev_ts = ev[TS].to_numpy(np.int64)
        # Events by (user, time, tie): a user's events before t are a contiguous run ending at `end`.
        order = np.lexsort((ev_ts, ev_user))
        ev_user, ev_ts = ev_user[order], ev_ts[order]
        values = ev[h.field].to_numpy()[order]
        start = np.searchsorted(ev_user, ex_user, side="left")
        user_end = np.searchsorted(ev_user, ex_user, side="right")
        end = start + _count_before(ev_ts, start, user_end, t)
        first = start if h.window_s is None else start + _count_before(ev_ts, start, end, t - h.window_s)
        n = end - first
        truncated[name] = int((n > h.max_len).sum())
        take = np.minimum(n, h.max_len)
        out[name] = [tuple(values[e - k: e][::-1]) for e, k in zip(end.tolist(), take.tolist(), strict=True)]
    return out, truncated


def _count_before(ts: np.ndarray, lo: np.ndarray, hi: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per query i: how many of ``ts[lo[i]:hi[i]]`` (ascending) are < ``t[i]`` (vectorised binary search)."""
    lo, hi = lo.copy(), hi.copy()
    base = lo.copy()
    while True:
        active = lo < hi
        if not active.any():
            return lo - base
        mid = (lo + hi) // 2
        below = np.zeros(len(lo), dtype=bool)
        below[active] = ts[mid[active]] < t[active]
        lo = np.where(active & below, mid + 1, lo)
        hi = np.where(active & ~below, mid, hi)


def history_block(schema: Schema, truncated: Counter) -> dict:
    """The manifest's ``history``: each history's definition and how many examples it truncated."""
    return {name: {"field": h.field, "events": h.events, "max_len": h.max_len, "window_s": h.window_s,
                   "share_embedding_with": h.table, "dtype": _DTYPES[schema.fields[h.field].type],
                   "truncated": int(truncated.get(name, 0))}
            for name, h in schema.history.items()}

