"""``tfads bid``: send bid requests (a JSONL file or a split of the manifest) through the bidding client.

Also the shared plumbing of the bidding tools: bid requests built from logged impressions, and an
embedded model server started as a subprocess (``embedded_server``) for demos, tests and benchmarks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import grpc

from serving.client import BidClient, BidRequestError, wait_for_models
from serving.experiment import ExperimentWatcher, load_experiment_file
from serving.fallback import PosteriorFallback

DEFAULT_EXPERIMENT = Path(__file__).resolve().parent.parent / "configs" / "ab_experiment.yaml"
GROUP_BY = ("scenario", "hour")


# ---------------------------------------------------------------------- bid requests from logs


def split_rows(manifest_path: str, split: str = "test", limit: int | None = None) -> pd.DataFrame:
    """Raw features, trace_id and labels of a split's examples (first ``limit`` rows)."""
    from tfads.data import make_dataset
    from tfads.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    ds = make_dataset(manifest.split_files(split), manifest, 1024, with_meta=True, for_training=False)
    parts, count = [], 0
    for batch in ds:
        parts.append({k: v.numpy() for k, v in batch.items()})
        count += len(parts[-1]["trace_id"])
        if limit is not None and count >= limit:
            break
    if not parts:
        raise ValueError(f"{manifest_path}: split {split!r} has no examples")
    frame = pd.DataFrame({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    for col in frame.columns:
        if pd.api.types.is_object_dtype(frame[col].dtype):
            frame[col] = frame[col].str.decode("utf-8")
    return frame.head(limit) if limit is not None else frame


def requests_from_rows(
    rows: pd.DataFrame, candidates: int, *, seed: int = 0, group_by: Sequence[str] = GROUP_BY
) -> list[dict[str, Any]]:
    """Impression opportunities of ``candidates`` logged impressions each, from the same group
    (scenario and hour). Every candidate keeps its whole logged row (its own user, context, ad and
    trace_id), so the model's prediction and the generator's truth refer to the same impression; the
    opportunity's user (for the A/B arm) is its first candidate's. Leftovers of a group are dropped."""
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    keys = [k for k in group_by if k in rows.columns]
    rng = np.random.default_rng(seed)
    groups = rows.groupby(keys, sort=True) if keys else [((), rows)]
    requests = []
    for _, group in groups:
        order = rng.permutation(len(group))
        records = group.iloc[order].to_dict("records")
        for start in range(0, len(records) - candidates + 1, candidates):
            chunk = records[start:start + candidates]
            requests.append({
                "request_id": f"opp-{len(requests)}",
                "user_id": chunk[0].get("user_id", len(requests)),
                "features": {},
                "candidates": chunk,
            })
    order = rng.permutation(len(requests))
    return [requests[i] for i in order]


def read_requests(path: str) -> list[dict[str, Any]]:
    """Bid requests from a JSONL file (one request mapping per line)."""
    requests = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    requests.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{number}: not valid JSON: {e}") from e
    return requests


# ---------------------------------------------------------------------- embedded server


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_config_text(name: str, base_path: str, labels: Mapping[str, int]) -> str:
    """A text-format ModelServerConfig serving the labelled versions of one model."""
    versions = "".join(f"        versions: {v}\n" for v in sorted(set(labels.values())))
    label_lines = "".join(f'    version_labels {{ key: "{k}" value: {v} }}\n' for k, v in labels.items())
    return (
        "model_config_list {\n  config {\n"
        f'    name: "{name}"\n    base_path: "{os.path.abspath(base_path)}"\n    model_platform: "tensorflow"\n'
        f"    model_version_policy {{\n      specific {{\n{versions}      }}\n    }}\n{label_lines}"
        "  }\n}\n"
    )


@contextlib.contextmanager
def embedded_server(
    flags: Sequence[str], models: Sequence[str], *, timeout_s: float = 120.0, log_path: str | None = None
) -> Iterator[str]:
    """Run ``python -m serving.server <flags>`` on a free 127.0.0.1 port; yield its gRPC target once
    every model in ``models`` has an AVAILABLE version (ModelService.GetModelStatus); stop it after.

    Raises:
      RuntimeError: the server exited or its models did not become available (with its log's tail).
    """
    port = free_port()
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(
            open(log_path, "w+") if log_path else tempfile.TemporaryFile("w+")  # noqa: SIM115
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving.server", f"--port={port}", *flags],
            stdout=log, stderr=subprocess.STDOUT,
        )
        target = f"127.0.0.1:{port}"
        try:
            channel = stack.enter_context(grpc.insecure_channel(target))
            try:
                wait_for_models(channel, [(m, None) for m in models], timeout_s=timeout_s,
                                alive=lambda: proc.poll() is None)
            except TimeoutError as e:
                log.seek(0)
                tail = log.read()[-2000:]
                raise RuntimeError(f"embedded server on {target} not ready ({e}); its log ends:\n{tail}") from e
            yield target
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------------- the command


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``tfads bid`` and ``tfads simulate-ab``: server, data, experiment, client."""
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


@contextlib.contextmanager
def make_client(args: argparse.Namespace, target: str) -> Iterator[BidClient]:
    """A BidClient from the shared options; the experiment file is hot-reloaded while it is open."""
    manifest = json.loads(Path(args.data).read_text())
    fallback = None
    if args.fallback == "posterior":
        stats = args.posterior_stats or os.path.join(
            os.path.dirname(os.path.abspath(args.data)),
            (manifest.get("posterior") or {}).get("path", "posterior/stats.jsonl"),
        )
        fallback = PosteriorFallback.load(stats, ["campaign_id", "advertiser_id", "scenario"], min_impressions=30)
    credentials = None
    if args.tls_ca:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(args.tls_ca).read_bytes())
    with ExperimentWatcher(args.experiment) as watcher, BidClient.from_manifest(
        target, manifest, watcher, deadline_ms=args.deadline_ms, fallback=fallback, credentials=credentials
    ) as client:
        yield client


@contextlib.contextmanager
def server_target(args: argparse.Namespace, model_names: Sequence[str]) -> Iterator[str]:
    """--target as given, or an embedded server started from --model-config-file / --model-base-path."""
    if args.model_config_file:
        flags = [f"--model_config_file={args.model_config_file}"]
    elif args.model_base_path:
        flags = [f"--model_name={model_names[0]}", f"--model_base_path={args.model_base_path}"]
    elif args.target:
        yield args.target
        return
    else:
        raise ValueError("give --target, --model-config-file or --model-base-path")
    with embedded_server(flags, model_names) as target:
        yield target


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
        rows = split_rows(args.data, args.split, limit=args.limit * args.candidates * 4)
        requests = requests_from_rows(rows, args.candidates)[: args.limit]
    experiment = load_experiment_file(args.experiment)
    models = sorted({a.model_name for a in experiment.arms})
    with server_target(args, models) as target, make_client(args, target) as client:
        client.wait_until_available(timeout_s=60)
        out = open(args.output, "w") if args.output else None  # noqa: SIM115
        try:
            responses = []
            for request in requests:
                try:
                    response = client.bid(request, arm=args.arm)
                except BidRequestError as e:
                    print(f"rejected: {e}", file=sys.stderr)
                    continue
                responses.append(response)
                if out:
                    out.write(json.dumps(response.to_dict()) + "\n")
                if not args.quiet:
                    winner = response.winner
                    best = f"winner {winner} bid {response.bids[winner]:.4f} CPM" if winner is not None else "no bid"
                    print(f"{response.request_id}: arm={response.arm} version={response.model_version} "
                          f"source={response.source} {best} ({response.latency_s * 1000:.1f} ms)")
        finally:
            if out:
                out.close()
        print(summarize(responses))
    return 0


def summarize(responses: Sequence[Any]) -> str:
    """Requests, sources, versions and latency per arm, as a small text table."""
    lines = [f"{'arm':<12} {'requests':>8} {'model':>6} {'fallback':>8} {'none':>5} {'versions':<12} "
             f"{'p50 ms':>7} {'p99 ms':>7}"]
    for arm in sorted({r.arm for r in responses}):
        mine = [r for r in responses if r.arm == arm]
        sources = Counter(r.source for r in mine)
        versions = ",".join(str(v) for v in sorted({r.model_version for r in mine if r.model_version is not None}))
        ms = np.array([r.latency_s for r in mine]) * 1000
        lines.append(f"{arm:<12} {len(mine):>8} {sources['model']:>6} {sources['fallback']:>8} {sources['none']:>5} "
                     f"{versions or '-':<12} {np.percentile(ms, 50):>7.2f} {np.percentile(ms, 99):>7.2f}")
    return "\n".join(lines)
