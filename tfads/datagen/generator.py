"""``generate``: write N days of synthetic impression, click, conversion (and feed) logs with truth.

Day by day: sample impressions from the :class:`~tfads.datagen.world.World`, sample their events,
route each event to the day of its own ``ts``, inject corruptions, and write every log file of the
day whose events are complete (events only move forward in time).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from tfads.datagen import world as W
from tfads.datagen.launches import NO_LAUNCHES, LaunchPlan
from tfads.datagen.media import MEDIA_DIR, MEDIA_TABLE, NO_MEDIA, MediaPlan
from tfads.datagen.corrupt import LogSpec, corrupt_line
from tfads.datagen.logs import Events, make_events
from tfads.datagen.writer import json_lines, trace_ids, write_gz
from tfads.core.schema import Schema, load_schema

DAY_S = 86_400
MAX_DAYS = 3660  # keeps the per-day trace-id namespaces of orphans and feed lines apart
FEED_SHARE = 0.5  # organic-feed impressions per ad impression
EVENT_LOGS = ("clicks", "conversions")
OWNED = ("impressions", "clicks", "conversions", "feed", "truth", "corruptions.jsonl", "datagen.json", MEDIA_DIR)
# Trace-id index namespaces: impressions use [0, 2**40); injected orphans and feed lines their own.
NAMESPACE = {"clicks": 1 << 40, "conversions": 2 << 40, "feed": 3 << 40}
NAMES = {"media": W.MEDIA, "slot": W.SLOTS, "city": W.CITIES, "category": W.CATEGORIES}
NUMBERS = {
    "user_id": "int",
    "age": "int",
    "hour": "int",
    "weekday": "int",
    "ad_id": "int",
    "advertiser_id": "int",
    "campaign_id": "int",
    "price": "float",
    "clicked": "int",
}
EVENT_TYPES: dict[str, dict[str, str]] = {"clicks": {}, "conversions": {"value": "float"}}  # besides key and ts


def _column_type(name: str) -> str | None:
    if name in W.ENUMS or name in NAMES:
        return "string"
    return NUMBERS.get(name)


def check_schema(schema: Schema) -> None:
    """Raise ValueError naming the schema key if the generator cannot write what the schema asks."""

    def fail(key: str, msg: str) -> None:
        raise ValueError(f"schema: {key}: {msg}")

    ids = {schema.key: "string", schema.timestamp: "int"}
    for name, spec in schema.fields.items():
        expected = ids.get(name) or _column_type(name)
        if expected is None or name == "clicked":
            fail(f"fields.{name}", "datagen does not know how to generate this field")
        if spec.type != expected:
            fail(f"fields.{name}.type", f"datagen writes {expected}, the schema says {spec.type}")
        if name in W.ENUMS and spec.values != W.ENUMS[name]:
            fail(f"fields.{name}.values", f"datagen generates exactly {W.ENUMS[name]}")
    for log in (*EVENT_LOGS, "feed"):
        for name, typ in getattr(schema, log).fields.items():
            known = EVENT_TYPES[log].get(name) if log in EVENT_TYPES else _column_type(name)
            expected = ids.get(name) or known
            if expected != typ:
                fail(f"{log}.fields.{name}", f"datagen cannot write a {typ} field of this name here")


def _check_ranges(df: pd.DataFrame, schema: Schema) -> None:
    for name, spec in schema.fields.items():
        col = df[name]
        if spec.type != "string" and (
            (spec.min is not None and col.min() < spec.min) or (spec.max is not None and col.max() > spec.max)
        ):
            raise ValueError(
                f"schema: fields.{name}: range [{spec.min}, {spec.max}] excludes values datagen "
                f"generates ({col.min()} .. {col.max()})"
            )


def _columns(
    x: dict[str, np.ndarray], names: list[str], key: str, tid: np.ndarray, timestamp: str, ts: np.ndarray
) -> pd.DataFrame:
    """A frame of output columns in ``names`` order from the world's value indices."""
    cols: dict[str, Any] = {}
    for name in names:
        if name == key:
            cols[name] = tid
        elif name == timestamp:
            cols[name] = ts
        elif name in W.ENUMS:
            cols[name] = np.array(W.ENUMS[name])[x[name]]
        elif name in NAMES:
            cols[name] = NAMES[name][x[name]]
        else:
            cols[name] = x[name]
    return pd.DataFrame(cols)


