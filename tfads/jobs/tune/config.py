"""The tune YAML (``configs/tune.yaml``): base experiment, objective, oracle, per-trial budget, space."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tfads.core.configtools import ConfigError, from_dict, read_yaml
from tfads.core.experiment import DEFAULT_EXPERIMENT, ExperimentConfig, load_experiment
from tfads.jobs.tune.space import SearchSpace, parse_space


@dataclass(frozen=True)
class Objective:
    """The metric to optimise: any key of the trainer's Keras history (``val_ctr_auc``, ``val_loss``...).
    ``direction`` defaults to ``min`` for names ending in ``loss``, else ``max``."""

    name: str = "val_ctr_auc"
    direction: Literal["max", "min"] | None = None

    @property
    def mode(self) -> Literal["max", "min"]:
        if self.direction:
            return self.direction
        return "min" if self.name.endswith("loss") else "max"


@dataclass(frozen=True)
class OracleSettings:
    """Which keras-tuner oracle proposes trials. ``max_trials`` does not apply to Hyperband, whose
    trial count follows from ``budget.epochs`` (its max epochs) and ``hyperband_factor``."""

    type: Literal["random", "bayesian", "hyperband"] = "random"
    max_trials: int = 10
    seed: int = 0
    max_consecutive_failures: int = 3
    hyperband_factor: int = 3
    hyperband_iterations: int = 1

    def __post_init__(self) -> None:
        if self.max_trials < 1:
            raise ValueError(f"max_trials must be >= 1, got {self.max_trials}")


@dataclass(frozen=True)
class Budget:
    """What one trial may spend: epochs (Hyperband's max epochs), steps per epoch (null: the whole
    train split), validation steps (null: the whole valid split) and early-stopping patience."""

    epochs: int = 3
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    early_stopping_patience: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or (self.steps_per_epoch is not None and self.steps_per_epoch < 1):
            raise ValueError(f"epochs and steps_per_epoch must be >= 1, got {self.epochs}, {self.steps_per_epoch}")


@dataclass(frozen=True)
class TuneFile:
    """The raw tune YAML; ``experiment`` is relative to the YAML's folder."""

    experiment: str = str(DEFAULT_EXPERIMENT)
    objective: Objective = field(default_factory=Objective)
    oracle: OracleSettings = field(default_factory=OracleSettings)
    budget: Budget = field(default_factory=Budget)
    flags: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TuneConfig:
    """A loaded sweep definition: the base experiment and the validated search space."""

    path: str
    experiment: ExperimentConfig
    objective: Objective
    oracle: OracleSettings
    budget: Budget
    space: SearchSpace


def load_tune_config(path: str | Path) -> TuneConfig:
    """Load and validate a tune YAML; every problem raises ConfigError naming the file and key."""
    path = Path(path)
    raw = from_dict(TuneFile, read_yaml(path), where=str(path))
    experiment_path = path.parent / raw.experiment
    if not experiment_path.is_file():
        raise ConfigError(f"{path}: experiment: {experiment_path} not found")
    return TuneConfig(
        path=str(path.resolve()),
        experiment=load_experiment(experiment_path),
        objective=raw.objective,
        oracle=raw.oracle,
        budget=raw.budget,
        space=parse_space(raw.space, raw.flags, where=str(path)),
    )
