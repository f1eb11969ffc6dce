"""Benchmark: the Beam job's two graphs (DirectRunner, 2 worker processes) against the plain single-process
script a user would write for the same conversion (json.loads, dict joins, tf.train.Example, TFRecordWriter),
with the wall time, the CPU seconds and the peak memory of every process.

    python -m benchmarks.beam_build                      # speed: 1M impressions (7 days), plain vs per-day vs keyed
    python -m benchmarks.beam_build --study memory       # 250k, 1M, 4M impressions per day x 4 days
    python -m benchmarks.beam_build --study one-day      # one day of data: is every worker busy?

Each study writes benchmarks/results/beam_build[_memory|_one_day].{json,md}. Every run is a subprocess
watched through /proc (Linux): "runner" is the job's main process, which on the DirectRunner also holds
the shuffle between steps (Dataflow keeps it in its Shuffle service); "worker" is each SDK worker process.
The memory study also runs, after each keyed run, a "bare runner": a pipeline with no job code that pushes
the bytes the job shuffled (its manifest's build.shuffle_bytes) through as many shuffles, in random pieces
of the job's average size made in the workers (``python -m benchmarks.beam_build --bare-runner BYTES
PIECE_BYTES WORKERS``); the keyed worker peak minus the bare one is what the job's own code adds.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

import yaml

import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS=1 before TensorFlow)
from tfads.core.schema import Schema, load_schema
from benchmarks.process_tree import TreeRun, run_watched
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



WORKER = "sdk_worker_main"


def _logs(work: str, days: int, per_day: int) -> str:
    """Generator logs for ``days`` x ``per_day`` impressions under ``work`` (made once, then reused)."""
    from tfads.datagen import generate

    logs = os.path.join(work, f"logs_{days}x{per_day}")
    if not os.path.isfile(os.path.join(logs, "datagen.json")):
        generate(logs, days=days, impressions_per_day=per_day, progress=False)
    return logs


def _impressions(logs: str) -> int:
    with open(os.path.join(logs, "datagen.json")) as f:
        return json.load(f)["counts"]["impressions"]


def _row(name: str, run: TreeRun, impressions: int, out: str | None = None) -> dict:
    """One run's figures; ``out``: the job's output directory (its manifest says how many bytes it shuffled)."""
    workers = [p for p in run.processes if WORKER in p.cmdline and not p.cmdline.startswith("/bin/sh")]
    runner = run.processes[0]
    build: dict = {}
    if out is not None:
        with open(os.path.join(out, "manifest.json")) as f:
            build = json.load(f)["build"]
    shuffled = build.get("shuffle_bytes")
    cpu = runner.cpu_s + sum(p.cpu_s for p in workers)
    return {
        "run": name, "impressions": impressions, "seconds": round(run.seconds, 2),
        "impressions_per_s": round(impressions / run.seconds),
        "runner_peak_mib": round(runner.peak_mib), "runner_cpu_s": round(runner.cpu_s, 1),
        "worker_peak_mib": round(max((p.peak_mib for p in workers), default=0)),
        "worker_cpu_s": sorted((round(p.cpu_s, 1) for p in workers), reverse=True),
        "cpu_us_per_impression": round(cpu / impressions * 1e6, 1),
        "shuffle_bytes_per_impression": round(shuffled / impressions, 1) if shuffled else None,
        "largest_rows": build.get("largest", {}),  # keyed graph: the largest piece, bucket and shard a worker held
    }


def run_beam(logs: str, out: str, *, graph: str, workers: int, schema: str | None = None) -> TreeRun:
    """``python -m beam_jobs.build_examples`` with one graph and ``workers`` DirectRunner processes, watched."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "beam_jobs.build_examples", "--logs", logs, "--out", out, "--graph", graph,
           "--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]
    return run_watched(cmd + (["--schema", schema] if schema else []))


def run_plain(logs: str, out: str) -> TreeRun:
    """The plain script in its own process, watched."""
    shutil.rmtree(out, ignore_errors=True)
    return run_watched([sys.executable, "-m", "benchmarks.beam_build", "--plain-only", logs, out])


SHUFFLES = 3  # the keyed graph's shuffles of data (no history): SpreadPieces, ByBucket, ByShard


