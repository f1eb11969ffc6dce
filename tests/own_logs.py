"""Generator logs rewritten into another shape (renamed fields, click-only), as a user's own logs would be."""

from __future__ import annotations

import glob
import gzip
import json
import os

import pandas as pd
import yaml

from tfads.core.schema import DEFAULT_SCHEMA

# generator field -> the user's name for it
RENAMED = {"user_id": "uid", "media": "site", "slot": "placement", "ts": "event_time", "trace_id": "request_id"}
DOMAIN = "surface"  # the user's name for the derived scenario (site|placement)
CLICK_LABEL = "is_click"


def _rename(record: dict) -> dict:
    return {RENAMED.get(k, k): v for k, v in record.items()}


def rewrite_click_only(logs: str, out: str) -> None:
    """Impressions and clicks of ``logs`` with the RENAMED field names under ``out``; no conversions log."""
    for log in ("impressions", "clicks"):
        for path in glob.glob(os.path.join(logs, log, "*", "*.jsonl.gz")):
            target = os.path.join(out, os.path.relpath(path, logs))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with gzip.open(path, "rt") as src, gzip.open(target, "wt") as dst:
                for line in src:
                    try:
                        dst.write(json.dumps(_rename(json.loads(line))) + "\n")
                    except json.JSONDecodeError:
                        dst.write(line)  # corrupted lines stay corrupted: they must still be dead-lettered


def click_only_schema(path: str) -> str:
    """The default schema in the user's names: click-only labels, no conversions or feed section,
    the domain and user key renamed; written to ``path``."""
    schema = yaml.safe_load(open(DEFAULT_SCHEMA))
    schema["key"], schema["timestamp"] = RENAMED["trace_id"], RENAMED["ts"]
    schema["fields"] = {RENAMED.get(k, k): v for k, v in schema["fields"].items()}
    scenario = schema["derived"].pop("scenario")
    scenario["concat"] = [RENAMED[c] for c in scenario["concat"]]
    schema["derived"][DOMAIN] = scenario
    schema["clicks"]["fields"] = {RENAMED.get(k, k): v for k, v in schema["clicks"]["fields"].items()}
    for section in ("conversions", "feed", "cold_start"):
        schema.pop(section)
    schema["labels"] = {"click": CLICK_LABEL, "conversion": None}
    schema["user_key"], schema["domain"] = RENAMED["user_id"], DOMAIN
    with open(path, "w") as f:
        yaml.safe_dump(schema, f, sort_keys=False)
    return path


def labelled_impressions(logs: str, *, with_conversion: bool) -> pd.DataFrame:
    """The impressions of generator ``logs`` with their labels as columns, in RENAMED names, by the default
    attribution windows: CLICK_LABEL = a click 0..1 h after the impression; ``conversion`` = a conversion
    0..3 days after the earliest such click. Lines listed in ``corruptions.jsonl`` are left out, and so
    are repeated impressions."""
    bad = set()
    if os.path.exists(os.path.join(logs, "corruptions.jsonl")):
        with open(os.path.join(logs, "corruptions.jsonl")) as f:
            bad = {(c["file"], c["line"]) for c in map(json.loads, f)}

    def read(log: str) -> pd.DataFrame:
        rows = []
        for path in sorted(glob.glob(os.path.join(logs, log, "*", "*.jsonl.gz"))):
            rel = os.path.relpath(path, logs)
            with gzip.open(path, "rt") as f:
                rows += [json.loads(line) for i, line in enumerate(f, start=1) if (rel, i) not in bad]
        return pd.DataFrame(rows)

    def first_within(events: pd.DataFrame, anchor: pd.DataFrame, window: int) -> pd.DataFrame:
        both = events.merge(anchor, on="trace_id", suffixes=("", "_anchor"))
        delay = both["ts"] - both["ts_anchor"]
        return both[(delay >= 0) & (delay <= window)].groupby("trace_id", as_index=False)["ts"].min()

    table = read("impressions").drop_duplicates("trace_id").reset_index(drop=True)
    clicks = first_within(read("clicks")[["trace_id", "ts"]], table[["trace_id", "ts"]], 3600)
    table[CLICK_LABEL] = table["trace_id"].isin(clicks["trace_id"]).astype("int64")
    if with_conversion:
        convs = first_within(read("conversions")[["trace_id", "ts"]], clicks, 3 * 86400)
        table["conversion"] = table["trace_id"].isin(convs["trace_id"]).astype("int64")
    return table.rename(columns=RENAMED)


def table_schema(path: str, *, with_conversion: bool, key: bool = True) -> str:
    """A schema for the labelled impressions as one table (``input: table``), written to ``path``."""
    schema = yaml.safe_load(open(click_only_schema(path)))
    for section in ("clicks", "attribution"):
        schema.pop(section)
    if not key:
        schema["fields"].pop(schema.pop("key"))
    schema["input"] = "table"
    schema["labels"] = {"click": CLICK_LABEL, "conversion": "conversion" if with_conversion else None}
    with open(path, "w") as f:
        yaml.safe_dump(schema, f, sort_keys=False)
    return path
