"""The two parties as processes: ``tfads media-party`` serves its table and bottom model over gRPC until the
ad party says stop (or nobody calls for ``idle_timeout_s``); ``tfads ad-party`` aligns by PSI, trains, evaluates
on the test split and writes ``<state>/ad_result.json`` (metrics, bytes exchanged, privacy accounting)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from serving.federated import export_ad_model, export_media_model
from tfads.core.experiment import ModelConfig
from tfads.core.manifest import load_manifest
from tfads.federated import privacy
from tfads.federated.ad_party import AdPartyTrainer
from tfads.federated.channel import Peer, serve
from tfads.federated.config import SplitConfig
from tfads.federated.data import MediaTable, load_split
from tfads.federated.media_party import MediaService
from tfads.federated.tls import channel_credentials, server_credentials

log = logging.getLogger(__name__)
TARGET_FILE = "media_target"  # the media party writes host:port here once it listens
AD_RESULT = "ad_result.json"


def run_media_party(table_path: str, state_dir: str, cfg: SplitConfig, *, listen: str = "127.0.0.1:0",
                    tls: tuple[str, str] | None = None, idle_timeout_s: float = 300.0,
                    ready: Callable[[str], None] | None = None, export_base: str | None = None) -> int:
    """Serve until the ad party calls Stop (0) or no call arrives for ``idle_timeout_s`` (3, a clean stop:
    the checkpoints stay for a resume). Writes ``<state_dir>/media_target`` (``host:port``) once listening and
    calls ``ready(host:port)``. With ``export_base``, a clean stop then exports the embedding model (the bottom
    model and the whole user table) as the next version there (:func:`serving.federated.export_media_model`)."""
    service = MediaService(MediaTable.load(table_path), cfg, state_dir)
    server, port = serve(service.handlers(), listen, credentials=server_credentials(*tls) if tls else None)
    host = listen.rsplit(":", 1)[0]
    tmp = os.path.join(state_dir, f".{TARGET_FILE}.tmp")
    with open(tmp, "w") as f:
        f.write(f"{host}:{port}\n")
    os.replace(tmp, os.path.join(state_dir, TARGET_FILE))
    log.info("media party listening on %s:%d (%d users, step %d)", host, port, len(service.table.keys), service.step)
    if ready:
        ready(f"{host}:{port}")
    code = 0
    while not service.stopped.wait(timeout=max(idle_timeout_s - service.idle_for(), 0.01)):
        if service.idle_for() >= idle_timeout_s:
            log.warning("no call from the ad party for %.0f s: stopping at step %d (checkpoints %s)",
                        idle_timeout_s, service.step, service.saved_steps())
            code = 3
            break
    server.stop(grace=2).wait()
    if export_base and code == 0:
        path = export_media_model(service.bottom, service.table.keys, service.table.features, export_base)
        log.info("media embedding model exported to %s", path)
    return code


def top_model_config(model_cfg: ModelConfig) -> ModelConfig:
    """The experiment's model for the split loop: float32 matmuls, and AdaSparse off (its alpha / lambda
    schedules are Keras callbacks of ``fit``, which the split loop does not run)."""
    if model_cfg.adasparse.enabled:
        log.info("federated: model.adasparse is off in the top model (its schedules need `fit`)")
    return dataclasses.replace(model_cfg, matmul_dtype="float32",
                               adasparse=dataclasses.replace(model_cfg.adasparse, enabled=False))


def run_ad_party(manifest_path: str, media_target: str, state_dir: str, model_cfg: ModelConfig, cfg: SplitConfig,
                 *, deadline_s: float = 30.0, ca_path: str | None = None, stop_media: bool = True,
                 on_step: Callable[[int], None] | None = None, export_base: str | None = None) -> dict[str, Any]:
    """Align, train (resuming at the step both parties saved last), evaluate on the test split, write and
    return ``<state_dir>/ad_result.json``. With ``export_base``, the top model (taking the media embedding) is
    exported as the next version there (:func:`serving.federated.export_ad_model`; ``export`` in the result).

    Raises:
      PeerLost: the media party did not answer within ``deadline_s`` (the checkpoints stay).
    """
    manifest = load_manifest(manifest_path)
    peer = Peer(media_target, deadline_s=deadline_s, credentials=channel_credentials(ca_path) if ca_path else None)
    try:
        trainer = AdPartyTrainer(manifest, top_model_config(model_cfg), cfg, state_dir, peer)
        test = load_split(manifest, "test")
        intersection = trainer.align(trainer.keys(test))
        run = trainer.train(on_step=on_step)
        metrics = trainer.evaluate(test)
        if stop_media:
            trainer.stop_peer()
    finally:
        peer.close()
    train_keys = trainer.keys(trainer.train_split)
    matched_keys = train_keys[trainer.position >= 0]
    p = cfg.privacy
    result = {
        "metrics": metrics,
        "start_step": run.start_step, "steps": run.steps, "final_step": trainer.step,
        "steps_per_epoch": trainer.order.steps_per_epoch,
        "intersection": len(intersection.keys), "ad_users": intersection.own_size,
        "media_users": intersection.other_size,
        "matched_train_share": float((trainer.position >= 0).mean()),
        "bytes_by_method": run.bytes_by_method, "training_bytes_per_epoch": run.bytes_per_epoch,
        "privacy": {
            "config": dataclasses.asdict(p),
            "embedding_per_user": privacy.account(p.embedding_noise, privacy.max_releases(matched_keys, cfg.epochs)),
            "gradient_per_example": privacy.account(p.gradient_noise, cfg.epochs),
        },
    }
    if export_base:
        result["export"] = export_ad_model(trainer.top, manifest, export_base, media_dim=cfg.media_dim)
    with open(os.path.join(state_dir, AD_RESULT), "w") as f:
        json.dump(result, f, indent=2, default=float)
    return result
