"""Saving a model dir and exporting it: what tfads writes against what it used to write, side by side in one run.

The generator's logs (``--days`` x ``--impressions``) built by the Beam job; the default experiment with the
test suite's small sizes trained one epoch, then calibrated in process as ``tfads calibrate`` does (AdaCalib on
the first calibration field, with the statistics of every calibration field in its config). For the plain
and the calibrated model, each ``--repeats`` times (median seconds):

  weights            ``save_trained_model``: the model dir as written now (weights, experiment.yaml, model.json)
  keras_savedmodel   ``model.save``: the Keras SavedModel every model dir also held until decision 0010's
                     revision (layer call traces for both ``training`` values, every nested config serialised)
  export             ``export_model``: the TF Serving version as written now (only what the signatures capture)
  export_tracking_keras  the same export with the Keras model tracked as a SavedModel child, as it was before

    python -m benchmarks.save_export [--out bench_out/save_export] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks.results import add_results_argument, publish

WAYS = ("weights", "keras_savedmodel", "export", "export_tracking_keras")


def make_models(out: str, days: int, impressions: int) -> tuple[str, dict[str, Any]]:
    """(manifest path, {"plain": model, "calibrated": model}) on freshly generated and built data."""
    from tfads.calibration import compute_calibration_stats
    from tfads.calibration.combined import calibrated_tasks, combined_model, task_rows
    from tfads.core.experiment import load_experiment
    from tfads.core.manifest import load_manifest
    from tfads.core.names import HEAD_LABELS
    from tfads.datagen import generate
    from tfads.jobs.calibrate import fit_calibration_layers
    from tfads.jobs.dataset import build_dataset
    from tfads.predict import predict_split
    from tfads.train import train

    logs = os.path.join(out, "logs")
    if not os.path.isdir(logs):
        generate(logs, days=days, impressions_per_day=impressions, seed=7, progress=False)
    manifest_path = os.path.join(out, "data", "manifest.json")
    if not os.path.exists(manifest_path):
        build_dataset(logs, os.path.join(out, "data"))
    config = load_experiment()
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, embedding_dim=8, deep_units=[32, 16], tower_units=[16]),
        train=dataclasses.replace(config.train, epochs=1, validations_per_epoch=1, batch_size=256),
    )
    base = train(config, manifest_path, os.path.join(out, "model"), verbose=0).model
    manifest = load_manifest(manifest_path)
    calib = predict_split(base, manifest, "calib")
    fields = manifest.calibration_fields  # statistics of every calibration field, as `tfads calibrate` keeps
    stats = {}
    for task in calibrated_tasks(base.output_names):
        rows = calib[task_rows(calib, task)]
        label, _ = HEAD_LABELS[task]
        stats[task] = compute_calibration_stats(rows[task], rows[label], {f: rows[f] for f in fields}, task=task)
    layers = fit_calibration_layers(calib, stats, fields[:1], epochs=1)
    return manifest_path, {"plain": base, "calibrated": combined_model(base, layers)}


def _ways(model: Any, manifest_path: str, target: str) -> dict[str, Callable[[], None]]:
    import tensorflow as tf

    from serving.export import ServingModule, export_model
    from tfads.core.experiment import load_experiment
    from tfads.core.manifest import load_manifest
    from tfads.model_io import save_trained_model

    manifest = load_manifest(manifest_path)

    def tracking_keras() -> None:
        module = ServingModule(model, manifest)
        module.keras_model = model  # a SavedModel child: Keras serialises it as it used to
        tf.saved_model.save(module, target, signatures={"serving_default": module.serving_default,
                                                        "predict_examples": module.predict_examples})

    return {
        "weights": lambda: save_trained_model(model, target, manifest_path, load_experiment()),
        "keras_savedmodel": lambda: model.save(target, include_optimizer=False),
        "export": lambda: export_model(model, manifest, target, version=1, warmup_examples=2),
        "export_tracking_keras": tracking_keras,
    }


def measure(models: dict[str, Any], manifest_path: str, out: str, repeats: int) -> dict[str, dict[str, Any]]:
    """Median and all seconds of every way of writing each model; the ways interleave within a repeat."""
    seconds: dict[str, dict[str, list[float]]] = {name: {way: [] for way in WAYS} for name in models}
    for repeat in range(repeats):
        for name, model in models.items():
            for way, write in _ways(model, manifest_path, os.path.join(out, "written")).items():
                shutil.rmtree(os.path.join(out, "written"), ignore_errors=True)
                start = time.perf_counter()
                write()
                seconds[name][way].append(time.perf_counter() - start)
                print(f"repeat {repeat} {name:10s} {way:22s} {seconds[name][way][-1]:6.2f} s", flush=True)
    return {name: {way: {"median_s": statistics.median(s), "seconds": s} for way, s in ways.items()}
            for name, ways in seconds.items()}


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| model | weights (now) | Keras SavedModel (before) | ratio | export (now) | export tracking Keras "
             "(before) | ratio |", "|---|---|---|---|---|---|---|"]
    for name, ways in results.items():
        m = {way: ways[way]["median_s"] for way in WAYS}
        lines.append(f"| {name} | {m['weights']:.2f} s | {m['keras_savedmodel']:.2f} s | "
                     f"{m['keras_savedmodel'] / m['weights']:.0f}x | {m['export']:.2f} s | "
                     f"{m['export_tracking_keras']:.2f} s | {m['export_tracking_keras'] / m['export']:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_out/save_export")
    parser.add_argument("--days", type=int, default=6)
    parser.add_argument("--impressions", type=int, default=6000, help="impressions per day")
    parser.add_argument("--repeats", type=int, default=3)
    add_results_argument(parser)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    manifest_path, models = make_models(args.out, args.days, args.impressions)
    results = measure(models, manifest_path, args.out, args.repeats)
    summary = table(results)
    print(summary)
    publish("save_export", {"settings": vars(args), "models": results}, summary, args)


if __name__ == "__main__":
    main()
