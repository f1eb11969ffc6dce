"""The demo job (``tfads demo``, ``make demo``): the whole main job end to end on embedded defaults.

synthetic logs -> Beam job (DirectRunner, 2 workers) -> train DCNv2 + AdaSparse + ESMM (and a plain
DCNv2 control) -> evaluate beside the oracle -> AdaCalib -> export two TF Serving versions ->
embedded TF-Serving-compatible server -> bids through the gRPC client for both A/B arms -> A/B replay;
with ``federated``, one more step: the media party's private user table, split learning against it in its own
process, both parties' exports served and scored (:mod:`tfads.jobs.demo_federated`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

class _Steps:
    """Numbered step headers with timings."""

    def __init__(self, total: int) -> None:
        self.n, self.total = 0, total
        self.start = time.monotonic()

    def __call__(self, title: str, work: Callable[[], Any]) -> Any:
        self.n += 1
        print(f"\n=== {self.n}/{self.total} {title} ===", flush=True)
        t = time.monotonic()
        result = work()
        print(f"--- step {self.n} done in {time.monotonic() - t:.0f} s (total {time.monotonic() - self.start:.0f} s)")
        return result


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Size of the demo run."""

    out: str = "demo_out"
    days: int = 8
    impressions_per_day: int = 50_000
    epochs: int | None = None  # None: the experiment config's
    opportunities: int = 1500
    seed: int = 0
    federated: bool = False  # the optional step: media party + split learning (the logs get its user table)


def run_demo(args: DemoSettings) -> None:
    """Every step of the main job, printing what a user needs to see; artefacts under ``args.out``."""
    out = os.path.abspath(args.out)
    paths = {k: os.path.join(out, k)
             for k in ("logs", "data", "model", "control", "calibrated", "models", "eval", "federated")}
    manifest_path = os.path.join(paths["data"], "manifest.json")
    step = _Steps(9 if args.federated else 8)

    step(
        f"synthetic ad logs: {args.days} days x {args.impressions_per_day:,} impressions -> {paths['logs']}",
        lambda: _datagen(paths["logs"], args),
    )
    step(
        "Beam job (DirectRunner, 2 workers): logs -> TFRecords, vocabularies, posterior stats, manifest",
        lambda: _beam(paths["logs"], paths["data"]),
    )
    from tfads.core.experiment import load_experiment

    config = load_experiment()
    if args.epochs:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=args.epochs))
    treatment = step(
        "train DCNv2 + AdaSparse (Fusion) + ESMM heads", lambda: _train(config, manifest_path, paths["model"])
    )
    control_config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, adasparse=dataclasses.replace(config.model.adasparse, enabled=False)),
    )
    control = step(
        "train the A/B control: plain DCNv2 + ESMM", lambda: _train(control_config, manifest_path, paths["control"])
    )
    step(
        "evaluate on the test split beside the oracle (true probabilities)",
        lambda: _evaluate({"DCNv2+AdaSparse": treatment, "DCNv2": control}, manifest_path, paths),
    )
    step(
        "AdaCalib: Beam posterior statistics on the calib split, field-adaptive calibration per scenario and head",
        lambda: _calibrate(paths, manifest_path),
    )
    config_file = step(
        "export TF Serving versions: 1 = DCNv2 (label stable), 2 = DCNv2+AdaSparse+AdaCalib (canary)",
        lambda: _export(paths, manifest_path),
    )
    step(
        "embedded TF-Serving-compatible server + gRPC bidding client: bids and the A/B replay",
        lambda: _serve_and_bid(config_file, manifest_path, paths, args),
    )
    if args.federated:
        step(
            "federated media embeddings: PSI, split learning with the media party's process, both exports served",
            lambda: _federated(config, manifest_path, paths, args),
        )
    print(f"\nall artefacts under {out}")


def _datagen(logs: str, args: DemoSettings) -> None:
    from tfads.datagen import generate
    from tfads.datagen.media import NO_MEDIA, MediaPlan

    info = generate(
        logs, days=args.days, impressions_per_day=args.impressions_per_day, seed=args.seed, corrupt_rate=0.005,
        media_plan=MediaPlan(enabled=True) if args.federated else NO_MEDIA,
    )
    print("lines written: " + ", ".join(f"{k} {v:,}" for k, v in info["counts"].items()))


def _beam(logs: str, data: str) -> None:
    from beam_jobs.manifest import summary_text
    from tfads.jobs.dataset import build_dataset

    with open(build_dataset(logs, data, workers=2)) as f:
        print(summary_text(json.load(f)))


def _train(config, manifest_path: str, model_dir: str):
    from tfads.train import summary_line, train

    result = train(config, manifest_path, model_dir, verbose=2)
    print(summary_line(result.history, result.kept))
    return result.model


