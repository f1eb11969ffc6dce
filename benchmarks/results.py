"""Benchmark results as files: ``benchmarks/results/<name>.json`` (data) and ``<name>.md`` (a readable table).

Both record the command, the commit, the date and the machine, so a number quoted in the docs can be
traced to the run that produced it. Docs link to these files instead of copying numbers; commit them
when they change. ``--results-dir`` (every benchmark) writes elsewhere, e.g. for a trial run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def add_results_argument(parser: argparse.ArgumentParser) -> None:
    """``--results-dir`` (where :func:`publish` writes, default ``benchmarks/results``) and ``--results-name``."""
    parser.add_argument("--results-dir", default=str(RESULTS_DIR),
                        help="write <benchmark>.json and .md here (default: %(default)s, committed)")
    parser.add_argument("--results-name", default=None,
                        help="file name instead of the benchmark's (a second study of the same benchmark)")


def _commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{'+changes' if dirty else ''}"


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, bfloat16 support and the library versions that matter."""
    facts: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.system()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        facts["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line)
        facts["avx512_bf16"] = "avx512_bf16" in cpuinfo
        mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                          if line.startswith("MemTotal")))
        facts["memory_gib"] = round(mem_kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    for package in ("tensorflow", "apache_beam"):
        module = sys.modules.get(package)
        if module is not None:
            facts[package] = getattr(module, "__version__", "?")
    return facts


def publish(name: str, data: Any, table: str, options: argparse.Namespace) -> Path:
    """Write ``<results_dir>/<results_name or name>.json`` and ``.md``; return the ``.md`` path.

    ``table`` is the benchmark's readable summary (markdown or preformatted text); ``options`` carries
    the flags of :func:`add_results_argument`.
    """
    command = " ".join(["python -m", f"benchmarks.{name}", *sys.argv[1:]])
    header = {"benchmark": name, "command": command, "commit": _commit(),
              "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine()}
    out = Path(options.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    command_name, name = name, options.results_name or name
    (out / f"{name}.json").write_text(json.dumps({**header, "results": data}, indent=2, default=float) + "\n")
    facts = ", ".join(f"{k} {v}" for k, v in header["machine"].items())
    body = table if table.lstrip().startswith("|") else f"```\n{table.rstrip()}\n```"
    md = (f"# benchmarks.{command_name}\n\n- command: `{command}`\n- commit: {header['commit']}\n"
          f"- date: {header['date']}\n- machine: {facts}\n- data: [{name}.json]({name}.json)\n\n{body}\n")
    path = out / f"{name}.md"
    path.write_text(md)
    print(f"results: {path}")
    return path
