"""``tfads ad-party``: the ad party (label owner) of split learning: PSI, training, test metrics."""

from __future__ import annotations

import argparse
import json
import os
import sys

from tfads.cli.federated_options import add_split_arguments, split_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="manifest.json of the ad party's data (`tfads build`)")
    parser.add_argument("--media-target", required=True,
                        help="host:port of the media party, or a file holding it (its <state>/media_target)")
    parser.add_argument("--config", default=None,
                        help="experiment YAML for the top model (default configs/default.yaml)")
    parser.add_argument("--tls-ca", default=None, help="PEM certificate to trust for TLS; default plaintext")
    parser.add_argument("--deadline", type=float, default=30.0,
                        help="seconds per call before the media party counts as lost (default 30)")
    parser.add_argument("--keep-media", action="store_true", help="do not tell the media party to stop at the end")
    parser.add_argument("--export-base", default=None,
                        help="export the trained model (raw fields + media_embedding, media_matched) as the next TF "
                        "Serving version under this model base path")
    add_split_arguments(parser)
    parser.epilog = ("Writes <state>/ad_result.json. Exit 3 when the media party is lost (dead or past --deadline): "
                     "both checkpoints stay; restart both with the same --state dirs to resume aligned.")


def run(args: argparse.Namespace) -> int:
    from tfads.core.experiment import load_experiment
    from tfads.federated.channel import PeerLost
    from tfads.jobs.federated import run_ad_party

    target = args.media_target
    if os.path.isfile(target):
        with open(target) as f:
            target = f.read().strip()
    os.makedirs(args.state, exist_ok=True)
    try:
        experiment = load_experiment(args.config) if args.config else load_experiment()
        result = run_ad_party(args.data, target, args.state, experiment.model, split_config(args),
                              deadline_s=args.deadline, ca_path=args.tls_ca, stop_media=not args.keep_media,
                              export_base=args.export_base)
    except PeerLost as e:
        print(f"tfads ad-party: stopped: {e}", file=sys.stderr)
        return 3
    print(json.dumps({"metrics": result["metrics"], "final_step": result["final_step"],
                      "training_bytes_per_epoch": result["training_bytes_per_epoch"]}, indent=2))
    return 0
