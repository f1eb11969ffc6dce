"""The keyed graph's own parts: pieces of a file, uneven days, its sizing rules and the shuffle encoding."""

from __future__ import annotations

import collections
import gzip
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from beam_jobs.files import read_line_pieces
from beam_jobs.frames import compress, decompress, pack, unpack
from beam_jobs.options import MIB, find_inputs, shards_for
from tests.beam_jobs.conftest import TWO_WORKERS, run_job
from tests.beam_jobs.helpers import corruptions, dead_letters, read_examples, read_lines, valid_events


def test_pieces_cover_every_line_once_with_their_numbers(tmp_path):
    lines = [f'{{"i": {i}, "pad": "{"x" * (i % 37)}"}}'.encode() for i in range(5000)]
    path = str(tmp_path / "f.jsonl.gz")
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(lines))  # no trailing newline: the last line still counts
    pieces = list(read_line_pieces(path, 4096))
    assert len(pieces) > 20
    got = [line for _, data in pieces for line in data.splitlines()]
    assert got == lines
    firsts = [first for first, _ in pieces]
    assert firsts[0] == 1 and firsts == [1 + sum(d.count(b"\n") for _, d in pieces[:i]) for i in range(len(pieces))]


def test_packed_pieces_keep_columns_dtypes_and_values():
    frame = pd.DataFrame({
        "s": np.array(["a", "", "é|x"], dtype=object), "i": np.array([1, -2, 2**62], dtype=np.int64),
        "f": [0.5, np.nan, -1e300], "b": [b"{}", b"raw \xff", b""],
    })
    back = unpack(pack(frame))
    pd.testing.assert_frame_equal(back, frame)
    assert len(unpack(pack(frame.iloc[:0]))) == 0
    lines = b"".join(b'{"a": %d}\n' % i for i in range(1000))
    assert decompress(compress(lines)) == lines and len(compress(lines)) < len(lines) / 3
    assert decompress(compress(b"")) == b""


def test_auto_sizes_follow_the_input_bytes():
    assert shards_for(3, 10**9) == 3
    assert shards_for("auto", 0) == 2 and shards_for("auto", 8 * MIB) == 2 and shards_for("auto", 100 * MIB) == 25


def test_auto_graph_and_buckets(feed_logs, tmp_path):
    small = find_inputs(feed_logs, str(tmp_path))
    assert small.graph == "per-day" and small.key_buckets == 16
    assert find_inputs(feed_logs, str(tmp_path), runner="DataflowRunner").graph == "keyed"
    assert find_inputs(feed_logs, str(tmp_path), graph="keyed", key_buckets=3).key_buckets == 3


@pytest.fixture(scope="module")
def uneven_logs(tmp_path_factory) -> str:
    """Six days of 150 impressions and one day of 12,000 (with 2% corrupted lines), in one log directory."""
    from tfads.datagen import generate

    root = tmp_path_factory.mktemp("uneven")
    logs = root / "logs"
    generate(str(root / "tiny"), days=6, impressions_per_day=150, seed=3, corrupt_rate=0.02, progress=False)
    generate(str(root / "large"), days=1, impressions_per_day=12_000, seed=4, corrupt_rate=0.02,
             start_date="2026-01-07", progress=False)
    skip = shutil.ignore_patterns("datagen.json", "corruptions.jsonl", "truth")
    for part in ("tiny", "large"):
        shutil.copytree(root / part, logs, dirs_exist_ok=True, ignore=skip)
    with open(logs / "corruptions.jsonl", "wb") as f:
        for part in ("tiny", "large"):
            f.write((root / part / "corruptions.jsonl").read_bytes())
    return str(logs)


def test_many_tiny_days_and_one_large_day(uneven_logs, tmp_path):
    per_day = run_job(uneven_logs, str(tmp_path / "per_day"), "--graph", "per-day", "--no-cold-start")
    keyed = run_job(uneven_logs, str(tmp_path / "keyed"), "--graph", "keyed", "--key-buckets", "7",
                    "--piece-mib", "0.2", "--no-cold-start", *TWO_WORKERS)
    examples = read_examples(keyed)
    pd.testing.assert_frame_equal(examples, read_examples(per_day))
    with open(os.path.join(keyed, "manifest.json")) as f:
        manifest = json.load(f)
    # every valid impression is one example; the large day was read in several pieces
    imps = valid_events(uneven_logs, "impressions").drop_duplicates("trace_id")
    assert sorted(examples["trace_id"]) == sorted(imps["trace_id"])
    assert manifest["days"]["2026-01-07"]["examples"] == (imps["_day"] == "2026-01-07").sum()
    large_file = os.path.join(uneven_logs, "impressions", "2026-01-07", "part-00000.jsonl.gz")
    assert sum(len(line) for line in read_lines(large_file)) > 3 * 0.2 * MIB
    # what a worker held at a time: a 0.2 MiB piece (~700 lines), one of 7 buckets, one of a day's 2 shards
    largest = manifest["build"]["largest"]
    assert 0 < largest["piece_rows"] < 1000 and 0 < largest["bucket_rows"] < len(imps) / 4
    assert 0 < largest["shard_rows"] < 0.6 * manifest["days"]["2026-01-07"]["examples"]
    # dead letters: every corrupted line with its line number, counts add up per log
    expected = corruptions(uneven_logs)
    got = {(d["log"], os.path.relpath(d["source"], uneven_logs), d["line"]): d["reason"] for d in dead_letters(keyed)}
    assert {k: v for k, v in got.items() if k in expected} == expected
    assert sum(manifest["dead_letter"]["by_reason"].values()) == len(dead_letters(keyed))
    assert collections.Counter(d["reason"] for d in dead_letters(keyed)) == manifest["dead_letter"]["by_reason"]
    for log, counts in manifest["inputs"].items():
        assert counts["read"] == counts["valid"] + counts["dead_letter"], log
