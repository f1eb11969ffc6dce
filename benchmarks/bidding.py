"""Bid requests/s and latency end to end through the bidding client (loopback), at concurrency 1 and 16.

    python benchmarks/bidding.py --data DATA/manifest.json --model-config-file models.config
    python benchmarks/bidding.py --data DATA/manifest.json --target 127.0.0.1:8500

Each level sends at most ``--requests`` bid requests (K candidates each, built from the test split,
routed by the experiment) or stops after ``--max-seconds``; latency is the client's own measure
(validation, Predict with deadline, bid arithmetic). Writes a JSON file and prints a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from serving.traffic import opportunities
from tfads.cli.client_options import add_client_arguments, connect
from serving.client import BidClient
from serving.experiment import load_experiment_file
from benchmarks.results import add_results_argument, publish


def measure(client: BidClient, requests: list[dict], concurrency: int, limit: int, max_seconds: float) -> dict:
    """Send up to ``limit`` requests from ``concurrency`` threads, stopping after ``max_seconds``."""
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    sources: dict[str, int] = {}
    start = time.perf_counter()

    def worker() -> None:
        while time.perf_counter() - start < max_seconds:
            i = next(counter)
            if i >= limit:
                return
            response = client.bid(requests[i % len(requests)])
            with lock:
                latencies.append(response.latency_s)
                sources[response.source] = sources.get(response.source, 0) + 1

    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency, "requests": len(latencies), "seconds": round(elapsed, 3),
        "requests_per_s": round(len(latencies) / elapsed, 1), "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3), "sources": sources,
    }


def table(rows: list[dict]) -> str:
    head = f"{'concurrency':>11} {'requests':>8} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}  sources"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['concurrency']:>11} {r['requests']:>8} {r['requests_per_s']:>8.1f} {r['p50_ms']:>7.2f} "
                     f"{r['p99_ms']:>7.2f}  {r['sources']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_client_arguments(parser)
    parser.add_argument("--candidates", type=int, default=10, help="candidate ads per bid request")
    parser.add_argument("--requests", type=int, default=2000, help="bid requests per concurrency level (bound)")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="time bound per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--warmup", type=int, default=50, help="requests sent before measuring")
    parser.add_argument("--out", default="benchmarks/bidding.json", help="JSON results")
    add_results_argument(parser)
    args = parser.parse_args(argv)

    requests = opportunities(args.data, args.candidates, limit=20_000 // args.candidates // 4)
    if not requests:
        parser.error(f"no bid requests of {args.candidates} candidates could be built from the test split")
    experiment = load_experiment_file(args.experiment)
    with connect(args, sorted({a.model_name for a in experiment.arms})) as client:
        client.wait_until_available(timeout_s=60)
        measure(client, requests, 1, args.warmup, args.max_seconds)
        rows = [measure(client, requests, c, args.requests, args.max_seconds) for c in args.concurrency]
    result = {"candidates": args.candidates, "deadline_ms": args.deadline_ms, "target": "loopback", "levels": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    print(f"wrote {args.out}")
    publish("bidding", result, table(rows), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
