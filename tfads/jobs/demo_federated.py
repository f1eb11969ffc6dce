"""The demo's optional federated step (``tfads demo --federated``): the media party as its own process, the ad
party trained by split learning against it, both exported, served by one embedded server and scored by the
bidding client that fetches the media embedding (or falls back to the default embedding)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2
from tqdm import tqdm

from tfads.core.experiment import ModelConfig
from tfads.datagen.media import MEDIA_TABLE
from tfads.federated.channel import PeerLost
from tfads.federated.config import SplitConfig

MEDIA_MODEL, AD_MODEL = "media", "fedctr"  # TF Serving model names of the two parties' exports


def split_flags(cfg: SplitConfig) -> list[str]:
    """``cfg`` as the flags of ``tfads media-party`` / ``tfads ad-party`` (one per field, same name)."""
    values = {**dataclasses.asdict(cfg), **dataclasses.asdict(cfg.privacy)}
    del values["privacy"]
    return [part for name, value in values.items() for part in
            ("--" + name.replace("_", "-"), ",".join(map(str, value)) if isinstance(value, list) else str(value))]


@contextlib.contextmanager
def media_party_process(table: str, state: str, cfg: SplitConfig, export_base: str) -> Iterator[str]:
    """``tfads media-party`` as a subprocess (its log in ``<state>/media_party.log``); yields its target once
    it listens. On leaving, waits for its clean exit (the ad party said Stop: it exports), else kills it.

    Raises:
      PeerLost: the media party did not start or did not exit cleanly (the message names its log)."""
    os.makedirs(state, exist_ok=True)
    log_path = os.path.join(state, "media_party.log")
    cmd = [sys.executable, "-m", "tfads.cli", "media-party", "--media", table, "--state", state, *split_flags(cfg),
           "--idle-timeout", "120", "--export-base", export_base]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = proc.stdout.readline()  # blocks until it listens, or EOF when it exits
        if not line.startswith("listening on "):
            raise PeerLost(f"the media party did not start (exit {proc.wait()}); see {log_path}")
        yield line.split()[-1]
        code = proc.wait(timeout=300)
        if code != 0:
            raise PeerLost(f"the media party exited {code}; see {log_path}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def models_config(bases: dict[str, str]) -> str:
    """A text-format ModelServerConfig serving the latest version of each ``{name: base_path}``."""
    config = model_server_config_pb2.ModelServerConfig()
    for name, base in bases.items():
        model = config.model_config_list.config.add()
        model.name, model.base_path, model.model_platform = name, os.path.abspath(base), "tensorflow"
    return text_format.MessageToString(config)


def train_and_export(logs: str, manifest_path: str, model_cfg: ModelConfig, work: str, models: str,
                     cfg: SplitConfig) -> tuple[dict, str]:
    """Run both parties (PSI, split training, test metrics) and export both models; print what happened and
    return the ad party's result and the TF Serving config serving both."""
    from tfads.jobs.federated import run_ad_party

    bases = {MEDIA_MODEL: os.path.join(models, MEDIA_MODEL), AD_MODEL: os.path.join(models, AD_MODEL)}
    for path in [*bases.values(), os.path.join(work, "media_state"), os.path.join(work, "ad_state")]:
        shutil.rmtree(path, ignore_errors=True)  # a re-run starts over (the parties would resume otherwise)
    ad_state = os.path.join(work, "ad_state")
    os.makedirs(ad_state)
    with media_party_process(os.path.join(logs, MEDIA_TABLE), os.path.join(work, "media_state"), cfg,
                             bases[MEDIA_MODEL]) as target:
        print(f"media party: its own process on {target}, holding {os.path.join(logs, MEDIA_TABLE)} "
              "(the ad party never reads it)")
        with tqdm(desc="split learning", unit="step") as bar:
            result = run_ad_party(manifest_path, target, ad_state, model_cfg, cfg, export_base=bases[AD_MODEL],
                                  on_step=lambda step: bar.update(1))
    privacy = result["privacy"]["embedding_per_user"]
    print(f"PSI: {result['intersection']:,} users in common ({result['ad_users']:,} ad-side, "
          f"{result['media_users']:,} media-side; neither learns the other's rest); "
          f"{result['matched_train_share']:.0%} of train rows matched, the rest use the learned default embedding")
    print(f"exchanged {result['training_bytes_per_epoch'] / 2**20:.1f} MiB per epoch; embedding noise "
          f"{result['privacy']['config']['embedding_noise']} gives epsilon {privacy['epsilon']:.3g} per user "
          f"(delta {privacy['delta']:g}; docs/methods/federated.md says what it does and does not guarantee)")
    print("test split (compare with step 5's DCNv2 rows, trained without the media embedding): "
          + json.dumps({k: round(v, 4) for k, v in result["metrics"].items()}))
    print(f"exported {result['export']} and the media party's embedding model under {bases[MEDIA_MODEL]}")
    config_file = os.path.join(models, "federated.config")
    with open(config_file, "w") as f:
        f.write(models_config(bases))
    return result, config_file


def serve_and_bid(config_file: str, manifest_path: str, media_dim: int, log_path: str) -> None:
    """Both exports on one embedded server; bids through the client that fetches the media embedding, then the
    same bids with the media server unreachable (the default embedding within the deadline)."""
    from serving.bidding import BiddingParams
    from serving.experiment import Arm, Experiment
    from serving.federated import MediaBidClient
    from serving.local_server import embedded_server
    from serving.traffic import opportunities, send_bids, summarize_responses
    from tfads.core.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    experiment = Experiment("federated", "demo", [Arm("federated", 1.0, model_name=AD_MODEL,
                                                      bidding=BiddingParams(outputs="raw"))])
    requests = opportunities(manifest_path, 4, limit=3)
    with embedded_server([f"--model_config_file={config_file}"], [MEDIA_MODEL, AD_MODEL], log_path=log_path) as target:
        print(f"embedded server on {target} serving {MEDIA_MODEL} (the media party's) and {AD_MODEL} (log {log_path})")
        for title, media_target in (("media embedding fetched", target),
                                    ("media server unreachable: the default embedding", "127.0.0.1:1")):
            with MediaBidClient.from_manifest(target, manifest.data, experiment, media_target=media_target,
                                              media_dim=media_dim, media_deadline_ms=50, deadline_ms=2000) as client:
                client.wait_until_available(timeout_s=60)
                print(f"\n-- bids, {title} --")
                responses = send_bids(client, requests)
                print(summarize_responses(responses))
                print(f"media fallbacks: {client.media_fallbacks} of {len(requests)} requests")
