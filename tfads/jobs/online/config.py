"""Online-learning settings (``configs/online.yaml``), loaded through :mod:`tfads.core.configtools`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tfads.core.configtools import load_dataclass
from tfads.core.defaults import ONLINE, default_config

DEFAULT_ONLINE_CONFIG = default_config(ONLINE)


@dataclass(frozen=True)
class OnlineConfig:
    """How each incremental update trains, validates and publishes.

    Attributes:
      frozen_embeddings: keep every ``*_embedding`` layer fixed during updates (ODL's frozen embedding layer).
      replay_ratio: replayed historical examples per new training example (0 disables replay).
      reservoir_size: bound of the reservoir of past examples (serialized tf.Example records).
      seed_reservoir_from_train: fill the reservoir from the manifest's train split when the state starts.
      learning_rate_scale: update LR = this x the experiment's ``train.learning_rate``.
      epochs: passes over (new + replay) examples per update.
      batch_size: training batch size of an update.
      holdout_fraction: share of each new shard held out (by a hash of the record) for the gate.
      gate_metric: ``auc`` (higher is better) or ``logloss`` (lower is better), on pCTR.
      gate_margin: the candidate is exported unless it is worse than the serving model by more than this.
      old_eval_examples: examples of the manifest's valid split (older days) scored after each update
        to measure forgetting.
      calibration_fields: fields whose posterior statistics are refreshed after each update.
      calibration_decay: weight kept by the old posterior counts at each refresh (1.0: plain sums).
      recalibrate: when the model dir holds a calibrated model (``tfads calibrate``), rebuild its AdaCalib
        layers from the refreshed statistics and refit them after each accepted update (off: the loaded
        layers are kept); either way the export is the combined model. No effect on an uncalibrated model.
      recalibration_epochs: passes of each AdaCalib refit over the shard's rows.
      poll_seconds: how often the stream directory is listed when idle.
      max_idle_polls: stop after this many empty polls in a row (null: watch forever).
      keep_steps: committed step directories kept besides the current and the serving one.
      seed: base random seed (an update uses ``seed + step``).
    """

    frozen_embeddings: bool = True
    replay_ratio: float = 1.0
    reservoir_size: int = 20_000
    seed_reservoir_from_train: bool = True
    learning_rate_scale: float = 0.1
    epochs: int = 1
    batch_size: int = 512
    holdout_fraction: float = 0.2
    gate_metric: Literal["auc", "logloss"] = "auc"
    gate_margin: float = 0.002
    old_eval_examples: int = 5000
    calibration_fields: list[str] | None = None
    calibration_decay: float = 0.9
    recalibrate: bool = True
    recalibration_epochs: int = 3
    poll_seconds: float = 5.0
    max_idle_polls: int | None = None
    keep_steps: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.replay_ratio < 0:
            raise ValueError(f"replay_ratio must be >= 0, got {self.replay_ratio}")
        if self.reservoir_size < 1:
            raise ValueError(f"reservoir_size must be >= 1, got {self.reservoir_size}")
        if self.learning_rate_scale <= 0:
            raise ValueError(f"learning_rate_scale must be > 0, got {self.learning_rate_scale}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if not 0.0 <= self.calibration_decay <= 1.0:
            raise ValueError(f"calibration_decay must be in [0, 1], got {self.calibration_decay}")
        if self.recalibration_epochs < 1:
            raise ValueError(f"recalibration_epochs must be >= 1, got {self.recalibration_epochs}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")


def load_online_config(path: str | Path = DEFAULT_ONLINE_CONFIG) -> OnlineConfig:
    """Load an online-learning YAML; unknown keys and wrong types raise ConfigError naming the key."""
    return load_dataclass(OnlineConfig, path)
