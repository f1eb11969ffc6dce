"""``tfads simulate-ab``: replay held-out impression opportunities through the A/B arms (second-price auction)."""

from __future__ import annotations

import argparse

from serving.bidding import BID_TYPES
from serving.experiment import load_experiment_file
from serving.simulate_ab import (
    UPLIFT_METRICS,
    AuctionParams,
    ReplaySettings,
    read_truth_file,
    render_markdown,
    simulate_ab,
    write_report,
)
from tfads.cli.arg_types import number_in
from tfads.cli.client_options import add_client_arguments, connect


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_client_arguments(parser)
    parser.set_defaults(deadline_ms=1000.0)
    parser.add_argument("--truth", required=True, help="`tfads datagen` logs directory (or a truth JSONL)")
    parser.add_argument("--split", default="test", help="held-out split to replay")
    parser.add_argument("--opportunities", type=int, default=2000, help="impression opportunities to replay")
    parser.add_argument("--candidates", type=int, default=5, help="candidate ads per opportunity (K)")
    parser.add_argument("--assignment", choices=["paired", "hash"], default="paired",
                        help="paired: every opportunity through every arm; hash: through its user's arm")
    parser.add_argument("--bid-type", choices=BID_TYPES, default="",
                        help="bid every candidate with this bid type instead of its logged one: OCPA bids "
                        "1000 x pCTR x pCVR x target CPA from each arm's model, so arms serving different CVR models "
                        "compare on ROI and revenue (default: as logged)")
    parser.add_argument("--price", type=number_in(1e-9, 1e9), default=None,
                        help="every candidate's price: the target CPA for OCPA / OCPC, the CPC bid, the CPM "
                        "(default: each candidate's logged price)")
    parser.add_argument("--competitors", type=int, default=3, help="synthetic competitor bids per opportunity")
    parser.add_argument("--competitor-scale", type=float, default=1.0, help="median competitor bid / median eCPM")
    parser.add_argument("--competitor-sigma", type=float, default=0.8, help="log-normal spread of competitor bids")
    parser.add_argument("--reserve-ratio", type=float, default=0.3, help="reserve price / median true eCPM")
    parser.add_argument("--control", default="", help="control arm (default: the first arm)")
    parser.add_argument("--treatment", default="", help="treatment arm (default: the second arm)")
    parser.add_argument("--uplift-metric", choices=UPLIFT_METRICS, default="ctr", help="per-scenario uplift metric")
    parser.add_argument("--min-impressions", type=int, default=20, help="per-scenario minimum for UPR")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="ab_report", help="report directory")


def settings_from_args(args: argparse.Namespace) -> ReplaySettings:
    """The replay settings the flags describe."""
    return ReplaySettings(
        split=args.split, opportunities=args.opportunities, candidates=args.candidates, assignment=args.assignment,
        auction=AuctionParams(args.competitors, args.competitor_scale, args.competitor_sigma, args.reserve_ratio),
        control=args.control, treatment=args.treatment, uplift_metric=args.uplift_metric,
        min_impressions=args.min_impressions, bootstrap=args.bootstrap, seed=args.seed,
        bid_type=args.bid_type, price=args.price,
    )


def run(args: argparse.Namespace) -> int:
    experiment = load_experiment_file(args.experiment)
    models = sorted({a.model_name for a in experiment.arms})
    summary, settings = simulate_ab(args.data, read_truth_file(args.truth), experiment, settings_from_args(args),
                                    lambda: connect(args, models))
    paths = write_report(summary, settings, args.out)
    print(render_markdown(summary, settings, max_scenarios=15))
    print("report: " + ", ".join(paths.values()))
    return 0
