"""``tfads demo`` (``make demo``): the whole main job end to end on embedded defaults (about ten minutes)."""

from __future__ import annotations

import argparse

from tfads.jobs.demo import DemoSettings, run_demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="working directory for every artefact")
    parser.add_argument("--days", type=int, default=8, help="days of synthetic logs")
    parser.add_argument("--impressions-per-day", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=None, help="default: the experiment config's")
    parser.add_argument("--opportunities", type=int, default=1500, help="auctions replayed in the A/B simulation")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    run_demo(DemoSettings(out=args.out, days=args.days, impressions_per_day=args.impressions_per_day,
                          epochs=args.epochs, opportunities=args.opportunities, seed=args.seed))
    return 0
