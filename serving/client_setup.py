"""A ready BidClient for a manifest and an A/B experiment, and a model server to point it at."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import grpc

from serving.client import BidClient
from serving.experiment import ExperimentWatcher, load_experiment_file
from serving.fallback import PosteriorFallback
from serving.local_server import embedded_server
from tfads.core.defaults import AB_EXPERIMENT, default_config

DEFAULT_EXPERIMENT = default_config(AB_EXPERIMENT)


@contextlib.contextmanager
def open_client(
    target: str,
    manifest_path: str,
    experiment_path: str | Path = DEFAULT_EXPERIMENT,
    *,
    deadline_ms: float = 10.0,
    fallback: bool = True,
    posterior_stats: str = "",
    tls_ca: str = "",
    server_batching: bool = False,
) -> Iterator[BidClient]:
    """A BidClient on ``target``; the experiment file is hot-reloaded while it is open.

    ``fallback`` bids from the manifest's posterior statistics (or ``posterior_stats``) of the experiment's
    ``fallback_fields`` when the model does not answer; ``tls_ca`` (PEM root certificates) switches the
    channel to TLS. ``server_batching``: the server batches requests (``--enable_batching``): TF Serving batches
    only a Predict that fetches every output and whose inputs share their 0th dimension, so the client then
    sends no output filter and repeats a user's history for every candidate.
    """
    manifest = json.loads(Path(manifest_path).read_text())
    fields = load_experiment_file(experiment_path).fallback_fields
    backup = None
    if fallback and fields:
        stats = posterior_stats or os.path.join(
            os.path.dirname(os.path.abspath(manifest_path)),
            (manifest.get("posterior") or {}).get("path", "posterior/stats.jsonl"),
        )
        backup = PosteriorFallback.load(stats, fields, min_impressions=30)
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes()) if tls_ca else None
    with ExperimentWatcher(str(experiment_path)) as watcher, BidClient.from_manifest(
        target, manifest, watcher, deadline_ms=deadline_ms, fallback=backup, credentials=credentials,
        broadcast_history=not server_batching, filter_outputs=not server_batching,
    ) as client:
        yield client


@contextlib.contextmanager
def server_target(
    model_names: Sequence[str], *, target: str = "", model_config_file: str = "", model_base_path: str = ""
) -> Iterator[str]:
    """``target`` as given, or an embedded server started from ``model_config_file`` / ``model_base_path``."""
    if model_config_file:
        flags = [f"--model_config_file={model_config_file}"]
    elif model_base_path:
        flags = [f"--model_name={model_names[0]}", f"--model_base_path={model_base_path}"]
    elif target:
        yield target
        return
    else:
        raise ValueError("give --target, --model-config-file or --model-base-path")
    with embedded_server(flags, model_names) as started:
        yield started