class _Run:
    """State of one ``generate`` call: output paths, corruption records and counts."""

    def __init__(
        self, out: Path, schema: Schema, seed: int, corrupt_rate: float, dates: list[str], epoch0: int
    ) -> None:
        self.out, self.schema, self.seed = out, schema, seed
        self.rate, self.dates, self.epoch0 = corrupt_rate, dates, epoch0
        self.specs = {
            "impressions": LogSpec.for_impressions(schema),
            "clicks": LogSpec.for_events(schema, "clicks", "orphan_click"),
            "conversions": LogSpec.for_events(schema, "conversions", "orphan_conversion"),
            "feed": LogSpec.for_events(schema, "feed", None),
        }
        self.records: list[dict[str, Any]] = []
        self.lines: dict[str, dict[str, int]] = defaultdict(dict)
        self.reasons: Counter[str] = Counter()
        self.files: list[str] = []

    def _rng(self, log: str, day: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 20 + list(OWNED).index(log), day])

    def emit(self, log: str, day: int, df: pd.DataFrame) -> None:
        """Inject orphans and corruptions into one day of one log, write it and record every bad line."""
        rel = f"{log}/{self.dates[day]}/part-00000.jsonl.gz"
        spec = self.specs.get(log)
        lines: list[bytes]
        if spec is None or df.empty:  # truth is never corrupted; nothing to corrupt in an empty day
            lines = json_lines(df)
        else:
            rng = self._rng(log, day)
            df = df.assign(reason=df.get("reason", ""), corruptible=df.get("corruptible", True))
            n_bad = rng.binomial(len(df), self.rate) if self.rate > 0 else 0
            reasons = [str(r) for r in rng.choice(spec.reasons, n_bad)]
            n_orphans = int(np.sum(np.asarray(reasons) == spec.orphan_reason)) if spec.orphan_reason else 0
            if n_orphans:
                ids = trace_ids(self.seed, NAMESPACE[log] + day * 2**24 + np.arange(n_orphans))
                when = self.epoch0 + day * DAY_S + rng.integers(0, DAY_S, n_orphans)
                orphans = df.iloc[rng.integers(0, len(df), n_orphans)].assign(
                    reason=spec.orphan_reason, corruptible=False, **{self.schema.key: ids, self.schema.timestamp: when}
                )
                df = pd.concat([df, orphans], ignore_index=True)
            df = df.sort_values(self.schema.timestamp, kind="stable", ignore_index=True)
            lines = json_lines(df[list(spec.types)], spec.optional)
            broken = [r for r in reasons if r != spec.orphan_reason]
            candidates = np.flatnonzero(df["corruptible"].to_numpy())
            rows = rng.choice(candidates, min(len(broken), len(candidates)), replace=False)
            reason = df["reason"].to_numpy(dtype=object)
            for row, why in zip(rows, broken, strict=False):
                lines[row] = corrupt_line(lines[row], why, spec, rng)
                reason[row] = why
            for row in np.flatnonzero(reason != ""):
                self.records.append({"log": log, "file": rel, "line": int(row) + 1, "reason": reason[row]})
                self.reasons[reason[row]] += 1
        write_gz(self.out / rel, lines)
        self.lines[log][self.dates[day]] = len(lines)
        self.files.append(rel)


def _prepare_out(out: Path) -> None:
    """Create ``out``; clear a previous datagen output there; refuse to mix with other files."""
    if out.exists() and any(out.iterdir()):
        if not (out / "datagen.json").is_file():
            raise ValueError(f"{out}: directory is not empty and holds no previous datagen output")
        for name in OWNED:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _validate_args(
    days: int, impressions_per_day: int, corrupt_rate: float, start_date: str, interest_scale: float
) -> dt.date:
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be in [1, {MAX_DAYS}], got {days}")
    if not 1 <= impressions_per_day < 2**24:
        raise ValueError(f"impressions_per_day must be in [1, {2**24 - 1}], got {impressions_per_day}")
    if not 0.0 <= corrupt_rate <= 0.5:
        raise ValueError(f"corrupt_rate must be in [0, 0.5], got {corrupt_rate}")
    if not 0.0 <= interest_scale <= 10.0:
        raise ValueError(f"interest_scale must be in [0, 10], got {interest_scale}")
    try:
        return dt.date.fromisoformat(start_date)
    except ValueError as e:
        raise ValueError(f"start_date must be YYYY-MM-DD, got {start_date!r}") from e


