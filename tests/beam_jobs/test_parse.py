"""Line validation: one reason per bad line, in priority order; the fast and robust paths agree."""

from __future__ import annotations

import json

import pandas as pd

from beam_jobs.parse import LINE, _parse_robust, log_columns, parse_lines
from tfads.core.schema import load_schema

SCHEMA = load_schema()
GOOD = {
    "trace_id": "t1", "ts": 1767225600, "user_id": 5, "age": 30, "gender": "F", "city": "c1", "device": "pc",
    "os": "ios", "hour": 3, "weekday": 2, "media": "m1", "slot": "s1", "ad_id": 7, "advertiser_id": 8,
    "campaign_id": 9, "category": "cat1", "creative_type": "image", "bid_type": "CPC", "price": 1.5,
}


def _line(**changes) -> bytes:
    obj = {**GOOD, **changes}
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


def _parse(lines: list[bytes], log: str = "impressions"):
    return parse_lines(lines, log_columns(SCHEMA, log), log=log, source="f.jsonl.gz", keep_raw=False)


def test_each_problem_gets_its_reason():
    lines = [
        _line(), b'{"trace_id": "t2", "ts": 1', b"[1, 2]", _line(age=...), _line(age="30"), _line(gender="X"),
        _line(hour=24), _line(price=-1.0), _line(age=True), _line(gender="X", age="30"), _line(trace_id="t9", price=2),
    ]
    result = _parse(lines)
    reasons = {d["line"]: d["reason"] for d in result.dead}
    assert reasons == {
        2: "bad_json", 3: "bad_json", 4: "missing_field", 5: "wrong_type", 6: "unknown_value", 7: "out_of_range",
        8: "out_of_range", 9: "wrong_type", 10: "wrong_type",
    }
    assert list(result.rows[LINE]) == [1, 11] and result.read == len(lines)
    assert result.rows["price"].tolist() == [1.5, 2.0]
    assert {d["source"] for d in result.dead} == {"f.jsonl.gz"}
    assert result.dead[0]["raw"] == '{"trace_id": "t2", "ts": 1'


def test_fast_and_robust_paths_agree_on_clean_lines():
    lines = [_line(trace_id=f"t{i}", age=20 + i % 50, price=float(i) / 7) for i in range(50)]
    fast = _parse(lines).rows
    robust = _parse_robust(lines, log_columns(SCHEMA, "impressions"), log="impressions", source="f",
                           keep_raw=False).rows
    pd.testing.assert_frame_equal(fast.reset_index(drop=True), robust.reset_index(drop=True), check_dtype=False)


def test_optional_conversion_value_may_be_absent():
    lines = [b'{"trace_id":"a","ts":5}', b'{"trace_id":"b","ts":6,"value":2.5}', b'{"trace_id":"c","ts":7,"value":"x"}']
    result = _parse(lines, "conversions")
    assert [d["reason"] for d in result.dead] == ["wrong_type"]
    assert result.rows["trace_id"].tolist() == ["a", "b"] and pd.isna(result.rows["value"].iloc[0])


def test_a_feed_click_field_of_the_users_name_labels_the_feed_rows():
    import dataclasses

    from beam_jobs.join import FILE, feed_examples

    feed_fields = {k: v for k, v in SCHEMA.feed.fields.items() if k != "clicked"} | {"liked": "int"}
    schema = dataclasses.replace(SCHEMA, feed=dataclasses.replace(SCHEMA.feed, fields=feed_fields),
                                 cold_start=dataclasses.replace(SCHEMA.cold_start, enabled=True, feed_label="liked"))
    lines = [json.dumps({"trace_id": f"f{i}", "ts": 5 + i, "user_id": 1, "media": "m1", "slot": "s1",
                         "category": "cat1", "hour": 3, "weekday": 2, "liked": like}).encode()
             for i, like in enumerate([1, 0, 2])]
    parsed = parse_lines(lines, log_columns(schema, "feed"), log="feed", source="feed.jsonl.gz", keep_raw=False)
    assert [d["reason"] for d in parsed.dead] == ["out_of_range"]  # a 0/1 field
    examples, dead = feed_examples(parsed.rows.assign(**{FILE: 0}), schema, ["feed.jsonl.gz"])
    assert examples[schema.labels.click].tolist() == [1, 0] and not dead
    assert set(examples[schema.source_feature]) == {"feed"}
