"""How this host's speed depends on load: fixed pure-Python work under sustained and idle-gapped load.

A concurrency-1 server idles between requests. On a shared virtual machine the vCPU can run slower
until it has been busy for a while (a host clock governor, or a core shared with another guest); this
measures that with no TensorFlow, server or client in the process:

- the ramp: after ``--idle_s`` idle, the work runs back to back for ``--sustain_s``; p50 per 200 ms window;
- idle gaps: the work after idle sleeps of ``--gaps_ms``, each in its own rhythm for 0.2 s first.

``serving_latency`` reports the idle-gap table for the model's engine call too.

    python -m benchmarks.host_idle --json bench_out/host_idle.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from benchmarks.results import add_results_argument, publish


def fixed_python_work() -> int:
    """A fixed amount of pure-Python arithmetic (~0.4 ms): a host reference free of TF, numpy and memory."""
    total = 0
    for i in range(15_000):
        total += i * i
    return total


def idle_gap_cells(call: Callable[[], object], label: str, gaps_ms: list[float], repeats: int) -> dict[str, dict]:
    """p50/p99 of ``call`` right after an idle sleep of each gap (0: back to back), keyed by gap.

    Calls run in blocks of one gap, each after 0.2 s of unmeasured calls in the same rhythm, the blocks
    in turn, so drift hits every gap alike.
    """
    block, settle_s = 25, 0.2
    latencies: dict[float, list[float]] = {gap: [] for gap in gaps_ms}

    def timed(gap_ms: float) -> float:
        time.sleep(gap_ms / 1e3)
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    for _ in range(max(1, repeats // block)):
        for gap in gaps_ms:
            settle_until = time.perf_counter() + settle_s
            while time.perf_counter() < settle_until:
                timed(gap)
            latencies[gap] += [timed(gap) for _ in range(block)]
    cells: dict[str, dict] = {}
    for gap, values in latencies.items():
        ms = np.array(values) * 1e3
        cells[f"{gap:g}"] = cell = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}
        print(f"{label:>20} after {gap:4g} ms idle  p50 {cell['p50_ms']:6.2f} ms  p99 {cell['p99_ms']:6.2f} ms")
    return cells


def ramp(call: Callable[[], object], seconds: float, idle_s: float, window_s: float = 0.2) -> list[float]:
    """p50 ms of ``call`` per ``window_s`` window, run back to back for ``seconds`` after ``idle_s`` idle."""
    time.sleep(idle_s)
    windows: list[float] = []
    current: list[float] = []
    start = window_start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        call()
        current.append(time.perf_counter() - t)
        if t - window_start >= window_s:
            windows.append(float(np.median(current)) * 1e3)
            current, window_start = [], t
    return windows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle_s", type=float, default=3.0, help="idle time before the back-to-back run")
    parser.add_argument("--sustain_s", type=float, default=4.0, help="length of the back-to-back run")
    parser.add_argument("--gaps_ms", type=float, nargs="+", default=[0, 0.5, 1, 5, 20], help="idle sleeps")
    parser.add_argument("--calls", type=int, default=400, help="measured calls per gap")
    parser.add_argument("--json", default="", help="also write the results here")
    add_results_argument(parser)
    args = parser.parse_args(argv)
    if args.sustain_s < 0.4:
        parser.error(f"--sustain_s {args.sustain_s:g}: need at least 0.4 s (two 200 ms windows)")
    if args.idle_s < 0 or args.calls < 1 or any(gap < 0 for gap in args.gaps_ms):
        parser.error("--idle_s and --gaps_ms must be >= 0 and --calls >= 1")
    windows = ramp(fixed_python_work, args.sustain_s, args.idle_s)
    shown = " ".join(f"{w:.2f}" for w in windows)
    print(f"back to back after {args.idle_s:g} s idle, p50 ms per 200 ms window: {shown}")
    fastest = min(windows)
    print(f"first window / fastest window: {windows[0] / fastest:.2f}x")
    cells = idle_gap_cells(fixed_python_work, "fixed Python work", args.gaps_ms, args.calls)
    report = {
        "ramp_p50_ms_per_200ms": windows,
        "first_over_fastest_window": windows[0] / fastest,
        "idle_gaps": cells,
        "idle_gap_p50_over_fastest_window": {gap: cell["p50_ms"] / fastest for gap, cell in cells.items()},
    }
    print(json.dumps(report))
    table = "\n".join(f"after {gap} ms idle: p50 {cell['p50_ms']:.3f} ms, p99 {cell['p99_ms']:.3f} ms"
                      for gap, cell in cells.items())
    publish("host_idle", report, f"ramp p50 ms per 200 ms window: {shown}\n{table}", args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
