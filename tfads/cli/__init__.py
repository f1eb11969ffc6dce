"""The ``tfads`` command line: one subcommand per job, each living in its own module.

One module per command, ``tfads/cli/<command>.py``, each exposing ``add_arguments(parser)`` and
``run(args) -> int``; a module is imported only when its command is chosen, so ``tfads datagen``
never loads TensorFlow. Commands call the library and the jobs; they hold no logic of their own.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from tfads.core.configtools import ConfigError

# name -> (module, one-line help)
COMMANDS: dict[str, str] = {
    "datagen": "write synthetic ad logs (impressions, clicks, conversions) with ground truth",
    "schema": "schema tools: `tfads schema infer` writes a starter schema from a sample of a table",
    "build": "Beam job: logs -> TFRecords, vocabularies, posterior stats, manifest",
    "train": "train a CTR/CVR model from a manifest",
    "autoheri": "AutoHERI: search the CTR -> CVR tower edges, prune them, retrain with the edges fixed",
    "ukd": "UKD: a click-adaptive teacher's pseudo-conversion labels train an entire-space ESMM student",
    "meta-train": "MAML meta-initialisation over user segments, from a trained model",
    "adapt": "k-shot adaptation of a model to a new segment's first rows",
    "evaluate": "evaluate a trained model: metrics JSON and plots",
    "importance": "per-feature importance (permutation, embedding norm, tree) and a suggested real-time set",
    "calibrate": "train AdaCalib on the calib split and write the combined model",
    "export": "export a model as a TF Serving version directory",
    "serve": "run the embedded TF-Serving-compatible model server",
    "bid": "send bid requests through the gRPC bidding client",
    "simulate-ab": "replay held-out traffic through the A/B arms",
    "tune": "keras-tuner sweep over a YAML search space",
    "online": "incremental online learning over new shards",
    "media-party": "federated media embeddings: the media party (its users' embeddings over gRPC, split learning)",
    "ad-party": "federated media embeddings: the ad party (PSI, split-learning training, test metrics)",
    "demo": "run the whole pipeline end to end on embedded defaults",
}


def module_name(command: str) -> str:
    """The module of ``command``: ``tfads.cli.<command with - as _>``."""
    return f"{__name__}.{command.replace('-', '_')}"


def _top_parser() -> argparse.ArgumentParser:
    epilog = "commands:\n" + "\n".join(f"  {n:<12} {h}" for n, h in COMMANDS.items())
    epilog += "\n\nRun `tfads <command> --help` for the options of one command."
    parser = argparse.ArgumentParser(
        prog="tfads",
        description="CTR/CVR prediction for online advertising.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tfads`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    command = top.parse_args(argv[:1]).command
    help_text = COMMANDS[command]
    try:
        module = importlib.import_module(module_name(command))
    except ModuleNotFoundError as e:
        if e.name and module_name(command).startswith(e.name):
            print(f"tfads {command}: not available in this build ({e.name} is missing)", file=sys.stderr)
            return 2
        raise
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for ours in ("tfads", "beam_jobs", "serving"):  # our own logs say what happened; libraries only warn
        logging.getLogger(ours).setLevel(logging.INFO)
    logging.getLogger("apache_beam").setLevel(logging.ERROR)  # DirectRunner workers' start-up chatter
    for chatty in ("absl", "tensorflow"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(prog=f"tfads {command}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except (ConfigError, FileNotFoundError) as e:
        print(f"tfads {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tfads {command}: interrupted", file=sys.stderr)
        return 130