def _evaluate(models: dict, manifest_path: str, paths: dict[str, str]) -> None:
    from tfads import metrics
    from tfads.evaluate import evaluate_frame, write_report
    from tfads.core.manifest import load_manifest
    from tfads.predict import predict_split
    from tfads.sparsity import scenario_sparsity
    from tfads.truth import attach_truth

    manifest = load_manifest(manifest_path)
    rows: dict[str, dict] = {}
    for name, model in models.items():
        scored = attach_truth(predict_split(model, manifest, "test"), paths["logs"], manifest.key)
        evaluation = evaluate_frame(scored, field=manifest.domain, users=manifest.user_key)
        sparsity = scenario_sparsity(model, manifest)
        files = write_report(evaluation, scored, os.path.join(paths["eval"], name), model_name=name, sparsity=sparsity)
        for task in manifest.heads:
            m = evaluation.metrics.get(task, {})
            rows[f"{name} p{task.upper()}"] = {k: m[k] for k in ("AUC", "LogLoss", "GAUC", "PCOC") if k in m}
            if "Oracle AUC" in m and name == next(iter(models)):
                rows[f"oracle p{task.upper()}"] = {"AUC": m["Oracle AUC"], "LogLoss": m["Oracle LogLoss"]}
        if sparsity is not None:
            matrix, layers, _ = sparsity
            shares = ", ".join(f"{layer} {s:.2f}" for layer, s in zip(layers, matrix.mean(axis=1), strict=True))
            print(f"{name}: AdaSparse pruned share per layer (mean over scenarios): {shares}")
        print(f"{name}: plots " + ", ".join(str(p) for p in files.values() if str(p).endswith(".png")))
    print(metrics.metrics_table(rows))


def _calibrate(paths: dict[str, str], manifest_path: str) -> None:
    from tfads.jobs.calibrate import calibrate_and_report

    report = calibrate_and_report(paths["model"], manifest_path, paths["calibrated"], logs=paths["logs"], holdout=0.5)
    print("fitted on half of the calib day; uncalibrated vs the best baseline vs AdaCalib per head on the other half "
          "(where calibration is defined) and on the test day (which adds the day-to-day drift):\n")
    print(report.table)
    print("full comparison: " + ", ".join(str(f) for f in report.files))


def _export(paths: dict[str, str], manifest_path: str) -> str:
    from serving.local_server import model_config_text
    from serving.export import check_export, export_model
    from tfads.core.manifest import load_manifest
    from tfads.train import load_trained_model

    manifest = load_manifest(manifest_path)
    base = os.path.join(paths["models"], "ctr")
    if os.path.isdir(base):  # a re-run of the demo in the same --out replaces its earlier versions
        shutil.rmtree(base)
        print(f"removed the previous demo run's versions under {base}")
    for version, source in ((1, paths["control"]), (2, paths["calibrated"])):
        model = load_trained_model(source, float32_matmuls=True)
        path = export_model(model, manifest, base, version=version, card={"source": source})
        print(f"exported {path} (SavedModel vs Keras max |diff| {check_export(model, manifest, path):.1e})")
    config_file = os.path.join(paths["models"], "models.config")
    with open(config_file, "w") as f:
        f.write(model_config_text("ctr", base, {"stable": 1, "canary": 2}))
    print(f"TF Serving model config: {config_file}")
    return config_file


def _serve_and_bid(config_file: str, manifest_path: str, paths: dict[str, str], args: DemoSettings) -> None:
    from serving.client_setup import DEFAULT_EXPERIMENT, open_client
    from serving.experiment import load_experiment_file
    from serving.local_server import embedded_server
    from serving.simulate_ab import ReplaySettings, render_markdown, simulate_ab, write_report
    from serving.traffic import opportunities, send_bids, summarize_responses
    from tfads.truth import read_truth

    log = os.path.join(paths["models"], "server.log")
    with embedded_server([f"--model_config_file={config_file}"], ["ctr"], log_path=log) as target:
        print(f"embedded server on {target} (log {log}); both versions AVAILABLE")

        def connect():
            return open_client(target, manifest_path, DEFAULT_EXPERIMENT, deadline_ms=200)

        requests = opportunities(manifest_path, 4, limit=3)
        with connect() as client:
            client.wait_until_available(timeout_s=60)
            for arm in ("control", "treatment"):
                print(f"\n-- bids for arm {arm} --")
                print(summarize_responses(send_bids(client, requests, arm=arm)))
        print("\n-- A/B replay of held-out traffic through both arms --")
        experiment = load_experiment_file(DEFAULT_EXPERIMENT)
        summary, settings = simulate_ab(manifest_path, read_truth(paths["logs"]), experiment,
                                        ReplaySettings(opportunities=args.opportunities), connect)
        files = write_report(summary, settings, os.path.join(args.out, "ab_report"))
        print(render_markdown(summary, settings, max_scenarios=15))
        print("report: " + ", ".join(files.values()))


def _federated(config, manifest_path: str, paths: dict[str, str], args: DemoSettings) -> None:
    from tfads.federated.config import SplitConfig
    from tfads.jobs.demo_federated import serve_and_bid, train_and_export

    cfg = SplitConfig(seed=args.seed)
    _, config_file = train_and_export(paths["logs"], manifest_path, config.model, paths["federated"], paths["models"],
                                      cfg)
    serve_and_bid(config_file, manifest_path, cfg.media_dim, os.path.join(paths["federated"], "server.log"))
