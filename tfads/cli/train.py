"""``tfads train``: train a model from an experiment config on a Beam manifest."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from tfads.core.names import FINETUNE_MODES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="experiment YAML (default: configs/default.yaml)")
    parser.add_argument("--data", required=True, help="manifest.json written by the Beam job (`tfads build`)")
    parser.add_argument("--model-dir", required=True, help="output dir: model/, checkpoints/, backup/, logs/")
    parser.add_argument(
        "--init-from",
        default=None,
        help="warm start: a model dir or checkpoint prefix to load weights from (fine-tuning)",
    )
    parser.add_argument(
        "--finetune",
        choices=FINETUNE_MODES,
        default="full",
        help="with --init-from, what the run may change: full (every weight, the default), heads (the task "
        "towers only) or frozen_embeddings (everything but the embedding tables)",
    )
    parser.add_argument(
        "--scenarios",
        default=None,
        help="comma-separated scenario values to train on only (fine-tune on a target scene)",
    )
    parser.add_argument("--epochs", type=int, default=None,
                        help="override train.epochs: the cap on epochs (default 20); early stopping usually ends "
                        "the run long before it")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="override train.steps_per_epoch")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="override train.learning_rate (LazyAdam, constant; default 2e-3)")
    parser.add_argument("--seed", type=int, default=None, help="override train.seed (weights, shuffling, dropout)")
    parser.add_argument("--patience", type=int, default=None,
                        help="override train.early_stopping_patience: validations without a better validation pCTR "
                        "AUC before stopping (default 2; train.validations_per_epoch, default 4, validations per "
                        "epoch). The best validation's weights are kept, also when the run reaches --epochs")
    parser.add_argument("--deterministic", action="store_true", default=None,
                        help="op determinism and a fixed input order: the same seed gives bit-identical weights "
                        "(measured cost: within noise of the default's examples/s, "
                        "benchmarks/results/train_throughput.md)")
    parser.epilog = (
        "Resumable: a killed run restarted with the same --model-dir continues from the last validation. "
        "Distributed: set TF_CONFIG on each task and run the same command: MultiWorkerMirroredStrategy, or with a "
        "'ps' job ParameterServerStrategy (the chief trains, worker and ps tasks serve it until killed; "
        "docs/deploy.md)."
    )


def run(args: argparse.Namespace) -> int:
    from tfads.cluster import ParameterServerLost, serve, server_role

    try:
        role = server_role()
    except ValueError as e:
        print(f"tfads train: error: {e}", file=sys.stderr)
        return 2
    if role is not None:  # a worker or ps task of a parameter-server cluster: serve the chief until killed
        serve()
        return 0
    from tfads.core.experiment import DEFAULT_EXPERIMENT, load_experiment
    from tfads.train import summary_line, train

    config = load_experiment(args.config or DEFAULT_EXPERIMENT)
    overrides = {
        "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "early_stopping_patience": args.patience,
        "deterministic": args.deterministic,
        "scenarios": args.scenarios.split(",") if args.scenarios else None,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, **overrides))
    if args.finetune != "full" and not args.init_from:
        print("tfads train: error: --finetune needs --init-from (the model to fine-tune)", file=sys.stderr)
        return 2
    try:
        result = train(config, args.data, args.model_dir, init_from=args.init_from, finetune=args.finetune)
    except ParameterServerLost as e:
        print(f"tfads train: error: {e}", file=sys.stderr)
        return 1
    print(f"trained {result.epochs_run:g} epoch(s), kept the weights of epoch {result.best_epoch:g}: "
          f"{summary_line(result.history, result.kept)}")
    print(f"model written to {result.model_path}")
    return 0
