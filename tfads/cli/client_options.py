"""Options shared by ``tfads bid`` and ``tfads simulate-ab``: which server, which data, which experiment."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator, Sequence

from serving.client import BidClient
from serving.client_setup import DEFAULT_EXPERIMENT, open_client, server_target


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """Server, data, experiment and client options."""
    parser.add_argument("--target", default="", help="gRPC host:port of TF Serving / the embedded server")
    parser.add_argument("--model-base-path", default="",
                        help="start the embedded server on this model directory instead of --target")
    parser.add_argument("--model-config-file", default="",
                        help="start the embedded server with this ModelServerConfig (version labels)")
    parser.add_argument("--data", required=True, help="manifest.json (feature names and dtypes, test split)")
    parser.add_argument("--experiment", default=str(DEFAULT_EXPERIMENT), help="A/B experiment YAML")
    parser.add_argument("--deadline-ms", type=float, default=10.0, help="deadline per Predict call")
    parser.add_argument("--fallback", choices=["posterior", "none"], default="posterior",
                        help="bid from the posterior statistics, or not at all, when the model does not answer")
    parser.add_argument("--posterior-stats", default="", help="posterior stats file (default: the manifest's)")
    parser.add_argument("--tls-ca", default="", help="PEM root certificates: use TLS to the server")
    parser.add_argument("--server-batching", action="store_true",
                        help="the server batches requests (TF Serving --enable_batching): send every output and "
                             "repeat a user's history per candidate so requests can be batched (default: the "
                             "history once per request, outputs filtered; TF Serving then runs each alone)")


@contextlib.contextmanager
def connect(args: argparse.Namespace, model_names: Sequence[str]) -> Iterator[BidClient]:
    """A BidClient on the server the options name (an embedded one is started and stopped here)."""
    with server_target(model_names, target=args.target, model_config_file=args.model_config_file,
                       model_base_path=args.model_base_path) as target, \
            open_client(target, args.data, args.experiment, deadline_ms=args.deadline_ms,
                        fallback=args.fallback == "posterior", posterior_stats=args.posterior_stats,
                        tls_ca=args.tls_ca, server_batching=args.server_batching) as client:
        yield client
