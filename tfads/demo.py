"""``tfads demo`` (``make demo``): the whole main job end to end on embedded defaults.

synthetic logs -> Beam job (DirectRunner, 2 workers) -> train DCNv2 + AdaSparse + ESMM (and a plain
DCNv2 control) -> evaluate beside the oracle -> AdaCalib -> export two TF Serving versions ->
embedded TF-Serving-compatible server -> bids through the gRPC client for both A/B arms -> A/B replay.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

STEPS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="working directory for every artefact")
    parser.add_argument("--days", type=int, default=8, help="days of synthetic logs")
    parser.add_argument("--impressions-per-day", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=None, help="default: the experiment config's (1)")
    parser.add_argument("--opportunities", type=int, default=1500, help="auctions replayed in the A/B simulation")
    parser.add_argument("--seed", type=int, default=0)


class _Steps:
    """Numbered step headers with timings."""

    def __init__(self) -> None:
        self.n = 0
        self.start = time.monotonic()

    def __call__(self, title: str, work: Callable[[], Any]) -> Any:
        self.n += 1
        print(f"\n=== {self.n}/{STEPS} {title} ===", flush=True)
        t = time.monotonic()
        result = work()
        print(f"--- step {self.n} done in {time.monotonic() - t:.0f} s (total {time.monotonic() - self.start:.0f} s)")
        return result


def run(args: argparse.Namespace) -> int:
    out = os.path.abspath(args.out)
    paths = {k: os.path.join(out, k) for k in ("logs", "data", "model", "control", "calibrated", "models", "eval")}
    manifest_path = os.path.join(paths["data"], "manifest.json")
    step = _Steps()

    step(
        f"synthetic ad logs: {args.days} days x {args.impressions_per_day:,} impressions -> {paths['logs']}",
        lambda: _datagen(paths["logs"], args),
    )
    step(
        "Beam job (DirectRunner, 2 workers): logs -> TFRecords, vocabularies, posterior stats, manifest",
        lambda: _beam(paths["logs"], paths["data"]),
    )
    from tfads.experiment import load_experiment

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
        "AdaCalib: Beam posterior statistics on the calib split, field-adaptive calibration per scenario",
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
    print(f"\nall artefacts under {out}")
    return 0


def _datagen(logs: str, args: argparse.Namespace) -> None:
    from tfads.datagen import generate

    info = generate(
        logs, days=args.days, impressions_per_day=args.impressions_per_day, seed=args.seed, corrupt_rate=0.005
    )
    print("lines written: " + ", ".join(f"{k} {v:,}" for k, v in info["counts"].items()))


def _beam(logs: str, data: str) -> None:
    from beam_jobs import build_examples

    code = build_examples.run(
        ["--logs", logs, "--out", data, "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
    )
    if code:
        raise SystemExit(code)


def _train(config, manifest_path: str, model_dir: str):
    from tfads.train import summary_line, train

    result = train(config, manifest_path, model_dir, verbose=2)
    print(summary_line(result.history))
    return result.model


def _evaluate(models: dict, manifest_path: str, paths: dict[str, str]) -> None:
    from tfads import metrics
    from tfads.evaluate import evaluate_frame, write_report
    from tfads.manifest import load_manifest
    from tfads.predict import predict_split
    from tfads.sparsity import scenario_sparsity
    from tfads.truth import attach_truth

    manifest = load_manifest(manifest_path)
    rows: dict[str, dict] = {}
    for name, model in models.items():
        scored = attach_truth(predict_split(model, manifest, "test"), paths["logs"])
        evaluation = evaluate_frame(scored)
        sparsity = scenario_sparsity(model, manifest)
        files = write_report(evaluation, scored, os.path.join(paths["eval"], name), model_name=name, sparsity=sparsity)
        for task in ("ctr", "cvr", "ctcvr"):
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
    from tfads.calibrate import calibrate_and_report

    report = calibrate_and_report(paths["model"], manifest_path, paths["calibrated"], logs=paths["logs"])
    print("pCTR on the test split (uncalibrated vs the best baseline vs AdaCalib):")
    print(report.table)
    print("full comparison: " + ", ".join(str(f) for f in report.files))


def _export(paths: dict[str, str], manifest_path: str) -> str:
    from serving.bid_cli import model_config_text
    from serving.export import check_export, export_model
    from tfads.manifest import load_manifest
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


def _serve_and_bid(config_file: str, manifest_path: str, paths: dict[str, str], args: argparse.Namespace) -> None:
    from serving import bid_cli, simulate_ab
    from serving.bid_cli import embedded_server

    log = os.path.join(paths["models"], "server.log")
    with embedded_server([f"--model_config_file={config_file}"], ["ctr"], log_path=log) as target:
        print(f"embedded server on {target} (log {log}); both versions AVAILABLE")
        common = ["--target", target, "--data", manifest_path, "--deadline-ms", "200"]
        for arm in ("control", "treatment"):
            print(f"\n-- bids for arm {arm} --")
            bid_cli.run(_parse(bid_cli, [*common, "--limit", "3", "--candidates", "4", "--arm", arm]))
        print("\n-- A/B replay of held-out traffic through both arms --")
        simulate_ab.run(
            _parse(
                simulate_ab,
                [
                    *common,
                    "--truth",
                    paths["logs"],
                    "--opportunities",
                    str(args.opportunities),
                    "--out",
                    os.path.join(args.out, "ab_report"),
                ],
            )
        )


def _parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)
