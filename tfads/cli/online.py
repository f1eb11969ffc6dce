"""``tfads online``: incremental online learning over the new shards of a stream directory."""

from __future__ import annotations

import argparse
import os

from tfads.jobs.online.config import DEFAULT_ONLINE_CONFIG


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, help="a `tfads train` output dir (the starting model)")
    parser.add_argument("--data", required=True, help="manifest.json (features, train split for replay, valid split)")
    parser.add_argument("--stream", required=True, help="directory where new *.tfrecord.gz shards appear")
    parser.add_argument("--export-base", required=True, help="TF Serving model_base_path receiving new versions")
    parser.add_argument("--config", default=str(DEFAULT_ONLINE_CONFIG), help="online-learning YAML")
    parser.add_argument("--state-dir", default=None, help="committed steps and metrics (default <model-dir>/online)")
    parser.add_argument("--model-name", default="ctr", help="model name used in warmup requests")
    parser.add_argument("--once", action="store_true", help="process the pending shards, then exit")


def run(args: argparse.Namespace) -> int:
    from tfads.core.manifest import load_manifest
    from tfads.jobs.online import OnlineLearner, load_online_config, run_loop

    if not os.path.isdir(args.stream):
        raise FileNotFoundError(f"--stream {args.stream}: not a directory")
    config = load_online_config(args.config)
    manifest = load_manifest(args.data)
    state_dir = args.state_dir or os.path.join(args.model_dir, "online")
    learner = OnlineLearner(args.model_dir, manifest, state_dir, args.export_base, config, model_name=args.model_name)
    done = run_loop(learner, args.stream, once=args.once)
    state = learner.state
    accepted = sum(r["accepted"] for r in state.history)
    print(f"online: {done} update(s) this run; step {state.step}, {len(state.consumed)} shard(s) consumed, "
          f"{accepted} accepted; serving version {state.serving_version}; metrics in {state_dir}/metrics.json")
    return 0
