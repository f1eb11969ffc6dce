"""``make bench``: run every benchmark in its own process, one after another (machines are noisy:
each benchmark compares its candidates side by side inside one run and reports ratios)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

BENCHMARKS = ["beam_build", "train_throughput", "serving_latency", "bidding", "calibration", "online", "model_quality"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS)
    args = parser.parse_args(argv)
    failed = []
    for name in args.only:
        print(f"\n##### benchmarks.{name}", flush=True)
        start = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"benchmarks.{name}"])
        print(f"##### benchmarks.{name}: exit {code} after {time.monotonic() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
