"""``make bench``: run every benchmark in its own process, one after another (machines are noisy:
each benchmark compares its candidates side by side inside one run and reports ratios).

Serving and bidding measure the real exports of ``make demo`` (``--demo-dir``: the DCNv2 +
AdaSparse + AdaCalib model and its TF Serving model config); the others make their own data.
Results go under ``--out``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

BENCHMARKS = [
    "beam_build",
    "train_throughput",
    "save_export",
    "host_idle",
    "serving_latency",
    "bidding",
    "calibration",
    "online",
    "model_quality",
    "conversion_delay",
    "history_quality",
    "criteo_quality",
    "ps_training",
]
NEEDS_DEMO = {"serving_latency", "bidding"}


def demo_files(demo_dir: str) -> dict[str, str]:
    """The ``make demo`` artefacts the serving benchmarks read."""
    models = os.path.join(demo_dir, "models")
    return {
        "manifest": os.path.join(demo_dir, "data", "manifest.json"),
        "model_base_path": os.path.join(models, "ctr"),
        "model_config": os.path.join(models, "models.config"),
    }


def benchmark_args(name: str, demo: dict[str, str], out: str) -> list[str]:
    """Command-line arguments of benchmark ``name``: the demo's exports as input, results under ``out``."""
    result = os.path.join(out, f"{name}.json")
    if name == "serving_latency":
        return ["--model_base_path", demo["model_base_path"], "--model_name", "ctr", "--json", result]
    if name == "host_idle":
        return ["--json", result]
    if name == "bidding":
        return ["--data", demo["manifest"], "--model-config-file", demo["model_config"], "--out", result]
    if name == "beam_build":  # works in a temporary directory and prints its JSON
        return []
    return ["--out", os.path.join(out, name)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS)
    parser.add_argument("--demo-dir", default="demo_out", help="a finished `tfads demo --out` directory")
    parser.add_argument("--out", default="bench_out", help="results directory (JSON, tables, plots)")
    args = parser.parse_args(argv)
    demo = demo_files(args.demo_dir)
    missing = [path for path in demo.values() if not os.path.exists(path)]
    if NEEDS_DEMO & set(args.only) and missing:
        parser.error(f"{', '.join(missing)} not found: run `make demo` (or `tfads demo --out {args.demo_dir}`) first")
    failed = []
    for name in args.only:
        print(f"\n##### benchmarks.{name}", flush=True)
        start = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"benchmarks.{name}", *benchmark_args(name, demo, args.out)])
        print(f"##### benchmarks.{name}: exit {code} after {time.monotonic() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
