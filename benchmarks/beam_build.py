"""Benchmark: the Beam job (DirectRunner, 2 worker processes) vs the plain single-process script a user
would write for the same conversion (json.loads, dict joins, tf.train.Example, TFRecordWriter).

    python -m benchmarks.beam_build [--impressions 1000000] [--workers 2]

Prints a table and one JSON line: impressions/s of both and their ratio.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator

import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS=1 before TensorFlow)
from tfads.core.schema import Schema, load_schema
from benchmarks.results import add_results_argument, publish

DAY_S = 86400


def _lines(logs: str, log: str) -> Iterator[tuple[str, dict]]:
    root = os.path.join(logs, log)
    for day in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        for name in sorted(os.listdir(os.path.join(root, day))):
            with gzip.open(os.path.join(root, day, name), "rt") as f:
                for line in f:
                    try:
                        yield day, json.loads(line)
                    except json.JSONDecodeError:
                        continue


def plain_build(logs: str, out: str, schema: Schema) -> int:
    """The obvious single-process conversion: returns the number of examples written."""
    import tensorflow as tf

    imps = list(_lines(logs, "impressions"))
    imp_ts = {e["trace_id"]: e["ts"] for _, e in imps}
    clicks: dict[str, int] = {}
    for _, c in _lines(logs, "clicks"):
        t0 = imp_ts.get(c["trace_id"])
        if t0 is not None and 0 <= c["ts"] - t0 <= schema.attribution.click_window_s:
            clicks.setdefault(c["trace_id"], c["ts"])
    convs = set()
    for _, c in _lines(logs, "conversions"):
        t0 = clicks.get(c["trace_id"])
        if t0 is not None and 0 <= c["ts"] - t0 <= schema.attribution.conversion_window_s:
            convs.add(c["trace_id"])
    days = sorted({d for d, _ in imps})
    train = set(days[: len(days) - schema.splits.valid_days - schema.splits.calib_days - schema.splits.test_days])
    counts = {n: collections.Counter() for n in schema.vocab_features}
    writers: dict[str, tf.io.TFRecordWriter] = {}
    opts = tf.io.TFRecordOptions(compression_type="GZIP")
    for day, e in imps:
        e["scenario"] = f"{e['media']}|{e['slot']}"
        e["click"] = int(e["trace_id"] in clicks)
        e["conversion"] = int(e["trace_id"] in convs)
        feature = {}
        for name, value in e.items():
            if isinstance(value, str):
                feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
            elif isinstance(value, float):
                feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
            else:
                feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        feature["weight"] = tf.train.Feature(float_list=tf.train.FloatList(value=[1.0]))
        feature["sample_source"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"ad"]))
        if day not in writers:
            os.makedirs(os.path.join(out, day), exist_ok=True)
            writers[day] = tf.io.TFRecordWriter(os.path.join(out, day, "part-00000.tfrecord.gz"), opts)
        writers[day].write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
        if day in train:
            for name, c in counts.items():
                c[e[name]] += 1
    for w in writers.values():
        w.close()
    os.makedirs(os.path.join(out, "vocab"), exist_ok=True)
    for name, c in counts.items():
        with open(os.path.join(out, "vocab", f"{name}.txt"), "w") as f:
            f.writelines(f"{v}\n" for v, k in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])) if k >= 2)
    return len(imps)


def beam_build(logs: str, out: str, workers: int) -> int:
    """The Beam job with ``workers`` DirectRunner worker processes; returns the number of examples."""
    from tfads.jobs.dataset import build_dataset

    with open(build_dataset(logs, out, workers=workers)) as f:
        return sum(s["examples"] for s in json.load(f)["splits"].values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impressions", type=int, default=1_000_000, help="total impressions (default 1M)")
    parser.add_argument("--days", type=int, default=7, help="days of logs (generator default 7)")
    parser.add_argument("--workers", type=int, default=2, help="DirectRunner worker processes (default 2)")
    parser.add_argument("--work-dir", help="where logs and outputs go (default: a temporary directory)")
    parser.add_argument("--skip-plain", action="store_true", help="only time the Beam job")
    add_results_argument(parser)
    args = parser.parse_args(argv)
    from tfads.datagen import generate

    work = args.work_dir or tempfile.mkdtemp(prefix="tfads_beam_bench_")
    logs = os.path.join(work, "logs")
    if not os.path.isfile(os.path.join(logs, "datagen.json")):
        generate(logs, days=args.days, impressions_per_day=args.impressions // args.days, progress=False)
    n_imps = json.load(open(os.path.join(logs, "datagen.json")))["counts"]["impressions"]
    result: dict[str, float | int] = {"impressions": n_imps, "workers": args.workers}
    for name, fn in (("beam", lambda o: beam_build(logs, o, args.workers)),
                     ("plain", lambda o: plain_build(logs, o, load_schema()))):
        if name == "plain" and args.skip_plain:
            continue
        out = os.path.join(work, f"out_{name}")
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        examples = fn(out)
        seconds = time.perf_counter() - start
        result.update({f"{name}_seconds": round(seconds, 2), f"{name}_examples": examples,
                       f"{name}_impressions_per_s": round(n_imps / seconds)})
    if "plain_seconds" in result:
        result["speedup_beam_vs_plain"] = round(result["plain_seconds"] / result["beam_seconds"], 2)
    lines = [f"{'':<28}{'seconds':>10}{'impressions/s':>16}"]
    for name, label in (("beam", f"Beam, {args.workers} workers"), ("plain", "plain single-process script")):
        if f"{name}_seconds" in result:
            lines.append(f"{label:<28}{result[f'{name}_seconds']:>10}{result[f'{name}_impressions_per_s']:>16,}")
    if "speedup_beam_vs_plain" in result:
        lines.append(f"{'ratio (Beam / plain speed)':<28}{result['speedup_beam_vs_plain']:>10}")
    print("\n" + "\n".join(lines))
    publish("beam_build", result, "\n".join(lines), args)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
