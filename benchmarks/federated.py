"""Federated media embeddings (issue 17): ad-only vs federated vs centralised on generator data whose truth
has the media party's term, 3 seeds, plus a noise sweep and the bytes exchanged per epoch.

* ad-only: the top model with every row on the default embedding (the ad party alone);
* centralised: bottom + top trained in one process on the joined data, no noise (the upper bound);
* federated: the split protocol (PSI, then Forward / Backward messages through :class:`LocalPeer`, the same
  encoding as the gRPC channel and the same bytes) with clipping and noise; the sweep varies the noise
  (embedding and gradient multipliers alike).
Test-split AUCs of pCTR (all rows), pCVR (clicked rows), pCTCVR (all rows); "recovered" is
(federated - ad-only) / (centralised - ad-only) of the mean AUCs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

import numpy as np

import tfads  # noqa: F401
from benchmarks.results import add_results_argument, publish
from tfads.core.experiment import load_experiment
from tfads.core.manifest import load_manifest
from tfads.datagen import generate
from tfads.datagen.media import MEDIA_TABLE, MediaPlan
from tfads.federated.ad_party import AdPartyTrainer
from tfads.federated.channel import LocalPeer
from tfads.federated.central import CentralTrainer
from tfads.federated.config import NO_NOISE, PrivacyConfig, SplitConfig
from tfads.federated.data import MediaTable, load_split
from tfads.federated.media_party import MediaService
from tfads.jobs.dataset import build_dataset
from tfads.jobs.federated import top_model_config

METRICS = ("ctr_auc", "cvr_auc", "ctcvr_auc")


def _federated(manifest, model_cfg, cfg, table, test, work) -> dict:
    media = MediaService(table, cfg, os.path.join(work, "media"))
    ad = AdPartyTrainer(manifest, model_cfg, cfg, os.path.join(work, "ad"), LocalPeer(media.handlers()))
    ad.align(ad.keys(test))
    start = time.perf_counter()
    run = ad.train()
    return {**ad.evaluate(test), "train_s": time.perf_counter() - start,
            "training_bytes_per_epoch": run.bytes_per_epoch, "bytes_by_method": run.bytes_by_method}


def run_seed(seed: int, args: argparse.Namespace, work: str) -> dict:
    logs = os.path.join(work, "logs")
    generate(logs, days=args.days, impressions_per_day=args.impressions, seed=seed, progress=False,
             media_plan=MediaPlan(enabled=True))
    manifest = load_manifest(build_dataset(logs, os.path.join(work, "data")))
    table = MediaTable.load(os.path.join(logs, MEDIA_TABLE))
    base = load_experiment().model
    model_cfg = top_model_config(dataclasses.replace(base, embedding_dim=8, deep_units=[64, 32], tower_units=[16]))
    cfg = SplitConfig(batch_size=args.batch_size, epochs=args.epochs, seed=seed, checkpoint_every=10_000)
    test, train = load_split(manifest, "test"), load_split(manifest, "train")
    out: dict = {"seed": seed, "train_rows": len(train), "test_rows": len(test)}
    for name, use_media in (("ad_only", False), ("centralised", True)):
        trainer = CentralTrainer(manifest, model_cfg, dataclasses.replace(cfg, privacy=NO_NOISE), table,
                                 use_media=use_media, train_split=train)
        trainer.train()
        out[name] = trainer.evaluate(test)
    out["federated"] = {}
    for noise in args.noise:
        privacy = dataclasses.replace(cfg.privacy, embedding_noise=noise, gradient_noise=noise)
        run_dir = tempfile.mkdtemp(dir=work, prefix=f"noise{noise}-")
        out["federated"][str(noise)] = _federated(manifest, model_cfg, dataclasses.replace(cfg, privacy=privacy),
                                                  table, test, run_dir)
    print(seed, {k: out[k] for k in ("ad_only", "centralised")}, flush=True)
    return out


def summarise(runs: list[dict], noise_levels: list[float], default: float) -> tuple[dict, str]:
    def mean(get) -> dict[str, float]:
        return {m: float(np.mean([get(r)[m] for r in runs])) for m in METRICS}

    ad, central = mean(lambda r: r["ad_only"]), mean(lambda r: r["centralised"])
    rows = [("ad-only", ad, None), ("centralised", central, None)]
    summary = {"ad_only": ad, "centralised": central, "federated": {}}
    for noise in noise_levels:
        fed = mean(lambda r, n=noise: r["federated"][str(n)])
        recovered = {m: (fed[m] - ad[m]) / (central[m] - ad[m]) if central[m] != ad[m] else float("nan")
                     for m in METRICS}
        mb = float(np.mean([r["federated"][str(noise)]["training_bytes_per_epoch"] for r in runs])) / 2**20
        summary["federated"][str(noise)] = {**fed, "recovered": recovered, "training_mib_per_epoch": mb}
        rows.append((f"federated noise {noise:g}" + (" (default)" if noise == default else ""), fed, (recovered, mb)))
    lines = ["| arm | pCTR AUC | pCVR AUC | pCTCVR AUC | share of the centralised gain (CTR / CVR / CTCVR) | "
             "MiB per epoch |", "|---|---|---|---|---|---|"]
    for name, m, extra in rows:
        share = " / ".join(f"{extra[0][k]:.2f}" for k in METRICS) if extra else ""
        lines.append(f"| {name} | {m['ctr_auc']:.4f} | {m['cvr_auc']:.4f} | {m['ctcvr_auc']:.4f} | {share} | "
                     f"{extra[1]:.1f} |" if extra else
                     f"| {name} | {m['ctr_auc']:.4f} | {m['cvr_auc']:.4f} | {m['ctcvr_auc']:.4f} | | |")
    return summary, "\n".join(lines) + f"\n\nMeans over seeds {[r['seed'] for r in runs]}.\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--days", type=int, default=9)
    p.add_argument("--impressions", type=int, default=50000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 0.5, 2.0])
    p.add_argument("--cache-dir", default=None,
                   help="keep each finished seed's runs here as seed<N>.json and reuse them (a crash loses one seed)")
    add_results_argument(p)
    args = p.parse_args(argv)
    default = PrivacyConfig().embedding_noise
    runs = []
    for seed in args.seeds:
        cached = os.path.join(args.cache_dir, f"seed{seed}.json") if args.cache_dir else None
        if cached and os.path.isfile(cached):
            with open(cached) as f:
                runs.append(json.load(f))
            continue
        with tempfile.TemporaryDirectory(prefix="tfads-federated-") as work:
            runs.append(run_seed(seed, args, work))
        if cached:
            os.makedirs(args.cache_dir, exist_ok=True)
            with open(cached, "w") as f:
                json.dump(runs[-1], f, default=float)
    summary, table = summarise(runs, args.noise, default)
    publish("federated", {"summary": summary, "runs": runs, "default_noise": default}, table, args)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