def bare_runner(total_bytes: int, piece_bytes: int, workers: int) -> None:
    """A pipeline with no job code: ``total_bytes`` through SHUFFLES shuffles (a third through each) as random
    pieces of ``piece_bytes``, made in the workers; every step only passes the pieces on."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    pieces = max(1, total_bytes // SHUFFLES // piece_bytes)
    options = PipelineOptions(direct_num_workers=workers, direct_running_mode="multi_processing")
    with beam.Pipeline(options=options) as p:
        _ = (
            p
            | "Seeds" >> beam.Create(range(pieces))  # Create's own Reshuffle spreads them (the job's SpreadFiles)
            | "Make" >> beam.Map(lambda i: (i, os.urandom(piece_bytes)))
            | "Shuffle1" >> beam.Reshuffle()
            | "Pass1" >> beam.Map(lambda kv: kv)
            | "Shuffle2" >> beam.GroupByKey()
            | "Pass2" >> beam.FlatMap(lambda kv: ((kv[0], v) for v in kv[1]))
            | "Shuffle3" >> beam.GroupByKey()
            | "Drop" >> beam.Map(lambda kv: None)
        )


def bare_input(logs: str, out: str) -> tuple[int, int]:
    """The keyed job's shuffled bytes (its manifest) and their average piece size. The number of pieces is
    estimated from the job's sizing: its file pieces (SpreadPieces), a piece per key bucket of each (ByBucket)
    and a bucket's examples per output shard (ByShard); a file's size is its gzip trailer's (files < 4 GiB)."""
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    build = manifest["build"]
    pieces = 0
    for path in (p for log in manifest["inputs"] for p in glob.glob(os.path.join(logs, log, "*", "*.gz"))):
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            pieces += -(-int.from_bytes(f.read(), "little") // build["piece_bytes"])
    shards = sum(len(day["files"]) for day in manifest["days"].values())
    elements = pieces * (1 + build["key_buckets"]) + build["key_buckets"] * shards
    return build["shuffle_bytes"], max(1, build["shuffle_bytes"] // elements)


def _table(rows: list[dict], baseline: str | None) -> str:
    base = next((r for r in rows if r["run"] == baseline), None)
    lines = [f"{'run':<34}{'seconds':>9}{'imps/s':>10}{'vs plain':>9}{'runner MiB':>11}{'worker MiB':>11}"
             f"{'CPU us/imp':>11}{'shuffle B/imp':>14}  worker CPU s"]
    for r in rows:
        ratio = f"{base['seconds'] / r['seconds']:.2f}" if base else "-"
        worker = f"{r['worker_peak_mib']:,}" if r["worker_cpu_s"] else "-"
        shuffled = f"{r['shuffle_bytes_per_impression']:.0f}" if r["shuffle_bytes_per_impression"] else "-"
        lines.append(f"{r['run']:<34}{r['seconds']:>9.1f}{r['impressions_per_s']:>10,}{ratio:>9}"
                     f"{r['runner_peak_mib']:>11,}{worker:>11}{r['cpu_us_per_impression']:>11.1f}{shuffled:>14}"
                     f"  {', '.join(map(str, r['worker_cpu_s'])) or '-'}")
    return "\n".join(lines)


def speed_study(work: str, args: argparse.Namespace) -> tuple[dict, str]:
    """1M impressions: the plain script, the per-day graph and the keyed graph side by side."""
    logs = _logs(work, args.days, args.impressions // args.days)
    n = _impressions(logs)
    rows = [] if args.skip_plain else [_row("plain single-process script", run_plain(logs, f"{work}/out"), n)]
    for graph in ("per-day", "keyed"):
        run = run_beam(logs, f"{work}/out", graph=graph, workers=args.workers)
        rows.append(_row(f"Beam {graph}, {args.workers} workers", run, n, f"{work}/out"))
    return {"impressions": n, "days": args.days, "workers": args.workers, "rows": rows}, _table(
        rows, None if args.skip_plain else "plain single-process script")


def memory_study(work: str, args: argparse.Namespace) -> tuple[dict, str]:
    """Peak memory as a day grows (4 days each): the keyed graph, a bare runner with the keyed job's shuffled
    bytes (the runner's share of a worker peak), and the per-day graph up to 1M a day."""
    rows, split = [], []
    out = f"{work}/out"
    for per_day in args.per_day:
        logs = _logs(work, 4, per_day)
        n = _impressions(logs)
        keyed = _row(f"keyed, {per_day:,} a day", run_beam(logs, out, graph="keyed", workers=args.workers), n, out)
        shuffled, piece = bare_input(logs, out)
        run = run_watched([sys.executable, "-m", "benchmarks.beam_build", "--bare-runner", str(shuffled), str(piece),
                           str(args.workers)])
        bare = {**_row(f"bare runner, {per_day:,} a day", run, n),
                "shuffle_bytes_per_impression": round(shuffled / n, 1), "piece_bytes": piece}
        rows += [{**keyed, "graph": "keyed", "per_day": per_day}, {**bare, "graph": "bare runner", "per_day": per_day}]
        split.append({"per_day": per_day, "keyed_worker_peak_mib": keyed["worker_peak_mib"],
                      "bare_runner_worker_peak_mib": bare["worker_peak_mib"], "piece_bytes": piece,
                      "job_excess_mib": keyed["worker_peak_mib"] - bare["worker_peak_mib"]})
        if per_day <= args.per_day_max:
            run = run_beam(logs, out, graph="per-day", workers=args.workers)
            rows.append({**_row(f"per-day, {per_day:,} a day", run, n, out), "graph": "per-day", "per_day": per_day})
    spread = max(s["keyed_worker_peak_mib"] for s in split) / min(s["keyed_worker_peak_mib"] for s in split)
    excess = [s["job_excess_mib"] for s in split]
    excess_spread = max(excess) / min(excess) if min(excess) > 0 else None
    lines = [f"{'worker peak MiB':<20}{'keyed':>8}{'bare runner':>13}{'job excess':>12}{'bare piece KiB':>16}"]
    for x in split:
        lines.append(f"{x['per_day']:,} a day".ljust(20) + f"{x['keyed_worker_peak_mib']:>8,}"
                     f"{x['bare_runner_worker_peak_mib']:>13,}{x['job_excess_mib']:>12,}{x['piece_bytes'] >> 10:>16,}")
    table = "\n".join([_table(rows, None), "", *lines,
                       f"keyed graph: largest / smallest worker peak = {spread:.2f}",
                       "job excess (keyed - bare runner): largest / smallest = "
                       + (f"{excess_spread:.2f}" if excess_spread else "n/a (not all positive)")])
    return {"days": 4, "workers": args.workers, "shuffles": SHUFFLES, "rows": rows, "worker_peak_split": split,
            "keyed_worker_peak_spread": round(spread, 2),
            "job_excess_spread": round(excess_spread, 2) if excess_spread else None}, table


def one_day_study(work: str, args: argparse.Namespace) -> tuple[dict, str]:
    """One day of logs (train only) through each graph: CPU seconds of each worker."""
    from tfads.core.schema import DEFAULT_SCHEMA

    logs = _logs(work, 1, args.impressions)
    schema = yaml.safe_load(DEFAULT_SCHEMA.read_text())
    schema["splits"].update(valid_days=0, calib_days=0, test_days=0)
    path = os.path.join(work, "one_day_schema.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(schema, f)
    n = _impressions(logs)
    rows = []
    for graph in ("per-day", "keyed"):
        run = run_beam(logs, f"{work}/out", graph=graph, workers=args.workers, schema=path)
        rows.append(_row(f"{graph}, one day", run, n, f"{work}/out"))
    return {"impressions": n, "workers": args.workers, "rows": rows}, _table(rows, None)


STUDIES = {"speed": ("beam_build", speed_study), "memory": ("beam_build_memory", memory_study),
           "one-day": ("beam_build_one_day", one_day_study)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--plain-only"]:  # run_plain's subprocess
        plain_build(argv[1], argv[2], load_schema())
        return 0
    if argv[:1] == ["--bare-runner"]:  # the memory study's subprocess: BYTES PIECE_BYTES WORKERS
        bare_runner(*map(int, argv[1:4]))
        return 0
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--study", choices=sorted(STUDIES), default="speed", help="what to measure (default: speed)")
    parser.add_argument("--impressions", type=int, default=1_000_000,
                        help="speed: total impressions; one-day: the day's impressions (default 1M)")
    parser.add_argument("--days", type=int, default=7, help="speed: days of logs (generator default 7)")
    parser.add_argument("--per-day", type=int, nargs="+", default=[250_000, 1_000_000, 4_000_000],
                        help="memory: impressions per day of each run, 4 days; each size runs the keyed graph, "
                        "a bare runner with its shuffled bytes and the per-day graph (default: 250k 1M 4M)")
    parser.add_argument("--per-day-max", type=int, default=1_000_000,
                        help="memory: largest day the per-day graph is run on (it holds a whole day per worker)")
    parser.add_argument("--workers", type=int, default=2, help="DirectRunner worker processes (default 2)")
    parser.add_argument("--work-dir", help="where logs and outputs go (default: a temporary directory; logs are "
                        "reused from here on the next run)")
    parser.add_argument("--skip-plain", action="store_true", help="speed: only time the Beam job")
    add_results_argument(parser)
    args = parser.parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="tfads_beam_bench_")
    name, study = STUDIES[args.study]
    args.results_name = args.results_name or name  # one module, a results file per study
    data, table = study(work, args)
    print("\n" + table)
    publish("beam_build", data, table, args)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
