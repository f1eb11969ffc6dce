"""Small real data for the Beam job tests: generator logs with feed and corruptions, and two job runs."""

from __future__ import annotations

import pytest

import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS=1 before anything imports TensorFlow)

GEN = {"days": 5, "impressions_per_day": 2500, "seed": 11, "corrupt_rate": 0.02, "with_feed": True}


@pytest.fixture(scope="session")
def feed_logs(tmp_path_factory) -> str:
    """5 days x 2500 impressions with the organic-feed log and 2% corrupted lines."""
    from tfads.datagen import generate

    out = str(tmp_path_factory.mktemp("beam_logs"))
    generate(out, progress=False, **GEN)
    return out


def run_job(logs: str, out: str, *extra: str) -> str:
    from beam_jobs.build_examples import run

    assert run(["--logs", logs, "--out", out, "--cold-start", *extra]) == 0
    return out


# The keyed graph with few buckets and small file pieces, so each file is read in several pieces and each
# bucket holds several days (what larger inputs do with the defaults).
GRAPHS = {"per-day": ["--graph", "per-day"], "keyed": ["--graph", "keyed", "--key-buckets", "5", "--piece-mib", "0.1"]}
TWO_WORKERS = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]


@pytest.fixture(scope="session", params=sorted(GRAPHS))
def graph(request) -> str:
    """Each Beam test runs on both graphs of the job."""
    return request.param


@pytest.fixture(scope="session")
def built(feed_logs, graph, tmp_path_factory) -> str:
    """The job's output directory (DirectRunner, in process, cold start on)."""
    return run_job(feed_logs, str(tmp_path_factory.mktemp(f"beam_out_{graph}")), "--runner", "DirectRunner",
                   *GRAPHS[graph])


@pytest.fixture(scope="session")
def built_two_workers(feed_logs, graph, tmp_path_factory) -> str:
    """The same job with two worker processes."""
    return run_job(feed_logs, str(tmp_path_factory.mktemp(f"beam_out_mp_{graph}")), *TWO_WORKERS, *GRAPHS[graph])
