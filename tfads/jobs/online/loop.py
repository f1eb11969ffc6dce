"""Watch a stream directory and feed each new shard, in name order, to the learner exactly once."""

from __future__ import annotations

import logging
import os
import time

from tfads.jobs.online.report import write_report
from tfads.jobs.online.updater import OnlineLearner

log = logging.getLogger(__name__)
SHARD_SUFFIXES = (".tfrecord.gz", ".tfrecord")


def list_shards(stream_dir: str) -> list[str]:
    """Shard paths relative to ``stream_dir``, sorted; hidden files and directories are skipped, so
    writers publish a shard by renaming it into place (like the export versions)."""
    found = []
    for root, dirs, files in os.walk(stream_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.relpath(os.path.join(root, f), stream_dir) for f in files
                  if f.endswith(SHARD_SUFFIXES) and not f.startswith(".")]
    return sorted(found)


def pending_shards(stream_dir: str, consumed: list[str]) -> list[str]:
    """Shards of the stream not consumed yet, in order."""
    done = set(consumed)
    return [s for s in list_shards(stream_dir) if s not in done]


def run_loop(learner: OnlineLearner, stream_dir: str, *, once: bool = False, report_dir: str | None = None) -> int:
    """Process pending shards; with ``once`` stop when none is left, else poll every
    ``config.poll_seconds`` (until ``config.max_idle_polls`` empty polls, if set). Returns updates done."""
    if not os.path.isdir(stream_dir):
        raise FileNotFoundError(f"--stream {stream_dir}: not a directory")
    report_dir = report_dir or learner.store.root
    done, idle = 0, 0
    while True:
        pending = pending_shards(stream_dir, learner.state.consumed)
        for shard in pending:
            learner.update(shard, os.path.join(stream_dir, shard))
            write_report(report_dir, learner.state.history)
            done += 1
        if pending:
            idle = 0
            continue
        idle += 1
        limit = learner.config.max_idle_polls
        if once or (limit is not None and idle >= limit):
            return done
        time.sleep(learner.config.poll_seconds)  # poll interval of the watched directory
