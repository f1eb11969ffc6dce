"""Typed settings of a split-learning run: the model sizes, the optimisation, the privacy options."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PrivacyConfig:
    """Clipping and Gaussian noise on what crosses the channel (docs/methods/federated.md "Federated media embeddings").

    Args:
      embedding_clip: L2 bound of each row's media embedding (the media party clips before sending).
      embedding_noise: std of the Gaussian noise the media party adds to each sent embedding coordinate,
        in units of ``embedding_clip`` (0: none).
      gradient_clip: L2 bound of each example's loss gradient w.r.t. its embedding (the ad party clips).
      gradient_noise: std of the noise the ad party adds to each example's gradient coordinate, in units of
        ``gradient_clip`` (0: none).
    """

    embedding_clip: float = 2.0
    embedding_noise: float = 0.1
    gradient_clip: float = 1.0
    gradient_noise: float = 0.1

    def __post_init__(self) -> None:
        for name in ("embedding_clip", "gradient_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"privacy: {name} must be > 0, got {getattr(self, name)}")
        for name in ("embedding_noise", "gradient_noise"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"privacy: {name} must be >= 0, got {getattr(self, name)}")


NO_NOISE = PrivacyConfig(embedding_noise=0.0, gradient_noise=0.0)


@dataclass(frozen=True)
class SplitConfig:
    """One split-learning run.

    Args:
      media_dim: width of the media embedding (the bottom model's output).
      bottom_units: hidden layers of the media party's bottom model.
      fusion_units: hidden layers of the ad party's fusion head (media embedding x the tfads model's x0).
      batch_size: examples per step (the ad party's rows; its matched rows go to the media party).
      epochs: passes over the ad party's train split.
      learning_rate: the tfads model's (LazyAdam, as tfads training).
      media_learning_rate: Adam's on the bottom model (media party) and the fusion head (ad party): the
        media interaction is a bilinear form learned from a small start, slowly at the base rate.
      seed: model initialisation (each party's) and the batch order.
      checkpoint_every: both parties checkpoint every this many steps (and at the end).
      privacy: clipping and noise.
    """

    media_dim: int = 8
    bottom_units: list[int] = field(default_factory=lambda: [32])
    fusion_units: list[int] = field(default_factory=lambda: [32])
    batch_size: int = 512
    epochs: int = 2
    learning_rate: float = 0.002
    media_learning_rate: float = 0.01
    seed: int = 0
    checkpoint_every: int = 50
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    def __post_init__(self) -> None:
        for name in ("media_dim", "batch_size", "epochs", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"federated: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("learning_rate", "media_learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"federated: {name} must be > 0, got {getattr(self, name)}")
