"""``tfads export``: a trained or calibrated model as a new TF Serving version directory."""

from __future__ import annotations

import argparse
import json
import os

from serving.export import check_export, export_model
from tfads.core.manifest import load_manifest
from tfads.train import load_trained_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-dir",
        required=True,
        help="a `tfads train` or `tfads calibrate` output dir (a model trained with model.matmul_dtype: bfloat16 "
        "is exported with float32 matmuls and the same weights)",
    )
    parser.add_argument("--data", required=True, help="manifest.json (feature specs, warmup examples)")
    parser.add_argument("--model-base-path", required=True, help="TF Serving model_base_path to add a version to")
    parser.add_argument("--version", type=int, default=None, help="version number (default: next after highest)")
    parser.add_argument("--model-name", default="ctr", help="model name used in warmup requests")


def run(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.data)
    model = load_trained_model(args.model_dir, float32_matmuls=True)
    card_path = os.path.join(args.model_dir, "model_card_extra.json")
    card = json.load(open(card_path)) if os.path.exists(card_path) else {}
    path = export_model(
        model, manifest, args.model_base_path, version=args.version, model_name=args.model_name, card=card
    )
    worst = check_export(model, manifest, path)
    print(f"exported {path} (SavedModel vs Keras max abs diff {worst:.1e})")
    return 0

