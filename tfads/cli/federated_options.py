"""Flags both federated parties take (``tfads media-party``, ``tfads ad-party``): the split run's settings."""

from __future__ import annotations

import argparse

from tfads.cli.arg_types import number_in, positive_int
from tfads.federated.config import PrivacyConfig, SplitConfig

_DEFAULT, _PRIVACY = SplitConfig(), PrivacyConfig()


def _units(text: str) -> list[int]:
    return [positive_int(u) for u in text.split(",") if u]


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """The settings of :class:`tfads.federated.config.SplitConfig` (each party reads what it uses)."""
    parser.add_argument("--state", required=True, help="this party's directory: checkpoints, results")
    parser.add_argument("--media-dim", type=positive_int, default=_DEFAULT.media_dim,
                        help=f"width of the media embedding (default {_DEFAULT.media_dim})")
    parser.add_argument("--bottom-units", type=_units, default=_DEFAULT.bottom_units,
                        help="the media party's bottom MLP, comma-separated widths (default 32)")
    parser.add_argument("--fusion-units", type=_units, default=_DEFAULT.fusion_units,
                        help="the ad party's fusion head, comma-separated widths (default 32)")
    parser.add_argument("--batch-size", type=positive_int, default=_DEFAULT.batch_size)
    parser.add_argument("--epochs", type=positive_int, default=_DEFAULT.epochs)
    parser.add_argument("--learning-rate", type=number_in(1e-6, 1.0), default=_DEFAULT.learning_rate,
                        help=f"the tfads model's (LazyAdam; default {_DEFAULT.learning_rate})")
    parser.add_argument("--media-learning-rate", type=number_in(1e-6, 1.0), default=_DEFAULT.media_learning_rate,
                        help=f"Adam's on the bottom model and the fusion head (default {_DEFAULT.media_learning_rate})")
    parser.add_argument("--seed", type=int, default=_DEFAULT.seed, help="the same on both sides")
    parser.add_argument("--checkpoint-every", type=positive_int, default=_DEFAULT.checkpoint_every,
                        help="steps between the parties' checkpoints (the ad party decides)")
    parser.add_argument("--embedding-clip", type=number_in(1e-6, 1e9), default=_PRIVACY.embedding_clip,
                        help="L2 bound of a sent embedding row (media party)")
    parser.add_argument("--embedding-noise", type=number_in(0.0, 100.0), default=_PRIVACY.embedding_noise,
                        help="Gaussian noise std on sent embeddings, in units of --embedding-clip (media party)")
    parser.add_argument("--gradient-clip", type=number_in(1e-6, 1e9), default=_PRIVACY.gradient_clip,
                        help="L2 bound of an example's gradient w.r.t. its embedding (ad party)")
    parser.add_argument("--gradient-noise", type=number_in(0.0, 100.0), default=_PRIVACY.gradient_noise,
                        help="Gaussian noise std on sent gradients, in units of --gradient-clip (ad party)")


def split_config(args: argparse.Namespace) -> SplitConfig:
    """The run's settings from the flags of :func:`add_split_arguments`."""
    return SplitConfig(
        media_dim=args.media_dim, bottom_units=args.bottom_units, fusion_units=args.fusion_units,
        batch_size=args.batch_size, epochs=args.epochs, learning_rate=args.learning_rate,
        media_learning_rate=args.media_learning_rate, seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        privacy=PrivacyConfig(embedding_clip=args.embedding_clip, embedding_noise=args.embedding_noise,
                              gradient_clip=args.gradient_clip, gradient_noise=args.gradient_noise),
    )
