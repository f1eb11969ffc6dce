"""``tfads demo`` (``make demo``): the whole main job end to end on embedded defaults.

synthetic logs -> Beam job (DirectRunner, 2 workers) -> train DCNv2 + AdaSparse + ESMM -> evaluate
beside the oracle -> ... printing what a user needs to see at each step.
"""

from __future__ import annotations

import argparse
import os
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="working directory for every artefact")
    parser.add_argument("--days", type=int, default=8, help="days of synthetic logs")
    parser.add_argument("--impressions-per-day", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)


def _step(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.monotonic()


def _done(start: float) -> None:
    print(f"--- done in {time.monotonic() - start:.1f} s", flush=True)


def run(args: argparse.Namespace) -> int:
    out = os.path.abspath(args.out)
    logs, data, model_dir = (os.path.join(out, d) for d in ("logs", "data", "model"))

    t = _step(f"1/4 synthetic ad logs: {args.days} days x {args.impressions_per_day} impressions -> {logs}")
    from tfads.datagen import generate

    info = generate(
        logs, days=args.days, impressions_per_day=args.impressions_per_day, seed=args.seed, corrupt_rate=0.005
    )
    print(f"wrote {info['counts']}")
    _done(t)

    t = _step(f"2/4 Beam job (DirectRunner, 2 workers): logs -> TFRecords, vocabularies, posterior stats -> {data}")
    from beam_jobs import build_examples

    build_examples.main(
        ["--logs", logs, "--out", data, "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
    )
    _done(t)

    t = _step(f"3/4 train DCNv2 + AdaSparse (Fusion) + ESMM -> {model_dir}")
    import dataclasses

    from tfads.experiment import load_experiment
    from tfads.train import summary_line, train

    config = load_experiment()
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=args.epochs))
    manifest_path = os.path.join(data, "manifest.json")
    result = train(config, manifest_path, model_dir, verbose=2)
    print(summary_line(result.history))
    _done(t)

    t = _step("4/4 evaluate on the test split, beside the oracle (true probabilities)")
    from tfads.evaluate import evaluate_frame, write_report
    from tfads.manifest import load_manifest
    from tfads.predict import predict_split
    from tfads.truth import attach_truth

    manifest = load_manifest(manifest_path)
    scored = attach_truth(predict_split(result.model, manifest, "test"), logs)
    evaluation = evaluate_frame(scored)
    from tfads.sparsity import scenario_sparsity

    sparsity = scenario_sparsity(result.model, manifest)
    files = write_report(
        evaluation, scored, os.path.join(out, "eval"), model_name="dcnv2_adasparse", sparsity=sparsity
    )
    if sparsity is not None:
        matrix, layers, _ = sparsity
        shares = ", ".join(f"{name} {share:.2f}" for name, share in zip(layers, matrix.mean(axis=1), strict=True))
        print(f"AdaSparse pruned share per layer (mean over scenarios): {shares}")
    print(evaluation.table())
    print("plots: " + ", ".join(v for k, v in files.items() if v.endswith(".png")))
    _done(t)
    return 0
