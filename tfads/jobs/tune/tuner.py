"""The keras-tuner ``Tuner`` of ``tfads tune``: its ``run_trial`` builds and fits the tfads model.

keras-tuner 1.4.8 checks ``HyperModel.build`` results against Keras 3's ``Model`` class and rejects
the ``tf_keras`` models tfads builds (keras-tuner issue #1039); overriding ``run_trial`` skips that
path: the tuner only sees the metrics dict we return.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import keras_tuner as kt
import numpy as np
import tensorflow as tf
import tf_keras as keras
from keras_tuner.src.distribute import oracle_chief
from keras_tuner.src.distribute import utils as dist_utils
from keras_tuner.src.engine.trial import TrialStatus

from tfads.core.experiment import ExperimentConfig, experiment_from_dict
from tfads.core.manifest import Manifest
from tfads.models import build_model, compile_model
from tfads.train import adasparse_callbacks, train_valid_datasets
from tfads.jobs.tune.config import Budget, Objective, TuneConfig

log = logging.getLogger(__name__)
PROJECT = "trials"
RESULT_FILE = "result.json"


def make_oracle(tune: TuneConfig) -> kt.Oracle:
    """The oracle named by ``tune.oracle.type`` over ``tune.space``."""
    o = tune.oracle
    common = {
        "objective": kt.Objective(tune.objective.name, tune.objective.mode),
        "hyperparameters": tune.space.hyperparameters(),
        "seed": o.seed,
        "max_consecutive_failed_trials": o.max_consecutive_failures,
    }
    if o.type == "random":
        return kt.oracles.RandomSearchOracle(max_trials=o.max_trials, **common)
    if o.type == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(max_trials=o.max_trials, **common)
    return kt.oracles.HyperbandOracle(
        max_epochs=tune.budget.epochs, factor=o.hyperband_factor, hyperband_iterations=o.hyperband_iterations, **common
    )


class SweepTuner(kt.Tuner):
    """Runs tfads trials for a keras-tuner oracle, locally or as a chief/worker of a distributed sweep.

    Each trial writes ``<directory>/trials/trial_<id>/attempt-<tuner>-<pid>.json`` when it starts
    and ``result.json`` (status, metrics at the best epoch, hyperparameters, experiment config or
    the error) once the oracle has recorded its end, so a killed sweep resumes without redoing it.
    """

    def __init__(self, tune: TuneConfig, manifest: Manifest, directory: str, *, overwrite: bool = False):
        self.tune = tune
        self.manifest = manifest
        self._outcomes: dict[str, TrialOutcome] = {}
        super().__init__(oracle=make_oracle(tune), directory=directory, project_name=PROJECT, overwrite=overwrite)

    @property
    def is_chief(self) -> bool:
        """True on the oracle's chief of a distributed sweep."""
        return dist_utils.is_chief_oracle()

    @property
    def is_worker(self) -> bool:
        """True on a worker of a distributed sweep (it runs trials for the chief's oracle)."""
        return self._is_worker()

    def search(self, *args: Any, **kwargs: Any) -> None:
        """Run trials until the oracle stops; on the chief, serve the oracle until every worker is done."""
        if self.is_chief:
            self.save()
            serve_oracle(self.oracle)
            return
        super().search(*args, **kwargs)

    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> dict[str, float]:
        """Build the trial's experiment, fit it within the budget and return the best epoch's metrics."""
        outcome = self._outcomes[trial.trial_id] = TrialOutcome(values=dict(trial.hyperparameters.values))
        _write_json(
            os.path.join(self.get_trial_dir(trial.trial_id), f"attempt-{self.tuner_id}-{os.getpid()}.json"),
            {"trial_id": trial.trial_id, "tuner_id": self.tuner_id, "pid": os.getpid(), "started": outcome.started},
        )
        log.info("trial %s started by %s (pid %d): %s", trial.trial_id, self.tuner_id, os.getpid(), outcome.values)
        config = trial_experiment(self.tune, outcome.values)
        outcome.config = config.to_dict()
        epochs = int(outcome.values.get("tuner/epochs", self.tune.budget.epochs))
        history = fit_trial(config, self.manifest, self.tune.budget, self.tune.objective, epochs=epochs)
        outcome.metrics = best_epoch_metrics(history, self.tune.objective)
        return outcome.metrics

    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        """Let the oracle record the trial, then write its ``result.json`` (also when the oracle raises
        because too many trials failed in a row)."""
        try:
            super().on_trial_end(trial)
        finally:
            self._write_result(trial, self._outcomes.pop(trial.trial_id))

    def _write_result(self, trial: kt.engine.trial.Trial, outcome: TrialOutcome) -> None:
        status = "COMPLETED" if trial.status == TrialStatus.COMPLETED else "FAILED"
        name = self.tune.objective.name
        result = {
            "trial_id": trial.trial_id,
            "status": status,
            "objective": name,
            "score": outcome.metrics.get(name),
            "metrics": outcome.metrics,
            "values": outcome.values,
            "config": outcome.config,
            "error": _last_line(trial.message) if status == "FAILED" else None,
            "tuner_id": self.tuner_id,
            "pid": os.getpid(),
            "seconds": round(time.time() - outcome.started, 2),
        }
        path = os.path.join(self.get_trial_dir(trial.trial_id), RESULT_FILE)
        _write_json(path, result)
        score = f"{result['score']:.4f}" if result["score"] is not None else result["error"]
        log.info("trial %s %s: %s=%s -> %s", trial.trial_id, status, name, score, path)


