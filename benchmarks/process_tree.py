"""Peak memory and CPU time of a command and every process it starts, from Linux's /proc.

``VmHWM`` (a process's resident-memory high-water mark) and its user+system CPU ticks are read for the
command and all its descendants every ``interval`` seconds while it runs; both only grow, so the last
reading of a process is its total up to that moment (a process that lives shorter than one interval
can be missed: the DirectRunner's workers live for the whole job).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class ProcessStats:
    """One process's command line, peak resident memory (MiB) and CPU seconds."""

    pid: int
    cmdline: str
    peak_mib: float = 0.0
    cpu_s: float = 0.0


@dataclass
class TreeRun:
    """A finished command: exit code, wall seconds and the processes seen (the command itself first)."""

    returncode: int
    seconds: float
    processes: list[ProcessStats] = field(default_factory=list)


def _children(pid: int) -> list[int]:
    """Children of ``pid`` started by any of its threads."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return out


def _read(pid: int, stats: ProcessStats) -> None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    stats.peak_mib = max(stats.peak_mib, int(line.split()[1]) / 1024)
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        stats.cpu_s = max(stats.cpu_s, (int(fields[11]) + int(fields[12])) / _TICK)
    except (OSError, IndexError, ValueError):
        pass


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return "?"


def run_watched(cmd: list[str], *, interval: float = 0.2, env: dict[str, str] | None = None) -> TreeRun:
    """Run ``cmd`` to completion, watching it and its descendants; RuntimeError with its stderr's tail if it fails."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        seen: dict[int, ProcessStats] = {proc.pid: ProcessStats(proc.pid, " ".join(cmd)[:200])}
        while proc.poll() is None:
            pending = [proc.pid]
            while pending:
                pid = pending.pop()
                if pid not in seen:
                    seen[pid] = ProcessStats(pid, _cmdline(pid))
                _read(pid, seen[pid])
                pending += _children(pid)
            time.sleep(interval)
        if proc.returncode:
            stderr.seek(0)
            tail = stderr.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")
    return TreeRun(proc.returncode, time.perf_counter() - start, list(seen.values()))
