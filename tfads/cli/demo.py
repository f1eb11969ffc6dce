"""``tfads demo`` (``make demo``): the whole main job end to end on embedded defaults (about ten minutes)."""

from __future__ import annotations

import argparse
import sys

from tfads.jobs.demo import DemoSettings, run_demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="working directory for every artefact")
    parser.add_argument("--days", type=int, default=8, help="days of synthetic logs")
    parser.add_argument("--impressions-per-day", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=None, help="default: the experiment config's")
    parser.add_argument("--opportunities", type=int, default=1500, help="auctions replayed in the A/B simulation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--federated", action="store_true",
                        help="one more step: the logs get a media party's private user table; the media party runs "
                        "as its own process, the ad party trains against it by split learning (PSI, gRPC), both "
                        "exports are served and the bidding client fetches the media embedding")


def run(args: argparse.Namespace) -> int:
    from tfads.federated.channel import PeerLost

    try:
        run_demo(DemoSettings(out=args.out, days=args.days, impressions_per_day=args.impressions_per_day,
                              epochs=args.epochs, opportunities=args.opportunities, seed=args.seed,
                              federated=args.federated))
    except PeerLost as e:  # the federated step's other process failed: its log says why
        print(f"tfads demo: error: {e}", file=sys.stderr)
        return 1
    return 0