def _launch_record(world: W.World, launch_plan: LaunchPlan) -> dict[str, Any]:
    """What launched when, in the logs' own values (scenario ``media|slot``, city names)."""
    scenes = world.launches.scenes
    return {
        "launch_day": launch_plan.launch_day,
        "segment_launch_day": launch_plan.segments_day,
        "scenes": [f"{W.MEDIA[s // W.N_SLOTS]}|{W.SLOTS[s % W.N_SLOTS]}" for s in scenes],
        "segment_field": "city",
        "segments": [str(c) for c in W.CITIES[world.launches.segments]],
        "scene_shift": launch_plan.scene_shift,
        "segment_scale": launch_plan.segment_scale,
    }


def generate(
    out_dir: str,
    *,
    days: int = 7,
    impressions_per_day: int = 20000,
    seed: int = 0,
    corrupt_rate: float = 0.0,
    with_feed: bool = False,
    start_date: str = "2026-01-01",
    schema: Schema | None = None,
    interest_scale: float = W.INTEREST_SCALE,
    launch_plan: LaunchPlan = NO_LAUNCHES,
    media_plan: MediaPlan = NO_MEDIA,
    progress: bool = True,
) -> dict:
    """Write synthetic ad logs with ground truth to ``out_dir`` (layout: docs/architecture.md "Data contract").

    Args:
      out_dir: output directory; created, or replaced if it holds a previous datagen output.
      days: number of days, starting at ``start_date`` (UTC).
      impressions_per_day: impression lines per day (including corrupted ones).
      seed: everything is a function of the seed: same seed, byte-identical files.
      corrupt_rate: expected share of lines per log and day that are malformed or orphans.
      with_feed: also write the organic-feed log (``FEED_SHARE`` lines per impression).
      start_date: first day, ``YYYY-MM-DD``.
      schema: the feature/schema config (default ``configs/schema.yaml``).
      interest_scale: std of the users' drifting-interest term in the true CTR logit (see
        :mod:`tfads.datagen.world`); 0 removes it (everything else unchanged).
      launch_plan: scenes and user segments (cities) that launch mid-period (:mod:`tfads.datagen.launches`);
        the default launches nothing.
      media_plan: the media party's private user preferences (:mod:`tfads.datagen.media`): with
        ``enabled`` they add to the true logits and their observed tags go to ``media/users/`` only.
      progress: show a tqdm bar over days.

    Returns:
      What is written to ``datagen.json``: seed, days, dates, settings, line counts per log (total
      and per day), counts per dead-letter reason of every recorded bad line, events dropped after the
      last day, mean true rates and the list of files.

    Raises:
      ValueError: on an argument out of range or a schema the generator cannot satisfy.
    """
    start = _validate_args(days, impressions_per_day, corrupt_rate, start_date, interest_scale)
    if launch_plan.active and launch_plan.last_day >= days:
        raise ValueError(f"cold start: launch days must be < days ({days}), got {launch_plan.last_day}")
    schema = schema or load_schema()
    check_schema(schema)
    out = Path(out_dir)
    _prepare_out(out)
    age = schema.fields.get("age")
    world = W.World(
        seed, (int(age.min or 0), int(age.max or 120)) if age else (12, 100), interest_scale, launch_plan, media_plan
    )
    seen_users: list[np.ndarray] = []
    dates = [(start + dt.timedelta(days=d)).isoformat() for d in range(days)]
    epoch0 = int(dt.datetime(start.year, start.month, start.day, tzinfo=dt.UTC).timestamp())
    run = _Run(out, schema, seed, corrupt_rate, dates, epoch0)
    key, tcol = schema.key, schema.timestamp
    window = schema.attribution
    pending: dict[str, dict[int, list[pd.DataFrame]]] = {log: defaultdict(list) for log in EVENT_LOGS}
    sums = Counter()
    for day in tqdm(range(days), desc="datagen", unit="day", disable=not progress):
        weekday = (start + dt.timedelta(days=day)).weekday()
        rng = np.random.default_rng([seed, 10, day])
        x = world.sample(rng, impressions_per_day, day, weekday)
        ts = epoch0 + day * DAY_S + x["second"]
        tid = trace_ids(seed, day * impressions_per_day + np.arange(impressions_per_day))
        events: Events = make_events(
            rng, tid, ts, x["p_ctr"], x["p_cvr"], window.click_window_s, window.conversion_window_s, key, tcol
        )
        for log in EVENT_LOGS:
            df = getattr(events, log)
            for d, part in df.groupby((df[tcol] - epoch0) // DAY_S):
                pending[log][int(d)].append(part)
        if world.media:
            seen_users.append(x["user_id"])
        imps = _columns(x, list(schema.fields), key, tid, tcol, ts)
        _check_ranges(imps, schema)
        run.emit("impressions", day, imps.assign(corruptible=~events.referenced))
        run.emit("truth", day, pd.DataFrame({key: tid, "p_ctr": x["p_ctr"], "p_cvr": x["p_cvr"]}))
        sums.update(p_ctr=float(x["p_ctr"].sum()), p_ctcvr=float((x["p_ctr"] * x["p_cvr"]).sum()))
        for log in EVENT_LOGS:
            parts = pending[log].pop(day, [])
            run.emit(log, day, pd.concat(parts, ignore_index=True) if parts else pd.DataFrame())
        if with_feed:
            n = max(1, int(impressions_per_day * FEED_SHARE))
            f = world.sample_feed(rng, n, day, weekday)
            f["clicked"] = (rng.random(n) < f["p_click"]).astype(np.int64)
            feed_ids = trace_ids(seed, NAMESPACE["feed"] + day * 2**24 + np.arange(n))
            run.emit(
                "feed",
                day,
                _columns(f, list(schema.feed.fields), key, feed_ids, tcol, epoch0 + day * DAY_S + f["second"]),
            )
    if world.media:  # the media party's own file, never an ad-side log
        write_gz(out / MEDIA_TABLE, json_lines(world.media.table(np.concatenate(seen_users))))
        run.files.append(MEDIA_TABLE)
    with open(out / "corruptions.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in run.records)
    result = {
        "version": 1,
        "seed": seed,
        "days": days,
        "start_date": dates[0],
        "dates": dates,
        "settings": {
            "impressions_per_day": impressions_per_day,
            "corrupt_rate": corrupt_rate,
            "with_feed": with_feed,
            "feed_share": FEED_SHARE if with_feed else 0.0,
            "scenarios": W.N_SCENARIOS,
            "users": W.N_USERS,
            "ads": W.N_ADS,
            "campaigns": W.N_CAMPAIGNS,
            "advertisers": W.N_ADVERTISERS,
            "clusters": W.N_CLUSTERS,
            "click_window_s": window.click_window_s,
            "conversion_window_s": window.conversion_window_s,
            "interest_scale": interest_scale,
            **({"launches": _launch_record(world, launch_plan)} if world.launches else {}),
            **({"media": {**dataclasses.asdict(media_plan), "table": MEDIA_TABLE}} if world.media else {}),
        },
        "counts": {log: sum(per_day.values()) for log, per_day in run.lines.items()},
        "counts_by_day": dict(run.lines),
        "corruptions": dict(sorted(run.reasons.items())),
        "dropped_after_last_day": {
            log: int(sum(len(p) for parts in pending[log].values() for p in parts)) for log in EVENT_LOGS
        },
        "true_rates": {
            "mean_p_ctr": sums["p_ctr"] / (days * impressions_per_day),
            "mean_p_cvr_post_click": sums["p_ctcvr"] / max(sums["p_ctr"], 1e-12),
        },
        "files": run.files,
    }
    (out / "datagen.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
