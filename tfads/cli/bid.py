"""``tfads bid``: send bid requests (a JSONL file or a split of the manifest) through the bidding client."""

from __future__ import annotations

import argparse

from serving.experiment import load_experiment_file
from serving.traffic import opportunities, read_requests, send_bids, summarize_responses
from tfads.cli.client_options import add_client_arguments, connect


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_client_arguments(parser)
    parser.add_argument("--requests", default="", help="bid requests JSONL (default: built from --split)")
    parser.add_argument("--split", default="test", help="manifest split to build bid requests from")
    parser.add_argument("--limit", type=int, default=20, help="number of bid requests to send")
    parser.add_argument("--candidates", type=int, default=5, help="candidate ads per request built from a split")
    parser.add_argument("--arm", default=None, help="send every request to this arm (default: by user hash)")
    parser.add_argument("--output", default="", help="write every bid response here as JSONL")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")


def run(args: argparse.Namespace) -> int:
    if args.requests:
        requests = read_requests(args.requests)[: args.limit]
    else:
        requests = opportunities(args.data, args.candidates, split=args.split, limit=args.limit)
    models = sorted({a.model_name for a in load_experiment_file(args.experiment).arms})
    with connect(args, models) as client:
        client.wait_until_available(timeout_s=60)
        if args.output:
            with open(args.output, "w") as out:
                responses = send_bids(client, requests, arm=args.arm, output=out, quiet=args.quiet)
        else:
            responses = send_bids(client, requests, arm=args.arm, quiet=args.quiet)
    print(summarize_responses(responses))
    return 0
