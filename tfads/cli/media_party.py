"""``tfads media-party``: the media party of split learning (serves its table's embeddings over gRPC)."""

from __future__ import annotations

import argparse
import os

from tfads.cli.federated_options import add_split_arguments, split_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--media", required=True,
                        help="the media party's user table (<logs>/media/users/part-00000.jsonl.gz from "
                        "`tfads datagen --media-features`)")
    parser.add_argument("--listen", default="127.0.0.1:0",
                        help="host:port to serve on (port 0: any free port; <state>/media_target names it)")
    parser.add_argument("--tls-cert", default=None, help="PEM certificate for TLS (with --tls-key); default plaintext")
    parser.add_argument("--tls-key", default=None, help="PEM private key for TLS")
    parser.add_argument("--idle-timeout", type=float, default=300.0,
                        help="stop (exit 3, checkpoints kept) after this many seconds without a call (default 300)")
    parser.add_argument("--export-base", default=None,
                        help="after the ad party says stop, export the embedding model (user_id -> media_embedding) "
                        "as the next TF Serving version under this model base path")
    add_split_arguments(parser)
    parser.epilog = ("Resumable: restart with the same --state; the ad party's Hello agrees the step both saved last. "
                     "Exit 0 when the ad party says stop.")


def run(args: argparse.Namespace) -> int:
    from tfads.jobs.federated import run_media_party

    if bool(args.tls_cert) != bool(args.tls_key):
        raise FileNotFoundError("--tls-cert and --tls-key go together")
    os.makedirs(args.state, exist_ok=True)
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    return run_media_party(args.media, args.state, split_config(args), listen=args.listen, tls=tls,
                           idle_timeout_s=args.idle_timeout,
                           ready=lambda target: print(f"listening on {target}", flush=True),
                           export_base=args.export_base)