@dataclass
class TrialOutcome:
    """What one attempt at a trial produced so far (the sampled values, then config and metrics)."""

    values: dict[str, Any]
    started: float = field(default_factory=time.time)
    config: dict[str, Any] | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def trial_experiment(tune: TuneConfig, values: dict[str, Any]) -> ExperimentConfig:
    """The base experiment with a trial's sampled values applied (validated like any experiment YAML)."""
    data = tune.space.apply(tune.experiment.to_dict(), values)
    return experiment_from_dict(data, where=f"{tune.path} (trial values {values})")


def fit_trial(
    config: ExperimentConfig, manifest: Manifest, budget: Budget, objective: Objective, *, epochs: int
) -> dict[str, list[float]]:
    """Fit ``config`` on the train split for at most ``epochs`` (early stopping on the objective),
    validating on the valid split; returns the Keras history. No checkpoints or SavedModel."""
    tc = config.train
    keras.backend.clear_session()
    keras.utils.set_random_seed(tc.seed)
    train_ds, valid_ds, steps = train_valid_datasets(tc, manifest, steps_per_epoch=budget.steps_per_epoch)
    model = build_model(manifest, config.model)
    compile_model(model, config.model, tc.learning_rate, tc.optimizer)
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor=objective.name, mode=objective.mode, patience=budget.early_stopping_patience
        ),
        *adasparse_callbacks(config.model.adasparse, steps_per_epoch=steps, model=model),
    ]
    history = model.fit(
        train_ds,
        validation_data=valid_ds,
        epochs=epochs,
        steps_per_epoch=steps,
        validation_steps=budget.validation_steps,
        callbacks=callbacks,
        verbose=0,
    )
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def best_epoch_metrics(history: dict[str, list[float]], objective: Objective) -> dict[str, float]:
    """Every metric at the epoch with the best objective.

    Raises:
      keras_tuner.errors.FatalValueError: the objective is not in the history (stops the sweep).
      keras_tuner.errors.FailedTrialError: the objective is NaN in every epoch.
    """
    if objective.name not in history:
        raise kt.errors.FatalValueError(
            f"{objective.name!r} is not a metric the trainer reports (have: {', '.join(sorted(history))})"
        )
    scores = np.asarray(history[objective.name], dtype=float)
    if np.isnan(scores).all():
        raise kt.errors.FailedTrialError(f"objective {objective.name} is NaN in every epoch")
    best = int(np.nanargmax(scores) if objective.mode == "max" else np.nanargmin(scores))
    return {k: vals[best] for k, vals in history.items()}


def serve_oracle(oracle: kt.Oracle, poll_seconds: float = 1.0) -> None:
    """Serve ``oracle`` over gRPC at ``KERASTUNER_ORACLE_IP:PORT`` until every worker was told to stop.

    keras-tuner's own ``start_server`` re-checks only every 20 s once the first worker stops; this
    polls every ``poll_seconds`` and shuts the server down cleanly.
    """
    from keras_tuner.src import protos

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    server.add_insecure_port(address)
    server.start()
    log.info("oracle serving on %s", address)
    while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
        time.sleep(poll_seconds)
    server.stop(grace=poll_seconds)


def _last_line(message: str | None) -> str | None:
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else None


def _write_json(path: str, data: dict[str, Any]) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(data, f, indent=2, default=str)
